"""Collators: padded batches and packed batches as tensors a causal LM takes directly (``model(**batch)``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from alignloop.data.chat import TokenizedExample
from alignloop.data.packing import PackedRow, example_fields

IGNORE_INDEX = -100  # labels with this value carry no loss (torch / transformers convention)


def pad_batch(
    examples: Sequence[TokenizedExample | Mapping], pad_id: int, side: str = "right"
) -> dict[str, torch.Tensor]:
    """Pad to the longest example: ``input_ids``, ``attention_mask`` and ``labels`` (``-100`` off the loss mask).

    Labels are aligned with ``input_ids`` (the model shifts them). Use ``side="left"`` for generation prompts.
    """
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left' (got {side!r})")
    fields = [example_fields(example) for example in examples]
    width = max((len(ids) for ids, _ in fields), default=0)
    input_ids = torch.full((len(fields), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(fields), width), dtype=torch.long)
    labels = torch.full((len(fields), width), IGNORE_INDEX, dtype=torch.long)
    for row, (ids, mask) in enumerate(fields):
        cols = slice(0, len(ids)) if side == "right" else slice(width - len(ids), width)
        ids_tensor = torch.tensor(ids, dtype=torch.long)
        input_ids[row, cols] = ids_tensor
        attention_mask[row, cols] = 1
        labels[row, cols] = torch.where(torch.tensor(mask, dtype=torch.bool), ids_tensor, IGNORE_INDEX)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def sequence_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """Which packed example each token belongs to: a new one starts wherever positions do not step by +1."""
    step = torch.diff(position_ids, prepend=position_ids[:, :1] - 1, dim=-1)
    return (step != 1).cumsum(-1)


def block_causal_mask(position_ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Additive 4D mask ``[B, 1, L, L]``: 0 where a token may attend (same example, not in the future), else min.

    Additive float masks work with both the ``eager`` and ``sdpa`` attention of transformers (a float32 mask
    is accepted by sdpa for bf16/fp16 queries too); flash-attention takes no 4D mask.
    """
    seq = sequence_ids(position_ids)
    length = position_ids.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    allowed = (seq[:, :, None] == seq[:, None, :]) & causal
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def collate_packed(
    rows: Sequence[PackedRow], pad_id: int, *, block_mask: bool = True, mask_dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """Tensors for packed rows: ``input_ids``, ``position_ids``, ``labels`` and (by default) a 4D ``attention_mask``.

    Padding on the right gets positions 0, 1, ... of its own, so it forms a separate block and never mixes
    with a real example. With ``block_mask=False`` no attention mask is returned and transformers derives the
    block-diagonal mask from the restarting ``position_ids`` itself, but only when the forward pass has no
    KV cache: call the model with ``use_cache=False`` (transformers 5 creates a cache by default when the
    config has ``use_cache=True``, and then silently attends across examples). That path also suits
    flash-attention, which cannot take a 4D mask.
    """
    width = max((len(row) for row in rows), default=0)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for r, row in enumerate(rows):
        n = len(row)
        ids = torch.tensor(row.input_ids, dtype=torch.long)
        input_ids[r, :n] = ids
        position_ids[r, :n] = torch.tensor(row.position_ids, dtype=torch.long)
        position_ids[r, n:] = torch.arange(width - n)
        labels[r, :n] = torch.where(torch.tensor(row.loss_mask, dtype=torch.bool), ids, IGNORE_INDEX)
    batch = {"input_ids": input_ids, "position_ids": position_ids, "labels": labels}
    if block_mask:
        batch["attention_mask"] = block_causal_mask(position_ids, mask_dtype)
    return batch
