"""A KV cache for the decode loop in ``refine_af.generation``: preallocated, written in place."""

from __future__ import annotations

from typing import Any

import torch
from transformers import Cache
from transformers.cache_utils import DynamicLayer


class PreallocatedLayer(DynamicLayer):
    """One layer's keys and values in buffers sized for the whole generation.

    transformers' ``DynamicLayer`` appends each step's key and value with ``torch.cat``, which
    copies the layer's whole cache every step; at batch 64 over 300-token prompts that copying
    cost as much as the model's matrix products. Here a step writes its position in place and
    attention reads a view of the filled part.
    """

    is_sliding = False
    is_compileable = False

    def __init__(self, keys: Any, values: Any) -> None:
        super().__init__()
        self.key_buffer, self.value_buffer = keys, values
        self.device = keys.device
        self.is_initialized = True
        self.set_length(0)

    def set_length(self, length: int) -> None:
        self.length = length
        self.keys = self.key_buffer[:, :, :length]
        self.values = self.value_buffer[:, :, :length]

    def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> Any:
        end = self.length + key_states.shape[-2]
        if end > self.key_buffer.shape[-2]:
            raise RuntimeError(f"cache holds {self.key_buffer.shape[-2]} positions, not {end}")
        self.key_buffer[:, :, self.length : end] = key_states
        self.value_buffer[:, :, self.length : end] = value_states
        self.set_length(end)
        return self.keys, self.values

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


def preallocated_cache(prefilled: Any, batch_size: int, capacity: int) -> Any:
    """An empty cache shaped like ``prefilled``'s layers, for ``batch_size`` rows.

    The buffers start zeroed: the left padding between a short group's prompts and the longest
    prompt is masked, but a masked NaN from uninitialized memory would still poison attention.
    """
    layers = []
    for layer in prefilled.layers:
        heads, dim = layer.keys.shape[1], layer.keys.shape[-1]
        shape = (batch_size, heads, capacity, dim)
        layers.append(
            PreallocatedLayer(
                torch.zeros(shape, dtype=layer.keys.dtype, device=layer.keys.device),
                torch.zeros(shape, dtype=layer.values.dtype, device=layer.values.device),
            )
        )
    return Cache(layers=layers)
