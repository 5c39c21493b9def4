"""Stage 2: reinforcement learning from automated feedback (REFINE-AF, SPEC section 1).

For every stage-1 instruction the policy (the base model plus a LoRA adapter) writes one instance
(:mod:`refine_af.instance_format`); :mod:`refine_af.rewards` scores it with the reward model and the
UniEval-style evaluator; TRL's ``GRPOTrainer`` (default) or ``RLOOTrainer`` updates the adapter.
The paper used PPO, which TRL no longer has; GRPO is PPO's clipped objective with group-relative
advantages instead of a value model. With a PEFT model and ``beta > 0`` TRL takes the reference
log-probabilities from the same model with the adapter switched off, so no second copy of the
weights is loaded.

Outputs in ``RUN/rl/``::

    checkpoints/checkpoint-N/   trainer checkpoints (adapter, optimizer, RNG), for --resume
    adapter/                    the final PEFT adapter (adapter_config.json + safetensors)
    metrics.jsonl               one line per logged step: reward components, combined reward,
                                format-penalty rate, KL, loss
    samples.jsonl               every scored completion: instance, components, combined reward
    rewards.png                 each reward component against the step
    summary.json                what the stage reports

GPU scale (paper.yaml): ``rl.bf16=true``, ``rl.use_vllm=true`` (colocated vLLM generation, when
installed) and ``accelerate launch --num_processes N $(which refineaf) rl -c paper``; each process
loads its own scorers on its own GPU (``rl.scorer_device=auto``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from refine_af.config import ConfigError, fingerprint, help_field, to_dict
from refine_af.errors import UserError
from refine_af.models import lora_config
from refine_af.rewards import COMPONENTS, FORMAT_REWARD, PAPER_INTERCEPT, PAPER_WEIGHTS
from refine_af.run_dir import RunDirectory, write_json_atomic

STAGE = "rl"
INSTRUCTIONS_FILE = Path("instructions") / "instructions.jsonl"
# Settings that may change between a run and its --resume without invalidating checkpoints.
RESUMABLE_SETTINGS = (
    "num_steps",
    "save_steps",
    "save_total_limit",
    "logging_steps",
    "scorer_device",
    "scorer_batch_size",
)
PLOTTED = ("reward_combined", *COMPONENTS, "format_penalty_rate", "kl")


@dataclass
class RLConfig:
    """Stage 2 settings. The defaults are the small CPU run; paper.yaml has the paper's scorers."""

    trainer: Literal["grpo", "rloo"] = help_field(
        "grpo", "TRL trainer: 'grpo' (PPO-style clipped objective, group advantages) or 'rloo'."
    )
    num_steps: int = help_field(30, "Optimizer steps (raise it and --resume to train longer).")
    learning_rate: float = help_field(1e-4, "AdamW learning rate of the LoRA weights.")
    lr_scheduler_type: str = help_field(
        "constant", "Learning-rate schedule ('constant', 'linear', 'cosine', ...)."
    )
    per_device_batch_size: int = help_field(
        16, "Completions per device per step; a multiple of num_generations (prompts × gens)."
    )
    gradient_accumulation_steps: int = help_field(1, "Micro-batches per optimizer step.")
    num_generations: int = help_field(4, "Completions sampled per prompt (the group), >= 2.")
    max_prompt_length: int = help_field(
        384, "Prompt token limit: instructions whose prompt is longer are skipped."
    )
    max_completion_length: int = help_field(64, "Token limit of one completion (the instance).")
    temperature: float = help_field(1.0, "Sampling temperature of the policy.")
    top_p: float = help_field(1.0, "Nucleus sampling of the policy.")
    beta: float = help_field(
        0.04, "KL coefficient against the reference (the base model: LoRA adapter switched off)."
    )
    lora_r: int = help_field(16, "LoRA rank.")
    lora_alpha: int = help_field(32, "LoRA scaling (alpha).")
    lora_dropout: float = help_field(0.05, "LoRA dropout.")
    lora_target_modules: list[str] = help_field(  # noqa: RUF009 - help_field is field()
        ["all-linear"], "Modules LoRA adapts: names like q_proj, or ['all-linear']."
    )
    reward_weights: dict[str, float] = help_field(  # noqa: RUF009 - help_field is field()
        dict(PAPER_WEIGHTS),
        "Weight of each reward component (reward_model, understandability, naturalness, "
        "coherence); the paper's: 0.0078, -0.4421, 0.3212, 0.1520. Weight 0 skips a component.",
    )
    reward_intercept: float = help_field(
        PAPER_INTERCEPT, "Constant added to the combined reward (paper: -0.0274); logged only."
    )
    format_penalty: float = help_field(
        1.0, "Reward subtracted for a completion that does not parse as 'Input: ... Output: ...'."
    )
    reward_model: str = help_field(
        "causal:default",
        "Reward model: a sequence-classification model (paper: "
        "OpenAssistant/oasst-rm-2.1-pythia-1.4b-epoch-2.5), or 'causal:<model>' for a causal LM's "
        "Yes/No log-odds of 'is this a good response?' (offline stand-in).",
    )
    evaluator: str = help_field(
        "default", "UniEval-style evaluator model (paper: MingZhong/unieval-dialog)."
    )
    evaluator_kind: Literal["causal", "unieval"] = help_field(
        "causal", "'unieval': T5 Boolean QA (UniEval); 'causal': a causal LM's Yes/No probability."
    )
    scorer_device: str = help_field(
        "auto", "Device of reward model and evaluator; 'auto' is the policy's device."
    )
    scorer_dtype: Literal["auto", "float32", "bfloat16", "float16"] = help_field(
        "auto", "Scorers' dtype; 'auto' is bfloat16 on GPU and float32 on CPU."
    )
    scorer_batch_size: int = help_field(16, "Texts per scorer forward pass.")
    scorer_max_length: int = help_field(512, "Token limit of a scorer's input.")
    use_chat_template: bool = help_field(
        True, "Wrap the policy's and the causal evaluator's prompts in the chat template."
    )
    max_instructions: int = help_field(0, "Use at most this many instructions (0: all).")
    save_steps: int = help_field(10, "Write a checkpoint every this many steps.")
    save_total_limit: int = help_field(2, "Keep this many checkpoints (older ones are deleted).")
    logging_steps: int = help_field(1, "Log metrics every this many steps.")
    gradient_checkpointing: bool = help_field(
        False, "Recompute activations to save memory (GPU-scale runs)."
    )
    use_vllm: bool = help_field(False, "Generate with vLLM (colocated; needs vllm and a GPU).")
    fast_generation: bool = help_field(
        True,
        "GRPO without vLLM: sample completions with refine_af's decode loop (preallocated KV "
        "cache, finished rows leave the batch) instead of model.generate; same distribution.",
    )
    bf16: bool = help_field(False, "bfloat16 mixed precision (GPU).")

    def __post_init__(self) -> None:
        for name in (
            "num_steps",
            "per_device_batch_size",
            "gradient_accumulation_steps",
            "max_prompt_length",
            "max_completion_length",
            "lora_r",
            "lora_alpha",
            "scorer_batch_size",
            "scorer_max_length",
            "save_steps",
            "save_total_limit",
            "logging_steps",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"rl.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_generations < 2:
            raise ConfigError(
                f"rl.num_generations must be >= 2 (group advantages compare completions of one "
                f"prompt), got {self.num_generations}"
            )
        if self.per_device_batch_size % self.num_generations:
            raise ConfigError(
                f"rl.per_device_batch_size ({self.per_device_batch_size}) must be a multiple of "
                f"rl.num_generations ({self.num_generations}): set it to prompts per step × "
                f"{self.num_generations}"
            )
        if self.learning_rate <= 0 or self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise ConfigError("rl needs learning_rate > 0, temperature > 0 and top_p in (0, 1]")
        if self.beta < 0 or not 0 <= self.lora_dropout < 1 or self.format_penalty < 0:
            raise ConfigError("rl needs beta >= 0, lora_dropout in [0, 1) and format_penalty >= 0")
        if self.max_instructions < 0:
            raise ConfigError("rl.max_instructions must be >= 0 (0 uses every instruction)")
        unknown = set(self.reward_weights) - set(COMPONENTS)
        if unknown:
            raise ConfigError(
                f"rl.reward_weights has unknown components {sorted(unknown)}: use "
                f"{', '.join(COMPONENTS)}"
            )
        if not any(self.reward_weights.get(name, 0.0) for name in COMPONENTS):
            raise ConfigError("rl.reward_weights are all 0: give at least one component a weight")
        if not self.lora_target_modules:
            raise ConfigError("rl.lora_target_modules is empty: use ['all-linear'] or names")
        if self.reward_model.startswith("causal:") and not self.reward_model[len("causal:") :]:
            raise ConfigError("rl.reward_model 'causal:' needs a model, e.g. causal:default")


# ---------------------------------------------------------------------------------------------
# Inputs.


def load_instructions(run_dir: RunDirectory, limit: int = 0) -> list[dict[str, Any]]:
    """Stage 1's instructions (``RUN/instructions/instructions.jsonl``)."""
    path = run_dir.path / INSTRUCTIONS_FILE
    if not path.is_file():
        raise UserError(
            f"{path} not found: run generate-instructions first (with the same run.output_dir)"
        )
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(f"{path} line {number} is not JSON ({error.msg})") from error
        if not isinstance(record, dict) or not str(record.get("instruction", "")).strip():
            raise UserError(f"{path} line {number} has no instruction")
        records.append(record)
    if not records:
        raise UserError(f"{path} is empty: run generate-instructions with num_instructions > 0")
    return records[:limit] if limit else records


def build_prompts(
    records: list[dict[str, Any]], tokenizer: Any, settings: RLConfig
) -> tuple[list[dict[str, str]], int]:
    """The training rows ``{prompt, instruction, id}``; also how many were too long."""
    from refine_af.instance_format import instance_prompt

    rows, skipped = [], 0
    for index, record in enumerate(records):
        instruction = " ".join(str(record["instruction"]).split())
        prompt = instance_prompt(tokenizer, instruction, settings.use_chat_template)
        if (
            len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
            > settings.max_prompt_length
        ):
            skipped += 1
            continue
        rows.append(
            {"prompt": prompt, "instruction": instruction, "id": str(record.get("id", index))}
        )
    if not rows:
        raise UserError(
            f"every instruction's prompt is longer than rl.max_prompt_length "
            f"({settings.max_prompt_length} tokens): raise it"
        )
    return rows, skipped


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def checkpoint_key(config: Any, instructions_digest: str) -> str:
    """What a checkpoint's meaning depends on: everything but the step count and logging."""
    settings = to_dict(config.rl)
    for name in RESUMABLE_SETTINGS:
        settings.pop(name, None)
    return fingerprint(settings, config.run.model, config.run.seed, instructions_digest)


# ---------------------------------------------------------------------------------------------
# Logs: metrics, samples, plot.


def metrics_record(step: int, logs: dict[str, Any]) -> dict[str, Any] | None:
    """The metrics line for one trainer log, or None for logs that are not training steps."""
    if "loss" not in logs and "reward" not in logs:
        return None  # e.g. the end-of-training summary (train_runtime, ...)
    record: dict[str, Any] = {"step": step}
    for name in (*COMPONENTS, FORMAT_REWARD):
        key = f"rewards/{name}/mean"
        if key in logs:
            record[name] = logs[key]
    renames = {
        "reward_combined": "reward_combined",
        "reward": "reward_weighted",  # TRL's Σ weight·reward (no intercept): what it optimizes
        "reward_std": "reward_std",
        "format_penalty_rate": "format_penalty_rate",
        "kl": "kl",
        "loss": "loss",
        "learning_rate": "learning_rate",
        "completions/mean_length": "completion_length",
        "entropy": "entropy",
    }
    for key, name in renames.items():
        if key in logs:
            record[name] = logs[key]
    return record


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            records.append(json.loads(line))  # a torn last line (kill mid-write) is skipped
    return records


def truncate_jsonl(path: Path, last_step: int) -> None:
    """Drop lines logged after ``last_step`` (they will be produced again after --resume)."""
    kept = [r for r in read_jsonl(path) if r.get("step", 0) <= last_step]
    partial = path.with_name(path.name + ".partial")
    partial.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
    os.replace(partial, path)


def append_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    with path.open("a", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def plot_rewards(metrics_path: Path, target: Path) -> Path | None:
    """One panel per logged reward component (and KL) against the step; None without data."""
    records = read_jsonl(metrics_path)
    names = [n for n in PLOTTED if any(r.get(n) is not None for r in records)]
    if not records or not names:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display here; only the PNG is wanted
    import matplotlib.pyplot as plt

    columns = min(3, len(names))
    rows = -(-len(names) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), squeeze=False)
    for axis, name in zip(axes.flat, names, strict=False):
        points = [(r["step"], r[name]) for r in records if r.get(name) is not None]
        axis.plot([p[0] for p in points], [p[1] for p in points], marker=".", linewidth=1)
        axis.set_title(name)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(names) :]:
        axis.axis("off")
    figure.suptitle("REFINE-AF stage 2: reward components per step")
    figure.tight_layout()
    figure.savefig(target, dpi=100)
    plt.close(figure)
    return target


