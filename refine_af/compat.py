"""The library releases refine_af is tested with, and the private APIs it relies on.

``pyproject.toml`` bounds trl, transformers, peft and lm-eval to the releases the tests pass with
(:data:`TESTED`; a test keeps the two equal). Inside that range some speed-ups call private parts
of TRL and transformers, which a later release may rename without notice:

* the decode loop (:mod:`refine_af.generation`, :mod:`refine_af.kv_cache`) subclasses
  transformers' ``cache_utils.DynamicLayer`` and builds ``Cache(layers=...)``; it has no public
  equivalent, so without them a command stops at its start with one line naming the range;
* stage 2's shared-prompt loss (:mod:`refine_af.shared_prompt`) overrides GRPOTrainer's
  ``_get_per_token_logps_and_entropies`` and ``_prepare_inputs`` (and swaps
  ``shuffle_sequence_dict``), and under gradient checkpointing sets the decoder layers'
  ``_can_checkpoint_with_cache``; without them stage 2 runs TRL's own GRPOTrainer;
* stage 2's fast sampling hands GRPOTrainer a ``rollout_func`` (experimental in TRL); without
  it stage 2 samples with TRL's own generation.

Each probe looks at names and signatures only; nothing is run. A fallback prints one note.
"""

from __future__ import annotations

import inspect
from importlib import metadata
from typing import Any

from refine_af.console import note
from refine_af.errors import UserError

# The version ranges of pyproject.toml's dependencies that the tests passed with.
TESTED = {
    "trl": ">=1.13,<1.17",
    "transformers": ">=5.0,<5.26",
    "peft": ">=0.17,<0.22",
    "lm-eval": ">=0.4.9,<0.4.14",
}
# The parameters refine_af passes to GRPOTrainer._get_per_token_logps_and_entropies.
LOGPS_PARAMETERS = (
    "model",
    "input_ids",
    "attention_mask",
    "logits_to_keep",
    "batch_size",
    "compute_entropy",
    "compute_aux_loss",
)


def installed(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def tested_range(*packages: str) -> str:
    """``trl 1.16.0 (tested: >=1.13,<1.17)``, for each package: what a one-line error names."""
    return ", ".join(f"{p} {installed(p)} (tested: {TESTED[p]})" for p in packages)


def _parameters(function: Any) -> set[str]:
    try:
        return set(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return set()


def decode_cache_missing() -> list[str]:
    """What the decode loop's KV cache needs from transformers and this release lacks."""
    import transformers

    missing = []
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:
        missing.append("transformers.cache_utils.DynamicLayer")
    else:
        if not callable(getattr(DynamicLayer, "update", None)):
            missing.append("DynamicLayer.update")
    cache = getattr(transformers, "Cache", None)
    if cache is None or "layers" not in _parameters(cache.__init__):
        missing.append("transformers.Cache(layers=...)")
    return missing


def require_decode_cache() -> None:
    """Stop with one line when transformers lacks what the decode loop's KV cache subclasses."""
    missing = decode_cache_missing()
    if missing:
        raise UserError(
            f"this transformers release has no {', '.join(missing)}, which refine_af's decode "
            f"loop builds on: install a tested release ({tested_range('transformers')}), e.g. "
            f"pip install 'transformers{TESTED['transformers']}'"
        )


def shared_prompt_missing(model: Any = None, gradient_checkpointing: bool = False) -> list[str]:
    """What the shared-prompt GRPO loss overrides or sets and this TRL/transformers lacks.

    ``model`` (the policy) is looked at only under ``gradient_checkpointing``: its decoder
    layers must offer ``_can_checkpoint_with_cache`` there.
    """
    from trl import GRPOTrainer

    missing = decode_cache_missing()
    logps = getattr(GRPOTrainer, "_get_per_token_logps_and_entropies", None)
    if logps is None or not set(LOGPS_PARAMETERS) <= _parameters(logps):
        missing.append("GRPOTrainer._get_per_token_logps_and_entropies")
    if "generation_batch" not in _parameters(getattr(GRPOTrainer, "_prepare_inputs", None)):
        missing.append("GRPOTrainer._prepare_inputs")
    if gradient_checkpointing and model is not None:
        layers = [m for m in model.modules() if hasattr(type(m), "_can_checkpoint_with_cache")]
        if not layers:
            missing.append("_can_checkpoint_with_cache on the decoder layers")
    return missing


def rollout_func_supported() -> bool:
    """Does GRPOTrainer take a ``rollout_func`` (TRL's experimental custom sampling)?"""
    from trl import GRPOTrainer

    return "rollout_func" in _parameters(GRPOTrainer.__init__)


def use_shared_prompts(model: Any = None, gradient_checkpointing: bool = False) -> bool:
    """True when the shared-prompt loss can run; otherwise a note and TRL's own loss."""
    missing = shared_prompt_missing(model, gradient_checkpointing)
    if missing:
        note(
            f"rl.share_prompts is off for this run: {', '.join(missing)} not found "
            f"({tested_range('trl', 'transformers')}); TRL's own GRPO loss is used"
        )
    return not missing


def use_rollout_func() -> bool:
    """True when GRPOTrainer takes a ``rollout_func``; otherwise a note and TRL's sampling."""
    if rollout_func_supported():
        return True
    note(
        "rl.fast_generation is off for this run: GRPOTrainer takes no rollout_func "
        f"({tested_range('trl')}); TRL's own generation samples the completions"
    )
    return False


def check_rl_support(settings: Any) -> None:
    """Stage 2's check: the decode loop's cache must exist when refine_af samples; the other
    private APIs only decide fallbacks, reported when the trainer is built."""
    samples_itself = settings.trainer == "grpo" and settings.fast_generation
    if samples_itself and not settings.use_vllm and rollout_func_supported():
        require_decode_cache()


def check_generation_support(config: Any) -> None:
    """Stages 1 and 3: the decode loop generates unless ``run.generation_backend`` is vllm."""
    if config.run.generation_backend != "vllm":
        require_decode_cache()
