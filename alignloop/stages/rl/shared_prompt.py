"""Response log-probs with each distinct prompt computed ONCE per forward (GRPO's G samples share it).

Rows of an RL batch that hold the same prompt (a GRPO group) become one packed row::

    prompt[:-1] | prompt[-1] response_1 | prompt[-1] response_2 | ... | prompt[-1] response_G
    shared (0)  | branch 1              | branch 2              |     | branch G

as in DPO's shared-prompt batches (stages/dpo/batch.py): the last prompt token opens every branch because it
predicts each response's first token, a 4D attention mask lets a branch see the prefix and itself only, and
each branch's position ids continue from the prompt. Every response token therefore gets exactly the hidden
state of a plain ``prompt + response`` row, so log-probs and their gradients are those of ``forward_logprobs``
(up to floating-point summation order), while a group of G costs ``P + G·(R+1)`` tokens instead of
``G·(P+R)``: the prompt is usually most of them. Only valid response tokens enter a branch (no right padding).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from alignloop.data.collate import IGNORE_INDEX
from alignloop.models.head import token_logprobs
from alignloop.models.shared_prompt import (
    PAD_SEGMENT,
    SHARED_SEGMENT,
    branch_attention_mask,
    mask_dtype_for,
    pack_pairs,
)
from alignloop.rollout.logprobs import (
    accepts_logits_to_keep,
    effective_temperature,
    model_device,
)

__all__ = ["SharedPromptBatch", "shared_prompt_batch", "shared_prompt_logprobs"]


@dataclass
class SharedPromptBatch:
    input_ids: torch.Tensor  # [rows, W] left padded, one row per distinct prompt
    position_ids: torch.Tensor  # [rows, W]
    segments: torch.Tensor  # [rows, W] -1 pad, 0 prompt prefix, k = k-th branch of the row
    owner: torch.Tensor  # [rows, W] which prompt group a token belongs to (-1 pad)
    labels: torch.Tensor  # [rows, keep] the token each of the last `keep` positions predicts (-100: none)
    source: torch.Tensor  # [n_scored] flat index into labels of each scored position
    target: torch.Tensor  # [n_scored] flat index into the [N, R] response grid it fills
    shape: tuple[int, int]  # (N, R) of the original rows
    images: list[tuple] | None = None  # [rows] each packed row's prompt images, in prefix order (VLMs)

    @property
    def rows(self) -> int:
        return self.input_ids.shape[0]


def shared_prompt_batch(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, response_start: int, pad_id: int = 0,
    images: list[tuple] | None = None,
) -> SharedPromptBatch:
    """Group rows of ``[N, P + R]`` (left-padded prompt, right-padded response) by identical prompt tokens.

    Groups then share packed rows when they fit in the longest group's length (first-fit decreasing, as DPO's
    pairs): a row holds all its groups' prefixes first and all their branches last, so it ends in branch tokens.
    With ``images`` (one tuple per row), a group is identical tokens AND the same image objects: two prompts
    that differ only in their image share no prefix.
    """
    if response_start < 1:
        raise ValueError(f"response_start must be >= 1, got {response_start}")
    ids, mask = input_ids.cpu(), attention_mask.cpu().bool()
    n, width = ids.shape
    response_width = width - response_start
    groups: dict[tuple, list[int]] = {}
    for i in range(n):
        prompt = tuple(ids[i, :response_start][mask[i, :response_start]].tolist())
        if not prompt:
            raise ValueError(f"row {i} has no prompt token (nothing predicts its first response token)")
        seen = tuple(id(image) for image in images[i]) if images is not None else ()
        groups.setdefault((prompt, seen), []).append(i)
    lengths = {i: _response_length(mask[i, response_start:]) for i in range(n)}
    layouts = [(prompt, members) for (prompt, _), members in groups.items()]
    sizes = [len(prompt) + sum(lengths[i] + 1 for i in members) - 1 for prompt, members in layouts]
    rows: list[tuple[list[int], list[int], list[int], list[int], list[tuple[int, int, int]]]] = []
    packed = pack_pairs(sizes)
    for members_of_row in packed:
        row_ids, segs, pos, owner = [], [], [], []
        for g in members_of_row:  # every prefix first ...
            prompt = layouts[g][0]
            row_ids += prompt[:-1]
            segs += [SHARED_SEGMENT] * (len(prompt) - 1)
            pos += range(len(prompt) - 1)
            owner += [g] * (len(prompt) - 1)
        scored: list[tuple[int, int, int]] = []  # (column in row, original row, response column)
        branch = 0
        for g in members_of_row:  # ... then every branch
            prompt, members = layouts[g]
            p = len(prompt)
            for i in members:
                branch += 1
                length, start = lengths[i], len(row_ids)
                row_ids += [prompt[-1], *ids[i, response_start : response_start + length].tolist()]
                segs += [branch] * (length + 1)
                pos += range(p - 1, p + length)
                owner += [g] * (length + 1)
                scored += [(start + t, i, t) for t in range(length) if mask[i, response_start + t]]
        rows.append((row_ids, segs, pos, owner, scored))
    row_width = max(len(r[0]) for r in rows)
    keep = max(sum(1 for s in r[1] if s > SHARED_SEGMENT) for r in rows)  # rows end with branch tokens
    shape = (len(rows), row_width)
    out_ids, out_pos = torch.full(shape, pad_id, dtype=torch.long), torch.zeros(shape, dtype=torch.long)
    out_seg, out_owner = torch.full(shape, PAD_SEGMENT, dtype=torch.long), torch.full(shape, -1, dtype=torch.long)
    labels = torch.full((len(rows), keep), IGNORE_INDEX, dtype=torch.long)
    source, target = [], []
    for r, (row_ids, segs, pos, owner, scored) in enumerate(rows):
        cols = slice(row_width - len(row_ids), row_width)
        out_ids[r, cols], out_pos[r, cols] = torch.tensor(row_ids), torch.tensor(pos)
        out_seg[r, cols], out_owner[r, cols] = torch.tensor(segs), torch.tensor(owner)
        for col, i, t in scored:
            label_col = col - len(row_ids) + keep
            labels[r, label_col] = int(ids[i, response_start + t])
            source.append(r * keep + label_col)
            target.append(i * response_width + t)
    return SharedPromptBatch(
        input_ids=out_ids, position_ids=out_pos, segments=out_seg, owner=out_owner, labels=labels,
        source=torch.tensor(source, dtype=torch.long), target=torch.tensor(target, dtype=torch.long),
        shape=(n, response_width),
        images=None if images is None else [
            tuple(image for g in members_of_row for image in images[layouts[g][1][0]]) for members_of_row in packed
        ],
    )


def _response_length(response_mask: torch.Tensor) -> int:
    valid = response_mask.nonzero().flatten()
    return int(valid[-1]) + 1 if len(valid) else 0


def shared_prompt_logprobs(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_start: int,
    temperature: float = 1.0, pad_id: int = 0, images: list[tuple] | None = None,
) -> torch.Tensor:
    """``forward_logprobs``' result ``[N, R]`` (0 at response padding) from one shared-prompt forward."""
    batch = shared_prompt_batch(input_ids, attention_mask, response_start, pad_id, images)
    device = model_device(model)
    inputs = {
        "input_ids": batch.input_ids.to(device),
        "position_ids": batch.position_ids.to(device),
        "attention_mask": branch_attention_mask(batch.segments, batch.owner, mask_dtype_for(model)).to(device),
        "images": batch.images,
    }
    keep = batch.labels.shape[1]
    logps = token_logprobs(model, inputs, batch.labels.to(device), effective_temperature(temperature),
                           logits_to_keep=keep if accepts_logits_to_keep(model) else None)
    n, width = batch.shape
    out = torch.zeros(n * width, dtype=logps.dtype, device=device)
    out = out.index_put((batch.target.to(device),), logps.flatten()[batch.source.to(device)])
    return out.view(n, width)
