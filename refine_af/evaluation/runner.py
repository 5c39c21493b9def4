"""``refineaf eval``: evaluate a base model and any number of adapters on SuperNI, then report.

Each row of the config (vanilla, baseline, REFINE-AF, ...) is the base model with or without a
PEFT adapter. Rows run through lm-eval's Python API (``simple_evaluate``) on the
``refineaf_superni`` tasks; per-instance predictions and scores land in
``OUTPUT/<row>/samples.jsonl`` and the report (Markdown + PNG) in ``OUTPUT/report.md``.
A row whose samples already exist for the same settings is not run again, so adding a row to a
config only evaluates the new one.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from refine_af.config import ConfigError, build_dataclass, fingerprint, help_field, to_dict
from refine_af.errors import UserError
from refine_af.evaluation.data import TASK_NAMES, DataSettings, check_tasks_available

log = logging.getLogger(__name__)


@dataclass
class RowConfig:
    """One evaluated model: the base model, optionally with a PEFT adapter."""

    name: str = help_field("vanilla", "Row label in the report (letters, digits, - and _).")
    adapter: str | None = help_field(
        None, "PEFT adapter directory (adapter_config.json inside); empty: the base model as is."
    )

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "-_" for c in self.name):
            raise ConfigError(f"row name {self.name!r} must use only letters, digits, - and _")


@dataclass
class EvalConfig:
    """What ``refineaf eval`` evaluates and where it writes (one YAML in eval_configs/)."""

    model: str = help_field(
        "default", "Base model: 'default' (SmolLM2-135M-Instruct), a Hub id or a local path."
    )
    rows: list[RowConfig] = field(
        default_factory=lambda: [RowConfig()],
        metadata={"help": "Rows to evaluate: the base model alone and/or with adapters."},
    )
    tasks: list[str] = field(
        default_factory=list,
        metadata={"help": "SuperNI test task names; empty: all 119 (group refineaf_superni)."},
    )
    prompt: Literal["definition", "pos2"] = help_field(
        "definition", "'definition' (zero-shot) or 'pos2' (definition + 2 positive examples)."
    )
    limit: int | None = help_field(None, "Instances per task (first N); empty: all (100).")
    max_gen_toks: int | None = help_field(
        None, "New-token cap; empty: the task's 128 (lower only for quick checks)."
    )
    data: str | None = help_field(
        None, "Local SuperNI data (task JSON dir or JSONL[.gz]); empty: env or download."
    )
    references: str | None = help_field(
        None, "Official reference file; empty: beside the data, or downloaded."
    )
    backend: Literal["refineaf-hf", "hf"] = help_field(
        "refineaf-hf", "lm-eval model: the fast 'refineaf-hf' or lm-eval's plain 'hf'."
    )
    batch_size: int = help_field(64, "Rows per batch (refineaf-hf: the maximum).")
    max_input_tokens: int = help_field(
        1024, "refineaf-hf: truncate longer task inputs (Tk-Instruct); 0 = never."
    )
    token_budget: int = help_field(16384, "refineaf-hf: padded prompt tokens per batch.")
    threads: int | None = help_field(None, "torch CPU threads; empty: torch's default.")
    device: str = help_field("auto", "'auto', 'cpu', 'cuda', ...")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = help_field(
        "auto", "'auto': bfloat16 on GPU, float32 on CPU."
    )
    trust_remote_code: bool = help_field(False, "Run model code from the Hub (off).")
    apply_chat_template: bool = help_field(
        False, "Wrap prompts in the model's chat template (off: the plain SuperNI prompt)."
    )
    output_dir: str = help_field("runs/eval/default", "Where samples and the report go.")
    compare: list[list[str]] = field(
        default_factory=list,
        metadata={
            "help": "Row pairs [a, b] to compare (a vs b); empty: every row vs each row above it "
            "(rows vanilla, baseline, refine_af give the paper's refine_af vs baseline too)."
        },
    )
    bootstrap_samples: int = help_field(1000, "Paired bootstrap resamples for the CIs.")
    seed: int = help_field(1234, "Seed of the bootstrap (decoding is greedy).")

    def __post_init__(self) -> None:
        if not self.rows:
            raise ConfigError("rows is empty: give at least one row, e.g. {name: vanilla}")
        names = [row.name for row in self.rows]
        if len(set(names)) != len(names):
            raise ConfigError(f"row names must be unique, got {names}")
        for pair in self.compare:
            if len(pair) != 2 or any(name not in names for name in pair):
                raise ConfigError(f"compare entry {pair} must name two rows out of {names}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be >= 1 or empty, got {self.limit}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")

    def task_names(self) -> list[str]:
        """The SuperNI tasks to run, official order when all."""
        return list(self.tasks) if self.tasks else list(TASK_NAMES)

    def pairs(self) -> list[tuple[str, str]]:
        if self.compare:
            return [(a, b) for a, b in self.compare]
        names = [row.name for row in self.rows]
        return [(later, earlier) for i, later in enumerate(names) for earlier in names[:i]]

    def data_settings(self) -> DataSettings:
        env = DataSettings.from_metadata()
        return DataSettings(
            data=self.data or env.data, references=self.references or env.references
        )


def load_eval_config(path: str, overrides: list[str] | None = None) -> EvalConfig:
    """Read an eval YAML and apply ``key=value`` overrides strictly."""
    from refine_af.config import apply_overrides, read_config_file

    raw = apply_overrides(read_config_file(path), list(overrides or []))
    return build_dataclass(EvalConfig, raw)


def check_adapters(config: EvalConfig) -> None:
    """Every adapter must exist before anything runs (one line naming the row)."""
    for row in config.rows:
        if not row.adapter:
            continue
        path = Path(row.adapter).expanduser()
        if not (path / "adapter_config.json").is_file():
            what = "does not exist" if not path.exists() else "has no adapter_config.json"
            raise UserError(
                f"row '{row.name}': adapter {path} {what}: train it first (SFT stage) or "
                "remove the row from the config"
            )


def _lm_task_names(config: EvalConfig) -> list[str]:
    from refine_af.evaluation.tasks import PROMPTS, lm_eval_task_name

    if not config.tasks:
        return [PROMPTS[config.prompt]]  # the group: 119 tasks with per-category aggregates
    return [lm_eval_task_name(task, config.prompt) for task in config.tasks]


def model_args(config: EvalConfig, row: RowConfig, model_path: str) -> dict[str, Any]:
    """lm-eval ``model_args`` of one row."""
    from refine_af.models import choose_placement

    placement = choose_placement(config.device, config.dtype)
    args: dict[str, Any] = {
        "pretrained": model_path,
        "device": placement.device,
        "dtype": str(placement.dtype).removeprefix("torch."),
        "trust_remote_code": config.trust_remote_code,
    }
    if row.adapter:
        args["peft"] = str(Path(row.adapter).expanduser())
    if config.backend == "refineaf-hf":
        args["max_input_tokens"] = config.max_input_tokens
        args["token_budget"] = config.token_budget
        if config.threads:
            args["threads"] = config.threads
    return args


def _row_fingerprint(config: EvalConfig, row: RowConfig, args: dict[str, Any]) -> str:
    settings = to_dict(config)
    for key in ("rows", "output_dir", "compare", "bootstrap_samples", "seed"):
        settings.pop(key)
    from refine_af.run_dir import package_versions

    # Package versions too: a new refine_af / lm-eval / transformers re-runs the row.
    return fingerprint(settings, to_dict(row), args, package_versions())


def extract_samples(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-instance records from lm-eval's logged samples (official task order)."""
    records = []
    for samples in result.get("samples", {}).values():
        for sample in samples:
            doc = sample["doc"]
            prompt = sample["arguments"][0][0] if sample.get("arguments") else ""
            records.append(
                {
                    "task": doc["task_name"],
                    "category": doc["category"],
                    "id": doc["id"],
                    "prompt": prompt,
                    "prediction": sample["filtered_resps"][0],
                    "references": doc["references"],
                    "rougeL": float(sample["rougeL"]),
                    "exact_match": float(sample["exact_match"]),
                }
            )
    order = {task: i for i, task in enumerate(TASK_NAMES)}
    records.sort(key=lambda r: order[r["task"]])  # stable: keeps instance order within a task
    return records