def make_metrics_callback(path: Path) -> Any:
    """A TrainerCallback appending each training log to ``metrics.jsonl`` (main process only)."""
    from transformers import TrainerCallback

    class MetricsLog(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **_: Any) -> None:
            if not state.is_world_process_zero or not logs:
                return
            record = metrics_record(state.global_step, dict(logs))
            if record is not None:
                append_jsonl(path, [record])

    return MetricsLog()


def make_sample_sink(path: Path, is_main: bool) -> Any:
    """Write every scored completion (with its instance and rewards) to ``samples.jsonl``."""

    def sink(step: int, samples: list[Any]) -> None:
        if not is_main:
            return
        append_jsonl(
            path,
            [
                {
                    "step": step,
                    "instruction": s.instruction,
                    "completion": s.completion,
                    "input": s.instance.input if s.instance else None,
                    "output": s.instance.output if s.instance else None,
                    **s.components,
                    "format": s.format_reward,
                    "combined": s.combined,
                }
                for s in samples
            ],
        )

    return sink


# ---------------------------------------------------------------------------------------------
# Trainer.


def trainer_arguments(settings: RLConfig, output_dir: Path, seed: int, weights: list[float]) -> Any:
    """GRPOConfig / RLOOConfig from the stage settings; TRL's own checks become config errors."""
    from trl import GRPOConfig, RLOOConfig

    common: dict[str, Any] = {
        "output_dir": str(output_dir),
        "max_steps": settings.num_steps,
        "learning_rate": settings.learning_rate,
        "lr_scheduler_type": settings.lr_scheduler_type,
        "per_device_train_batch_size": settings.per_device_batch_size,
        "gradient_accumulation_steps": settings.gradient_accumulation_steps,
        "num_generations": settings.num_generations,
        "max_completion_length": settings.max_completion_length,
        "temperature": settings.temperature,
        "top_p": settings.top_p,
        "beta": settings.beta,
        "reward_weights": weights,
        "seed": seed,
        "data_seed": seed,
        "save_strategy": "steps",
        "save_steps": settings.save_steps,
        "save_total_limit": settings.save_total_limit,
        "logging_steps": settings.logging_steps,
        # transformers 5 renamed gradient_checkpointing; TRL's config still defaults it to True.
        "activation_checkpointing": settings.gradient_checkpointing,
        # TRL defaults bf16 to True; on CPU that would autocast every matmul to bfloat16.
        "bf16": settings.bf16,
        "use_vllm": settings.use_vllm,
        "report_to": "none",
        "disable_tqdm": False,
    }
    if settings.use_vllm:
        common["vllm_mode"] = "colocate"
    try:
        if settings.trainer == "rloo":
            return RLOOConfig(**common)
        return GRPOConfig(**common)
    except ValueError as error:
        raise ConfigError(f"rl: {str(error).splitlines()[0]}") from error


