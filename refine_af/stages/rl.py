"""Stage 2: reinforcement learning from automated feedback (REFINE-AF, SPEC section 1).

For every stage-1 instruction the policy (the base model plus a LoRA adapter) writes one instance
(:mod:`refine_af.instance_format`); :mod:`refine_af.rewards` scores it with the reward model and the
UniEval-style evaluator; TRL's ``GRPOTrainer`` (default) or ``RLOOTrainer`` updates the adapter.
The paper used PPO, which TRL no longer has; GRPO is PPO's clipped objective with group-relative
advantages instead of a value model. With a PEFT model and ``beta > 0`` TRL takes the reference
log-probabilities from the same model with the adapter switched off, so no second copy of the
weights is loaded.

Outputs in ``RUN/rl/``::

    checkpoints/checkpoint-N/   trainer checkpoints (adapter, optimizer, RNG): a run resumes here
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
import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from refine_af.batches import Output
from refine_af.callbacks import last_complete_checkpoint, progress_callback, use_step_progress
from refine_af.config import ConfigError, fingerprint, help_field, to_dict
from refine_af.errors import UserError
from refine_af.models import lora_config
from refine_af.rewards import (
    FORMAT_REWARD,
    PAPER_INTERCEPT,
    PAPER_WEIGHTS,
    REWARDS,
    TRLRewards,
    WeightedRewards,
    check_reward_weights,
)
from refine_af.run_dir import RunDirectory, StageRecord
from refine_af.storage import (
    append_records,
    atomic_directory,
    file_digest,
    keep_records,
    read_json,
    read_log,
    read_records,
    write_json_atomic,
)
from refine_af.trl_args import trainer_config

STAGE = "rl"
INSTRUCTIONS_FILE = Path("instructions") / "instructions.jsonl"
# Settings that may change between a run and its continuation without changing what the
# checkpoints mean (they are left out of the stage key).
RESUMABLE_SETTINGS = (
    "max_steps",
    "save_steps",
    "logging_steps",
    "scorer_device",
    "scorer_batch_size",
    "report_to",
    "share_prompts",
)
RESUMABLE_TRAINER_ARGS = ("save_total_limit",)


@dataclass
class RLConfig:
    """Stage 2 settings. The defaults are the small CPU run; paper.yaml has the paper's scorers.

    The TRL arguments the stage reads, checks or gives its own default are keys here; any other
    argument of TRL's GRPOConfig / RLOOConfig goes in ``trainer_args`` and reaches TRL as is.
    """

    RENAMED: ClassVar[dict[str, str]] = {
        "num_steps": "max_steps",
        "per_device_batch_size": "per_device_train_batch_size",
        "top_p": "trainer_args.top_p",
        "gradient_accumulation_steps": "trainer_args.gradient_accumulation_steps",
        "save_total_limit": "trainer_args.save_total_limit",
    }

    trainer: Literal["grpo", "rloo"] = help_field(
        "grpo", "TRL trainer: 'grpo' (PPO-style clipped objective, group advantages) or 'rloo'."
    )
    max_steps: int = help_field(30, "Optimizer steps (raise it and run again to train longer).")
    learning_rate: float = help_field(1e-4, "AdamW learning rate of the LoRA weights.")
    lr_scheduler_type: str = help_field(
        "constant", "Learning-rate schedule ('constant', 'linear', 'cosine', ...)."
    )
    per_device_train_batch_size: int = help_field(
        16, "Completions per device per step; a multiple of num_generations (prompts × gens)."
    )
    num_generations: int = help_field(4, "Completions sampled per prompt (the group), >= 2.")
    max_prompt_length: int = help_field(
        512, "Prompt token limit: instructions whose prompt is longer are skipped."
    )
    max_completion_length: int = help_field(64, "Token limit of one completion (the instance).")
    mask_truncated_completions: bool = help_field(
        False,
        "Leave completions cut off by max_completion_length out of the loss (TRL's option): "
        "a policy then gains nothing by filling the length cap, which stage 3 drops as cut off. "
        "Off in the paper's setting.",
    )
    temperature: float = help_field(1.0, "Sampling temperature of the policy.")
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
        "Weight of each registered reward (refine_af.rewards: reward_model, understandability, "
        "naturalness, coherence, ...); the paper's: 0.0078, -0.4421, 0.3212, 0.1520. A reward "
        "with weight 0 is not computed.",
    )
    reward_intercept: float = help_field(
        PAPER_INTERCEPT, "Constant added to the combined reward (paper: -0.0274); logged only."
    )
    format_penalty: float = help_field(
        1.0, "Reward subtracted for a completion that does not parse as 'Input: ... Output: ...'."
    )
    cut_off_fails_format: bool = help_field(
        False,
        "Score a completion cut off by max_completion_length as one that does not parse (the "
        "format penalty, no scorer asked): stage 3 drops both. Beyond the paper; use it with "
        "mask_truncated_completions off, or the cut-off completions carry no loss.",
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
    logging_steps: int = help_field(1, "Log metrics every this many steps.")
    report_to: str = help_field(
        "none", "Live training logs: 'none', 'tensorboard', 'trackio', 'wandb' (TRL's report_to)."
    )
    gradient_checkpointing: bool = help_field(
        False, "Recompute activations in the backward pass: less memory, a little more time."
    )
    use_vllm: bool = help_field(False, "Generate with vLLM (colocated; needs vllm and a GPU).")
    fast_generation: bool = help_field(
        True,
        "GRPO without vLLM: sample completions with refine_af's decode loop (preallocated KV "
        "cache, finished rows leave the batch) instead of model.generate; same distribution.",
    )
    share_prompts: bool = help_field(
        True,
        "GRPO: compute each prompt once for its num_generations completions in the loss and "
        "the reference log-probs (refine_af.shared_prompt) instead of once per completion; the "
        "same log-probs, and about half the tokens with short completions.",
    )
    bf16: bool = help_field(False, "bfloat16 mixed precision (GPU).")
    trainer_args: dict[str, Any] = help_field(  # noqa: RUF009 - help_field is field()
        {},
        "Any other argument of TRL's GRPOConfig / RLOOConfig, passed through as is (e.g. top_p, "
        "gradient_accumulation_steps, save_total_limit, epsilon, loss_type).",
    )

    def __post_init__(self) -> None:
        for name in (
            "max_steps",
            "per_device_train_batch_size",
            "max_prompt_length",
            "max_completion_length",
            "lora_r",
            "lora_alpha",
            "scorer_batch_size",
            "scorer_max_length",
            "save_steps",
            "logging_steps",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"rl.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_generations < 2:
            raise ConfigError(
                f"rl.num_generations must be >= 2 (group advantages compare completions of one "
                f"prompt), got {self.num_generations}"
            )
        if self.per_device_train_batch_size % self.num_generations:
            raise ConfigError(
                f"rl.per_device_train_batch_size ({self.per_device_train_batch_size}) must be a "
                f"multiple of rl.num_generations ({self.num_generations}): set it to prompts per "
                f"step × {self.num_generations}"
            )
        if self.learning_rate <= 0 or self.temperature <= 0:
            raise ConfigError("rl needs learning_rate > 0 and temperature > 0")
        if self.beta < 0 or not 0 <= self.lora_dropout < 1 or self.format_penalty < 0:
            raise ConfigError("rl needs beta >= 0, lora_dropout in [0, 1) and format_penalty >= 0")
        if self.max_instructions < 0:
            raise ConfigError("rl.max_instructions must be >= 0 (0 uses every instruction)")
        check_reward_weights(self.reward_weights)
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
    records = read_records(path, "run generate-instructions again")
    for number, record in enumerate(records, 1):
        if not str(record.get("instruction", "")).strip():
            raise UserError(f"{path} record {number} has no instruction")
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


def key(config: Any, run_dir: RunDirectory, variant: str | None = None) -> str:
    """What the checkpoints mean: every setting but the step count and logging, the model, the
    seed and the instructions."""
    settings = to_dict(config.rl)
    for name in RESUMABLE_SETTINGS:
        settings.pop(name)
    for name in RESUMABLE_TRAINER_ARGS:
        settings["trainer_args"].pop(name, None)
    path = run_dir.path / INSTRUCTIONS_FILE
    instructions = file_digest(path) if path.is_file() else None
    return fingerprint(settings, config.run.model, config.run.seed, instructions)


def check(config: Any) -> None:
    """The inputs, before any stage runs: the model resolves, TRL accepts the trainer arguments
    and this TRL/transformers offers what the stage's speed-ups call (refine_af.compat)."""
    from refine_af.compat import check_rl_support
    from refine_af.models import resolve_model_path

    resolve_model_path(config.run.model)
    trainer_arguments(config.rl, Path(config.run.output_dir) / STAGE, config.run.seed)
    check_rl_support(config.rl)