def evaluate_row(
    config: EvalConfig, row: RowConfig, model_path: str, output_dir: Path, reuse: bool = True
) -> list[dict[str, Any]]:
    """Run one row through ``simple_evaluate``; write and return its per-instance records.

    With ``reuse``, a row already evaluated with the same settings and package versions is read
    back instead of run again.
    """
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    import refine_af.evaluation.lm  # noqa: F401 - registers the refineaf-hf model
    from refine_af.evaluation.tasks import tasks_dir
    from refine_af.run_dir import write_json_atomic

    args = model_args(config, row, model_path)
    key = _row_fingerprint(config, row, args)
    row_dir = output_dir / row.name
    samples_path = row_dir / "samples.jsonl"
    meta_path = row_dir / "row.json"
    if (
        reuse
        and samples_path.is_file()
        and meta_path.is_file()
        and json.loads(meta_path.read_text()).get("fingerprint") == key
    ):
        log.info("row %s: reusing %s", row.name, samples_path)
        return [json.loads(line) for line in samples_path.read_text().splitlines() if line]
    settings = config.data_settings()
    metadata = {
        k: v
        for k, v in (("superni_data", settings.data), ("superni_references", settings.references))
        if v
    }
    manager = TaskManager(include_path=str(tasks_dir()), include_defaults=False, metadata=metadata)
    started = time.time()
    result = simple_evaluate(
        model=config.backend,
        model_args=args,
        tasks=_lm_task_names(config),
        limit=config.limit,
        batch_size=config.batch_size,
        task_manager=manager,
        log_samples=True,
        bootstrap_iters=0,  # CIs come from the report's paired bootstrap
        apply_chat_template=config.apply_chat_template,
        gen_kwargs={"max_gen_toks": config.max_gen_toks} if config.max_gen_toks else None,
    )
    seconds = time.time() - started
    if result is None:
        raise UserError(f"row '{row.name}': lm-eval returned no results")
    records = extract_samples(result)
    if not records:
        raise UserError(f"row '{row.name}': lm-eval produced no samples")
    row_dir.mkdir(parents=True, exist_ok=True)
    partial = samples_path.with_name(samples_path.name + ".partial")
    partial.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(partial, samples_path)
    lm_results = {k: v for k, v in result.items() if k != "samples"}
    write_json_atomic(row_dir / "lm_eval_results.json", lm_results)
    write_json_atomic(
        meta_path,
        {
            "fingerprint": key,
            "row": to_dict(row),
            "model_args": args,
            "seconds": round(seconds, 1),
            "instances": len(records),
            "instances_per_second": round(len(records) / max(seconds, 1e-9), 3),
        },
    )
    return records


def run_eval(config: EvalConfig, config_source: str | None = None, force: bool = False) -> Path:
    """Evaluate every row (``force``: even those already done), write the report; return it."""
    from refine_af.evaluation.report import write_report
    from refine_af.models import resolve_model_path

    check_adapters(config)
    check_tasks_available(config.task_names(), config.data_settings())
    model_path = resolve_model_path(config.model)
    output_dir = Path(config.output_dir).expanduser()
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "eval_config.json").write_text(
        json.dumps({"source": config_source, **to_dict(config)}, indent=2) + "\n"
    )
    rows = {}
    for row in config.rows:
        log.info("evaluating row %s", row.name)
        rows[row.name] = evaluate_row(config, row, model_path, output_dir, reuse=not force)
    return write_report(
        rows,
        output_dir,
        pairs=config.pairs(),
        bootstrap_samples=config.bootstrap_samples,
        seed=config.seed,
        title=f"SuperNI evaluation of {config.model} ({config.prompt} prompt)",
    )
