"""ORPO (Hong et al. 2024) on the shared loop: SFT on the chosen answer plus an odds-ratio term, no reference model.

A step is DPO's step (pairs, one shared-prompt policy forward per micro-batch, ``stages/dpo/``) with the loss
``algos.orpo_loss`` on length-normalised log-probs and no reference at all: nothing is precomputed and nothing
frozen is held. A vision-language model takes pairs with images, as in DPO.

Metrics follow TRL's ``ORPOTrainer``: ``rewards/chosen = β · mean token log-prob`` of the chosen answer (and
``/rejected``, ``/margins``, ``/accuracies``), ``logps/chosen`` and ``logps/rejected`` (mean token log-probs),
``nll_loss`` (the SFT part), ``log_odds_ratio`` (``log σ(log odds ratio)``) and ``log_odds_chosen`` (the log odds
ratio itself). ``orpo.eval_before: true`` also evaluates the starting model, reported as ``eval_before/...``.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from alignloop.algos import orpo_loss
from alignloop.config import DataConfig, Section, StageConfig, TrainConfig
from alignloop.stages.dpo.batch import pair_logps
from alignloop.stages.dpo.stage import DPOOptions, DPOStage

__all__ = ["ORPOConfig", "ORPOOptions", "ORPOStage"]


class ORPOOptions(Section):
    beta: float = Field(
        0.1, ge=0, description="λ: weight of the odds-ratio term against the SFT loss (TRL's beta)."
    )
    max_prompt_length: int | None = Field(None, gt=0, description="Cut prompts from the left to this many tokens.")
    group_by_length: bool = Field(False, description="Batch pairs of similar length together (less padding).")
    record_format: Literal["auto", "pair", "ranking"] = Field(
        "auto", description="Record kind of data.train/eval; rankings are expanded into all (better, worse) pairs."
    )
    eval_before: bool = Field(False, description="Also evaluate the starting model (eval_before/... in summary.json).")


class ORPOConfig(StageConfig):
    stage: Literal["orpo"] = "orpo"
    data: DataConfig = Field(default_factory=lambda: DataConfig(eval_fraction=0.1))
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(lr=8e-6, max_steps=100, batch_size=8))
    orpo: ORPOOptions = Field(default_factory=ORPOOptions)


class ORPOStage(DPOStage):
    name = "orpo"
    config: ORPOConfig

    @property
    def options(self) -> DPOOptions:
        opts = self.config.orpo
        # reference_free: DPO's machinery then loads, computes and caches no reference at all
        return DPOOptions(reference_free=True, precompute_ref=False, max_prompt_length=opts.max_prompt_length,
                          group_by_length=opts.group_by_length, record_format=opts.record_format)

    def setup(self, run) -> None:
        super().setup(run)
        self.eval_before = self.evaluate() if self.config.orpo.eval_before else {}

    def _loss(self, batch: dict, split: str) -> tuple[torch.Tensor, dict[str, float]]:
        """Summed loss over the pairs of ``batch`` and summed metrics."""
        beta = self.config.orpo.beta
        policy = pair_logps(self.models["policy"], batch)
        chosen = policy.chosen / policy.chosen_tokens.clamp(min=1)
        rejected = policy.rejected / policy.rejected_tokens.clamp(min=1)
        terms = orpo_loss(chosen, rejected, beta=beta)
        chosen_rewards, rejected_rewards = beta * chosen.detach(), beta * rejected.detach()
        loss = terms.losses.sum()
        metrics = {
            "rewards/chosen": float(chosen_rewards.sum()),
            "rewards/rejected": float(rejected_rewards.sum()),
            "rewards/margins": float((chosen_rewards - rejected_rewards).sum()),
            "rewards/accuracies": float((chosen > rejected).float().sum()),
            "logps/chosen": float(chosen.detach().sum()),
            "logps/rejected": float(rejected.detach().sum()),
            "nll_loss": float(terms.nll.detach().sum()),
            "log_odds_ratio": float(terms.log_odds_ratio.sum()),
            "log_odds_chosen": float(terms.log_odds.sum()),
        }
        return loss, metrics

    def summary(self) -> dict:
        out = {"pairs": len(self.train_examples), "eval_pairs": len(self.eval_examples)}
        if self.dropped:
            out["dropped_pairs"] = self.dropped
        out.update({k.replace("eval/", "eval_before/", 1): v for k, v in self.eval_before.items()})
        return out
