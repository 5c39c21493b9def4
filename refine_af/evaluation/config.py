"""The eval config (one YAML per evaluation) and where eval configs are found.

``refineaf eval -c NAME_OR_PATH`` takes a YAML path, or the name of an eval config shipped with
the package (``default``, ``paper_llama2_7b``, ``paper_llama2_13b``, ``paper_mistral_7b``,
``regression``). They live in the repository's ``eval_configs/`` and are installed as
``refine_af.eval_configs``, so a name works from any directory, after a plain ``pip install``
too.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from refine_af.config import ConfigError, apply_overrides, build_dataclass, help_field
from refine_af.evaluation.data import TASK_NAMES, DataSettings

# vLLM accepts only these LoRA ranks as max_lora_rank (vllm.config.lora.MaxLoRARanks).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
_TRAINING_SECTIONS = {"run", "generate_instructions", "rl", "generate_instances", "sft"}


@dataclass
class RowConfig:
    """One row of the report: the base model, optionally with a PEFT adapter per run (seed)."""

    name: str = help_field("vanilla", "Row label in the report (letters, digits, - and _).")
    adapter: str | list[str] | None = field(
        default=None,
        metadata={
            "help": "PEFT adapter directory (adapter_config.json inside), or a list of them, one "
            "per training run (e.g. one per run.seed): the row's per-task score is then the mean "
            "over its runs. Empty: the base model as is."
        },
    )
    apply_chat_template: bool | None = field(
        default=None,
        metadata={
            "help": "Wrap this row's prompts in the model's chat template; empty: the eval "
            "config's apply_chat_template. A chat model's untouched row is fair only with it "
            "(vanilla_chat), and adapters trained with sft.text_format=chat are read the same way."
        },
    )

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "-_" for c in self.name):
            raise ConfigError(f"row name {self.name!r} must use only letters, digits, - and _")
        if isinstance(self.adapter, list):
            if not self.adapter or not all(self.adapter):
                raise ConfigError(
                    f"row '{self.name}': adapter is an empty list or has an empty entry: give "
                    "one adapter directory per run, or leave adapter out for the base model"
                )
            if len(set(self.adapter)) != len(self.adapter):
                raise ConfigError(
                    f"row '{self.name}': the same adapter is listed twice; each run (seed) "
                    "needs its own adapter directory"
                )

    def adapters(self) -> list[str | None]:
        """One entry per run: the adapter directory, or None for the base model."""
        if not self.adapter:
            return [None]
        return [self.adapter] if isinstance(self.adapter, str) else list(self.adapter)

    def run_labels(self) -> list[str]:
        """Sub-folder of each run: '' (the row folder itself) for a one-run row, run1.. else."""
        count = len(self.adapters())
        return [""] if count == 1 else [f"run{i}" for i in range(1, count + 1)]


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
        metadata={"help": "SuperNI test task names; empty: all 119, in official order."},
    )
    prompt: Literal["definition", "pos2"] = help_field(
        "definition", "'definition' (zero-shot) or 'pos2' (definition + 2 positive examples)."
    )
    limit: int | None = help_field(None, "Instances per task (first N); empty: all (100).")
    max_gen_toks: int | None = help_field(
        None, "New-token cap; empty: the task's 128 (lower only for quick checks)."
    )
    data: str | None = help_field(
        None,
        "Local SuperNI data (task JSON dir or JSONL[.gz]); empty: REFINEAF_SUPERNI_DATA, else "
        "the official task files are downloaded once.",
    )
    references: str | None = help_field(
        None,
        "Official reference file; empty: REFINEAF_SUPERNI_REFERENCES, else the file beside the "
        "data, else downloaded.",
    )
    backend: Literal["refineaf-hf", "hf", "vllm"] = help_field(
        "refineaf-hf",
        "lm-eval model: 'refineaf-hf' (fast greedy HF path), lm-eval's plain 'hf', or lm-eval's "
        "'vllm' (CUDA GPU and `pip install vllm` needed).",
    )
    batch_size: int = help_field(
        64, "Rows per batch (refineaf-hf: the maximum; vllm ignores it and schedules itself)."
    )
    max_input_tokens: int = help_field(
        1024,
        "Longer prompts are cut (0 = never). refineaf-hf cuts the end of the task input and "
        "keeps the 'Output:' cue (Tk-Instruct); vllm cuts the middle of the prompt (lm-eval's "
        "truncation_side=middle, through max_model_len = this + max_gen_toks); hf ignores it.",
    )
    token_budget: int = help_field(16384, "refineaf-hf: padded prompt tokens per batch.")
    threads: int | None = help_field(None, "torch CPU threads; empty: torch's default.")
    prefix_cache: bool = help_field(
        True,
        "refineaf-hf: compute the prompt prefix a task's instances share (its definition) once "
        "per batch and reuse its keys and values; off: every prompt from scratch (same answers, "
        "slower).",
    )
    device: str = help_field("auto", "'auto', 'cpu', 'cuda', ... (vllm: always the GPU).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = help_field(
        "auto", "'auto': bfloat16 on GPU (float16 where bf16 is unsupported), float32 on CPU."
    )
    trust_remote_code: bool = help_field(False, "Run model code from the Hub (off).")
    apply_chat_template: bool = help_field(
        False, "Wrap prompts in the model's chat template (off: the plain SuperNI prompt)."
    )
    tasks_per_chunk: int = help_field(
        1,
        "Tasks per lm-eval call. Each finished chunk is appended to the run's chunks.jsonl, so "
        "a killed eval resumes there. Raise it on GPUs for larger batches (vllm with "
        "data_parallel_size > 1 restarts its replicas on every call: use e.g. 30).",
    )
    tensor_parallel_size: int = help_field(1, "vllm: GPUs per model replica.")
    data_parallel_size: int = help_field(
        1,
        "vllm: model replicas (lm-eval runs them as Ray actors; needs ray). For hf/refineaf-hf "
        "use `accelerate launch --multi_gpu --num_processes N` instead.",
    )
    gpu_memory_utilization: float = help_field(
        0.9, "vllm: share of each GPU's memory vLLM may take (weights + KV cache)."
    )
    output_dir: str = help_field("runs/eval/default", "Where samples and the report go.")
    compare: list[list[str]] = field(
        default_factory=list,
        metadata={
            "help": "Row pairs [a, b] to compare (a vs b); empty: every row vs each row above it "
            "(rows vanilla, baseline, refine_af give the paper's refine_af vs baseline too)."
        },
    )
    bootstrap_samples: int = help_field(1000, "Bootstrap resamples for each interval.")
    seed: int = help_field(1234, "Seed of the bootstraps and of vLLM (decoding is greedy).")

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
        if self.max_gen_toks is not None and self.max_gen_toks < 1:
            raise ConfigError(f"max_gen_toks must be >= 1 or empty, got {self.max_gen_toks}")
        for name in ("batch_size", "tasks_per_chunk", "tensor_parallel_size", "data_parallel_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_input_tokens < 0:
            raise ConfigError(
                f"max_input_tokens must be >= 0 (0 = never cut), got {self.max_input_tokens}"
            )
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError(
                f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}"
            )
        if self.backend == "vllm":
            if self.device not in ("auto", "cuda"):
                raise ConfigError(
                    f"backend vllm runs on the GPU only, but device is '{self.device}': set "
                    "device: auto (or cuda), or use backend: refineaf-hf on CPU"
                )
        elif self.tensor_parallel_size > 1 or self.data_parallel_size > 1:
            raise ConfigError(
                f"tensor_parallel_size/data_parallel_size apply to backend vllm only: with "
                f"{self.backend}, run `accelerate launch --multi_gpu --num_processes N -m "
                "refine_af.evaluation eval -c CONFIG` for data parallelism, or set backend: vllm"
            )
        unknown = [t for t in self.tasks if t not in TASK_NAMES]
        if unknown:
            raise ConfigError(
                f"not SuperNI test tasks: {', '.join(unknown)} (see refine_af.evaluation."
                "superni_tasks.TEST_TASKS for the 119 names)"
            )
        if len(set(self.tasks)) != len(self.tasks):
            raise ConfigError("tasks lists a task twice: list each SuperNI task once")

    def task_names(self) -> list[str]:
        """The SuperNI tasks to run, in official order (whatever order the config lists)."""
        wanted = set(self.tasks) if self.tasks else set(TASK_NAMES)
        return [task for task in TASK_NAMES if task in wanted]

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


# ---------------------------------------------------------------------------------------------
# Finding eval configs by name or path.

_MARKER = "default.yaml"


def eval_configs_dir() -> Path:
    """The eval configs folder: installed package data, else the source checkout's."""
    candidates = []
    try:
        spec = importlib.util.find_spec("refine_af.eval_configs")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) for p in spec.submodule_search_locations]
    # A source checkout (or an editable install made before the configs were packaged).
    candidates.append(Path(__file__).resolve().parents[2] / "eval_configs")
    for folder in candidates:
        if (folder / _MARKER).is_file():
            return folder
    raise ConfigError(
        "the packaged eval configs are missing from this installation: reinstall refine_af "
        "(pip install .) or give an eval config file path"
    )