def is_done(config: Any, run_dir: RunDirectory, variant: str | None = None) -> bool:
    return (
        run_dir.is_done(STAGE, key(config, run_dir), config.rl.max_steps)
        and (run_dir.path / STAGE / "adapter" / "adapter_config.json").is_file()
    )


# ---------------------------------------------------------------------------------------------
# Logs: metrics, samples, plot.


def metrics_record(step: int, logs: dict[str, Any]) -> dict[str, Any] | None:
    """The metrics line for one trainer log, or None for logs that are not training steps."""
    if "loss" not in logs and "reward" not in logs:
        return None  # e.g. the end-of-training summary (train_runtime, ...)
    record: dict[str, Any] = {"step": step}
    for name in (*REWARDS, FORMAT_REWARD):
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
        # Share of completions cut off by max_completion_length (stage 3 drops those).
        "completions/clipped_ratio": "clipped_ratio",
        "entropy": "entropy",
    }
    for key, name in renames.items():
        if key in logs:
            record[name] = logs[key]
    return record


def plotted_columns(records: list[dict[str, Any]]) -> list[str]:
    """The combined reward, each logged reward, the format-failure rate and KL, in that order."""
    names = ["reward_combined", *REWARDS, "format_penalty_rate", "kl"]
    return [n for n in names if any(r.get(n) is not None for r in records)]


