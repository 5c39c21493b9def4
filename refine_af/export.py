"""``refineaf export RUN_DIR OUT``: a run's generated data as a Hugging Face dataset folder.

The folder holds one parquet file per split and a dataset card (``README.md``) whose YAML header
names the configs and their files, so ``datasets.load_dataset(OUT, "instances", split="baseline")``
works without any loading script. Configs, each present only when the run finished that stage:

* ``instructions`` (split ``train``): every stage-1 candidate, kept or dropped, with the filter
  that dropped it (from ``RUN/instructions/batches.jsonl``);
* ``instances`` (one split per variant): the kept instances each adapter was fine-tuned on;
* ``instance_candidates`` (one split per generated variant): every stage-3 candidate with its
  filter decision;
* ``rl_samples`` (split ``train``): every completion stage 2 scored, with its rewards.

The card also gives the generating model and adapter, the reward weights, every count of the
stage summaries, the seeds' licence and the commands behind the data. ``--push-to-hub`` uploads
the folder as it is (parquet files and card) to a Hub dataset repository.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from refine_af.errors import UserError, one_line
from refine_af.storage import atomic_directory, read_json, read_records

CARD = "README.md"
RUN_CONFIG = "run_config.yaml"  # the run's config.yaml, copied
TRAIN = "train"
CONFIGS = ("instructions", "instances", "instance_candidates", "rl_samples")
# Each config's known columns and their types (pyarrow aliases), so a column keeps its type in a
# split where it holds no value (no judge, no parseable RL completion).
INSTRUCTION_COLUMNS = {
    "id": "string",
    "instruction": "string",
    "kept": "bool",
    "filter_reason": "string",
    "is_classification": "bool",
    "judge_score": "float64",
    "batch": "int64",
}
INSTANCE_COLUMNS = {
    "id": "string",
    "instruction_id": "string",
    "instruction": "string",
    "input": "string",
    "output": "string",
    "is_classification": "bool",
}
CANDIDATE_COLUMNS = {
    "instruction_id": "string",
    "instruction": "string",
    "input": "string",
    "output": "string",
    "kept": "bool",
    "filter_reason": "string",
    "judge_score": "float64",
}
SAMPLE_COLUMNS = {
    "step": "int64",
    "instruction": "string",
    "completion": "string",
    "input": "string",
    "output": "string",
    "combined": "float64",
}


@dataclass
class Part:
    """One config of the exported dataset: its splits' rows and what the card says about it."""

    name: str
    description: str
    splits: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # The known columns' types: they do not depend on the rows (an empty split has them too).
    base_types: dict[str, str] = field(default_factory=dict)
    # The type of another column that holds no value in any row.
    fallback_type: str = "string"

    def rows(self) -> int:
        return sum(len(rows) for rows in self.splits.values())


@dataclass
class Run:
    """What the export reads from a run directory."""

    path: Path
    status: dict[str, dict[str, Any]]
    config: dict[str, Any]
    command: str | None
    versions: dict[str, str]

    def done(self, stage: str) -> bool:
        return self.status.get(stage, {}).get("state") == "done"

    def summary(self, stage: str) -> dict[str, Any]:
        return self.status.get(stage, {}).get("summary") or {}

    def section(self, name: str) -> dict[str, Any]:
        return self.config.get(name) or {}


# ---------------------------------------------------------------------------------------------
# Reading the run directory.


def read_run(path: Path) -> Run:
    """The run's status, resolved config and versions; a folder that is no run is one line."""
    if not path.is_dir():
        raise UserError(f"{path} is not a directory: give the run.output_dir of a refineaf run")
    status = read_json(
        path / "status.json",
        "run the command in the first line of its config.yaml again, which rebuilds it from the "
        "stage folders and resumes each stage from its outputs (nothing is deleted), then export",
    )
    if not isinstance(status, dict):
        raise UserError(
            f"{path} is not a refineaf run directory (no status.json): give the run.output_dir "
            "of a `refineaf train` run"
        )
    config_text = (path / "config.yaml").read_text() if (path / "config.yaml").is_file() else ""
    first_line = config_text.splitlines()[0] if config_text else ""
    command = first_line[1:].strip() if first_line.startswith("#") else None
    try:
        config = yaml.safe_load(config_text) or {}
    except yaml.YAMLError as error:
        raise UserError(f"{path / 'config.yaml'} is not valid YAML: {one_line(error)}") from error
    versions = read_json(path / "versions.json") or {}
    return Run(path, status, config, command, versions)


