"""Stage 3b: LoRA fine-tuning of the base model on one variant's instances (TRL + PEFT).

Every kept instance becomes a prompt-completion pair written by
:func:`refine_af.prompts.training_prompt` / :func:`refine_af.prompts.training_completion`
(Self-Instruct's format, ``"{instruction}\\nInput: {input}\\nOutput:"`` → ``" {output}"``), and
TRL's ``SFTTrainer`` computes the loss on the completion tokens only (``completion_only_loss``:
the prompt tokens get label -100). The prompt is plain text, not the chat template, because the
SuperNI evaluation prompt is plain text too and ends the same way (``Input: ...\\nOutput:``): the
model learns to answer right after ``Output:`` and to stop with the EOS token that TRL appends.

Outputs in ``RUN/sft/<variant>/``::

    checkpoints/checkpoint-N/   trainer checkpoints (an interrupted run resumes from the last)
    adapter/                    the PEFT adapter: adapter_config.json + adapter_model.safetensors
                                (lm_eval --model hf --model_args pretrained=BASE,peft=adapter)
    merged/                     the adapter merged into the base model (with sft.merge=true)
    metrics.jsonl               the trainer's log (loss, learning rate, ...) per logging step
    summary.json                what the stage reports
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from refine_af.callbacks import last_complete_checkpoint, progress_callback, use_step_progress
from refine_af.config import ConfigError, fingerprint, help_field, to_dict
from refine_af.errors import UserError
from refine_af.models import lora_config
from refine_af.prompts import training_completion, training_prompt
from refine_af.run_dir import RunDirectory, StageRecord
from refine_af.stages.instances import STAGE_DIR as INSTANCES_DIR
from refine_af.stages.instances import check_variant, seeded_subset
from refine_af.storage import (
    atomic_directory,
    file_digest,
    read_json,
    read_records,
    write_json_atomic,
    write_records_atomic,
)
from refine_af.trl_args import trainer_config

STAGE_DIR = "sft"
# Settings that change neither the data nor the optimisation: no reason to retrain.
NON_TRAINING_SETTINGS = ("merge", "logging_steps", "save_steps", "report_to")


@dataclass
class SFTConfig:
    """Stage 3b settings (LoRA on the attention projections by default).

    The TRL ``SFTConfig`` arguments the stage reads or gives its own default are keys here; any
    other argument goes in ``trainer_args`` and reaches TRL unchanged.
    """

    RENAMED: ClassVar[dict[str, str]] = {
        "num_epochs": "num_train_epochs",
        "per_device_batch_size": "per_device_train_batch_size",
        "target_modules": "lora_target_modules",
        "warmup_steps": "trainer_args.warmup_steps",
        "weight_decay": "trainer_args.weight_decay",
        "gradient_accumulation_steps": "trainer_args.gradient_accumulation_steps",
        "save_total_limit": "trainer_args.save_total_limit",
    }

    num_train_epochs: float = help_field(2.0, "Training epochs over the instances.")
    max_steps: int = help_field(-1, "Stop after this many optimizer steps (-1: use epochs).")
    learning_rate: float = help_field(2e-4, "Peak learning rate (LoRA takes larger ones).")
    lr_scheduler_type: str = help_field(
        "linear", "Learning-rate schedule ('linear', 'cosine', 'constant', ...)."
    )
    per_device_train_batch_size: int = help_field(8, "Examples per device per micro-batch.")
    max_length: int = help_field(256, "Tokens per example (prompt + completion); longer: cut.")
    text_format: Literal["plain", "chat"] = help_field(
        "plain",
        "'plain': Self-Instruct's text, '{instruction}\\nInput: {input}\\nOutput:' -> "
        "' {output}' (base models; eval without a chat template); 'chat': the same request as "
        "the user turn and the output as the assistant turn, through the model's chat template "
        "(chat models; eval rows with apply_chat_template: true).",
    )
    lora_r: int = help_field(8, "LoRA rank.")
    lora_alpha: int = help_field(16, "LoRA scaling numerator (alpha / r scales the update).")
    lora_dropout: float = help_field(0.05, "Dropout on the LoRA input.")
    lora_target_modules: list[str] = help_field(  # noqa: RUF009 - help_field is field()
        ["q_proj", "k_proj", "v_proj", "o_proj"],
        "Module names that get LoRA adapters; ['all-linear'] adapts every linear layer.",
    )
    gradient_checkpointing: bool = help_field(
        False, "Trade compute for memory (useful for 7B models on a GPU)."
    )
    padding_free: bool = help_field(
        True,
        "Each micro-batch as one row, its examples end to end with no padding (TRL's "
        "padding-free collator; position ids restart per example, so attention and loss stay "
        "per example). Off: rows padded to the micro-batch's longest example.",
    )
    bf16: bool | None = help_field(None, "bfloat16 mixed precision; None: on when run.dtype is.")
    max_train_instances: int | None = help_field(
        None,
        "Train on at most N instances, drawn at random (run.seed) from the variant's set, in "
        "their order (None: all). The same N for every variant compares data of one size, e.g. "
        "175, the seed set's, when the generated sets are larger.",
    )
    logging_steps: int = help_field(5, "Log loss every N steps (metrics.jsonl).")
    save_steps: int = help_field(50, "Checkpoint every N steps (an interrupted run resumes).")
    report_to: str = help_field(
        "none", "Live training logs: 'none', 'tensorboard', 'trackio', 'wandb' (TRL's report_to)."
    )
    merge: bool = help_field(False, "Also save the adapter merged into a full model (merged/).")
    trainer_args: dict[str, Any] = help_field(  # noqa: RUF009 - help_field is field()
        {},
        "Any other argument of TRL's SFTConfig, passed through as is (e.g. warmup_steps, "
        "weight_decay, gradient_accumulation_steps, save_total_limit).",
    )

    def __post_init__(self) -> None:
        if self.num_train_epochs <= 0 and self.max_steps <= 0:
            raise ConfigError("sft needs num_train_epochs > 0 or max_steps > 0")
        for name in (
            "per_device_train_batch_size",
            "max_length",
            "lora_r",
            "lora_alpha",
            "logging_steps",
            "save_steps",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"sft.{name} must be >= 1")
        if self.learning_rate <= 0:
            raise ConfigError(f"sft.learning_rate must be > 0, got {self.learning_rate}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError("sft.lora_dropout must be in [0, 1)")
        if not self.lora_target_modules:
            raise ConfigError("sft.lora_target_modules is empty: name the modules to adapt")
        if self.max_train_instances is not None and self.max_train_instances < 1:
            raise ConfigError("sft.max_train_instances must be >= 1 (or null: all)")


# ---------------------------------------------------------------------------------------------
# Data.


def instances_path(run_dir: RunDirectory, variant: str) -> Path:
    path = run_dir.path / INSTANCES_DIR / variant / "instances.jsonl"
    if not path.is_file():
        raise UserError(
            f"{path} does not exist: run 'refineaf generate-instances --variant {variant}' first"
        )
    return path


def training_examples(
    path: Path, limit: int | None = None, text_format: str = "plain", seed: int = 0
) -> list[dict[str, Any]]:
    """Prompt-completion pairs in the fine-tuning format (refine_af.prompts): plain text, or
    TRL's conversational form (one user and one assistant message), which SFTTrainer renders
    with the model's chat template and still trains on the completion only.

    ``limit`` keeps that many, drawn with ``seed`` and kept in file order: the first N would
    hold only the first instructions' instances."""
    examples: list[dict[str, Any]] = []
    for number, record in enumerate(read_records(path, "run generate-instances again"), 1):
        try:
            prompt = training_prompt(record["instruction"], record.get("input", ""))
            if text_format == "chat":
                examples.append(
                    {
                        "prompt": [{"role": "user", "content": prompt}],
                        "completion": [{"role": "assistant", "content": record["output"].strip()}],
                    }
                )
                continue
            examples.append({"prompt": prompt, "completion": training_completion(record["output"])})
        except (KeyError, TypeError, AttributeError) as error:
            raise UserError(f"{path} record {number} is not an instance record") from error
    if limit is not None:
        examples = seeded_subset(examples, limit, seed)
    if not examples:
        raise UserError(
            f"{path} holds no instances: every generated instance was filtered out; see the "
            "summary.json beside it for the reasons"
        )
    return examples


