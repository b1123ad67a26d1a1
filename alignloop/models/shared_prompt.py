"""Shared-prompt packing: score many completions in ONE forward pass, each prompt and completion encoded once.

A batch of groups (a prompt and its completions) becomes a few rows. Inside a row a group is laid out as
``[prompt][completion 1][completion 2]...``. Completion k's tokens attend to the prompt and to their own
earlier tokens, never to another completion, and their positions continue from the end of the prompt, so
each completion's score is the one it gets when ``prompt + completion`` is encoded alone (a test checks it).
Groups are placed into rows first-fit decreasing, so short groups share a row instead of being padded.

Compared with padding every ``prompt + completion`` to the longest in the batch (what a plain pairwise
collator does), this saves the second copy of every prompt and most padding. The price is a dense 4D
attention mask per row (``rows × W × W`` booleans), which sdpa and eager attention accept; flash-attention
does not take one, so ``share_prompt=False`` with packing off is not needed there: use sdpa.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from alignloop.errors import ModelError

# segment ids of a packed row: padding, the shared prompt prefix, then branch k = k (1, 2, ...)
PAD_SEGMENT, SHARED_SEGMENT = -1, 0


@dataclass
class ScoreGroup:
    """A prompt (token ids) and the completions (token ids) to score after it."""

    prompt_ids: list[int]
    completions: list[list[int]]


@dataclass
class PackedGroups:
    """Rows ready for one forward pass, plus where each unique completion's last token sits.

    ``index[g][k]`` is the row of ``end_rows``/``end_cols`` (the unique completion) for completion ``k`` of
    input group ``g``; identical ``(prompt, completion)`` pairs anywhere in the batch share one entry.
    """

    input_ids: torch.Tensor  # [R, W] long
    position_ids: torch.Tensor  # [R, W] long
    allowed: torch.Tensor  # [R, W, W] bool: token i may attend to token j
    end_rows: torch.Tensor  # [U] long
    end_cols: torch.Tensor  # [U] long
    index: list[list[int]] = field(default_factory=list)
    n_tokens: int = 0  # real (non-pad) tokens encoded

    @property
    def n_unique(self) -> int:
        return int(self.end_rows.numel())

    def to(self, device: torch.device | str) -> "PackedGroups":
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return PackedGroups(
            move(self.input_ids), move(self.position_ids), move(self.allowed),
            move(self.end_rows), move(self.end_cols), self.index, self.n_tokens,
        )


@dataclass
class _Segment:
    """One laid-out block: a prompt followed by some of its unique completions."""

    prompt_ids: list[int]
    completions: list[tuple[int, list[int]]]  # (unique id, token ids)

    def __len__(self) -> int:
        return len(self.prompt_ids) + sum(len(ids) for _, ids in self.completions)


def _segments(
    groups: list[ScoreGroup], share_prompt: bool, max_segment: int | None
) -> tuple[list[_Segment], list[list[int]]]:
    """Deduplicate (prompt, completion) pairs, merge groups with the same prompt, split into segments."""
    unique: dict[tuple[tuple[int, ...], tuple[int, ...]], int] = {}
    by_prompt: dict[tuple[int, ...], list[tuple[int, list[int]]]] = {}
    index: list[list[int]] = []
    for group in groups:
        prompt = tuple(group.prompt_ids)
        row = []
        for completion in group.completions:
            key = (prompt, tuple(completion))
            if not prompt and not completion:
                raise ValueError("cannot score an empty prompt with an empty completion")
            if key not in unique:
                unique[key] = len(unique)
                by_prompt.setdefault(prompt, []).append((unique[key], list(completion)))
            row.append(unique[key])
        index.append(row)
    segments: list[_Segment] = []
    for prompt, completions in by_prompt.items():
        if not share_prompt:
            segments.extend(_Segment(list(prompt), [c]) for c in completions)
            continue
        current = _Segment(list(prompt), [])
        for uid, ids in completions:
            # a prompt is repeated only when its completions together would exceed max_segment tokens
            if current.completions and max_segment is not None and len(current) + len(ids) > max_segment:
                segments.append(current)
                current = _Segment(list(prompt), [])
            current.completions.append((uid, ids))
        segments.append(current)
    return segments, index


def pack_groups(
    groups: list[ScoreGroup], pad_id: int, *, share_prompt: bool = True, max_segment: int | None = None
) -> PackedGroups:
    """Lay ``groups`` out in rows for one forward pass (see the module docstring).

    ``share_prompt=False`` gives every completion its own copy of the prompt (still packed, no padding
    between segments). ``max_segment`` caps a segment's tokens: a prompt whose completions do not fit
    together is repeated in more segments (each completion is still encoded exactly once).
    """
    segments, index = _segments(groups, share_prompt, max_segment)
    n_unique = sum(len(s.completions) for s in segments)
    width = max(len(s) for s in segments)
    rows: list[list[_Segment]] = []
    fill: list[int] = []
    for seg in sorted(segments, key=len, reverse=True):  # stable: ties keep input order
        slot = next((r for r, used in enumerate(fill) if used + len(seg) <= width), None)
        if slot is None:
            rows.append([])
            fill.append(0)
            slot = len(rows) - 1
        rows[slot].append(seg)
        fill[slot] += len(seg)

    n_rows = len(rows)
    input_ids = torch.full((n_rows, width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((n_rows, width), dtype=torch.long)
    # block id (same segment), part (0 = prompt, k = k-th completion); pads get unique negative blocks
    block = -1 - torch.arange(width).repeat(n_rows, 1)
    part = torch.zeros((n_rows, width), dtype=torch.long)
    end_rows = torch.zeros(n_unique, dtype=torch.long)
    end_cols = torch.zeros(n_unique, dtype=torch.long)
    n_tokens = 0
    for r, row in enumerate(rows):
        col = 0
        for s, seg in enumerate(row):
            p = len(seg.prompt_ids)
            input_ids[r, col : col + p] = torch.tensor(seg.prompt_ids, dtype=torch.long)
            position_ids[r, col : col + p] = torch.arange(p)
            block[r, col : col + p] = s
            prompt_end = col + p - 1
            col += p
            for k, (uid, ids) in enumerate(seg.completions, start=1):
                n = len(ids)
                if n:
                    input_ids[r, col : col + n] = torch.tensor(ids, dtype=torch.long)
                    position_ids[r, col : col + n] = torch.arange(p, p + n)
                    block[r, col : col + n] = s
                    part[r, col : col + n] = k
                end_rows[uid] = r
                end_cols[uid] = col + n - 1 if n else prompt_end  # an empty completion: the prompt's last token
                col += n
            n_tokens += len(seg)
    same_block = block[:, :, None] == block[:, None, :]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    visible_part = (part[:, None, :] == 0) | (part[:, :, None] == part[:, None, :])
    allowed = (same_block & causal & visible_part) | torch.eye(width, dtype=torch.bool)  # pads see themselves
    return PackedGroups(input_ids, position_ids, allowed, end_rows, end_cols, index, n_tokens)


def pack_pairs(lengths: list[int]) -> list[list[int]]:
    """First-fit decreasing: groups of pair indices whose summed lengths fit the longest pair's length."""
    capacity = max(lengths)
    bins: list[tuple[int, list[int]]] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for b, (used, members) in enumerate(bins):
            if used + lengths[i] <= capacity:
                bins[b] = (used + lengths[i], members + [i])
                break
        else:
            bins.append((lengths[i], [i]))
    return [members for _, members in bins]