def _records(path: Path) -> list[dict[str, Any]]:
    return read_records(path, "the stage that wrote it finished: re-run it to write it again")


def instruction_rows(run: Run) -> list[dict[str, Any]]:
    """Every stage-1 candidate in generation order: kept ones have an id, dropped ones a reason."""
    from refine_af.stages import instructions

    rows = []
    for batch in _records(run.path / instructions.STAGE / "batches.jsonl"):
        for candidate in batch["candidates"]:
            rows.append(
                {
                    "id": candidate.get("id"),
                    "instruction": candidate["instruction"],
                    "kept": candidate["reason"] is None,
                    "filter_reason": candidate["reason"],
                    "is_classification": candidate.get("is_classification"),
                    "judge_score": candidate.get("judge"),
                    "batch": batch["batch"],
                }
            )
    return rows


def candidate_rows(run: Run, variant: str) -> list[dict[str, Any]]:
    """Every stage-3 candidate of a generated variant, with its filter decision."""
    from refine_af.stages import instances

    folder = run.path / instances.STAGE_DIR / variant
    tasks = [task for batch in _records(folder / "batches.jsonl") for task in batch["tasks"]]
    # A lowered generate_instances.max_instructions leaves later tasks in the log; the stage
    # counts only the first `processed` ones (the log covers the instruction list in order).
    processed = run.summary(instances.stage_name(variant)).get("instructions", {}).get("processed")
    if isinstance(processed, int):
        tasks = tasks[:processed]
    texts = {
        record["id"]: record["instruction"]
        for record in instances.load_instructions(run.path / instances.INSTRUCTIONS_FILE)
    }
    rows = []
    for task in tasks:
        for candidate in task["candidates"]:
            rows.append(
                {
                    "instruction_id": task["id"],
                    "instruction": texts.get(task["id"]),
                    "input": candidate["input"],
                    "output": candidate["output"],
                    "kept": candidate["reason"] is None,
                    "filter_reason": candidate["reason"],
                    "judge_score": candidate.get("judge"),
                }
            )
    return rows


def collect_parts(run: Run) -> tuple[list[Part], list[str]]:
    """The configs this run has data for, and a line for each part it lacks."""
    from refine_af.stages import instances, instructions, rl

    parts, missing = [], []

    def absent(what: str, stage: str) -> None:
        state = run.status.get(stage, {}).get("state")
        reason = "not run in this run directory" if state is None else f"stage state: {state}"
        missing.append(f"{what}: {reason}")

    if run.done(instructions.STAGE):
        parts.append(
            Part(
                "instructions",
                "every stage-1 candidate instruction with the filter decision",
                {TRAIN: instruction_rows(run)},
                INSTRUCTION_COLUMNS,
            )
        )
    else:
        absent("instructions (stage 1)", instructions.STAGE)

    kept = Part(
        "instances",
        "the kept instances of each variant (what its adapter was fine-tuned on)",
        base_types=INSTANCE_COLUMNS,
    )
    candidates = Part(
        "instance_candidates",
        "every stage-3 candidate instance of a generated variant with the filter decision",
        base_types=CANDIDATE_COLUMNS,
    )
    for variant in instances.VARIANTS:
        stage = instances.stage_name(variant)
        if not run.done(stage):
            absent(f"instances ({variant})", stage)
            continue
        folder = run.path / instances.STAGE_DIR / variant
        kept.splits[variant] = _records(folder / "instances.jsonl")
        if (folder / "batches.jsonl").is_file():  # generated, not the seed tasks' own
            candidates.splits[variant] = candidate_rows(run, variant)
    parts += [part for part in (kept, candidates) if part.splits]

    if run.done(rl.STAGE):
        parts.append(
            Part(
                "rl_samples",
                "every completion the policy wrote during stage 2, with each reward and the "
                "combined reward",
                {TRAIN: _records(run.path / rl.STAGE / "samples.jsonl")},
                SAMPLE_COLUMNS,
                fallback_type="float64",  # the other columns are the rewards
            )
        )
    else:
        absent("RL samples (stage 2)", rl.STAGE)
    if not parts:
        raise UserError(
            f"{run.path} holds no finished stage to export: run `refineaf train` (or a stage "
            "command) with this run.output_dir first"
        )
    return parts, missing