def make_rollout(settings: RLConfig, tokenizer: Any) -> Any:
    """A GRPO ``rollout_func``: one completion per prompt from the current policy.

    TRL hands it the prompts of this process, each already repeated ``num_generations`` times,
    and keeps everything else (rewards, advantages, the loss) as with its own generation. The
    prompts are tokenized as TRL tokenizes them, and the sampling is TRL's (temperature, top-p,
    its top-k, no stop strings, EOS kept at the end of a completion). No sampling log-probs are
    returned: TRL uses them only for vLLM's importance-sampling correction.
    """
    from refine_af.generation import SamplingParams, TransformersBackend

    def rollout(prompts: list[str], trainer: Any) -> dict[str, Any]:
        policy = trainer.accelerator.unwrap_model(trainer.model)
        backend = TransformersBackend(policy, tokenizer, batch_size=max(1, len(prompts)))
        params = SamplingParams(
            max_new_tokens=settings.max_completion_length,
            temperature=settings.temperature,
            top_p=settings.top_p,
            top_k=trainer.top_k or 0,
        )
        prompt_ids = tokenizer(text=list(prompts))["input_ids"]
        # Sampling runs on the LoRA weights merged into the base weights (as TRL does before it
        # hands weights to vLLM): one matrix product per layer instead of three, and no LoRA
        # dropout, which on CPU costs half as much as the model's own matrix products. The merge is
        # undone before the loss sees the model.
        merged = hasattr(policy, "merge_adapter")
        if merged:
            policy.merge_adapter()
        try:
            completion_ids = backend.generate_ids(prompt_ids, params)
        finally:
            if merged:
                policy.unmerge_adapter()
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None}

    return rollout


