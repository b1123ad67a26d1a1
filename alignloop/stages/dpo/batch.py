"""Preference pairs as model inputs: chosen and rejected share ONE forward and ONE copy of the prompt.

A pair ``(prompt, chosen, rejected)`` is laid out as a shared prefix and two branches::

    prompt[:-1] | prompt[-1] chosen | prompt[-1] rejected
    shared (0)  | branch 1          | branch 2

The last prompt token is repeated at the start of each branch because it predicts the first completion token
of both. A 4D attention mask lets a token see the shared prefix and the earlier tokens of its own branch only,
and the position ids of branch 2 restart where branch 1's began. Every token therefore gets exactly the hidden
state it would get in a plain ``prompt + completion`` forward, so the log-probs (and their gradients) equal
those of the usual two-rows-per-pair layout, but the prompt is computed once instead of twice.

Several pairs share a row when they fit in the width of the micro-batch's longest pair (first-fit decreasing),
which removes most of the padding without changing what the batch holds; the mask keeps pairs apart. A row
puts all its pairs' prefixes first and all their branches last, and rows are LEFT padded, so every row ends
with branch tokens only: ``logits_to_keep`` then skips the LM head for the prompts, usually most tokens.

With ``share_prompts`` (``dpo.group_by_prompt``) the pairs of a micro-batch that share a prompt become ONE group:
the prompt once, then each distinct completion once as its own branch (``prompt[-1] c1 | prompt[-1] c2 | ...``),
and every pair reads its two completions' sums from the group. K samples of a prompt labelled in all K(K−1)/2
pairs then cost K branches instead of K(K−1) (4 samples: 4 instead of 12, plus one prompt instead of six).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from alignloop.data.collate import IGNORE_INDEX
from alignloop.models.head import token_logprobs
from alignloop.models.images import EncodedImage
from alignloop.models.shared_prompt import (  # noqa: F401  (re-exported: DPO's public names)
    PAD_SEGMENT,
    SHARED_SEGMENT,
    branch_attention_mask,
    mask_dtype_for,
    pack_pairs,
    takes_4d_mask,
)
from alignloop.rollout.logprobs import accepts_logits_to_keep
from alignloop.train.batches import EpochBatchSource


@dataclass
class PairExample:
    """A tokenised pair; ``index`` is its position in the data set (it keys the reference log-probs).

    ``images`` (a vision-language model's pairs) are the prompt's images, in the order of their tokens; chosen
    and rejected share them, so a forward encodes them once.
    """

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    index: int
    images: tuple[EncodedImage, ...] = ()

    def __len__(self) -> int:
        # tokens in the shared-prompt layout (the last prompt token appears twice)
        return len(self.prompt_ids) + len(self.chosen_ids) + len(self.rejected_ids) + 1


@dataclass
class PairLogps:
    """Summed completion log-probs ``[B]`` and completion lengths ``[B]`` of a batch of pairs."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor


Segment = tuple[list[int], list[int], list[int]]  # token ids, segment ids, position ids


@dataclass
class _Group:
    """A prompt and the completions laid out after it: branch k holds ``completions[k - 1]``."""

    prompt_ids: list[int]
    images: tuple[EncodedImage, ...]
    completions: list[list[int]] = field(default_factory=list)

    def __len__(self) -> int:
        # the last prompt token opens every branch
        return len(self.prompt_ids) - 1 + sum(len(c) + 1 for c in self.completions)

    def branch(self, completion: list[int], share: bool) -> int:
        if share and completion in self.completions:
            return self.completions.index(completion) + 1
        self.completions.append(completion)
        return len(self.completions)


def _groups(examples: list[PairExample], share_prompts: bool) -> tuple[list[_Group], list[tuple[int, int, int]]]:
    """The groups to lay out and, per pair, ``(group, chosen branch, rejected branch)``.

    Unshared, every pair is its own group with branches 1 (chosen) and 2 (rejected). Pairs with images are
    never merged (their images are encoded per group).
    """
    groups: list[_Group] = []
    by_prompt: dict[tuple[int, ...], int] = {}
    where = []
    for i, e in enumerate(examples):
        g = by_prompt.get(tuple(e.prompt_ids), -1) if share_prompts and not e.images else -1
        if g < 0:
            g = len(groups)
            groups.append(_Group(e.prompt_ids, e.images))
            if share_prompts and not e.images:
                by_prompt[tuple(e.prompt_ids)] = g
        group = groups[g]
        where.append((g, group.branch(e.chosen_ids, share_prompts), group.branch(e.rejected_ids, share_prompts)))
    return groups, where


def _layout(group: _Group) -> tuple[Segment, Segment]:
    """The shared prefix and the branches of one group, each as (ids, segments, positions)."""
    prompt = group.prompt_ids
    shared = len(prompt) - 1
    prefix = (prompt[:-1], [SHARED_SEGMENT] * shared, list(range(shared)))
    ids: list[int] = []
    segments: list[int] = []
    positions: list[int] = []
    for k, completion in enumerate(group.completions, start=1):
        ids += prompt[-1:] + completion
        segments += [k] * (len(completion) + 1)
        positions += range(shared, shared + len(completion) + 1)
    return prefix, (ids, segments, positions)


@dataclass
class _Row:
    ids: list[int] = field(default_factory=list)
    segments: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    owners: list[int] = field(default_factory=list)

    def add(self, part: Segment, owner: int) -> None:
        ids, segments, positions = part
        self.ids += ids
        self.segments += segments
        self.positions += positions
        self.owners += [owner] * len(ids)

    @property
    def branch_tokens(self) -> int:
        return sum(1 for s in self.segments if s > SHARED_SEGMENT)


def _packed_row(groups: list[_Group], members: list[int]) -> _Row:
    row = _Row()
    layouts = [_layout(groups[i]) for i in members]
    for i, (prefix, _) in zip(members, layouts):  # every prefix first ...
        row.add(prefix, owner=i)
    for i, (_, branches) in zip(members, layouts):  # ... then every branch, so the row ends with branch tokens
        row.add(branches, owner=i)
    return row


def collate_pairs(examples: list[PairExample], pad_id: int, mask_dtype: torch.dtype | None = None,
                  share_prompts: bool = False) -> dict:
    """Packed, left-padded shared-prompt rows for ``examples``.

    Returns ``input_ids``, ``position_ids``, a 4D ``attention_mask`` ``[R, 1, L, L]`` (bool, True = may attend,
    for sdpa; or additive with ``mask_dtype`` for eager attention), ``labels`` (the token each position
    predicts, -100 where none: next-token targets already shifted), ``segments`` (branch numbers), ``pair``
    (which group a token belongs to, -1 on padding; unshared, group i is pair i), ``branches`` ``[P, 3]`` (each
    pair's group, chosen branch and rejected branch), the number of final columns holding only branches
    (``keep``), and ``index`` (the examples' data-set indices, in the order of ``examples``). Pairs with images
    add ``images``: a list with one tuple per row, its groups' prompt images in the order their prefixes sit.
    """
    groups, where = _groups(examples, share_prompts)
    packing = pack_pairs([len(g) for g in groups])
    rows = [_packed_row(groups, members) for members in packing]
    width = max(len(r.ids) for r in rows)
    shape = (len(rows), width)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    segments = torch.full(shape, PAD_SEGMENT, dtype=torch.long)
    positions = torch.zeros(shape, dtype=torch.long)
    pair = torch.full(shape, -1, dtype=torch.long)
    for r, row in enumerate(rows):
        cols = slice(width - len(row.ids), width)
        input_ids[r, cols], segments[r, cols] = torch.tensor(row.ids), torch.tensor(row.segments)
        positions[r, cols], pair[r, cols] = torch.tensor(row.positions), torch.tensor(row.owners)
    # a position predicts the next token of its own branch; prefixes and branch ends predict nothing
    same_branch = ((segments[:, :-1] > SHARED_SEGMENT) & (segments[:, 1:] == segments[:, :-1])
                   & (pair[:, 1:] == pair[:, :-1]))
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[:, :-1] = torch.where(same_branch, input_ids[:, 1:], IGNORE_INDEX)
    batch = {
        "input_ids": input_ids,
        "position_ids": positions,
        "attention_mask": branch_attention_mask(segments, pair, mask_dtype),
        "labels": labels,
        "segments": segments,
        "pair": pair,
        "branches": torch.tensor(where, dtype=torch.long),
        "keep": max(r.branch_tokens for r in rows),
        "index": torch.tensor([e.index for e in examples], dtype=torch.long),
    }
    if any(e.images for e in examples):  # a list, never stacked: each row keeps its own groups' images
        batch["images"] = [tuple(im for i in members for im in groups[i].images) for members in packing]
    return batch


def batch_to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def pair_logps(model: nn.Module, batch: dict) -> PairLogps:
    """One forward of ``model`` over a ``collate_pairs`` batch: summed chosen / rejected log-probs.

    Only the scored branch tokens go through the LM head (``models.head.token_logprobs``, which also splices in
    the features of ``batch["images"]``: each distinct image encoded once, so a pair's prompt image once).
    """
    keep = int(batch["keep"])
    inner = getattr(model, "module", model)  # look through a DDP wrapper for the model's signature
    labels = batch["labels"][:, -keep:]
    segments = batch["segments"][:, -keep:]
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids", "images") if k in batch}
    # 0 where the label is -100; the LM head runs on the scored tokens only (models/head.py)
    token_logps = token_logprobs(model, inputs, labels, logits_to_keep=keep if accepts_logits_to_keep(inner) else None)
    owner = batch["pair"][:, -keep:]
    scored = labels != IGNORE_INDEX
    where = batch["branches"]
    n_branches = int(segments.max()) + 1
    # sums per (group, branch), then each pair reads its chosen and rejected branch
    key = (owner * n_branches + segments)[scored]
    size = (int(where[:, 0].max()) + 1) * n_branches

    def per_branch(values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(size, dtype=values.dtype, device=values.device).index_add(0, key, values)

    sums, counts = per_branch(token_logps[scored]), per_branch(torch.ones_like(token_logps[scored]))
    chosen_key, rejected_key = where[:, 0] * n_branches + where[:, 1], where[:, 0] * n_branches + where[:, 2]
    return PairLogps(
        chosen=sums[chosen_key],
        rejected=sums[rejected_key],
        chosen_tokens=counts[chosen_key].long(),
        rejected_tokens=counts[rejected_key].long(),
    )


def real_tokens(batch: dict) -> int:
    return int((batch["segments"] != PAD_SEGMENT).sum())


def pair_count(batch: dict) -> int:
    return int(batch["index"].shape[0])


class LengthGroupedBatchSource(EpochBatchSource):
    """``EpochBatchSource`` whose micro-batches hold examples of similar length, so rows carry less padding.

    Each epoch's seeded order (this rank's share) is cut into mega-batches of ``group`` micro-batches; a
    mega-batch is sorted by length and cut into micro-batches, and the micro-batches are then shuffled with
    the same ``(seed, epoch)`` seed, so long and short batches still alternate at random. The order depends
    only on ``(seed, epoch)``: resuming needs no extra state.
    """

    def __init__(self, dataset, micro_batch_size: int, collate, lengths: list[int], group: int = 50, **kwargs):
        super().__init__(dataset, micro_batch_size, collate, **kwargs)
        self.lengths = lengths
        self.group = group

    def _epoch_order(self, epoch: int) -> list[int]:
        order = super()._epoch_order(epoch)
        mb = self.micro_batch_size
        mega = mb * self.group
        batches: list[list[int]] = []
        for start in range(0, len(order), mega):
            chunk = sorted(order[start : start + mega], key=lambda i: self.lengths[i], reverse=True)
            batches.extend(chunk[k : k + mb] for k in range(0, len(chunk), mb))
        # a short last micro-batch stays last, so every later batch still starts at a multiple of mb
        tail = [batches.pop()] if batches and len(batches[-1]) < mb else []
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch + 7)
        shuffled = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        return [i for batch in shuffled + tail for i in batch]


class PromptGroupedBatchSource(EpochBatchSource):
    """``EpochBatchSource`` that keeps the pairs of one prompt next to each other (``dpo.group_by_prompt``).

    Micro-batches then hold whole prompts' pairs, so ``collate_pairs(share_prompts=True)`` encodes each prompt and
    each distinct completion once. The prompts' order is a permutation seeded by ``(seed, epoch)`` (resuming needs
    no extra state); with several ranks each takes one contiguous block, so a prompt is split only at a block edge.
    A micro-batch that is a multiple of a prompt's pair count (6 for 4 samples in all pairs) splits no prompt.
    """

    def __init__(self, dataset, micro_batch_size: int, collate, prompts: list[tuple[int, ...]], **kwargs):
        super().__init__(dataset, micro_batch_size, collate, **kwargs)
        members: dict[tuple[int, ...], list[int]] = {}
        for i, prompt in enumerate(prompts):
            members.setdefault(prompt, []).append(i)
        self.blocks = list(members.values())

    def _epoch_order(self, epoch: int) -> list[int]:
        blocks = self.blocks
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            blocks = [blocks[i] for i in torch.randperm(len(blocks), generator=g).tolist()]
        order = [i for block in blocks for i in block]
        per_rank = -(-len(order) // self.world_size)
        order = (order * 2)[: per_rank * self.world_size]
        return order[self.rank * per_rank : (self.rank + 1) * per_rank]