# ---------------------------------------------------------------------------------------------
# Parquet files.


def tables(part: Part) -> dict[str, Any]:
    """One pyarrow table per split, all with the same columns and types (the loader needs one
    schema per config). A column missing from a row, or from a split, is null there."""
    import pyarrow as pa

    columns = list(part.base_types)
    for rows in part.splits.values():
        for row in rows:
            columns += [name for name in row if name not in columns]
    types = {}
    for name in columns:
        if name in part.base_types:
            types[name] = pa.type_for_alias(part.base_types[name])
            continue
        values = [row.get(name) for rows in part.splits.values() for row in rows]
        inferred = pa.array(values).type
        types[name] = pa.type_for_alias(part.fallback_type) if inferred == pa.null() else inferred
    schema = pa.schema([(name, types[name]) for name in columns])
    return {
        split: pa.Table.from_pylist([{c: row.get(c) for c in columns} for row in rows], schema)
        for split, rows in part.splits.items()
    }


def data_file(part: Part, split: str) -> str:
    return f"{part.name}/{split}.parquet"


def write_parquet(parts: list[Part], folder: Path) -> None:
    import pyarrow.parquet as pq

    for part in parts:
        for split, table in tables(part).items():
            target = folder / data_file(part, split)
            target.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, target)


# ---------------------------------------------------------------------------------------------
# The dataset card.