def stage_name(variant: str) -> str:
    return f"{STAGE_DIR}:{variant}"


def key(config: Any, run_dir: RunDirectory, variant: str | None = None) -> str:
    """What the adapter depends on: training settings, base model, seed and the instances."""
    variant = check_variant(variant)
    settings = to_dict(config.sft)
    for name in NON_TRAINING_SETTINGS:
        settings.pop(name)
    settings["trainer_args"].pop("save_total_limit", None)
    return fingerprint(
        settings,
        config.run.model,
        config.run.seed,
        config.run.dtype,
        file_digest(instances_path(run_dir, variant)),
    )


def check(config: Any) -> None:
    """What can be checked before any stage runs: the base model resolves and TRL accepts the
    training arguments (bf16 and the device are decided at run time, not here)."""
    from refine_af.models import resolve_model_path

    resolve_model_path(config.run.model)
    training_arguments(config, Path(config.run.output_dir) / STAGE_DIR, bf16=False, use_cpu=True)


def is_done(config: Any, run_dir: RunDirectory, variant: str | None = None) -> bool:
    variant = check_variant(variant)
    folder = run_dir.path / STAGE_DIR / variant
    merged_missing = config.sft.merge and not (folder / "merged" / "config.json").is_file()
    return (
        run_dir.is_done(stage_name(variant), key(config, run_dir, variant))
        and (folder / "adapter" / "adapter_config.json").is_file()
        and not merged_missing
    )