def eval_config_names() -> list[str]:
    """Names accepted by ``refineaf eval -c NAME``."""
    return sorted(p.stem for p in eval_configs_dir().glob("*.yaml"))


def find_eval_config(name_or_path: str) -> Path:
    """An existing YAML path, a packaged eval config name, or ``eval_configs/NAME.yaml``.

    The last form is how the repository's docs and CI name the packaged configs; outside a
    checkout it resolves to the packaged copy instead of failing on a relative path.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    names = eval_config_names()
    candidate = name_or_path
    if path.suffix in (".yaml", ".yml") and path.parent.name == "eval_configs":
        candidate = path.stem
    if candidate in names:
        return eval_configs_dir() / f"{candidate}.yaml"
    raise ConfigError(
        f"eval config '{name_or_path}' not found: give a YAML file path or one of: "
        f"{', '.join(names)}"
    )


def read_eval_config(name_or_path: str) -> dict[str, Any]:
    """The raw YAML mapping of an eval config; a training config is named as such."""
    from refine_af.config import read_config_file

    path = find_eval_config(name_or_path)
    raw = read_config_file(str(path))
    if _TRAINING_SECTIONS & set(raw):
        section = sorted(_TRAINING_SECTIONS & set(raw))[0]
        raise ConfigError(
            f"{name_or_path} is a training config (it has a '{section}' section), not an eval "
            f"config: give one of {', '.join(eval_config_names())} or an eval YAML"
        )
    return raw


def load_eval_config(name_or_path: str, overrides: list[str] | None = None) -> EvalConfig:
    """Read an eval config and apply ``key=value`` overrides strictly."""
    raw = apply_overrides(read_eval_config(name_or_path), list(overrides or []))
    return build_dataclass(EvalConfig, raw)