def size_category(rows: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K")):
        if rows < limit:
            return label
    return "100K<n<1M" if rows < 1_000_000 else "1M<n<10M"


def seeds_licence(run: Run) -> str:
    """Which seed tasks the run used and under what licence, as far as the files tell."""
    from refine_af.seeds import SEED_TASKS_COMMIT, SEED_TASKS_ENV, SEED_TASKS_SHA256

    configured = run.section("generate_instructions").get("seed_tasks")
    chosen = configured or os.environ.get(SEED_TASKS_ENV)
    pinned = (
        "the 175 Self-Instruct seed tasks (`data/seed_tasks.jsonl` of yizhongw/self-instruct at "
        f"{SEED_TASKS_COMMIT[:12]}), licensed Apache-2.0"
    )
    if not chosen:
        return f"Seed tasks: {pinned} (downloaded and checked against their SHA-256)."
    path = Path(chosen).expanduser()
    if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == SEED_TASKS_SHA256:
        return f"Seed tasks: {pinned}; the run's file `{path}` is that file unchanged."
    return (
        f"Seed tasks: the file `{chosen}`, which is not the pinned Self-Instruct seed file (those "
        "are Apache-2.0): check its own licence before publishing this dataset."
    )


def _model_name(model: str | None) -> str:
    from refine_af.models import DEFAULT_HUB_ID, DEFAULT_MODEL_ALIAS

    if model in (None, DEFAULT_MODEL_ALIAS):
        return f"{DEFAULT_HUB_ID} (the embedded default)"
    return str(model)


def _model_licence(model: str | None) -> str:
    from refine_af.models import DEFAULT_MODEL_ALIAS

    if model in (None, DEFAULT_MODEL_ALIAS):
        return "The generating model, SmolLM2-135M-Instruct, is Apache-2.0 as well."
    return f"The generated text also comes from `{model}`: check that model's licence too."


def count_rows(summary: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Every number in a stage summary, nested ones named with dots (``dropped.too_similar``)."""
    rows = []
    for name, value in summary.items():
        if isinstance(value, dict):
            rows += count_rows(value, f"{prefix}{name}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            rows.append((f"{prefix}{name}", value))
    return rows


def _counts_table(summary: dict[str, Any]) -> list[str]:
    lines = ["| count | value |", "|---|---:|"]
    lines += [f"| {name} | {value} |" for name, value in count_rows(summary)]
    return [*lines, ""]


def _generation_lines(run: Run, parts: list[Part]) -> list[str]:
    from refine_af.stages import instances, instructions, rl

    model = _model_name(run.section("run").get("model"))
    lines = [f"- Base model: `{model}`; seed {run.section('run').get('seed')}."]
    if run.done(instructions.STAGE):
        lines.append("- Instructions: written by the untuned base model (Self-Instruct, stage 1).")
    if run.done(rl.STAGE):
        summary = run.summary(rl.STAGE)
        trainer = summary.get("trainer", run.section("rl").get("trainer"))
        lines.append(
            f"- RL samples: written by the policy (base model + LoRA adapter) while {trainer} "
            f"trained it (steps: {summary.get('steps')}); final adapter "
            f"`{summary.get('adapter')}`."
        )
    writers = {
        "refine_af": "written by the base model with the stage-2 RL adapter merged in",
        "baseline": "written by the untuned base model (the Self-Instruct baseline)",
    }
    for part in parts:
        if part.name != "instances":
            continue
        for variant in part.splits:
            summary = run.summary(instances.stage_name(variant))
            writer = writers.get(variant, "the seed tasks' own human-written instances (a control)")
            adapter = summary.get("adapter")
            where = f" (adapter `{adapter}`)" if adapter else ""
            lines.append(f"- Instances `{variant}`: {writer}{where}.")
    return [*lines, ""]


def _reward_lines(run: Run) -> list[str]:
    from refine_af.stages import rl

    settings = run.section("rl")
    weights = settings.get("reward_weights") or {}
    if not run.done(rl.STAGE):
        return ["No RL in this run: the data carries no rewards.", ""]
    if not weights:
        return ["The run's config records no reward weights.", ""]
    lines = [
        "From the run's resolved config (`rl` section). `combined` = intercept + Σ weight × "
        "reward; a completion that does not parse as `Input: ... Output: ...` has no reward "
        "values and gets minus the format penalty instead (the `format` column: -1).",
        "",
        "| reward | weight |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {weight} |" for name, weight in weights.items()]
    lines += [
        f"| intercept | {settings.get('reward_intercept')} |",
        f"| format penalty | {settings.get('format_penalty')} |",
        "",
        f"Reward model `{settings.get('reward_model')}`; evaluator `{settings.get('evaluator')}` "
        f"({settings.get('evaluator_kind')}).",
        "",
    ]
    return lines


def render_card(
    run: Run, parts: list[Part], missing: list[str], export_command: str, source: str
) -> str:
    """README.md: YAML metadata (licence, configs and their files), then the card's body.

    ``source`` is what the card's loading example passes to ``load_dataset`` (folder or repo).
    """
    from refine_af.stages import instances, instructions, rl

    total = sum(part.rows() for part in parts)
    default = "instances" if any(p.name == "instances" for p in parts) else parts[0].name
    configs = []
    for part in parts:
        entry: dict[str, Any] = {"config_name": part.name}
        if part.name == default:
            entry["default"] = True
        entry["data_files"] = [
            {"split": split, "path": data_file(part, split)} for split in part.splits
        ]
        configs.append(entry)
    metadata = {
        "license": "apache-2.0",
        "language": ["en"],
        "task_categories": ["text-generation"],
        "tags": ["synthetic", "self-instruct", "refine-af", "rlaif"],
        "size_categories": [size_category(total)],
        "pretty_name": f"REFINE-AF generated data ({run.path.name})",
        "configs": configs,
    }
    out_lines = [
        "---",
        yaml.safe_dump(metadata, sort_keys=False).rstrip(),
        "---",
        "",
        f"# REFINE-AF generated data: run `{run.path.name}`",
        "",
        "Instructions and instances a small language model wrote for itself with REFINE-AF "
        "(Self-Instruct instruction generation, then RL from automated feedback, then instance "
        "generation), exported from the run directory by `refineaf export`.",
        "",
        "| config | split | rows | what |",
        "|---|---|---:|---|",
    ]
    for part in parts:
        for split, rows in part.splits.items():
            out_lines.append(f"| {part.name} | {split} | {len(rows)} | {part.description} |")
    out_lines += ["", "Not in this export:" if missing else "Every part of the pipeline is here."]
    out_lines += [f"- {line}" for line in missing]
    out_lines += [
        "",
        "## Load",
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        f'data = load_dataset("{source}")  # the {default} config',
    ]
    for part in parts:
        split = next(iter(part.splits))
        out_lines.append(f'{part.name} = load_dataset("{source}", "{part.name}", split="{split}")')
    out_lines += [
        "```",
        "",
        "`filter_reason` is empty for a kept row, else the filter that dropped it; `judge_score` "
        "is the judge model's P(Yes) where a judge was on.",
        "",
        "## How the data was made",
        "",
        *_generation_lines(run, parts),
        "## Reward weights",
        "",
        *_reward_lines(run),
        "## Counts per filter",
        "",
        "From the stage summaries in the run's `status.json` (`dropped.<filter>`: candidates that "
        "filter removed).",
        "",
    ]
    stages = [(instructions.STAGE, "Stage 1: instructions"), (rl.STAGE, "Stage 2: RL")]
    stages += [(instances.stage_name(v), f"Stage 3: instances ({v})") for v in instances.VARIANTS]
    for stage, title in stages:
        if run.done(stage):
            out_lines += [f"### {title}", "", *_counts_table(run.summary(stage))]
    out_lines += [
        "## Licence",
        "",
        seeds_licence(run),
        _model_licence(run.section("run").get("model")),
        "",
        "## Commands",
        "",
        "```bash",
        export_command,
        "```",
        "",
    ]
    if run.command:
        out_lines += [
            "The latest command recorded in the run directory (its resolved config is "
            f"`{RUN_CONFIG}` here):",
            "",
            "```bash",
            run.command,
            "```",
            "",
        ]
    else:
        out_lines += ["The run directory records no command (no config.yaml).", ""]
    versions = ", ".join(f"{name} {version}" for name, version in run.versions.items())
    if versions:
        out_lines += [f"Versions: {versions}.", ""]
    return "\n".join(out_lines)


# ---------------------------------------------------------------------------------------------
# The command.


def check_output(out: Path, run_dir: Path, overwrite: bool, known: set[str]) -> None:
    """OUT must be new or empty, or (with ``overwrite``) hold only an earlier export."""
    resolved, run_resolved = out.resolve(), run_dir.resolve()
    if resolved == run_resolved or resolved in run_resolved.parents:
        raise UserError(f"{out} holds the run directory {run_dir}: give another output folder")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file: give a folder for the dataset")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise UserError(f"{out} exists and is not empty: pass --overwrite or give a new folder")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in known)
    if foreign or not (out / CARD).is_file():
        raise UserError(
            f"{out} is not an earlier export ({', '.join(foreign) or 'no README.md'}): "
            "--overwrite replaces only a folder refineaf export wrote; give another folder"
        )


def push_to_hub(folder: Path, repo: str, private: bool) -> str:
    """Upload the folder to the Hub dataset repository ``repo``; return its URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HTTPError

    api = HfApi()
    try:
        url = api.create_repo(repo, repo_type="dataset", private=private, exist_ok=True)
        api.upload_folder(
            folder_path=str(folder),
            repo_id=repo,
            repo_type="dataset",
            commit_message="refineaf export",
        )
    except (HTTPError, OSError, ValueError) as error:
        raise UserError(
            f"cannot push to the Hub dataset {repo} ({one_line(error)}): check the network, "
            "your token (hf auth login or HF_TOKEN) and the repository name; the dataset is "
            f"saved in {folder}"
        ) from error
    return str(url)


def run(
    run_dir: Path,
    out: Path,
    *,
    overwrite: bool = False,
    repo: str | None = None,
    private: bool = False,
) -> dict[str, Any]:
    """Write RUN_DIR's generated data to OUT (and push it); return what was written."""
    if private and repo is None:
        raise UserError("--private applies to --push-to-hub REPO: give the repository too")
    run = read_run(run_dir)
    parts, missing = collect_parts(run)
    check_output(out, run_dir, overwrite, {CARD, RUN_CONFIG, *CONFIGS})
    words = ["refineaf", "export", str(run_dir), str(out)]
    words += ["--overwrite"] if overwrite else []
    words += ["--push-to-hub", repo] if repo else []
    words += ["--private"] if private else []
    export_command = shlex.join(words)
    with atomic_directory(out) as partial:
        write_parquet(parts, partial)
        if (run_dir / "config.yaml").is_file():
            shutil.copyfile(run_dir / "config.yaml", partial / RUN_CONFIG)
        (partial / CARD).write_text(
            render_card(run, parts, missing, export_command, repo or str(out)), encoding="utf-8"
        )
    result: dict[str, Any] = {
        "out": str(out),
        "rows": {part.name: {s: len(r) for s, r in part.splits.items()} for part in parts},
        "missing": missing,
    }
    if repo is not None:
        result["url"] = push_to_hub(out, repo, private)
    return result
