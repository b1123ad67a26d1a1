"""A preallocated KV cache for the decode loop: one buffer per layer, written in place, never concatenated.

transformers' ``DynamicCache`` grows by ``torch.cat`` at every step, which copies each layer's whole key and value
tensors once per generated token: at batch 64 on SmolLM2-135M that is more bytes moved than the weights themselves
late in a response. ``PreallocatedLayer`` allocates ``[B, H, capacity, D]`` once (prompt + max_new_tokens), writes
each step's keys and values into the next slot and hands attention a view of the filled part. The attention kernel
sees the same values in the same order, so samples are identical to ``DynamicCache``'s (tested).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer


class PreallocatedLayer(DynamicLayer):
    """``DynamicLayer`` with fixed-capacity buffers: ``update`` writes in place and returns views up to the length."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.length = 0
        self.key_buffer: torch.Tensor | None = None
        self.value_buffer: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        batch, heads, _, key_dim = key_states.shape
        self.key_buffer = key_states.new_empty((batch, heads, self.capacity, key_dim))
        self.value_buffer = value_states.new_empty((batch, heads, self.capacity, value_states.shape[-1]))
        self.length = 0
        self.is_initialized = True

    def _grow(self, needed: int) -> None:
        """More room than planned (a caller that decodes past ``capacity``): double, copying the filled part."""
        capacity = max(needed, 2 * self.capacity)
        keys, values = self.key_buffer, self.value_buffer
        self.key_buffer = keys.new_empty((*keys.shape[:2], capacity, keys.shape[-1]))
        self.value_buffer = values.new_empty((*values.shape[:2], capacity, values.shape[-1]))
        self.key_buffer[:, :, : self.length] = keys[:, :, : self.length]
        self.value_buffer[:, :, : self.length] = values[:, :, : self.length]
        self.capacity = capacity

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            self._grow(end)
        self.key_buffer[:, :, self.length : end] = key_states
        self.value_buffer[:, :, self.length : end] = value_states
        self.length = end
        self.keys = self.key_buffer[:, :, :end]
        self.values = self.value_buffer[:, :, :end]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length if self.is_initialized else 0

    def get_max_length(self) -> int:
        return -1  # grows when needed, like DynamicLayer

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Keep (or repeat) batch rows ``beam_idx``: the buffers are gathered into new ones of that batch size."""
        if self.length == 0:
            return
        index = beam_idx.to(self.key_buffer.device)
        self.key_buffer = self.key_buffer.index_select(0, index)
        self.value_buffer = self.value_buffer.index_select(0, index)
        self.keys = self.key_buffer[:, :, : self.length]
        self.values = self.value_buffer[:, :, : self.length]

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.reorder_cache(indices)

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("PreallocatedLayer is for left-to-right decoding; it is never cropped")

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise NotImplementedError("PreallocatedLayer: use reorder_cache with repeated indices")

    def reset(self) -> None:
        self.key_buffer = self.value_buffer = None
        self.length = 0
        super().reset()


def make_decode_cache(model: torch.nn.Module, capacity: int, preallocate: bool) -> Cache | None:
    """The cache for one batch's prefill and decode: a preallocated one with room for ``capacity`` tokens per row
    when ``preallocate`` and the model's layers are all plain full-attention ones (no sliding window, no linear
    attention), else None (the model then builds its own ``DynamicCache``)."""
    config = getattr(model, "config", None)
    if not preallocate or config is None:
        return None
    try:
        layers = DynamicCache(config=config).layers
    except Exception:  # a config the cache cannot read: let the model decide  # noqa: BLE001
        return None
    if not layers or any(type(layer) is not DynamicLayer for layer in layers):
        return None
    return Cache(layers=[PreallocatedLayer(capacity) for _ in layers])