def plot_rewards(metrics_path: Path, target: Path) -> Path | None:
    """One panel per logged reward (and KL) against the step; None without data."""
    records = read_log(metrics_path)
    names = plotted_columns(records)
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
                append_records(path, [record])

    return MetricsLog()


def make_sample_sink(path: Path, is_main: bool) -> Any:
    """Write every scored completion (with its instance and rewards) to ``samples.jsonl``."""

    def sink(step: int, samples: list[Any]) -> None:
        if not is_main:
            return
        append_records(
            path,
            [
                {
                    "step": step,
                    "instruction": s.instruction,
                    "completion": s.completion,
                    "input": s.instance.input if s.instance else None,
                    "output": s.instance.output if s.instance else None,
                    "cut_off": s.cut_off,
                    **s.values,
                    "combined": s.combined,
                }
                for s in samples
            ],
        )

    return sink


# ---------------------------------------------------------------------------------------------
# Trainer.


def trainer_arguments(
    settings: RLConfig,
    output_dir: Path,
    seed: int,
    weights: list[float] | None = None,
    on_cpu: bool = True,
) -> Any:
    """GRPOConfig / RLOOConfig: the stage's settings plus ``rl.trainer_args``."""
    from trl import GRPOConfig, RLOOConfig

    stage_values: dict[str, Any] = {
        "output_dir": str(output_dir),
        "max_steps": settings.max_steps,
        "learning_rate": settings.learning_rate,
        "lr_scheduler_type": settings.lr_scheduler_type,
        "per_device_train_batch_size": settings.per_device_train_batch_size,
        "num_generations": settings.num_generations,
        "max_completion_length": settings.max_completion_length,
        "mask_truncated_completions": settings.mask_truncated_completions,
        "temperature": settings.temperature,
        "beta": settings.beta,
        "reward_weights": weights,
        "seed": seed,
        "data_seed": seed,
        "save_strategy": "steps",
        "save_steps": settings.save_steps,
        "logging_steps": settings.logging_steps,
        # The new name of gradient_checkpointing (trl_args maps it back for transformers <= 5.17);
        # TRL's config still defaults it to True.
        "activation_checkpointing": settings.gradient_checkpointing,
        # TRL defaults bf16 to True; on CPU that would autocast every matmul to bfloat16.
        "bf16": settings.bf16,
        "use_vllm": settings.use_vllm,
        "report_to": settings.report_to,
        "disable_tqdm": False,
        "dataloader_pin_memory": not on_cpu,  # pinned memory only helps copies to a GPU
    }
    if settings.use_vllm:
        stage_values["vllm_mode"] = "colocate"
    trl_class = RLOOConfig if settings.trainer == "rloo" else GRPOConfig
    return trainer_config(trl_class, "rl", stage_values, settings.trainer_args)


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
            top_p=getattr(trainer.args, "top_p", 1.0),
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
    rewards: TRLRewards,
    arguments: Any,
    callbacks: list[Any],
) -> Any:
    """A GRPOTrainer or RLOOTrainer with a LoRA adapter on ``model``.

    The speed-ups that call TRL's private or experimental APIs are used only when this TRL
    offers them (refine_af.compat); otherwise TRL's own code runs, with a note.
    """
    from datasets import Dataset
    from trl import GRPOTrainer, RLOOTrainer

    from refine_af import compat

    grpo = settings.trainer == "grpo"
    extra: dict[str, Any] = {}
    if grpo and settings.fast_generation and not settings.use_vllm and compat.use_rollout_func():
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is experimental
        extra["rollout_func"] = make_rollout(settings, tokenizer)
    trainer_class = RLOOTrainer if settings.trainer == "rloo" else GRPOTrainer
    if (
        grpo
        and settings.share_prompts
        and compat.use_shared_prompts(model, settings.gradient_checkpointing)
    ):
        from refine_af.shared_prompt import SharedPromptMixin

        trainer_class = type("SharedPromptGRPOTrainer", (SharedPromptMixin, GRPOTrainer), {})
    trainer = trainer_class(
        **extra,
        model=model,
        reward_funcs=rewards.functions(),
        args=arguments,
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
    replay_sampler_epochs(trainer)
    return trainer


def replay_sampler_epochs(trainer: Any) -> None:
    """Make a run resumed past its first epoch draw the prompts an uninterrupted run draws.

    TRL's ``RepeatSampler`` shuffles with a generator of its own, seeded once, so epoch *e*
    gets the (*e*+1)-th permutation it draws. transformers 5 no longer runs the dataloader
    through the epochs a checkpoint has passed (it calls ``set_epoch`` instead, which this
    sampler lacks), so a resumed run started again at the first permutation and its adapter
    drifted from an uninterrupted run's (found by benchmarks/train_kill_soak.py). The sampler
    gets a ``set_epoch`` that re-seeds its generator and draws the *e* permutations before:
    the same orders as before in an uninterrupted run, and the same after a resume.
    """
    make_sampler = getattr(trainer, "_get_train_sampler", None)
    if make_sampler is None:  # a TRL without it: its own order, as before
        return

    @functools.wraps(make_sampler)
    def replaying_sampler(*args: Any, **kwargs: Any) -> Any:
        sampler = make_sampler(*args, **kwargs)
        generator, seed = getattr(sampler, "generator", None), getattr(sampler, "seed", None)
        if (
            not getattr(sampler, "shuffle", False)
            or generator is None
            or seed is None
            or hasattr(sampler, "set_epoch")
        ):
            return sampler
        import torch

        def set_epoch(epoch: int) -> None:
            generator.manual_seed(seed)
            for _ in range(epoch):
                torch.randperm(sampler.num_samples, generator=generator)

        sampler.set_epoch = set_epoch
        return sampler

    trainer._get_train_sampler = replaying_sampler


@contextlib.contextmanager
def untuned(trainer: Any) -> Iterator[None]:
    """The trainer's policy as it was loaded: LoRA adapter off, evaluation mode."""
    policy = trainer.accelerator.unwrap_model(trainer.model)
    training = policy.training
    policy.eval()
    try:
        with policy.disable_adapter():
            yield
    finally:
        policy.train(training)


def same_device(model: Any, device: str) -> bool:
    """Is ``model`` on ``device`` ("cuda" meaning the current GPU, as a load there would be)?"""
    import torch

    wanted = torch.device(device)
    if wanted.type == "cuda" and wanted.index is None:
        wanted = torch.device("cuda", torch.cuda.current_device())
    return model.device == wanted


def last_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint (transformers' own pick takes a half-written one too)."""
    return last_complete_checkpoint(folder)


def checkpoint_step(checkpoint: Path) -> int:
    state = read_json(checkpoint / "trainer_state.json") or {}
    return int(state.get("global_step", 0))


def load_scorers(config: Any, device: str, signals: set[str] | None = None) -> tuple[Any, Any]:
    """The reward model and evaluator the active rewards need (None for one not needed), or
    those ``signals`` need when given (``refineaf score --labels`` scores every reward)."""
    from refine_af.rewards import needed_signals
    from refine_af.scorers import ScorerLoader, ScorerSettings

    settings: RLConfig = config.rl
    loader = ScorerLoader(
        ScorerSettings(
            reward_model=settings.reward_model,
            evaluator=settings.evaluator,
            evaluator_kind=settings.evaluator_kind,
            device=device,
            dtype=settings.scorer_dtype,
            batch_size=settings.scorer_batch_size,
            max_length=settings.scorer_max_length,
            use_chat_template=settings.use_chat_template,
            trust_remote_code=config.run.trust_remote_code,
        )
    )
    if signals is None:
        signals = needed_signals(settings.reward_weights)
    reward_model = loader.reward_model() if "reward_model" in signals else None
    evaluator = loader.evaluator() if signals - {"reward_model"} else None
    return reward_model, evaluator


def weighted_rewards(config: Any, scorers: tuple[Any, Any]) -> WeightedRewards:
    from refine_af.rewards import AutomatedFeedback, needed_signals

    settings: RLConfig = config.rl
    feedback = AutomatedFeedback(*scorers, needed_signals(settings.reward_weights))
    return WeightedRewards(
        feedback, dict(settings.reward_weights), settings.reward_intercept, settings.format_penalty
    )


# ---------------------------------------------------------------------------------------------
# The stage, in three parts: setup (inputs, scorers, trainer), train, save.


class RLRecipe:
    """One stage-2 run. ``setup()`` checks and loads everything a bad input could break before
    any step is spent; ``train()`` runs TRL's trainer; ``save()`` writes the adapter and logs."""

    def __init__(self, config: Any, run_dir: RunDirectory, is_main: bool = True) -> None:
        self.config = config
        self.settings: RLConfig = config.rl
        self.run_dir = run_dir
        self.is_main = is_main
        self.folder = run_dir.path / STAGE
        self.checkpoints = self.folder / "checkpoints"
        self.adapter_dir = self.folder / "adapter"
        self.metrics_path = self.folder / "metrics.jsonl"
        self.samples_path = self.folder / "samples.jsonl"

    # -- setup ----------------------------------------------------------------------------------

    def setup(self, scorers: tuple[Any, Any] | None = None) -> None:
        """Tokenizer and prompts, TRL arguments, then scorers: whatever can fail on bad input
        fails here, with one line, before the policy loads or any step runs."""
        self._setup_data()
        self._setup_arguments()
        self._setup_rewards(scorers)

    def _setup_data(self) -> None:
        from refine_af.models import choose_placement, load_tokenizer, resolve_model_path

        records = load_instructions(self.run_dir, self.settings.max_instructions)
        self.placement = choose_placement(self.config.run.device, self.config.run.dtype)
        self.model_path = resolve_model_path(self.config.run.model)
        self.tokenizer = load_tokenizer(self.model_path, self.config.run.trust_remote_code)
        self.rows, self.skipped = build_prompts(records, self.tokenizer, self.settings)

    def _setup_arguments(self) -> None:
        self.arguments = trainer_arguments(
            self.settings,
            self.checkpoints,
            self.config.run.seed,
            on_cpu=self.placement.device == "cpu",
        )

    def _setup_rewards(self, scorers: tuple[Any, Any] | None) -> None:
        from accelerate import PartialState

        if scorers is None:
            device = self.settings.scorer_device
            if device == "auto":
                # Under `accelerate launch` each process scores on its own GPU.
                on_gpu = self.placement.device != "cpu"
                device = str(PartialState().device) if on_gpu else "cpu"
            scorers = load_scorers(self.config, device)
        self.scorers = scorers
        model = weighted_rewards(self.config, scorers)
        self.rewards = TRLRewards(
            model,
            make_sample_sink(self.samples_path, self.is_main),
            cut_off_fails_format=self.settings.cut_off_fails_format,
        )
        # TRL gets the weights in the order of the reward functions.
        self.arguments.reward_weights = self.rewards.weights()

    # -- train ----------------------------------------------------------------------------------

    def train(self, checkpoint: Path | None, status: StageRecord | None = None) -> None:
        """Load the policy, build the trainer, run it (continuing from ``checkpoint``)."""
        import transformers

        from refine_af.models import load_causal_lm

        if self.is_main:
            self._trim_logs(checkpoint)
        transformers.set_seed(self.config.run.seed)  # the LoRA initialisation and all after it
        shared = self._scorers_of_the_policy()
        if shared:
            model = shared[0].model  # one copy of the weights for the policy and its scorers
        else:
            model = load_causal_lm(
                self.model_path, self.placement, self.config.run.trust_remote_code
            )
        if model.generation_config is not None:
            model.generation_config.pad_token_id = self.tokenizer.pad_token_id
        self.trainer = build_trainer(
            self.settings,
            model,
            self.tokenizer,
            self.rows,
            self.rewards,
            self.arguments,
            [make_metrics_callback(self.metrics_path), progress_callback(status)],
        )
        for scorer in shared:
            scorer.base_weights = functools.partial(untuned, self.trainer)
        # Which completions the token limit cut (keepable scores them 0), as TRL decides it.
        eos = getattr(self.trainer, "eos_token_ids", None) or [self.tokenizer.eos_token_id]
        self.rewards.stop_token_ids = {*eos, self.tokenizer.pad_token_id} - {None}
        shown = {"reward_combined": "reward", "format_penalty_rate": "format fail", "kl": "kl"}
        use_step_progress(self.trainer, "RL steps", shown)
        self.trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        self.resumed_from = checkpoint

    def _scorers_of_the_policy(self) -> list[Any]:
        """The causal scorers that load the policy's own model with its dtype and device.

        The offline default asks the untuned SmolLM2 for every score: rather than a second copy
        of its weights, the policy's are used with the LoRA adapter switched off (``untuned``).
        """
        from refine_af.scorers import CausalYesNoScorer

        policy_path = Path(self.model_path).resolve()
        shared = []
        for scorer in self.scorers:
            if not isinstance(scorer, CausalYesNoScorer):
                continue
            model = scorer.model
            same_weights = Path(str(getattr(model, "name_or_path", ""))).resolve() == policy_path
            same_placement = model.dtype == self.placement.dtype and same_device(
                model, self.placement.device
            )
            if same_weights and same_placement and all(s.model is model for s in shared):
                shared.append(scorer)
        return shared

    def _trim_logs(self, checkpoint: Path | None) -> None:
        """Logs hold what the checkpoint holds: steps after it will be logged again."""
        done = checkpoint_step(checkpoint) if checkpoint is not None else 0
        for path in (self.metrics_path, self.samples_path):
            keep_records(path, lambda record: record.get("step", 0) <= done)

    # -- save -----------------------------------------------------------------------------------

    def save(self) -> dict[str, Any]:
        """The adapter (atomically), the reward plot and the summary."""
        with atomic_directory(self.adapter_dir) as partial:
            self.trainer.model.save_pretrained(partial, safe_serialization=True)
            self.tokenizer.save_pretrained(partial)
        plot = plot_rewards(self.metrics_path, self.folder / "rewards.png")
        result = summarize(read_log(self.metrics_path))
        result.update(
            trainer=self.settings.trainer,
            steps=self.trainer.state.global_step,
            instructions=len(self.rows),
            skipped_too_long=self.skipped,
            resumed_from=self.resumed_from.name if self.resumed_from else None,
            adapter=str(self.adapter_dir),
            metrics=str(self.metrics_path),
            plot=str(plot) if plot else None,
        )
        write_json_atomic(self.folder / "summary.json", result)
        return result


def resume_point(
    run_dir: RunDirectory, stage_key: str, restart: bool, is_main: bool
) -> Path | None:
    """The checkpoint to continue from, after the one resume rule (refine_af.batches):
    checkpoints of the same settings and instructions are continued; those of others, or any
    with ``restart``, are set aside (never deleted) and training starts from step 0.

    Only the main process moves folders; every process reaches the same answer.
    """
    folder = run_dir.path / STAGE
    if is_main:
        run_dir.claim(folder, stage_key, restart, "RL checkpoints and logs")
    elif restart or Output(folder).stored_key() != stage_key:
        return None
    return last_checkpoint(folder / "checkpoints")


@contextlib.contextmanager
def _stage_record(
    run_dir: RunDirectory, stage_key: str, extent: int, is_main: bool
) -> Iterator[Any]:
    """Status bookkeeping on the main process only (``accelerate launch`` runs several)."""
    if is_main:
        with run_dir.stage(STAGE, stage_key, extent) as status:
            yield status
    else:
        yield None


def run(
    config: Any,
    run_dir: RunDirectory,
    variant: str | None = None,
    *,
    restart: bool = False,
    scorers: tuple[Any, Any] | None = None,
) -> dict[str, Any]:
    """Train the policy's LoRA adapter with RL from automated feedback; return the summary.

    ``config`` is the whole train config; this stage reads ``config.run`` and ``config.rl``.
    ``scorers`` = ``(reward_model, evaluator)`` replaces the configured scorers (tests). A run
    already done with the same settings is skipped (unless ``restart``); an interrupted one, or
    one asked for more steps, continues from its last checkpoint (:func:`resume_point`).
    Under ``accelerate launch`` only the main process writes logs and returns the summary.
    """
    from accelerate import PartialState

    is_main = PartialState().is_main_process
    stage_key = key(config, run_dir)
    if not restart and is_done(config, run_dir):
        return {**(read_json(run_dir.path / STAGE / "summary.json") or {}), "skipped": True}
    load_instructions(run_dir)  # a missing or damaged input fails before anything moves
    checkpoint = resume_point(run_dir, stage_key, restart, is_main)
    recipe = RLRecipe(config, run_dir, is_main)
    recipe.setup(scorers)
    with _stage_record(run_dir, stage_key, config.rl.max_steps, is_main) as status:
        recipe.train(checkpoint, status)
        if not is_main:
            return {}
        result = recipe.save()
        status.summary.update(result)
    return result


def summarize(records: list[dict[str, Any]], window: int = 5) -> dict[str, Any]:
    """First/last-window means of the combined reward and each reward (did it learn?)."""
    result: dict[str, Any] = {}
    for name in plotted_columns(records):
        values = [r[name] for r in records if r.get(name) is not None]
        size = max(1, min(window, len(values) // 2 or 1))
        result[name] = {
            "first": round(sum(values[:size]) / size, 4),
            "last": round(sum(values[-size:]) / size, 4),
        }
    return result