def build_trainer(
    settings: RLConfig,
    model: Any,
    tokenizer: Any,
    rows: list[dict[str, str]],
    rewards: Any,
    output_dir: Path,
    seed: int,
    callbacks: list[Any],
) -> Any:
    """A GRPOTrainer or RLOOTrainer with a LoRA adapter on ``model``."""
    from datasets import Dataset
    from trl import GRPOTrainer, RLOOTrainer

    args = trainer_arguments(settings, output_dir, seed, rewards.reward_weights())
    extra: dict[str, Any] = {}
    if settings.trainer == "grpo" and settings.fast_generation and not settings.use_vllm:
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is experimental
        extra["rollout_func"] = make_rollout(settings, tokenizer)
    trainer_class = RLOOTrainer if settings.trainer == "rloo" else GRPOTrainer
    return trainer_class(
        **extra,
        model=model,
        reward_funcs=rewards.reward_functions(),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=lora_config(
            settings.lora_r,
            settings.lora_alpha,
            settings.lora_dropout,
            settings.lora_target_modules,
        ),
        callbacks=callbacks,
    )


def last_checkpoint(folder: Path) -> Path | None:
    from transformers.trainer_utils import get_last_checkpoint

    if not folder.is_dir():
        return None
    found = get_last_checkpoint(str(folder))
    return Path(found) if found else None


