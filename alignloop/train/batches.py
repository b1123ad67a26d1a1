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
        full_batches: bool = False,
    ):
        if len(dataset) == 0:
            raise ValueError("empty training set")
        self.dataset = dataset
        # RL rollouts need exactly micro_batch_size prompts: a batch at an epoch's end is completed from the next
        self.full_batches = full_batches
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

    def _take(self, k: int) -> list[int]:
        if self._order is None:
            self._order = self._epoch_order(self._epoch)
        if self._pos >= len(self._order):
            self._epoch += 1
            self._pos = 0
            self._order = self._epoch_order(self._epoch)
        idx = self._order[self._pos : self._pos + k]
        self._pos += len(idx)
        return idx

    def next_batch(self) -> Any:
        idx = self._take(self.micro_batch_size)
        while self.full_batches and len(idx) < self.micro_batch_size:
            idx += self._take(self.micro_batch_size - len(idx))
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
        return {"epoch": self._epoch, "global_pos": self._pos * self.world_size, "seed": self.seed,
                "n": len(self.dataset)}

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


class PromptGroupedBatchSource(EpochBatchSource):
    """Epochs in which the examples of one prompt are adjacent (InstructGPT's "all pairs of a prompt in one
    batch"): the prompt groups are shuffled with the ``(seed, epoch)`` seed, the order is cut into
    micro-batches and micro-batches are dealt to ranks in turn. A prompt's completions then meet in the same
    micro-batch, where they are encoded once (``rm.share_prompt``), and its pairs are not seen in separate
    steps (which InstructGPT found to overfit). ``keys[i]`` is example ``i``'s prompt (any hashable)."""

    def __init__(self, dataset, micro_batch_size: int, collate, keys: list, **kwargs):
        super().__init__(dataset, micro_batch_size, collate, **kwargs)
        groups: dict = {}
        for i, key in enumerate(keys):
            groups.setdefault(key, []).append(i)
        self.groups = list(groups.values())

    def _epoch_order(self, epoch: int) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            groups = [self.groups[i] for i in torch.randperm(len(self.groups), generator=g).tolist()]
        else:
            groups = self.groups
        order = [i for group in groups for i in group]
        step = self.micro_batch_size * self.world_size
        order = (order * 2)[: -(-len(order) // step) * step]  # pad by wrapping: every rank, same batches
        batches = [order[k : k + self.micro_batch_size] for k in range(0, len(order), self.micro_batch_size)]
        return [i for batch in batches[self.rank :: self.world_size] for i in batch]

    @property
    def batches_per_epoch(self) -> int:
        return -(-len(self.dataset) // (self.micro_batch_size * self.world_size))