# ---------------------------------------------------------------------------------------------
# Trainer.


def training_arguments(config: Any, output_dir: Path, bf16: bool, use_cpu: bool) -> Any:
    """TRL's ``SFTConfig``: the stage's settings plus ``sft.trainer_args``."""
    from trl import SFTConfig as TRLSFTConfig

    settings: SFTConfig = config.sft
    stage_values: dict[str, Any] = {
        "output_dir": str(output_dir),
        "num_train_epochs": settings.num_train_epochs,
        "max_steps": settings.max_steps,
        "learning_rate": settings.learning_rate,
        "lr_scheduler_type": settings.lr_scheduler_type,
        "per_device_train_batch_size": settings.per_device_train_batch_size,
        # The new name of gradient_checkpointing (trl_args maps it back for transformers <= 5.17;
        # TRL's config defaults it on).
        "activation_checkpointing": settings.gradient_checkpointing,
        "max_length": settings.max_length,
        # The loss is on the completion only; the prompt tokens get label -100.
        "completion_only_loss": True,
        "packing": False,
        "bf16": bf16,
        "fp16": False,
        "use_cpu": use_cpu,
        "dataloader_pin_memory": not use_cpu,  # pinned memory only helps copies to a GPU
        "logging_steps": settings.logging_steps,
        "save_strategy": "steps",
        "save_steps": settings.save_steps,
        "seed": config.run.seed,
        "data_seed": config.run.seed,
        "report_to": settings.report_to,
        "dataloader_num_workers": 0,
    }
    return trainer_config(TRLSFTConfig, "sft", stage_values, settings.trainer_args)


def build_trainer(
    config: Any,
    examples: list[dict[str, Any]],
    output_dir: Path,
    model_path: str | None = None,
    status: StageRecord | None = None,
) -> Any:
    """A TRL ``SFTTrainer`` over the examples with a fresh LoRA adapter on the base model."""
    import torch
    from datasets import Dataset
    from trl import SFTTrainer

    from refine_af.models import choose_placement, load_causal_lm, load_tokenizer
    from refine_af.models import resolve_model_path as resolve

    settings: SFTConfig = config.sft
    model_path = model_path or resolve(config.run.model)
    placement = choose_placement(config.run.device, config.run.dtype)
    bf16 = settings.bf16 if settings.bf16 is not None else placement.dtype == torch.bfloat16
    arguments = training_arguments(config, output_dir, bf16, placement.device == "cpu")
    tokenizer = load_tokenizer(model_path, config.run.trust_remote_code)
    if settings.text_format == "chat" and not getattr(tokenizer, "chat_template", None):
        raise UserError(
            f"sft.text_format is 'chat' but {config.run.model} has no chat template: set "
            "sft.text_format=plain for a base model"
        )
    model = load_causal_lm(model_path, placement, config.run.trust_remote_code)
    collator = padding_free_collator(tokenizer) if settings.padding_free else None
    return SFTTrainer(
        model=model,
        args=arguments,
        train_dataset=Dataset.from_list(examples),
        processing_class=tokenizer,
        peft_config=lora_config(
            settings.lora_r,
            settings.lora_alpha,
            settings.lora_dropout,
            settings.lora_target_modules,
        ),
        callbacks=[progress_callback(status)],
        data_collator=collator,
    )


