"""Log-probs of completions that share prompts, each prompt computed once.

Stage 2 samples ``num_generations`` completions per prompt, and TRL's GRPO loss and reference pass
run every (prompt + completion) row through the model whole. With the default's ~110-token
prompts and <= 48-token completions the prompt is ~70% of each row, computed four times. Here a
batch's distinct prompts run once, their keys and values are repeated for each of their rows, and
only the completions (with the prompt's last token, whose logits score the first completion
token) run per row. The log-probs are the same numbers TRL computes (same positions, same mask,
the same fused LM head), and gradients reach the adapter through the shared keys and values.
Under gradient checkpointing both passes are recomputed in the backward pass like any layer:
the caches here are pure functions of their inputs, so replaying a layer is safe.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from transformers import Cache
from transformers.cache_utils import DynamicLayer


class RecordingLayer(DynamicLayer):
    """Keeps the keys and values of the pass that writes it (a replay overwrites them)."""

    def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> Any:
        self.keys, self.values = key_states, value_states
        self.is_initialized = True
        return key_states, value_states

    def get_seq_length(self) -> int:
        return 0  # the prompt pass starts from nothing


class PrefixLayer(DynamicLayer):
    """A fixed prefix that every pass reads in front of its own keys and values, never grown."""

    def __init__(self, keys: Any, values: Any) -> None:
        super().__init__()
        self.keys, self.values = keys, values
        self.device = keys.device
        self.is_initialized = True

    def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> Any:
        return torch.cat([self.keys, key_states], dim=-2), torch.cat(
            [self.values, value_states], dim=-2
        )


def can_share(model: Any) -> bool:
    """Full attention in every layer (no sliding windows or recurrent state): the keys and values
    of a prompt are all a later position reads of it."""
    config = model.config.get_text_config()
    layer_types = getattr(config, "layer_types", None) or ["full_attention"]
    return all(kind == "full_attention" for kind in layer_types) and not getattr(
        config, "sliding_window", None
    )


@contextlib.contextmanager
def cache_under_checkpointing(backbone: Any) -> Iterator[None]:
    """Let checkpointed decoder layers keep the cache they are given (transformers drops it,
    since a replayed layer would append to an ordinary cache twice; these caches do not)."""
    layers = [m for m in backbone.modules() if hasattr(type(m), "_can_checkpoint_with_cache")]
    for layer in layers:
        layer._can_checkpoint_with_cache = True
    try:
        yield
    finally:
        for layer in layers:
            del layer._can_checkpoint_with_cache


def distinct_prompts(prompt_ids: Any, prompt_mask: Any) -> tuple[Any, Any]:
    """The first row of each distinct (prompt, mask), and each row's index into those."""
    seen: dict[tuple[int, ...], int] = {}
    rows = torch.cat([prompt_ids, prompt_mask], dim=1).tolist()
    index = [seen.setdefault(tuple(row), len(seen)) for row in rows]
    first = [index.index(i) for i in range(len(seen))]
    device = prompt_ids.device
    return torch.tensor(first, device=device), torch.tensor(index, device=device)


