"""A KV cache for the decode loop in ``refine_af.generation``: preallocated, written in place."""

from __future__ import annotations

from typing import Any

import torch
from transformers import Cache
from transformers.cache_utils import DynamicLayer

# Positions a full buffer grows by (at least; a quarter of its size when that is more). Most rows
# of a batch stop long before ``max_new_tokens`` (stop strings, EOS), so sizing every buffer for
# the worst case held memory that was never written: 1.1 GB of the eval's 3.5 GB peak.
GROWTH = 32


class PreallocatedLayer(DynamicLayer):
    """One layer's keys and values in buffers written in place, grown in chunks.

    transformers' ``DynamicLayer`` appends each step's key and value with ``torch.cat``, which
    copies the layer's whole cache every step; at batch 64 over 300-token prompts that copying
    cost as much as the model's matrix products. Here a step writes its position in place and
    attention reads a view of the filled part; a full buffer is copied into a larger one once
    per ``GROWTH`` positions or more.
    """

    is_sliding = False
    is_compileable = False

    def __init__(self, keys: Any, values: Any, length: int = 0) -> None:
        super().__init__()
        self.key_buffer, self.value_buffer = keys, values
        self.device = keys.device
        self.is_initialized = True
        self.set_length(length)

    def set_length(self, length: int) -> None:
        self.length = length
        self.keys = self.key_buffer[:, :, :length]
        self.values = self.value_buffer[:, :, :length]

    def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> Any:
        end = self.length + key_states.shape[-2]
        if end > self.key_buffer.shape[-2]:
            self._grow(end)
        self.key_buffer[:, :, self.length : end] = key_states
        self.value_buffer[:, :, self.length : end] = value_states
        self.set_length(end)
        return self.keys, self.values

    def _grow(self, needed: int) -> None:
        capacity = self.key_buffer.shape[-2]
        capacity = max(needed, capacity + max(GROWTH, capacity // 4))
        for name in ("key_buffer", "value_buffer"):
            buffer = getattr(self, name)
            larger = buffer.new_zeros((*buffer.shape[:2], capacity, buffer.shape[-1]))
            larger[:, :, : self.length] = buffer[:, :, : self.length]
            setattr(self, name, larger)
        self.set_length(self.length)

    def get_seq_length(self) -> int:
        return self.length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def select_rows(self, index: Any) -> None:
        """Keep only the batch rows in ``index``: one copy of the filled part."""
        for name in ("key_buffer", "value_buffer"):
            buffer = getattr(self, name)
            kept = buffer.new_empty((len(index), *buffer.shape[1:]))
            kept[:, :, : self.length] = buffer[index, :, : self.length]
            setattr(self, name, kept)
        self.set_length(self.length)


def preallocated_cache(model: Any, batch_size: int, capacity: int) -> Any:
    """An empty cache for ``model``'s layers, ``batch_size`` rows of ``capacity`` positions.

    The buffers start zeroed: the left padding between a short group's prompts and the longest
    prompt is masked, but a masked NaN from uninitialized memory would still poison attention.
    """
    config = model.config.get_text_config()
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    parameter = next(model.parameters())
    shape = (batch_size, heads, capacity, dim)
    layers = [
        PreallocatedLayer(
            torch.zeros(shape, dtype=parameter.dtype, device=parameter.device),
            torch.zeros(shape, dtype=parameter.dtype, device=parameter.device),
        )
        for _ in range(config.num_hidden_layers)
    ]
    return Cache(layers=layers)


def window(cache: Any, rows: slice, start: int, filled: int = 0) -> Any:
    """A cache over ``rows`` of ``cache`` from position ``start`` on, writing into its buffers:
    a prefill group's keys and values land in the decode cache with no copy in between.

    ``filled``: positions (from ``start``) that already hold keys and values, which the new
    tokens attend to and which are kept; new positions are written after them. A shared prompt
    prefix is read this way.
    """
    return Cache(
        layers=[
            PreallocatedLayer(
                layer.key_buffer[rows, :, start:], layer.value_buffer[rows, :, start:], filled
            )
            for layer in cache.layers
        ]
    )


def copy_prefix(
    cache: Any, source: int, rows: slice, length: int, source_cache: Any = None
) -> None:
    """Copy the first ``length`` positions of row ``source`` into ``rows``, in every layer: the
    keys and values of a prompt prefix computed once, for each row whose prompt starts with it.
    ``source_cache``: the cache holding row ``source`` (default: ``cache`` itself).
    """
    origin = cache if source_cache is None else source_cache
    for layer, from_layer in zip(cache.layers, origin.layers, strict=True):
        for buffer, from_buffer in (
            (layer.key_buffer, from_layer.key_buffer),
            (layer.value_buffer, from_layer.value_buffer),
        ):
            buffer[rows, :, :length] = from_buffer[source : source + 1, :, :length]
