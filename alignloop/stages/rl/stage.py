"""The RL stage (PPO, GRPO/RLOO): policy + roles (sampler, reward, reference) + one algorithm, on the one loop.

``RLStage(config, roles)`` is composed, not subclassed: ``roles`` (stages/rl/roles.py) say who samples, scores
and gives reference log-probs (built here when left out, or Ray proxies from ``alignloop.distributed``), and the
config's ``algorithm`` class (PPO in ppo.py, GRPO/RLOO in grpo.py) turns each scored rollout into targets and
computes the loss. The KL penalty's coefficient and placement: kl.py. Rollout shape, steps, resume: config.py and
source.py.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from alignloop.algos import POLICY_LOSSES, entropy_bonus, masked_mean
from alignloop.data import load_records
from alignloop.errors import ConfigError, DataError
from alignloop.eval.gold import get_gold_scorer
from alignloop.models import load_trainable_lm, save_model
from alignloop.models.shared_prompt import takes_4d_mask
from alignloop.rewards import HasDenseRewards, HasMetrics, HasOnlineState, has_uncertainty, reward_members
from alignloop.rollout import forward_logprobs
from alignloop.stages.rl.async_rollouts import AsyncRollouts
from alignloop.stages.rl.config import steps_per_rollout
from alignloop.stages.rl.env_rollouts import with_environment
from alignloop.stages.rl.experience import Experience, RolloutData, loss_sum_factor
from alignloop.stages.rl.kl import KLPenalty
from alignloop.stages.rl.monitors import SampleLog, greedy_evaluation, rollout_monitors
from alignloop.stages.rl.off_policy import correct_off_policy
from alignloop.stages.rl.prompts import RLPrompts
from alignloop.stages.rl.ptx import make_ptx
from alignloop.stages.rl.rewards import RunningMoments, normalise_scores, prompt_text
from alignloop.stages.rl.roles import LocalReference, RLRoles, SyncsWeights, local_roles
from alignloop.stages.rl.sampling import sample_and_score
from alignloop.stages.rl.shared_prompt import shared_prompt_logprobs
from alignloop.stages.rl.source import RolloutBatchSource
from alignloop.stages.rl.truncation import NoEosControl
from alignloop.train.batches import EpochBatchSource
from alignloop.train.stage import Stage, StepOutput

__all__ = ["RLStage"]

log = logging.getLogger("alignloop")


class RLStage(Stage):
    def __init__(self, config, roles: RLRoles | None = None):
        super().__init__(config)
        self.name = self.section = config.stage
        self.given_roles = roles or RLRoles()
        self.algorithm = type(config).algorithm(self)

    @property
    def opts(self) -> Any:
        return getattr(self.config, self.section)

    # --- setup ------------------------------------------------------------------------------
    def resolve(self, run) -> None:
        tc, micro = self.config.train, self.algorithm.default_micro_batch
        if tc.micro_batch_size is None and micro and tc.batch_size % run.world_size == 0:
            # the largest divisor of the per-rank batch not above the default: exact accumulation, bounded memory
            local = tc.batch_size // run.world_size
            tc.micro_batch_size = max(d for d in range(1, min(micro, local) + 1) if local % d == 0)
        if tc.max_steps == -1:  # derived: every update of every rollout (see config.py)
            tc.max_steps = self.opts.rollouts * steps_per_rollout(self.opts, tc.batch_size)

    def setup(self, run) -> None:
        cfg, opts = self.config, self.opts
        if opts.reward is None and self.given_roles.reward is None:
            raise ConfigError(
                f"{self.section}.reward: no reward given (a reward-model dir, 'module:function' or 'rule:<name>')"
            )
        self.prompts = RLPrompts(cfg.model, cfg.data.max_length)  # VLM prompts carry their images
        self.tokenizer = self.prompts.tokenizer
        policy = load_trainable_lm(cfg.model, cfg.lora, cfg.train.gradient_checkpointing, run.device)
        self.models["policy"] = policy
        roles = local_roles(
            self.given_roles, policy, self.tokenizer, opts.reward, self.algorithm.needs_reference,
            opts.generation_batch_size, cfg.train.precision, self._reference_forward,
            cfg.rollout.sampler_options(opts) if getattr(cfg, "rollout", None) is not None else None,
        )
        self.sampler, self.reward, self.reference = roles.sampler, roles.reward, roles.reference
        self.sampler = with_environment(self.sampler, opts, self.tokenizer, self.section, self.prompts.vision)
        self.gold = get_gold_scorer(opts.gold) if opts.gold else None
        self.train_records = self._load_prompts(cfg.data.train, "data.train")
        self.eval_records = self._load_prompts(cfg.data.eval, "data.eval") if cfg.data.eval else []
        self.kl = KLPenalty(opts, self.section, self.algorithm.kl_placement)
        if self.kl.per_sample and not has_uncertainty(self.reward):
            raise ConfigError(f"{self.section}.kl_controller: 'uncertainty' needs a reward source "
                              "with an uncertainty() (a reward-model ensemble)")
        self.running = RunningMoments()
        self.truncation = NoEosControl(opts.truncation, opts.truncation_value, opts.truncation_gain,
                                       opts.truncation_target)
        self.ptx = make_ptx(self)  # PPO-ptx's demonstrations, or None
        self.samples = SampleLog(run.out_dir / "samples.jsonl", enabled=run.is_main)
        self.global_step = 0
        self.rollout_stats: dict[str, float] = {}
        self.eval_before: dict[str, float] | None = None
        self.early_stops = 0
        self.generation_seconds = 0.0
        self.algorithm.setup(run)
        self.ahead = AsyncRollouts(self) if opts.async_rollouts else None  # sampling ahead in a thread
        if isinstance(self.sampler, SyncsWeights):
            if run.world_size > 1:
                raise ConfigError("ray: the learner is one process here; launch it without torchrun/accelerate")
            self.sampler.sync_weights(policy)  # remote samplers start from exactly the learner's weights

    @property
    def kl_ctl(self) -> Any:
        return self.kl.controller

    def frozen_modules(self) -> list:
        held = self.reference.held_modules() if isinstance(self.reference, LocalReference) else []
        return reward_members(self.reward) + held

    def param_groups(self) -> list[dict]:
        return self.algorithm.param_groups() or super().param_groups()

    def _load_prompts(self, path: str | None, key: str) -> list[dict]:
        if not path:
            raise DataError(f"{key}: no prompt records given")
        records = list(load_records(path, "prompt", skip_invalid=self.config.data.skip_invalid))
        limit = self.config.data.max_length - self.opts.max_new_tokens
        return self.prompts.fitting(records, path, limit, f"{self.section}.max_new_tokens")

    # --- rollouts ---------------------------------------------------------------------------
    def batches(self) -> RolloutBatchSource:
        tc, opts, run = self.config.train, self.opts, self.run
        if opts.prompts_per_rollout % run.world_size:
            raise ConfigError(f"{self.section}.prompts_per_rollout ({opts.prompts_per_rollout}) must be a multiple of "
                              f"the process count ({run.world_size})")
        prompts = EpochBatchSource(
            self.train_records, opts.prompts_per_rollout // run.world_size, list,
            seed=tc.seed, rank=run.rank, world_size=run.world_size, full_batches=True,
        )
        self.source = RolloutBatchSource(
            prompts, self.rollout_phase,
            minibatch_size=tc.batch_size // run.world_size,
            micro_batch_size=tc.micro_batch_size or tc.batch_size,
            epochs=opts.epochs, seed=tc.seed, group_size=opts.num_generations if self.shares_prompt() else 1,
        )
        return self.source

    def forward_rows(self, fn, n_rows: int) -> torch.Tensor:
        """``fn(rows)`` (a no-grad forward) over row chunks, concatenated: bounded memory.

        Chunks are twice the training micro-batch (capped at the mini-batch): without autograd a forward keeps
        no activations beyond the current layer, so it fits in what a training micro-batch needs.
        """
        tc = self.config.train
        chunk = min(tc.batch_size, 2 * tc.micro_batch_size) if tc.micro_batch_size else tc.batch_size
        return torch.cat([fn(slice(i, i + chunk)) for i in range(0, n_rows, chunk)])

    def shares_prompt(self) -> bool:
        """Forward a group's prompt once (shared_prompt.py): ``share_prompt``, G > 1 and an attention that takes
        4D masks. The policy and reference forwards only: PPO's critic keeps plain rows."""
        return bool(self.opts.share_prompt and self.opts.num_generations > 1
                    and takes_4d_mask(self.unwrap("policy")))

    def logprobs(self, model, input_ids, attention_mask, response_start: int, temperature: float,
                 images: list[tuple] | None = None) -> torch.Tensor:
        """Response log-probs ``[N, R]``: shared-prompt rows when ``shares_prompt()``, else plain rows."""
        if self.shares_prompt():
            return shared_prompt_logprobs(model, input_ids, attention_mask, response_start, temperature,
                                          self.tokenizer.pad_token_id, images)
        return forward_logprobs(model, input_ids, attention_mask, response_start, temperature, images=images)

    def _reference_forward(self, model, input_ids, attention_mask, response_start: int, temperature: float,
                           images: list[tuple] | None = None):
        with self.eval_mode():
            return self.forward_rows(
                lambda s: self.logprobs(model, input_ids[s], attention_mask[s], response_start, temperature,
                                        None if images is None else images[s]),
                len(input_ids),
            )

    def rollout_phase(self, records: list[dict], index: int) -> Experience:
        """Once per rollout: sample, score, old and reference log-probs, then the algorithm's targets."""
        opts = self.opts
        if index == 0 and opts.eval_before and self.eval_before is None and self.eval_records and opts.eval_prompts:
            self.eval_before = self.evaluate()
        started = time.perf_counter()
        # sample and score, with DAPO's dynamic sampling / overlong shaping when the options ask (sampling.py)
        rollout, scored, sampling_stats = sample_and_score(self, records, index)
        scores, keep_rows = self.truncation.apply(scored.scores, rollout.finished, self.run.reduce_sum,
                                                  rollout.response_lengths())
        scores = normalise_scores(scores, opts.reward_norm, self.running, opts.reward_clip, self.run.reduce_sum)
        input_ids, attention = rollout.input_ids(), rollout.attention_mask()
        start, response_mask, temperature = rollout.response_start, rollout.trained_mask.float(), opts.temperature
        images = rollout.images
        by_rows = (lambda s: None) if images is None else (lambda s: images[s])
        policy = self.unwrap("policy")
        with self.eval_mode():
            if opts.reuse_sampler_logprobs:
                old_logp = rollout.logprobs.float()
            else:
                old_logp = self.forward_rows(
                    lambda s: self.logprobs(policy, input_ids[s], attention[s], start, temperature, by_rows(s)),
                    len(rollout),
                ).float()
            ref_logp = None
            if self.reference is not None:
                with_images = {"images": images} if images is not None else {}  # remote roles take text only
                ref_logp = self.reference.logprobs(input_ids, attention, start, temperature, **with_images)
                ref_logp = ref_logp.to(old_logp.device).float()
        dense = None
        if isinstance(self.reward, HasDenseRewards):  # a process reward model: one reward per reasoning step
            dense = self.reward.dense_rewards(rollout.prompts, rollout.response_ids, rollout.response_mask,
                                              self.tokenizer)
        data = RolloutData(
            rollout=rollout, input_ids=input_ids, attention_mask=attention, response_start=start,
            response_mask=response_mask, loss_mask=response_mask * keep_rows.to(response_mask).unsqueeze(1),
            raw_scores=scored.scores, scores=scores, components=scored.components, uncertainty=scored.uncertainty,
            old_logprobs=old_logp * response_mask, ref_logprobs=None if ref_logp is None else ref_logp * response_mask,
            dense_rewards=dense,
        )
        experience, stats = self.algorithm.experience(data, self.kl)
        sampler_logp = None if opts.reuse_sampler_logprobs else rollout.logprobs  # vs the trainer's: gap, TIS
        stats.update(correct_off_policy(experience, sampler_logp, response_mask, opts))
        gold = None
        if self.gold is not None:
            gold = torch.tensor(self.gold.score([prompt_text(p) for p in rollout.prompts], rollout.responses))
        stats.update(rollout_monitors(scored.scores, rollout.response_lengths(), rollout.finished, gold))
        stats.update(sampling_stats)
        stats["objective/scores"] = float(scored.scores.mean())
        stats.update(self.truncation.stats())
        stats["rollout/generation_seconds"] = time.perf_counter() - started
        self.rollout_stats = stats
        if opts.samples_every and index % opts.samples_every == 0:
            self.samples.write(index, rollout.prompts, rollout.responses, scored.scores, opts.samples_count,
                               step=[self.global_step] * len(rollout))
        return experience

    # --- the loss ----------------------------------------------------------------------------
    def units(self, batch) -> float:
        return loss_sum_factor(batch["loss_mask"], self.opts.loss_agg)

    def policy_loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """The policy-gradient term every algorithm shares: registered policy loss + KL-in-loss + entropy bonus."""
        opts = self.opts
        mask = batch["loss_mask"]
        args = (self.models["policy"], batch["input_ids"], batch["attention_mask"], batch["response_start"],
                opts.temperature)
        images = batch.get("images")
        if opts.entropy_coef > 0:  # entropy needs full logits: plain rows
            logp, entropy = forward_logprobs(*args, return_entropy=True, images=images)
        else:
            logp, entropy = self.logprobs(*args, images), None
        loss, raw = POLICY_LOSSES[opts.policy_loss](
            logp, batch["old_logprobs"], batch["advantages"], mask, clip_eps=opts.clip_eps,
            clip_eps_high=opts.clip_eps_high, agg=opts.loss_agg, max_len=opts.max_new_tokens,
        )
        stats = {k: float(v) for k, v in raw.items()}
        kl_term, kl_stats = self.kl.loss_term(logp, batch, mask, opts.loss_agg, opts.max_new_tokens)
        if kl_term is not None:
            loss = loss + kl_term
            stats.update(kl_stats)
        if self.ptx is not None:
            ptx_loss, stats["policy/ptx_loss"] = self.ptx.loss(self.models["policy"], self.run.device)
            loss = loss + ptx_loss
        if entropy is not None:
            loss = loss + entropy_bonus(entropy, mask, opts.entropy_coef, opts.loss_agg, opts.max_new_tokens)
            stats["policy/entropy_avg"] = float(masked_mean(entropy.detach(), mask))
        return loss, stats

    def step(self, batch) -> StepOutput:
        batch = {k: v.to(self.run.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        loss, stats = self.algorithm.loss(batch)
        units = self.units(batch)
        return StepOutput(loss=loss * units, units=units, n_tokens=int(batch["attention_mask"].sum()), stats=stats)

    # --- hooks --------------------------------------------------------------------------------
    def on_step_end(self, step: int, metrics: dict[str, float]) -> None:
        self.global_step = step
        metrics.update(self.rollout_stats)
        metrics["objective/kl_coef"] = self.kl.value
        metrics["rollouts"] = float(self.source.rollouts_done)
        if isinstance(self.reward, HasMetrics):  # e.g. Lagrange multipliers of a constrained multi-objective reward
            metrics.update(self.reward.metrics())
        target = self.opts.target_kl
        if target is not None and metrics.get("policy/approxkl_avg", 0.0) > target and not self.source.exhausted:
            self.early_stops += 1
            metrics["policy/early_stopped"] = float(self.source.steps_left_in_rollout)
            self.source.skip_rest_of_rollout()
        if isinstance(self.sampler, HasMetrics):  # remote samplers: weight syncs so far
            metrics.update(self.sampler.metrics())
        if isinstance(self.sampler, SyncsWeights) and self.ahead is None:  # async: the sampling thread syncs
            # the next micro-batch needs a new rollout (or training ends): remote samplers need the new weights
            if self.source.exhausted or step >= self.config.train.max_steps or self.should_stop():
                self.sampler.sync_weights(self.unwrap("policy"))

    def should_stop(self) -> bool:
        return self.source.rollouts_done >= self.opts.rollouts and self.source.exhausted

    def evaluate(self) -> dict[str, float]:
        return greedy_evaluation(self)

    def state_dict(self) -> dict:
        # online state of the reward (Lagrange multipliers), never a reward model's weights
        online = isinstance(self.reward, HasOnlineState) and not isinstance(self.reward, torch.nn.Module)
        return {
            "kl_ctl": self.kl.state_dict(), "running": self.running.state_dict(), "global_step": self.global_step,
            "truncation": self.truncation.state_dict(), "ptx": self.ptx.state_dict() if self.ptx else None,
            "experience": self.source.experience_state(), "eval_before": self.eval_before,
            "early_stops": self.early_stops, "rollout_stats": self.rollout_stats,
            "reward": self.reward.state_dict() if online else None,
            "async": self.ahead.state_dict() if self.ahead is not None else None,  # weights queued rollouts need
        }

    def load_state_dict(self, state: dict) -> None:
        self.kl.load_state_dict(state["kl_ctl"])
        self.running.load_state_dict(state["running"])
        self.truncation.load_state_dict(state.get("truncation") or {"length_gap": state.get("length_gap")})  # older
        if self.ptx is not None:
            self.ptx.load_state_dict(state.get("ptx"))
        self.global_step = int(state["global_step"])
        self.eval_before = state["eval_before"]
        self.early_stops = int(state["early_stops"])
        self.rollout_stats = dict(state["rollout_stats"])
        if state.get("reward") is not None and isinstance(self.reward, HasOnlineState):
            self.reward.load_state_dict(state["reward"])
        self.source.load_experience_state(state["experience"])
        if self.ahead is not None:
            self.ahead.load_state_dict(state.get("async"))
        self.samples.truncate_from(self.source.rollouts_done)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rollouts": self.source.rollouts_done, "early_stops": self.early_stops,
                               "generation_seconds": round(self.generation_seconds, 2)}
        if self.eval_before:
            out.update({k.replace("eval/", "eval_before/", 1): v for k, v in self.eval_before.items()})
        return out

    def save(self, out_dir: Path) -> None:
        save_model(self.unwrap("policy"), self.prompts.saved_with_model, Path(out_dir) / "model")
        self.algorithm.save(Path(out_dir))