def padding_free_collator(tokenizer: Any) -> Any:
    """TRL's language-modeling collator in padding-free mode.

    A micro-batch becomes one row: its examples end to end, position ids restarting at 0 for
    each, which transformers reads as separate sequences (a block-diagonal causal mask under
    SDPA and eager attention; varlen kernels under flash attention). No padding token is
    computed, and labels stay per example (completion only; each example's first token, a
    prompt token, is never a target). The stage passes the collator itself rather than TRL's
    ``padding_free`` setting, which refuses ``max_length`` without packing; the dataset is still
    cut at ``max_length`` when TRL prepares it (tested). Packing would also merge examples
    across micro-batches and change the steps per epoch; this keeps them.
    """
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return DataCollatorForLanguageModeling(pad_token_id=pad, padding_free=True)


def last_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint (its trainer state written whole), or None."""
    return last_complete_checkpoint(folder)


def save_adapter(trainer: Any, target: Path) -> None:
    """Save the PEFT adapter (safetensors) and tokenizer; a kill leaves the old one or none."""
    with atomic_directory(target) as partial:
        trainer.model.save_pretrained(str(partial), safe_serialization=True)
        trainer.processing_class.save_pretrained(str(partial))


# ---------------------------------------------------------------------------------------------
# The stage.


def run(
    config: Any,
    run_dir: RunDirectory,
    variant: str | None = None,
    *,
    restart: bool = False,
) -> dict[str, Any]:
    """Fine-tune a LoRA adapter on one variant's instances; return the stage summary.

    Skipped when the adapter was already trained from the same instances and settings (unless
    ``restart``). An interrupted run with the same key resumes from its last checkpoint (the
    summary's ``resumed_from`` names it); outputs made from other instances or settings, or any
    with ``restart``, are set aside, never deleted, and training starts from step 0.
    """
    from refine_af.models import merge_adapter, resolve_model_path

    variant = check_variant(variant)
    settings: SFTConfig = config.sft
    source = instances_path(run_dir, variant)
    stage_key = key(config, run_dir, variant)
    folder = run_dir.path / STAGE_DIR / variant
    checkpoints, adapter = folder / "checkpoints", folder / "adapter"
    base_path = resolve_model_path(config.run.model)

    if not restart and is_done(config, run_dir, variant):
        return {**(read_json(folder / "summary.json") or {}), "skipped": True}
    if not restart and run_dir.is_done(stage_name(variant), stage_key) and adapter.is_dir():
        # Trained, only the merged copy is missing (sft.merge turned on afterwards).
        summary = read_json(folder / "summary.json") or {}
        summary["merged"] = str(merge_adapter(base_path, adapter, folder / "merged"))
        write_json_atomic(folder / "summary.json", summary)
        return {**summary, "skipped": True}
    run_dir.claim(folder, stage_key, restart, "fine-tuning checkpoints and adapter")

    with run_dir.stage(stage_name(variant), stage_key) as status:
        examples = training_examples(
            source, settings.max_train_instances, settings.text_format, config.run.seed
        )
        trainer = build_trainer(config, examples, checkpoints, base_path, status)
        trained_on = len(trainer.train_dataset)
        if trained_on == 0:
            raise UserError(
                f"sft.max_length={settings.max_length} leaves no example to train on once each is "
                f"formatted ({settings.text_format}; a chat template's own turns take ~30 tokens):"
                " raise sft.max_length"
            )
        use_step_progress(trainer, f"fine-tuning ({variant})", {"loss": "loss"})
        resume_from = last_checkpoint(checkpoints)
        output = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        save_adapter(trainer, adapter)
        write_records_atomic(folder / "metrics.jsonl", trainer.state.log_history)
        losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
        result: dict[str, Any] = {
            "variant": variant,
            "base_model": base_path,
            "adapter": str(adapter),
            "examples": len(examples),
            "examples_trained": trained_on,  # TRL drops an example with no completion token left
            "steps": trainer.state.global_step,
            "epochs": round(float(trainer.state.epoch or 0.0), 3),
            "train_loss": round(float(output.training_loss), 4),
            "first_logged_loss": round(losses[0], 4) if losses else None,
            "last_logged_loss": round(losses[-1], 4) if losses else None,
            "resumed_from": resume_from.name if resume_from else None,
            "train_seconds": round(float(output.metrics.get("train_runtime", 0.0)), 1),
        }
        del trainer, output  # free the model before merging loads another copy
        if settings.merge:
            merged = folder / "merged"
            if merged.exists():
                run_dir.set_aside(merged, "old")  # it holds the previous adapter
            result["merged"] = str(merge_adapter(base_path, adapter, merged))
        write_json_atomic(folder / "summary.json", result)
        status.summary.update(result)
    return result