def checkpoint_step(checkpoint: Path) -> int:
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    return int(state.get("global_step", 0))


@contextlib.contextmanager
def _maybe_stage(run_dir: RunDirectory, key: str, is_main: bool) -> Iterator[dict[str, Any]]:
    """Status bookkeeping on the main process only (``accelerate launch`` runs several)."""
    if is_main:
        with run_dir.stage(STAGE, key) as summary:
            yield summary
    else:
        yield {}


def run(
    config: Any,
    run_dir: RunDirectory,
    resume: bool = False,
    scorers: tuple[Any, Any] | None = None,
) -> dict[str, Any]:
    """Train the policy's LoRA adapter with RL from automated feedback; return the summary.

    ``config`` is the whole run config (:class:`refine_af.run_config.RunSettings`); this stage
    reads ``config.run`` and ``config.rl``. ``scorers`` = ``(reward_model, evaluator)`` replaces
    the configured scorers (tests). Without ``resume``, existing checkpoints are an error (so a
    finished or crashed run is never silently overwritten); a run already done with the same
    settings is skipped.
    """
    import transformers
    from accelerate import PartialState

    from refine_af.models import (
        choose_placement,
        load_causal_lm,
        load_tokenizer,
        resolve_model_path,
    )
    from refine_af.rewards import InstanceRewards, ScorerLoader, ScorerSettings

    settings: RLConfig = config.rl
    seed = config.run.seed
    records = load_instructions(run_dir, settings.max_instructions)
    digest = file_digest(run_dir.path / INSTRUCTIONS_FILE)
    resume_key = checkpoint_key(config, digest)
    stage_key = fingerprint(resume_key, settings.num_steps)
    folder = run_dir.path / STAGE
    checkpoints = folder / "checkpoints"
    adapter_dir = folder / "adapter"
    metrics_path, samples_path = folder / "metrics.jsonl", folder / "samples.jsonl"
    key_file = folder / "checkpoint_key"
    state = PartialState()
    is_main = state.is_main_process

    if run_dir.is_done(STAGE, stage_key) and (adapter_dir / "adapter_config.json").is_file():
        summary_file = folder / "summary.json"
        done = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
        return {**done, "skipped": True}

    checkpoint = last_checkpoint(checkpoints)
    if checkpoint is not None and not resume:
        raise UserError(
            f"{checkpoints} holds checkpoints of an earlier run: pass --resume to continue from "
            f"{checkpoint.name}, or delete {folder} to start over"
        )
    if checkpoint is not None and key_file.is_file() and key_file.read_text().strip() != resume_key:
        raise UserError(
            f"{checkpoints} was made with other settings or instructions: only "
            f"{', '.join(RESUMABLE_SETTINGS)} may change on --resume; delete {folder} to start over"
        )

    # Model, tokenizer and prompts first (cheap), then scorers: a scorer that can't load fails
    # here, before the trainer is built or any step is spent.
    placement = choose_placement(config.run.device, config.run.dtype)
    model_path = resolve_model_path(config.run.model)
    tokenizer = load_tokenizer(model_path, config.run.trust_remote_code)
    rows, skipped = build_prompts(records, tokenizer, settings)
    if scorers is None:
        scorer_device = settings.scorer_device
        if scorer_device == "auto":
            scorer_device = str(state.device) if placement.device != "cpu" else "cpu"
        loader = ScorerLoader(
            ScorerSettings(
                reward_model=settings.reward_model,
                evaluator=settings.evaluator,
                evaluator_kind=settings.evaluator_kind,
                device=scorer_device,
                dtype=settings.scorer_dtype,
                batch_size=settings.scorer_batch_size,
                max_length=settings.scorer_max_length,
                use_chat_template=settings.use_chat_template,
                trust_remote_code=config.run.trust_remote_code,
            )
        )
        weights = settings.reward_weights
        needs_evaluator = any(weights.get(d, 0.0) for d in COMPONENTS[1:])
        reward_scorer = loader.reward_model() if weights.get("reward_model", 0.0) else None
        evaluator = loader.evaluator() if needs_evaluator else None
    else:
        reward_scorer, evaluator = scorers

    with _maybe_stage(run_dir, stage_key, is_main) as summary:
        folder.mkdir(parents=True, exist_ok=True)
        if is_main:
            if checkpoint is None:
                # A fresh start: logs of an earlier attempt that left no checkpoint go.
                shutil.rmtree(checkpoints, ignore_errors=True)
                for path in (metrics_path, samples_path):
                    path.unlink(missing_ok=True)
            else:
                done_steps = checkpoint_step(checkpoint)
                truncate_jsonl(metrics_path, done_steps)
                truncate_jsonl(samples_path, done_steps)
            key_file.write_text(resume_key + "\n")

        rewards = InstanceRewards(
            reward_scorer,
            evaluator,
            settings.reward_weights,
            intercept=settings.reward_intercept,
            format_penalty=settings.format_penalty,
            sample_sink=make_sample_sink(samples_path, is_main),
        )
        transformers.set_seed(seed)  # the LoRA initialisation and everything after it
        model = load_causal_lm(model_path, placement, config.run.trust_remote_code)
        if model.generation_config is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id
        trainer = build_trainer(
            settings,
            model,
            tokenizer,
            rows,
            rewards,
            checkpoints,
            seed,
            [make_metrics_callback(metrics_path)],
        )
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)

        if is_main:
            partial = adapter_dir.with_name(adapter_dir.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            trainer.model.save_pretrained(partial, safe_serialization=True)
            tokenizer.save_pretrained(partial)
            shutil.rmtree(adapter_dir, ignore_errors=True)
            partial.rename(adapter_dir)
            plot = plot_rewards(metrics_path, folder / "rewards.png")
            result = summarize(read_jsonl(metrics_path))
            result.update(
                trainer=settings.trainer,
                steps=trainer.state.global_step,
                instructions=len(rows),
                skipped_too_long=skipped,
                resumed_from=checkpoint.name if checkpoint else None,
                adapter=str(adapter_dir),
                metrics=str(metrics_path),
                plot=str(plot) if plot else None,
            )
            write_json_atomic(folder / "summary.json", result)
            summary.update(result)
            return result
    return {}


def summarize(records: list[dict[str, Any]], window: int = 5) -> dict[str, Any]:
    """First/last-window means of the combined reward and each component (did it learn?)."""
    result: dict[str, Any] = {}
    for name in ("reward_combined", *COMPONENTS, "format_penalty_rate", "kl"):
        values = [r[name] for r in records if r.get(name) is not None]
        if not values:
            continue
        size = max(1, min(window, len(values) // 2 or 1))
        result[name] = {
            "first": round(sum(values[:size]) / size, 4),
            "last": round(sum(values[-size:]) / size, 4),
        }
    return result
