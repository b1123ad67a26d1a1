"""KTO (Ethayarajh et al. 2024) on the shared loop: unpaired desirable / undesirable completions, or pairs split in two.

A step is DPO's step with another loss. An example is laid out as a DPO pair whose two branches share the prompt:
its own completion, and a completion written for another prompt (``data.py``), so ONE policy forward gives
``log π(y|x)`` for the loss and ``log π(y'|x)`` for the reference point z0. The reference log-probs of both are
computed once before training and cached in the run directory, exactly as DPO's (``kto.precompute_ref``); with
LoRA the reference is the policy with its adapter off. The loss is ``algos.kto_loss``.

Metrics follow TRL's ``KTOTrainer``: ``rewards/chosen`` and ``logps/chosen`` are means over the step's desirable
examples, ``rewards/rejected`` and ``logps/rejected`` over its undesirable ones, ``rewards/margins`` their
difference, ``kl`` the reference point z0. On held-out data that came from pairs, ``eval/rewards/accuracies`` is
the share of pairs whose chosen answer gets the higher implied reward (the DPO metric of the same name).
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
from pydantic import Field

from alignloop.algos import kto_loss, kto_reference_point
from alignloop.config import DataConfig, Section, StageConfig, TrainConfig
from alignloop.data.splits import load_splits
from alignloop.errors import ConfigError, DataError
from alignloop.models.loading import is_vision_language_model
from alignloop.stages.dpo.batch import batch_to, pair_logps
from alignloop.stages.dpo.stage import DPOOptions, DPOStage
from alignloop.stages.kto.data import KTOExamples, KTORecordFormat, build_examples, load_kto_records

__all__ = ["KTOConfig", "KTOOptions", "KTOStage"]

log = logging.getLogger("alignloop")


class KTOOptions(Section):
    beta: float = Field(0.1, gt=0, description="β: scale of the implied reward log π/π_ref inside the sigmoid.")
    desirable_weight: float = Field(
        1.0, ge=0, description="λ_D: weight of desirable examples' losses (raise it when they are the rarer kind)."
    )
    undesirable_weight: float = Field(1.0, ge=0, description="λ_U: weight of undesirable examples' losses.")
    precompute_ref: bool = Field(
        True, description="Compute reference log-probs once before training and cache them in the run dir "
        "(false: a no-grad reference forward per micro-batch, cheaper for a short run on a large data set)."
    )
    max_prompt_length: int | None = Field(None, gt=0, description="Cut prompts from the left to this many tokens.")
    group_by_length: bool = Field(False, description="Batch examples of similar length together (less padding).")
    record_format: KTORecordFormat = Field(
        "auto", description="Record kind of data.train/eval: unpaired {prompt, completion, label}, pair (each pair "
        "gives a desirable and an undesirable example) or ranking (expanded into pairs first); auto looks."
    )


class KTOConfig(StageConfig):
    stage: Literal["kto"] = "kto"
    data: DataConfig = Field(default_factory=lambda: DataConfig(eval_fraction=0.1))
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(lr=5e-6, max_steps=100, batch_size=8))
    kto: KTOOptions = Field(default_factory=KTOOptions)


def finish_metrics(metrics: dict[str, float], prefix: str = "") -> dict[str, float]:
    """Turn the per-label sums of ``KTOStage._terms`` into TRL's means over each label's examples (in place).

    The sums and counts were divided by the same number (the step's examples), so their ratio is the mean.
    """
    for side in ("chosen", "rejected"):
        count = metrics.pop(f"{prefix}count/{side}", 0.0)
        for name in ("rewards", "logps"):
            total = metrics.pop(f"{prefix}{name}/{side}_sum", None)
            if total is not None and count > 0:
                metrics[f"{prefix}{name}/{side}"] = total / count
    if f"{prefix}rewards/chosen" in metrics and f"{prefix}rewards/rejected" in metrics:
        metrics[f"{prefix}rewards/margins"] = metrics[f"{prefix}rewards/chosen"] - metrics[f"{prefix}rewards/rejected"]
    return metrics


class KTOStage(DPOStage):
    name = "kto"
    config: KTOConfig

    @property
    def options(self) -> DPOOptions:
        opts = self.config.kto
        return DPOOptions(beta=opts.beta, precompute_ref=opts.precompute_ref, max_prompt_length=opts.max_prompt_length,
                          group_by_length=opts.group_by_length)

    def setup(self, run) -> None:
        if is_vision_language_model(self.config.model):
            raise ConfigError(f"model: '{self.config.model}' is a vision-language model; kto trains text models only")
        super().setup(run)

    # --- data -------------------------------------------------------------------------------
    def _load_data(self) -> None:
        cfg, opts = self.config, self.config.kto
        train, evals = load_splits(
            cfg.data, cfg.train.seed, lambda path: load_kto_records(path, opts.record_format, cfg.data.skip_invalid),
            missing="no training data given (unpaired, pair or ranking records)", min_records_to_split=2,
        )
        lengths = (cfg.data.max_length, opts.max_prompt_length)
        self.sets = {"train": build_examples(self.tokenizer, train, cfg.train.seed, *lengths),
                     "eval": build_examples(self.tokenizer, evals, cfg.train.seed + 1, *lengths) if evals
                     else KTOExamples()}
        self.train_examples, self.eval_examples = self.sets["train"].examples, self.sets["eval"].examples
        self.dropped = self.sets["train"].dropped + self.sets["eval"].dropped
        if self.dropped:
            log.warning("kto: dropped %d example(s) left empty by truncation (data.max_length)", self.dropped)
        if not self.train_examples:
            raise DataError(f"{cfg.data.train}: no usable examples after tokenisation (raise data.max_length)")
        self._check_balance(self.sets["train"])
        log.info("kto: %d train examples (%d desirable), %d eval examples", len(self.train_examples),
                 self.sets["train"].desirable, len(self.eval_examples))

    def _check_balance(self, data: KTOExamples) -> None:
        opts = self.config.kto
        if not data.desirable or not data.undesirable:
            kind = "desirable" if not data.desirable else "undesirable"
            log.warning("kto: the training data has no %s examples; KTO learns best from both kinds", kind)
            return
        ratio = opts.desirable_weight * data.desirable / max(opts.undesirable_weight * data.undesirable, 1e-12)
        if not 1.0 <= ratio <= 4 / 3:  # the paper's (and TRL's) recommended range
            log.warning("kto: desirable_weight × %d desirable / (undesirable_weight × %d undesirable) = %.2f; the KTO "
                        "paper recommends 1 to 4/3", data.desirable, data.undesirable, ratio)

    # --- loss --------------------------------------------------------------------------------
    def _mean_over_processes(self, kl: torch.Tensor) -> torch.Tensor:
        (total,) = self.run.reduce_sum([float(kl)])
        return kl.new_tensor(total / self.run.world_size)

    def _terms(self, batch: dict, split: str) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        """Summed loss, summed metrics (``finish_metrics`` makes them means) and the implied rewards ``[B]``."""
        opts = self.config.kto
        policy = pair_logps(self.models["policy"], batch)  # chosen: the completion; rejected: the mismatched one
        ref, ref_kl = self._reference_logps(batch, split)
        desirable = self.sets[split].labels[batch["index"].cpu()].to(policy.chosen.device)
        across = self._mean_over_processes if split == "train" and self.run.world_size > 1 else None
        kl = kto_reference_point(policy.rejected, ref_kl, across)
        losses, rewards = kto_loss(policy.chosen, ref, desirable, kl, beta=opts.beta,
                                   desirable_weight=opts.desirable_weight, undesirable_weight=opts.undesirable_weight)
        good = desirable.to(rewards.dtype)
        bad = 1 - good
        logps = policy.chosen.detach()
        loss = losses.sum()
        metrics = {
            "rewards/chosen_sum": float((rewards * good).sum()),
            "rewards/rejected_sum": float((rewards * bad).sum()),
            "logps/chosen_sum": float((logps * good).sum()),
            "logps/rejected_sum": float((logps * bad).sum()),
            "count/chosen": float(good.sum()),
            "count/rejected": float(bad.sum()),
            "kl": float(kl) * len(losses),  # per example, so the loop's average weighs micro-batches by size
            "loss/kto": float(loss.detach()),
        }
        return loss, metrics, rewards

    def _loss(self, batch: dict, split: str) -> tuple[torch.Tensor, dict[str, float]]:
        loss, metrics, _ = self._terms(batch, split)
        return loss, metrics

    def on_step_end(self, step: int, metrics: dict[str, float]) -> None:
        finish_metrics(metrics)

    def evaluate(self) -> dict[str, float]:
        data = self.sets["eval"]
        if not data.examples:
            return {}
        totals: dict[str, float] = {"loss": 0.0}
        rewards = torch.zeros(len(data.examples))
        mb = self._micro_batch()
        with self.eval_mode():
            for start in range(0, len(data.examples), mb):
                batch = batch_to(self.collate(data.examples[start : start + mb]), self.run.device)
                loss, metrics, batch_rewards = self._terms(batch, "eval")
                rewards[batch["index"].cpu()] = batch_rewards.float().cpu()
                totals["loss"] += float(loss)
                for k, v in metrics.items():
                    totals[k] = totals.get(k, 0.0) + v
        n = len(data.examples)  # every rank evaluates the full (small) eval set
        out = finish_metrics({f"eval/{k}": v / n for k, v in totals.items()}, prefix="eval/")
        if data.pairs:  # held-out pairs: does the chosen answer get the higher implied reward? (DPO's accuracy)
            chosen, rejected = (torch.tensor(side) for side in zip(*data.pairs))
            out["eval/rewards/accuracies"] = float((rewards[chosen] > rewards[rejected]).float().mean())
        return out

    def summary(self) -> dict:
        train = self.sets["train"]
        out = {
            "examples": len(train.examples),
            "desirable": train.desirable,
            "undesirable": train.undesirable,
            "eval_examples": len(self.eval_examples),
            "reference": self.ref_source,
            "ref_precompute_seconds": round(self.ref_seconds, 3),
        }
        if self.dropped:
            out["dropped_examples"] = self.dropped
        return out