def shuffle_groups(batch: dict[str, Any], group_size: int) -> dict[str, Any]:
    """TRL's ``shuffle_sequence_dict`` over whole groups of ``group_size`` consecutive rows (one
    prompt's completions), so the micro-batches cut from the result hold whole groups."""
    size = len(next(v for v in batch.values() if v is not None))
    if size % group_size:
        raise ValueError(f"a batch of {size} rows is not made of groups of {group_size}")
    groups = torch.randperm(size // group_size)
    order = (groups[:, None] * group_size + torch.arange(group_size)).flatten()

    def permute(value: Any) -> Any:
        if value is None or (isinstance(value, torch.Tensor) and value.ndim == 0):
            return value
        if isinstance(value, torch.Tensor):
            return value[order]
        return [value[i] for i in order]

    return {key: permute(value) for key, value in batch.items()}


def completion_logps(
    causal_lm: Any,
    model: Any,
    input_ids: Any,
    attention_mask: Any,
    logits_to_keep: int,
) -> Any:
    """TRL's fused-head outputs (``log_probs``, ``entropy``) for the last ``logits_to_keep``
    positions of each row, each distinct prompt computed once.

    ``causal_lm`` is the transformers model (for its backbone); ``model`` is what TRL calls (the
    PEFT wrapper with its active adapter, or the model itself).
    """
    prompt_length = input_ids.size(1) - logits_to_keep
    first, index = distinct_prompts(input_ids[:, :prompt_length], attention_mask[:, :prompt_length])
    backbone = causal_lm.base_model
    head = prompt_length - 1  # the prompt's last token runs with the completion it predicts
    layers = causal_lm.config.get_text_config().num_hidden_layers
    recorded = Cache(layers=[RecordingLayer() for _ in range(layers)])
    with cache_under_checkpointing(backbone):
        backbone(
            input_ids=input_ids[first, :head],
            attention_mask=attention_mask[first, :head],
            cache=recorded,
        )
        prefix = Cache(
            layers=[
                PrefixLayer(layer.keys.index_select(0, index), layer.values.index_select(0, index))
                for layer in recorded.layers
            ]
        )
        del recorded
        tail = input_ids[:, head:]
        labels = tail.masked_fill(attention_mask[:, head:] == 0, -100)
        return model(
            input_ids=tail,
            attention_mask=attention_mask,
            cache=prefix,
            labels=labels,
            fused_lm_head=True,
        )


class SharedPromptMixin:
    """Mixed into TRL's ``GRPOTrainer``: the loss and the reference log-probs compute each prompt
    once per micro-batch (:func:`completion_logps`), and the generation batch is shuffled by whole
    prompt groups so that a micro-batch holds a prompt's completions together. The optimizer step
    sums the same per-row losses either way; only their grouping into micro-batches changes.
    Anything this does not cover (images, MoE auxiliary losses, sliding-window attention, FSDP or
    DeepSpeed) runs through TRL's own code."""

    def _prepare_inputs(self, generation_batch: dict[str, Any]) -> dict[str, Any]:
        from unittest import mock

        import trl.trainer.grpo_trainer as grpo

        if not self.model.training or not hasattr(grpo, "shuffle_sequence_dict"):
            return super()._prepare_inputs(generation_batch)
        by_rows = grpo.shuffle_sequence_dict

        def by_group(batch: dict[str, Any]) -> dict[str, Any]:
            try:
                return shuffle_groups(batch, self.num_generations)
            except ValueError:  # not whole groups here: TRL's own shuffle
                return by_rows(batch)

        with mock.patch.object(grpo, "shuffle_sequence_dict", by_group):
            return super()._prepare_inputs(generation_batch)

    def _get_per_token_logps_and_entropies(
        self,
        model: Any,
        input_ids: Any,
        attention_mask: Any,
        logits_to_keep: int,
        batch_size: int | None = None,
        compute_entropy: bool = False,
        compute_aux_loss: bool = False,
        **inputs: Any,
    ) -> tuple[Any, Any, Any]:
        causal_lm = self.accelerator.unwrap_model(model)
        if hasattr(causal_lm, "get_base_model"):
            causal_lm = causal_lm.get_base_model()
        extra = any(value is not None for value in inputs.values())
        # FSDP and DeepSpeed gather sharded weights in the wrapped model's own forward, which the
        # prompt pass (the backbone called directly) would bypass.
        sharded = getattr(self, "is_fsdp_enabled", False) or getattr(
            self, "is_deepspeed_enabled", False
        )
        if compute_aux_loss or extra or sharded or not can_share(causal_lm):
            return super()._get_per_token_logps_and_entropies(
                model,
                input_ids,
                attention_mask,
                logits_to_keep,
                batch_size=batch_size,
                compute_entropy=compute_entropy,
                compute_aux_loss=compute_aux_loss,
                **inputs,
            )
        batch_size = batch_size or input_ids.size(0)
        logps, entropies = [], []
        for start in range(0, input_ids.size(0), batch_size):
            rows = slice(start, start + batch_size)
            with self.accelerator.autocast():
                outputs = completion_logps(
                    causal_lm, model, input_ids[rows], attention_mask[rows], logits_to_keep
                )
            logps.append(outputs.log_probs[:, -logits_to_keep:])
            if compute_entropy:
                entropies.append(outputs.entropy[:, -logits_to_keep:])
        return torch.cat(logps), torch.cat(entropies) if compute_entropy else None, None
