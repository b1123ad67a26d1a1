"""Splitting prompts across rollout workers and joining their rollouts back into one ``Rollout``."""

from __future__ import annotations

from typing import Sequence

import torch

from alignloop.rollout import Rollout


def split_evenly(items: Sequence, parts: int) -> list[list]:
    """Contiguous chunks whose sizes differ by at most one (empty chunks dropped): prompt order is kept."""
    n = len(items)
    bounds = [n * i // parts for i in range(parts + 1)]
    return [list(items[a:b]) for a, b in zip(bounds, bounds[1:]) if b > a]


def _pad_to(t: torch.Tensor, width: int, value: float, left: bool) -> torch.Tensor:
    extra = width - t.shape[1]
    if extra <= 0:
        return t
    pad = torch.full((t.shape[0], extra), value, dtype=t.dtype, device=t.device)
    return torch.cat([pad, t] if left else [t, pad], dim=1)


def concat_rollouts(parts: list[Rollout], pad_id: int) -> Rollout:
    """Rows of ``parts`` in order, as if one sampler had produced them.

    Prompts stay left padded and responses right padded to the widest part; ``group_index`` of each
    part is shifted past the prompts of the parts before it.
    """
    if not parts:
        raise ValueError("no rollouts to join")
    if len(parts) == 1:
        return parts[0]
    p_width = max(p.prompt_ids.shape[1] for p in parts)
    r_width = max(p.response_ids.shape[1] for p in parts)
    groups, offset = [], 0
    for p in parts:
        groups.append(p.group_index + offset)
        offset += int(p.group_index.max()) + 1 if len(p) else 0
    return Rollout(
        prompt_ids=torch.cat([_pad_to(p.prompt_ids, p_width, pad_id, left=True) for p in parts]),
        prompt_mask=torch.cat([_pad_to(p.prompt_mask, p_width, 0, left=True) for p in parts]),
        response_ids=torch.cat([_pad_to(p.response_ids, r_width, pad_id, left=False) for p in parts]),
        response_mask=torch.cat([_pad_to(p.response_mask, r_width, 0, left=False) for p in parts]),
        logprobs=torch.cat([_pad_to(p.logprobs, r_width, 0.0, left=False) for p in parts]),
        ended_with_eos=torch.cat([p.ended_with_eos for p in parts]),
        ended_with_stop=torch.cat([p.ended_with_stop for p in parts]),
        prompts=[x for p in parts for x in p.prompts],
        responses=[x for p in parts for x in p.responses],
        group_index=torch.cat(groups),
    )
