"""Sequence packing: several short examples share one row, each with its own positions and no loss across them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from alignloop.data.chat import TokenizedExample


@dataclass
class PackedRow:
    """One row of concatenated examples.

    ``position_ids`` restart at 0 for each example, and ``loss_mask`` is 0 on each example's first token: that
    token's label would otherwise be predicted from the previous example's last token.
    """

    input_ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    position_ids: list[int] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)  # positions of the packed examples in the input list
    images: tuple = ()  # the packed examples' images, in token order

    def __len__(self) -> int:
        return len(self.input_ids)

    def add(self, index: int, input_ids: Sequence[int], loss_mask: Sequence[int]) -> None:
        self.indices.append(index)
        self.input_ids.extend(input_ids)
        self.loss_mask.extend([0, *loss_mask[1:]])
        self.position_ids.extend(range(len(input_ids)))
        self.lengths.append(len(input_ids))


def example_fields(example: TokenizedExample | Mapping) -> tuple[list[int], list[int]]:
    """``(input_ids, loss_mask)`` of a TokenizedExample or a mapping; a missing loss mask trains every token."""
    if isinstance(example, TokenizedExample):
        return list(example.input_ids), list(example.loss_mask)
    input_ids = list(example["input_ids"])
    loss_mask = example.get("loss_mask")
    return input_ids, list(loss_mask) if loss_mask is not None else [1] * len(input_ids)


def pack_examples(examples: Sequence[TokenizedExample | Mapping], max_length: int) -> list[PackedRow]:
    """Pack examples into rows of at most ``max_length`` tokens (first-fit decreasing, deterministic).

    Longer examples are truncated from the right to ``max_length``; empty ones are dropped. Rows come out in
    the order they were opened, so the result depends only on the input order and lengths.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be positive (got {max_length})")
    items = [example_fields(example) for example in examples]
    items = {i: (ids[:max_length], mask[:max_length]) for i, (ids, mask) in enumerate(items) if ids}
    # Longest first, ties in input order: big examples claim rows before small ones fill the gaps.
    order = sorted(items, key=lambda i: (-len(items[i][0]), i))
    rows: list[PackedRow] = []
    for i in order:
        ids, mask = items[i]
        row = next((r for r in rows if len(r) + len(ids) <= max_length), None)
        if row is None:
            row = PackedRow()
            rows.append(row)
        row.add(i, ids, mask)
    for row in rows:
        row.images = tuple(image for i in row.indices for image in getattr(examples[i], "images", ()))
    return rows
