"""One rollout turned into training data: everything computed ONCE per rollout, then sliced into micro-batches.

Token tensors over the response are ``[N, R]`` (right padded); ``input_ids``/``attention_mask`` are
``[N, P + R]`` with left-padded prompts, so the response starts at column ``response_start`` for every row.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch

from alignloop.rollout import Rollout

__all__ = ["Experience", "RolloutData", "loss_sum_factor", "minibatch_schedule"]


@dataclass
class RolloutData:
    """A scored rollout with the forwards done once: what an algorithm's ``experience`` turns into targets."""

    rollout: Rollout
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_start: int
    response_mask: torch.Tensor  # [N, R] float
    loss_mask: torch.Tensor  # [N, R] float, response_mask without excluded (truncated) rows
    raw_scores: torch.Tensor  # [N] the reward source's score
    scores: torch.Tensor  # [N] after the truncation policy and normalisation
    components: dict[str, torch.Tensor]
    uncertainty: torch.Tensor | None
    old_logprobs: torch.Tensor
    ref_logprobs: torch.Tensor | None
    dense_rewards: torch.Tensor | None = None  # [N, R] per-step rewards at step-end tokens (process reward models)


def loss_sum_factor(mask: torch.Tensor, agg: str) -> float:
    """A micro-batch's loss units; ``aggregate_loss(x, mask, agg) ×`` this is the SUM the loop wants.

    token_mean: valid tokens; seq_mean_token_mean: rows with a valid token; seq_mean_token_sum: all rows (its
    normaliser B·max_len is constant, Dr. GRPO), so accumulated micro-batches equal one big batch in every mode.
    """
    if agg == "token_mean":
        return float(mask.sum())
    if agg == "seq_mean_token_mean":
        return float((mask.sum(dim=1) > 0).sum())
    return float(mask.shape[0])  # seq_mean_token_sum: (1/B)·ΣΣ/max_len × B


@dataclass
class Experience:
    input_ids: torch.Tensor  # [N, P + R]
    attention_mask: torch.Tensor  # [N, P + R]
    response_start: int
    loss_mask: torch.Tensor  # [N, R] float: 1 on response tokens that enter the losses
    old_logprobs: torch.Tensor  # [N, R] log-probs under the sampling policy
    advantages: torch.Tensor  # [N, R]
    ref_logprobs: torch.Tensor | None = None  # [N, R] only when the KL goes into the loss
    kl_coef: torch.Tensor | None = None  # [N] per-sample β for a KL term in the loss
    returns: torch.Tensor | None = None  # [N, R] value targets (critic stages)
    old_values: torch.Tensor | None = None  # [N, R] critic values at sampling time (value clipping)
    images: list[tuple] | None = None  # [N] each row's prompt images (VLMs), a list: rows keep their own

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def micro_batch(self, rows: list[int]) -> dict[str, Any]:
        """Rows ``rows``, with columns that are padding in every selected row cut away."""
        index = torch.tensor(rows, dtype=torch.long)
        attention = self.attention_mask[index]
        prompt_cols = attention[:, : self.response_start].any(dim=0).nonzero()
        first = int(prompt_cols[0]) if len(prompt_cols) else self.response_start - 1
        first = min(first, self.response_start - 1)  # keep at least one prompt column
        response_cols = attention[:, self.response_start :].any(dim=0).nonzero()
        width = int(response_cols[-1]) + 1 if len(response_cols) else 1
        end = self.response_start + width
        batch: dict[str, Any] = {
            "input_ids": self.input_ids[index, first:end],
            "attention_mask": attention[:, first:end],
            "response_start": self.response_start - first,
        }
        for name in ("loss_mask", "old_logprobs", "advantages", "ref_logprobs", "returns", "old_values"):
            value = getattr(self, name)
            batch[name] = None if value is None else value[index, :width]
        batch["kl_coef"] = None if self.kl_coef is None else self.kl_coef[index]
        batch["images"] = None if self.images is None else [self.images[i] for i in rows]
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Experience:
        return cls(**state)


def minibatch_schedule(
    n_rows: int, minibatch: int, micro: int, epochs: int, seed: int, rollout_index: int, group_size: int = 1
) -> list[list[int]]:
    """Micro-batches (row lists) for ``epochs`` shuffled passes; ``minibatch // micro`` make one optimizer step.

    ``group_size > 1`` (consecutive rows share a prompt) orders each mini-batch's rows by group before cutting
    it into micro-batches, so a shared-prompt forward finds a prompt's rows together. Which rows form a
    mini-batch, and so every optimizer step, is the same as with ``group_size`` 1. Deterministic in ``(seed,
    rollout_index)``, so a checkpoint only needs the cursor into this list.
    """
    if n_rows % minibatch or minibatch % micro:
        raise ValueError(f"{n_rows} rows cannot be cut into mini-batches of {minibatch} / micro-batches of {micro}")
    out: list[list[int]] = []
    for epoch in range(epochs):
        g = torch.Generator().manual_seed(seed * 1_000_003 + rollout_index * 101 + epoch)
        order = torch.randperm(n_rows, generator=g).tolist()
        if group_size > 1:
            order = [i for s in range(0, n_rows, minibatch)
                     for i in sorted(order[s : s + minibatch], key=lambda i: (i // group_size, i))]
        out.extend(order[i : i + micro] for i in range(0, n_rows, micro))
    return out
