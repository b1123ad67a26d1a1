"""PPO-ptx (Ouyang et al. 2022, eq. 2): the policy's RL loss plus ``ptx_coef`` × the next-token loss on
demonstrations, so what supervised training taught (answers that end, among others) keeps a gradient even when
no sampled answer shows it. Each policy forward draws the next ``ptx_batch_size`` demonstrations from shuffled,
resumable epochs (the position is checkpointed with the stage)."""

from __future__ import annotations

from typing import Any

import torch

from alignloop.data import load_records, pad_batch, tokenize_conversation
from alignloop.errors import ConfigError, DataError
from alignloop.stages.sft import token_nll_sum
from alignloop.train.batches import EpochBatchSource

__all__ = ["PtxTerm", "make_ptx"]


class PtxTerm:
    """``coef`` × the mean next-token NLL of the assistant tokens of a batch of demonstrations."""

    def __init__(self, rows: list, coef: float, batch_size: int, pad_id: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        self.coef, self.pad_id = coef, pad_id
        self.source = EpochBatchSource(rows, batch_size, self._collate, seed=seed, rank=rank, world_size=world_size)

    def _collate(self, rows: list) -> dict[str, torch.Tensor]:
        return pad_batch(rows, self.pad_id, side="right")

    def loss(self, model: torch.nn.Module, device: torch.device | str) -> tuple[torch.Tensor, float]:
        """The weighted term for the next batch, and the batch's mean NLL (for logging)."""
        batch = {k: v.to(device) for k, v in self.source.next_batch().items()}
        total, count = token_nll_sum(model, batch)
        nll = total / max(count, 1)
        return self.coef * nll, float(nll.detach())

    def state_dict(self) -> dict[str, Any]:
        return self.source.state_dict()

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state is not None:  # None: a checkpoint from a run without ptx starts the demonstrations afresh
            self.source.load_state_dict(state)


def make_ptx(stage: Any) -> PtxTerm | None:
    """The stage's ptx term (None when ``ptx_coef`` is 0), its demonstrations tokenised like the SFT stage's."""
    opts, cfg, run = stage.opts, stage.config, stage.run
    if opts.ptx_coef == 0:
        return None
    if stage.prompts.vision:
        raise ConfigError(f"{stage.section}.ptx_coef: demonstrations with images are not supported; use 0")
    records = load_records(opts.ptx_data, "sft", skip_invalid=cfg.data.skip_invalid)
    rows = [tokenize_conversation(stage.tokenizer, rec["messages"], max_length=cfg.data.max_length)
            for rec in records]
    rows = [row for row in rows if sum(row.loss_mask)]
    if not rows:
        raise DataError(f"{stage.section}.ptx_data: {opts.ptx_data}: no record has an assistant turn to train on")
    return PtxTerm(rows, opts.ptx_coef, opts.ptx_batch_size, stage.tokenizer.pad_token_id, seed=cfg.train.seed,
                   rank=run.rank, world_size=run.world_size)
