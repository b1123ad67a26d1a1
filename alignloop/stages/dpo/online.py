"""Online DPO (``dpo.online: true``): DPO on pairs the current policy samples, labelled as it trains.

Guo et al. 2024, "Direct Language Model Alignment from Online AI Feedback" (TRL: ``OnlineDPOTrainer``). Each
optimizer step:

1. takes the next ``train.batch_size`` prompt records (``{"prompt": ...}``, as GRPO takes);
2. samples two responses per prompt from the CURRENT policy with the KV-cache sampler (``dpo.temperature``,
   ``dpo.max_new_tokens``, ...; the sampling seed depends only on ``(train.seed, step)``);
3. scores them with ``dpo.reward`` (a reward model, a rule, a weighted sum, or an LLM judge that compares the
   two): the higher-scored one is chosen; ties are skipped and counted (online_pairs.py);
4. takes one DPO step on those pairs against the frozen reference (adapter-off with LoRA, else a frozen copy),
   whose log-probs are computed in the step, next to the policy's: any ``dpo.loss_type`` works as offline.

Steps 1–3 run inside the batch source (``PairRolloutSource``, the RL stages' rollout source with one rollout
per step); the loop, checkpoints and resume are the shared ones. ``DPOCommand`` is what ``alignloop dpo`` runs:
this stage or the offline ``DPOStage``.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from typing import Any

import torch

from alignloop.algos.dpo_losses import REFERENCE_FREE_LOSSES
from alignloop.data import load_records
from alignloop.data.splits import load_splits
from alignloop.errors import ConfigError
from alignloop.eval.gold import get_gold_scorer
from alignloop.models import load_trainable_lm, make_reference
from alignloop.models.loading import is_vision_language_model
from alignloop.rewards import HasMetrics, HasOnlineState, reward_members
from alignloop.rollout import HFSampler
from alignloop.stages.dpo.batch import collate_pairs, mask_dtype_for, pair_count
from alignloop.stages.dpo.online_pairs import (
    PairRollout,
    PairRolloutSource,
    build_pair_reward,
    label_pairs,
    pair_examples,
    score_samples,
)
from alignloop.stages.dpo.stage import DPOConfig, DPOStage
from alignloop.stages.rl.monitors import SampleLog, rollout_monitors
from alignloop.stages.rl.prompts import RLPrompts
from alignloop.stages.rl.rewards import apply_truncation, prompt_text
from alignloop.stages.rl.source import rollout_seed
from alignloop.train.batches import EpochBatchSource
from alignloop.train.loop import train
from alignloop.train.run_dir import RunDir
from alignloop.train.stage import StandaloneStage, StepOutput

__all__ = ["DPOCommand", "DPOConfig", "OnlineDPOStage"]

log = logging.getLogger("alignloop")

_PAIR_KEYS = {"chosen": "preference pairs (chosen/rejected)", "completions": "rankings (completions/ranking)"}
_ANSWER_KEYS = ("chosen", "rejected", "completions", "ranking")


def distinct_prompts(records: list[dict]) -> list[dict]:
    """One prompt record per distinct prompt of pair or ranking records, in first-seen order, answers dropped."""
    seen: set[str] = set()
    prompts = []
    for record in records:
        key = json.dumps(record["prompt"], sort_keys=True)
        if key not in seen:
            seen.add(key)
            prompts.append({k: v for k, v in record.items() if k not in _ANSWER_KEYS})
    return prompts


class OnlineDPOStage(DPOStage):
    """DPO whose pairs are sampled from the policy and labelled by a reward source at every step."""

    def setup(self, run) -> None:
        cfg, opts = self.config, self.config.dpo
        if not opts.online:
            raise ConfigError("OnlineDPOStage runs dpo.online: true configs; use DPOStage for offline DPO")
        if is_vision_language_model(cfg.model):
            raise ConfigError("dpo.online: vision-language models are not supported yet (offline DPO takes image "
                              "pairs; examples/vlm-dpo.yaml)")
        self.prompts = RLPrompts(cfg.model, cfg.data.max_length)
        self.tokenizer, self.processor, self.vision = self.prompts.tokenizer, None, None
        policy = load_trainable_lm(cfg.model, cfg.lora, cfg.train.gradient_checkpointing, run.device)
        self.models["policy"] = policy
        self.collate = functools.partial(
            collate_pairs, pad_id=self.tokenizer.pad_token_id, mask_dtype=mask_dtype_for(policy)
        )
        self.train_records, self.eval_records = load_splits(
            cfg.data, cfg.train.seed, self._load_prompts, missing="no prompt records given", min_records_to_split=2
        )
        self.uses_reference = not (opts.reference_free or opts.loss_type in REFERENCE_FREE_LOSSES)
        # taken now, before any update: the LoRA adapter switched off, or a frozen copy of the initial weights
        self.reference = make_reference(policy) if self.uses_reference else None
        self.ref_logps, self.ref_seconds = None, 0.0
        self.ref_source = "per-step" if self.uses_reference else "none"
        dtype = "auto" if cfg.train.precision == "bf16" else "fp32"
        self.sampler = HFSampler(policy, self.tokenizer, batch_size=opts.generation_batch_size, dtype=dtype)
        self.reward = build_pair_reward(opts.reward)
        self.gold = get_gold_scorer(opts.gold) if opts.gold else None
        self.samples = SampleLog(run.out_dir / "samples.jsonl", enabled=run.is_main)
        self.rollout_stats: dict[str, float] = {}
        self.eval_before: dict[str, float] | None = None
        self.totals, self.pending = {"prompts": 0, "ties": 0}, {}
        self.generation_seconds = 0.0

    def _load_prompts(self, path: str) -> list[dict]:
        records = list(load_records(path, "prompt", skip_invalid=self.config.data.skip_invalid))
        kind = next((what for key, what in _PAIR_KEYS.items() if any(key in r for r in records)), None)
        if kind:  # the prompts of preference data (HH ships as pairs only), as PPO and GRPO read them
            records = distinct_prompts(records)
            log.warning("%s holds %s: online DPO samples its own pairs, so it uses only their %d distinct prompts "
                        "(dpo.online: false trains on the pairs themselves)", path, kind, len(records))
        limit = self.config.data.max_length - self.config.dpo.max_new_tokens
        return self.prompts.fitting(records, path, limit, "dpo.max_new_tokens")

    # --- one rollout per step ------------------------------------------------------------------
    def batches(self) -> PairRolloutSource:
        tc, run = self.config.train, self.run
        prompts = EpochBatchSource(self.train_records, tc.batch_size // run.world_size, list, seed=tc.seed,
                                   rank=run.rank, world_size=run.world_size, full_batches=True)
        self.source = PairRolloutSource(prompts, self.rollout_phase, minibatch_size=tc.batch_size // run.world_size,
                                        micro_batch_size=self._micro_batch(), seed=tc.seed)
        return self.source

    def rollout_phase(self, records: list[dict], index: int) -> PairRollout:
        """Step ``index``'s pairs: sample two responses per prompt, score them, pick the chosen one."""
        opts = self.config.dpo
        if index == 0 and opts.eval_before and self.eval_before is None and self.eval_records and opts.eval_prompts:
            self.eval_before = self.evaluate()
        started = time.perf_counter()
        rollout = self.sampler.generate(self.prompts.for_sampler(records), n=2, **opts.sampling_kwargs(),
                                        seed=rollout_seed(self.config.train.seed, index, self.run.rank))
        self.generation_seconds += time.perf_counter() - started
        with torch.no_grad(), self.run.autocast():  # a reward model scores in the precision it trained in
            raw, components = score_samples(self.reward, rollout, records)
        scores, _ = apply_truncation(raw, rollout.finished, opts.truncation, opts.truncation_value)
        labels = label_pairs(rollout, scores, opts.tie_margin)
        examples = pair_examples(rollout, labels)
        self.pending = {"prompts": len(records), "ties": len(records) - labels.decisive}  # counted once trained
        self.rollout_stats = self._rollout_stats(rollout, raw, scores, labels, components)
        self.rollout_stats["rollout/generation_seconds"] = time.perf_counter() - started
        if opts.samples_every and index % opts.samples_every == 0:
            won = torch.stack([labels.first_wins, ~labels.first_wins], dim=1).flatten().tolist()
            tags = ["tie" if labels.tie[i // 2] else ("chosen" if won[i] else "rejected") for i in range(len(rollout))]
            self.samples.write(index, rollout.prompts, rollout.responses, raw, opts.samples_count,
                               label=tags, step=[index + 1] * len(rollout))
        return PairRollout(examples, self.collate)

    def _rollout_stats(self, rollout, raw, scores, labels, components) -> dict[str, float]:
        gold = None
        if self.gold is not None:
            gold = torch.tensor(self.gold.score([prompt_text(p) for p in rollout.prompts], rollout.responses))
        stats = rollout_monitors(raw, rollout.response_lengths(), rollout.finished, gold)
        first, second = scores[0::2], scores[1::2]
        decisive = ~labels.tie
        margin = (first - second).abs()[decisive]
        stats.update({
            "objective/scores": float(raw.mean()),
            "objective/scores_margin": float(margin.mean()) if len(margin) else 0.0,
            "objective/tie_fraction": float(labels.tie.float().mean()),
            "objective/pairs": float(labels.decisive),
            "val/contain_eos_token": float(rollout.ended_with_eos.float().mean()),
        })
        if len(components) > 1:
            stats.update({f"rewards/{name}/mean": float(v.mean()) for name, v in components.items()})
        return stats

    # --- the DPO step ----------------------------------------------------------------------------
    def step(self, batch) -> StepOutput:
        if pair_count(batch) == 0:  # every pair went to other micro-batches or tied: no gradient, but a graph
            params = [p for p in self.models["policy"].parameters() if p.requires_grad]
            return StepOutput(loss=sum(p.sum() for p in params) * 0.0, units=0.0)
        out = super().step(batch)
        opts = self.config.dpo
        if self.uses_reference and not opts.average_logprobs:
            # log π − log π_ref of the step's samples (drawn from the policy these weights give): a k1 KL estimate
            rewards = out.metrics["rewards/chosen"] + out.metrics["rewards/rejected"]
            out.metrics["objective/kl"] = rewards / (2 * opts.beta)
        return out

    def frozen_modules(self) -> list:
        return super().frozen_modules() + reward_members(self.reward)

    def on_step_end(self, step: int, metrics: dict[str, float]) -> None:
        self.source.commit()  # the step's rollout is trained: a checkpoint from now on resumes after it
        for key, count in self.pending.items():
            self.totals[key] += count
        self.pending = {}
        metrics.update(self.rollout_stats)
        if isinstance(self.reward, HasMetrics):  # e.g. the Lagrange multipliers of a constrained reward
            metrics.update(self.reward.metrics())

    def evaluate(self) -> dict[str, float]:
        """Greedy responses to the first ``dpo.eval_prompts`` eval prompts, scored by the reward (and gold)."""
        opts = self.config.dpo
        records = self.eval_records[: opts.eval_prompts]
        if not records:
            return {}
        rollout = self.sampler.generate(self.prompts.for_sampler(records), n=1, max_new_tokens=opts.max_new_tokens,
                                        temperature=0.0, stop=opts.stop)
        out = {"eval/completions/mean_length": float(rollout.response_lengths().float().mean())}
        pairwise = getattr(self.reward, "mode", None) == "pairwise"  # a pairwise judge scores pairs, not answers
        if not pairwise:
            with torch.no_grad(), self.run.autocast():
                scores, _ = score_samples(self.reward, rollout, records)
            out["eval/reward"] = float(scores.mean())
        if self.gold is not None:
            golds = self.gold.score([prompt_text(p) for p in rollout.prompts], rollout.responses)
            out["eval/gold_scores"] = float(torch.tensor(golds).mean())
        return out

    # --- state and results ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        # a reward's online state (a constrained reward's multipliers), never a reward model's weights
        online = isinstance(self.reward, HasOnlineState) and not isinstance(self.reward, torch.nn.Module)
        return {"eval_before": self.eval_before, "rollout_stats": self.rollout_stats, "totals": self.totals,
                "reward": self.reward.state_dict() if online else None}

    def load_state_dict(self, state: dict) -> None:
        self.eval_before = state["eval_before"]
        self.rollout_stats = dict(state["rollout_stats"])
        self.totals = dict(state["totals"])
        if state.get("reward") is not None and isinstance(self.reward, HasOnlineState):
            self.reward.load_state_dict(state["reward"])
        self.samples.truncate_from(self.source.rollouts_done)

    def summary(self) -> dict[str, Any]:
        prompts, ties = self.totals["prompts"], self.totals["ties"]
        out: dict[str, Any] = {
            "online": True, "prompts": len(self.train_records), "eval_records": len(self.eval_records),
            "reference": self.ref_source, "sampled_prompts": prompts, "pairs_trained": prompts - ties, "ties": ties,
            "tie_fraction": round(ties / prompts, 4) if prompts else 0.0,
            "generation_seconds": round(self.generation_seconds, 2),
        }
        if self.eval_before:
            out.update({k.replace("eval/", "eval_before/", 1): v for k, v in self.eval_before.items()})
        return out


class DPOCommand(StandaloneStage):
    """``alignloop dpo`` (stages/registry.py): the offline ``DPOStage`` or, with ``dpo.online: true``, the
    ``OnlineDPOStage``; either one runs on the one training loop."""

    name = "dpo"

    @classmethod
    def run(cls, cfg: DPOConfig, run_dir: RunDir) -> dict[str, Any]:
        stage = OnlineDPOStage(cfg) if cfg.dpo.online else DPOStage(cfg)
        return train(stage, run_dir.path)