def branch_attention_mask(segments: torch.Tensor, pair: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``[R, 1, L, L]``: causal within a pair, and a branch token sees its prefix and its own branch only.

    Padding sees only itself (a row with nothing to attend to would give NaNs). ``dtype=None`` gives a bool
    mask (sdpa); a float dtype gives the additive form (0 or the dtype's minimum) that eager attention needs.
    """
    length = segments.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    query, key = segments[:, :, None], segments[:, None, :]
    same_pair = pair[:, :, None] == pair[:, None, :]
    allowed = causal & same_pair & (query != PAD_SEGMENT) & ((key == SHARED_SEGMENT) | (key == query))
    allowed |= torch.eye(length, dtype=torch.bool)
    if dtype is None:
        return allowed[:, None]
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


def attention_implementation(model: nn.Module) -> str:
    return str(getattr(getattr(model, "config", None), "_attn_implementation", None) or "sdpa")


def takes_4d_mask(model: nn.Module) -> bool:
    """Whether shared-prompt layouts can run on ``model``: flash attention takes no 4D mask."""
    return not attention_implementation(model).startswith("flash")


def mask_dtype_for(model: nn.Module) -> torch.dtype | None:
    """None (bool mask) for sdpa attention; fp32 additive for eager and the rest."""
    impl = attention_implementation(model)
    if not takes_4d_mask(model):
        raise ModelError(
            f"attention implementation {impl!r} takes no 4D mask; shared-prompt batches need 'sdpa' or 'eager'"
        )
    return None if impl == "sdpa" else torch.float32


def attention_mask_for(model: nn.Module, allowed: torch.Tensor) -> torch.Tensor:
    """The ``[R, 1, W, W]`` mask the backbone's attention takes: boolean for sdpa, additive float for eager."""
    mask = allowed[:, None]
    implementation = attention_implementation(model)
    if implementation == "eager":
        dtype = next(model.parameters()).dtype
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    if not takes_4d_mask(model):
        raise ValueError("shared-prompt packing needs a 4D attention mask: load the model with sdpa or eager attention")
    return mask


def score_packed(model: nn.Module, packed: PackedGroups) -> torch.Tensor:
    """Scores ``[U, num_outputs]`` of every unique completion, from one forward pass of a scalar-head model."""
    inner = getattr(model, "module", model)  # DDP wraps the model; the config lives on the inner one
    mask = attention_mask_for(inner, packed.allowed)
    values = model(packed.input_ids, attention_mask=mask, position_ids=packed.position_ids)
    return values[packed.end_rows, packed.end_cols]
