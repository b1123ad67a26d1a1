"""Resumable batch sources: the loop asks for micro-batches and checkpoints the position."""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

import torch


class BatchSource(Protocol):
    """Yields micro-batches; its state (position) goes into every checkpoint."""

    def next_batch(self) -> Any: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    @property
    def epoch(self) -> float: ...


class EpochBatchSource:
    """Shuffled epochs over a map-style dataset, sharded by rank.

    The order of epoch ``e`` is a permutation seeded by ``(seed, e)``, so the state is just
    ``(epoch, position)``. A stop exactly at an epoch boundary stores ``position == len``; the
    next call then starts epoch ``e + 1`` at 0 — no epoch is skipped or repeated on resume.
    """

    def __init__(
        self,
        dataset: Sequence,
        micro_batch_size: int,
        collate: Callable[[list], Any],
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ):
        if len(dataset) == 0:
            raise ValueError("empty training set")
        self.dataset = dataset
        self.micro_batch_size = micro_batch_size
        self.collate = collate
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self._epoch = 0
        self._pos = 0
        self._order: list[int] | None = None

    def _epoch_order(self, epoch: int) -> list[int]:
        n = len(self.dataset)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        # every rank sees the same number of batches: pad by wrapping, then shard
        per_rank = -(-n // self.world_size)
        order = (order * 2)[: per_rank * self.world_size]
        return order[self.rank :: self.world_size]

    def next_batch(self) -> Any:
        if self._order is None:
            self._order = self._epoch_order(self._epoch)
        if self._pos >= len(self._order):
            self._epoch += 1
            self._pos = 0
            self._order = self._epoch_order(self._epoch)
        idx = self._order[self._pos : self._pos + self.micro_batch_size]
        self._pos += len(idx)
        return self.collate([self.dataset[i] for i in idx])

    @property
    def batches_per_epoch(self) -> int:
        n = -(-len(self.dataset) // self.world_size)
        return -(-n // self.micro_batch_size)

    @property
    def epoch(self) -> float:
        n = len(self._order) if self._order is not None else 1
        return self._epoch + self._pos / max(n, 1)

    def state_dict(self) -> dict:
        # the position is stored globally so a run can resume with a different number of processes
        return {"epoch": self._epoch, "global_pos": self._pos * self.world_size, "seed": self.seed, "n": len(self.dataset)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("n") != len(self.dataset):
            raise ValueError(
                f"the training set changed since the checkpoint ({state.get('n')} -> {len(self.dataset)} examples)"
            )
        self._epoch = int(state["epoch"])
        self._order = self._epoch_order(self._epoch)
        global_pos = int(state["global_pos"])
        # an epoch finished under another process count (its padded length differs) stays finished
        self._pos = len(self._order) if global_pos >= len(self.dataset) else global_pos // self.world_size
