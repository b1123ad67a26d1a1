"""DPO and its variants (cDPO, robust DPO, IPO, hinge/SLiC, SimPO) as one step function on the shared loop.

Each micro-batch is ONE policy forward: chosen and rejected share the prompt, and short pairs share rows
(``batch.py``).
The reference log-probs are computed once in ``setup`` and cached in the run directory (``dpo_reference``),
so training runs no reference model at all; ``dpo.precompute_ref: false`` computes them on the fly instead
(a second, no-grad forward per micro-batch). With LoRA the reference is the policy with its adapter disabled.

A vision-language model (``model:`` a VLM folder or ``smolvlm-tiny``) takes pairs with ``images``: the prompt's
images are encoded once per forward for both completions, policy and reference alike.
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from alignloop.algos.dpo_losses import REFERENCE_FREE_LOSSES, dpo_loss
from alignloop.config import DataConfig, StageConfig, TrainConfig
from alignloop.data.splits import load_splits
from alignloop.errors import ConfigError, DataError
from alignloop.models import Reference, load_tokenizer, load_trainable_lm, make_reference, save_model
from alignloop.models.loading import is_vision_language_model, load_vision_processor
from alignloop.models.vision_tokenizer import VisionTokenizer
from alignloop.stages.dpo.batch import (
    LengthGroupedBatchSource,
    PairExample,
    PromptGroupedBatchSource,
    batch_to,
    collate_pairs,
    mask_dtype_for,
    pair_count,
    pair_logps,
    real_tokens,
)
from alignloop.stages.dpo.data import load_pairs, tokenize_pairs
from alignloop.stages.dpo.online_config import OnlineOptions
from alignloop.stages.dpo import reference as refcache
from alignloop.train.batches import EpochBatchSource
from alignloop.train.stage import Stage, StepOutput

__all__ = ["DPOConfig", "DPOOptions", "DPOStage"]

log = logging.getLogger("alignloop")

class DPOOptions(OnlineOptions):  # online DPO's keys (dpo.online: true): online_config.py
    beta: float = Field(
        0.1, gt=0, description="β: strength of the implicit KL to the reference (IPO's τ; SimPO's reward scale)."
    )
    loss_type: Literal["sigmoid", "robust", "ipo", "hinge", "simpo"] = Field(
        "sigmoid",
        description="sigmoid = DPO (cDPO with label_smoothing > 0); robust = robust DPO; ipo; hinge = SLiC; "
        "simpo = length-normalised and reference-free.",
    )
    label_smoothing: float = Field(
        0.0, ge=0.0, lt=0.5, description="ε: assumed rate of flipped labels (cDPO / robust DPO)."
    )
    simpo_gamma: float = Field(0.5, description="SimPO target reward margin γ.")
    reference_free: bool = Field(
        False, description="Use a uniform reference (no reference model, rewards are β·log π)."
    )
    average_logprobs: bool = Field(
        False, description="Length-normalise: mean token log-prob per completion instead of the sum "
        "(policy and reference)."
    )
    sft_weight: float = Field(0.0, ge=0.0, description="Adds sft_weight × the mean token NLL of the chosen completion.")
    precompute_ref: bool = Field(
        True, description="Compute reference log-probs once before training and cache them in the run dir."
    )
    max_prompt_length: int | None = Field(None, gt=0, description="Cut prompts from the left to this many tokens.")
    group_by_length: bool = Field(
        False, description="Batch pairs of similar length together (less padding; batches are still shuffled)."
    )
    group_by_prompt: bool = Field(
        False, description="Batch a prompt's pairs together and encode the prompt and each distinct completion "
        "once (K samples in all pairs: K branches, not K(K−1)); same loss. Pick a batch size that is a multiple of "
        "a prompt's pair count.",
    )
    record_format: Literal["auto", "pair", "ranking"] = Field(
        "auto", description="Record kind of data.train/eval; rankings are expanded into all (better, worse) pairs."
    )


class DPOConfig(StageConfig):
    stage: Literal["dpo"] = "dpo"
    data: DataConfig = Field(default_factory=lambda: DataConfig(eval_fraction=0.1))
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(lr=5e-6, max_steps=100, batch_size=8))
    dpo: DPOOptions = Field(default_factory=DPOOptions)


class DPOStage(Stage):
    name = "dpo"
    config: DPOConfig

    @property
    def options(self) -> DPOOptions:
        """The settings the shared machinery reads; the stages built on this one (KTO, ORPO) derive them from
        their own section."""
        return self.config.dpo

    def setup(self, run) -> None:
        cfg, opts = self.config, self.options
        if opts.online:
            raise ConfigError("dpo.online: true runs OnlineDPOStage (alignloop.stages.dpo.online), not DPOStage")
        if opts.group_by_prompt and opts.group_by_length:
            raise ConfigError("dpo: group_by_prompt and group_by_length order the batches differently; set one")
        if opts.loss_type == "robust" and opts.label_smoothing == 0:
            log.info("dpo: robust loss with label_smoothing 0 is plain DPO")
        # a vision-language model tokenises through its processor (pairs carry images) and saves it with the weights
        self.processor = load_vision_processor(cfg.model) if is_vision_language_model(cfg.model) else None
        self.tokenizer = self.processor.tokenizer if self.processor is not None else load_tokenizer(cfg.model)
        self.vision = VisionTokenizer(self.processor) if self.processor is not None else None
        policy = load_trainable_lm(cfg.model, cfg.lora, cfg.train.gradient_checkpointing, run.device)
        self.models["policy"] = policy
        self.collate = functools.partial(
            collate_pairs, pad_id=self.tokenizer.pad_token_id, mask_dtype=mask_dtype_for(policy),
            share_prompts=opts.group_by_prompt,
        )
        self._load_data()
        self.uses_reference = not (opts.reference_free or opts.loss_type in REFERENCE_FREE_LOSSES)
        self.reference: Reference | None = None
        self.ref_logps: dict[str, torch.Tensor] | None = None
        self.ref_source = "none"
        self.ref_seconds = 0.0
        if self.uses_reference and opts.precompute_ref:
            self._precompute_reference(run, policy)
        elif self.uses_reference:
            self.reference = make_reference(policy)  # adapter-off for LoRA, else a frozen copy
            self.ref_source = "on-the-fly"

    # --- data -------------------------------------------------------------------------------
    def _load_data(self) -> None:
        cfg = self.config
        fmt, skip = self.options.record_format, cfg.data.skip_invalid
        train, evals = load_splits(cfg.data, cfg.train.seed, lambda path: load_pairs(path, fmt, skip),
                                   missing="no training data given (pair or ranking records)", min_records_to_split=2)
        lengths = (cfg.data.max_length, self.options.max_prompt_length)
        self.train_examples, dropped_train = tokenize_pairs(self.tokenizer, train, *lengths, vision=self.vision)
        self.eval_examples, dropped_eval = tokenize_pairs(self.tokenizer, evals, *lengths, vision=self.vision)
        self.dropped = dropped_train + dropped_eval
        if self.dropped:
            log.warning("%s: dropped %d pair(s) left empty or identical by truncation (data.max_length)", self.name,
                        self.dropped)
        if not self.train_examples:
            raise DataError(f"{cfg.data.train}: no usable pairs after tokenisation (raise data.max_length)")
        log.info("%s: %d train pairs, %d eval pairs", self.name, len(self.train_examples), len(self.eval_examples))

    # --- reference ----------------------------------------------------------------------------
    def _precompute_reference(self, run, policy) -> None:
        key = refcache.cache_key(
            refcache.model_fingerprint(policy),
            refcache.examples_fingerprint(self.train_examples),
            refcache.examples_fingerprint(self.eval_examples),
            self.config.train.precision,
            run.device.type,
        )
        path = refcache.cache_path(run.out_dir, key)
        sizes = {f"{split}_{side}": len(ex) for split, ex in self._splits() for side in ("chosen", "rejected")}
        cached = refcache.load_cache(path, sizes)
        if cached is None:
            started = time.perf_counter()
            if run.is_main:
                tensors: dict[str, torch.Tensor] = {}
                with refcache.reference_view(policy) as reference:
                    for split, examples in self._splits():
                        chosen, rejected = refcache.compute_logps(
                            reference, examples, self.collate, self._micro_batch(), run.device, run.autocast,
                            by_prompt=self.options.group_by_prompt,
                        )
                        tensors[f"{split}_chosen"], tensors[f"{split}_rejected"] = chosen, rejected
                refcache.save_cache(path, tensors)
            run.accelerator.wait_for_everyone()
            cached = refcache.load_cache(path, sizes)
            self.ref_seconds = time.perf_counter() - started
            self.ref_source = "computed"
            log.info("%s: reference log-probs computed in %.1fs and cached in %s", self.name, self.ref_seconds, path)
        else:
            self.ref_source = "cached"
            log.info("%s: reference log-probs loaded from %s", self.name, path)
        if cached is None:
            raise DataError(f"{path}: the reference log-prob cache could not be read back")
        self.ref_logps = cached
        self.ref_cache_path = path

    def _splits(self) -> list[tuple[str, list[PairExample]]]:
        return [("train", self.train_examples), ("eval", self.eval_examples)]

    def _reference_logps(self, batch: dict, split: str) -> tuple[torch.Tensor, torch.Tensor] | tuple[None, None]:
        if not self.uses_reference:
            return None, None
        if self.ref_logps is not None:
            index = batch["index"].cpu()
            device = self.run.device
            return (self.ref_logps[f"{split}_chosen"][index].to(device),
                    self.ref_logps[f"{split}_rejected"][index].to(device))
        with self.reference.use() as reference:
            out = pair_logps(reference, batch)
        return out.chosen.detach(), out.rejected.detach()

    # --- loss --------------------------------------------------------------------------------
    def _micro_batch(self) -> int:
        return self.config.train.micro_batch_size or self.config.train.batch_size

    def batches(self):
        run = self.run
        common = dict(seed=self.config.train.seed, rank=run.rank, world_size=run.world_size)
        if self.options.group_by_length:
            lengths = [len(e) for e in self.train_examples]
            return LengthGroupedBatchSource(self.train_examples, self._micro_batch(), self.collate, lengths, **common)
        if self.options.group_by_prompt:
            prompts = [tuple(e.prompt_ids) for e in self.train_examples]
            return PromptGroupedBatchSource(self.train_examples, self._micro_batch(), self.collate, prompts, **common)
        return EpochBatchSource(self.train_examples, self._micro_batch(), self.collate, **common)

    def units(self, batch) -> float:
        return float(pair_count(batch))

    def _loss(self, batch: dict, split: str) -> tuple[torch.Tensor, dict[str, float]]:
        """Summed loss over the pairs of ``batch`` and summed metrics."""
        opts = self.options
        policy = pair_logps(self.models["policy"], batch)
        ref_chosen, ref_rejected = self._reference_logps(batch, split)
        chosen, rejected = policy.chosen, policy.rejected
        if opts.average_logprobs and opts.loss_type not in REFERENCE_FREE_LOSSES:
            c_len, r_len = policy.chosen_tokens.clamp(min=1), policy.rejected_tokens.clamp(min=1)
            chosen, rejected = chosen / c_len, rejected / r_len
            if ref_chosen is not None:
                ref_chosen, ref_rejected = ref_chosen / c_len, ref_rejected / r_len
        try:
            losses, chosen_rewards, rejected_rewards = dpo_loss(
                chosen, rejected, ref_chosen, ref_rejected,
                beta=opts.beta, loss_type=opts.loss_type, label_smoothing=opts.label_smoothing,
                reference_free=opts.reference_free, chosen_lengths=policy.chosen_tokens,
                rejected_lengths=policy.rejected_tokens, gamma=opts.simpo_gamma,
            )
        except ValueError as err:
            raise ConfigError(f"dpo: {err}") from None
        loss = losses.sum()
        metrics = {
            "rewards/chosen": float(chosen_rewards.sum()),
            "rewards/rejected": float(rejected_rewards.sum()),
            "rewards/margins": float((chosen_rewards - rejected_rewards).sum()),
            "rewards/accuracies": float((chosen_rewards > rejected_rewards).float().sum()),
            "logps/chosen": float(policy.chosen.detach().sum()),
            "logps/rejected": float(policy.rejected.detach().sum()),
            "loss/dpo": float(loss.detach()),
        }
        if opts.sft_weight > 0:
            nll = -(policy.chosen / policy.chosen_tokens.clamp(min=1)).sum()
            loss = loss + opts.sft_weight * nll
            metrics["loss/sft"] = float(nll.detach())
        return loss, metrics

    def step(self, batch) -> StepOutput:
        batch = batch_to(batch, self.run.device)
        loss, metrics = self._loss(batch, "train")
        return StepOutput(loss=loss, units=self.units(batch), n_tokens=real_tokens(batch), metrics=metrics)

    def frozen_modules(self) -> list:
        return self.reference.held_modules() if self.reference is not None else []

    def evaluate(self) -> dict[str, float]:
        if not self.eval_examples:
            return {}
        totals: dict[str, float] = {}
        loss_sum = 0.0
        mb = self._micro_batch()
        with self.eval_mode():
            for start in range(0, len(self.eval_examples), mb):
                batch = batch_to(self.collate(self.eval_examples[start : start + mb]), self.run.device)
                loss, metrics = self._loss(batch, "eval")
                loss_sum += float(loss)
                for k, v in metrics.items():
                    totals[k] = totals.get(k, 0.0) + v
        n = len(self.eval_examples)  # every rank evaluates the full (small) eval set
        return {"eval/loss": loss_sum / n, **{f"eval/{k}": v / n for k, v in totals.items()}}

    def summary(self) -> dict:
        out = {
            "pairs": len(self.train_examples),
            "eval_pairs": len(self.eval_examples),
            "reference": self.ref_source,
            "ref_precompute_seconds": round(self.ref_seconds, 3),
        }
        if self.dropped:
            out["dropped_pairs"] = self.dropped
        return out

    def save(self, out_dir: Path) -> None:
        save_model(self.unwrap("policy"), self.processor or self.tokenizer, Path(out_dir) / "model")
