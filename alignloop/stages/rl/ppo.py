"""PPO with a KL penalty to the SFT reference (``alignloop ppo CONFIG.yaml``): the classic RLHF stage.

Per rollout (once): sample, score, reference log-probs, critic values; per-token rewards
``r_t = −β_i·KL_t`` with the score added on the last response token (``kl_placement: reward``, Ziegler et
al. 2019) or a ``β·KL`` loss term instead (``kl_placement: loss``); advantages by a registered estimator
(GAE by default), optionally whitened. Per mini-batch: clipped surrogate + ``vf_coef`` × clipped value loss
(− entropy bonus). β comes from a fixed, adaptive (Ziegler et al.) or uncertainty-adaptive controller.
Every knob and its paper: docs/ppo.md. Rollout shape, steps and resume: config.py / source.py.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import ClassVar, Literal

import torch
from pydantic import Field, model_validator

from alignloop.algos import ADVANTAGE_ESTIMATORS, masked_mean, value_loss, whiten_advantages
from alignloop.config import DataConfig, StageConfig, TrainConfig
from alignloop.errors import ConfigError
from alignloop.models import ScalarHeadModel, enable_gradient_checkpointing
from alignloop.models.lora import apply_lora
from alignloop.models.precision import share_frozen_weights
from alignloop.stages.rl.config import RLOptions, RolloutSettings, check_rollout_shape
from alignloop.stages.rl.experience import Experience, RolloutData
from alignloop.stages.rl.kl import KLPenalty
from alignloop.stages.rl.rewards import token_rewards
from alignloop.stages.rl.stage import RLStage
from alignloop.train.engine import shards_model

__all__ = ["PPO", "PPOConfig", "PPOOptions", "PPOStage"]


log = logging.getLogger("alignloop")

class PPOOptions(RLOptions):
    kl_placement: Literal["reward", "loss"] = Field(
        "reward", description="reward: r_t = −β·KL_t in the per-token reward (Ziegler et al.); loss: a β·KL loss term."
    )
    kl_controller: Literal["fixed", "adaptive", "uncertainty"] = Field(
        "fixed", description="fixed β; adaptive (Ziegler et al. 2019 §2.2); "
        "uncertainty: β_i scaled by the ensemble std."
    )
    kl_target: float = Field(6.0, gt=0, description="Adaptive controller: target sequence KL (nats).")
    kl_horizon: float = Field(10000.0, gt=0, description="Adaptive controller: horizon in samples.")
    uncertainty_coef: float = Field(1.0, ge=0, description="Uncertainty controller: β_i = β(1 + coef·std_i/mean std).")
    uncertainty_max_scale: float = Field(5.0, ge=1, description="Uncertainty controller: β_i ≤ max_scale·β.")
    advantage: str = Field("gae", description="Registered advantage estimator (algos.ADVANTAGE_ESTIMATORS).")
    gamma: float = Field(1.0, ge=0, le=1, description="GAE discount γ.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE λ.")
    whiten_advantages: bool = Field(True, description="Normalise advantages to mean 0 / std 1 over the rollout.")
    vf_coef: float = Field(0.1, ge=0, description="Weight of the value loss.")
    vf_clip: float | None = Field(
        0.2, gt=0, description="Value clipping range around the rollout's values (null: off)."
    )
    critic_lr: float | None = Field(None, gt=0, description="Critic learning rate (null: train.lr).")
    critic_init: str = Field(
        "policy", description="policy: fresh head on the SFT model; reward: copy of the reward model dir; "
        "or a scalar-head dir."
    )
    critic_warmup_steps: int = Field(
        0, ge=0, description="Optimizer steps that train only the critic before the policy moves."
    )
    critic_share_frozen: bool = Field(
        True, description="Critic and LoRA policy hold their equal frozen base weights once (not under FSDP/DeepSpeed)."
    )


class PPOConfig(StageConfig):
    algorithm: ClassVar[type]  # PPO, set below
    stage: Literal["ppo"] = "ppo"
    data: DataConfig = Field(
        default_factory=lambda: DataConfig(
            train="bundled:prompts_train.jsonl", eval="bundled:prompts_eval.jsonl", max_length=256
        )
    )
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(max_steps=-1, batch_size=8, lr=1e-5, lr_schedule="constant", save_every=10)
    )
    ppo: PPOOptions = Field(default_factory=PPOOptions)
    rollout: RolloutSettings = Field(default_factory=RolloutSettings)

    @model_validator(mode="after")
    def _rollout_shape(self) -> "PPOConfig":
        check_rollout_shape(self, self.ppo, "ppo")
        if self.ppo.advantage not in ADVANTAGE_ESTIMATORS:
            raise ValueError(
                f"ppo.advantage: unknown {self.ppo.advantage!r}; known: {', '.join(sorted(ADVANTAGE_ESTIMATORS))}"
            )
        return self


class PPO:
    """PPO's part of ``RLStage``: the critic, per-token rewards with the KL, GAE targets, the value loss."""

    default_micro_batch = 4  # policy and critic activations of a step are both alive until backward
    needs_reference = True

    def __init__(self, stage: RLStage):
        self.stage = stage
        self.opts: PPOOptions = stage.config.ppo
        self.kl_placement = self.opts.kl_placement

    def setup(self, run) -> None:
        stage, opts = self.stage, self.opts
        if stage.prompts.vision is not None:  # the critic would score the rows without their images
            raise ConfigError("ppo: vision-language models are not supported by PPO (its critic takes text only); "
                              "use `alignloop grpo` (GRPO/RLOO) for image prompts")
        critic = self._load_critic()
        if stage.config.train.gradient_checkpointing and hasattr(critic.backbone, "gradient_checkpointing_enable"):
            enable_gradient_checkpointing(critic.backbone)
        stage.models["critic"] = critic.to(run.device)
        if opts.critic_share_frozen and not shards_model(run):
            shared = share_frozen_weights(stage.models["policy"], critic)
            if shared and run.is_main:
                log.info("critic shares %.0f MB of frozen base weights with the policy", shared / 2**20)

    def _load_critic(self) -> ScalarHeadModel:
        cfg, init = self.stage.config, self.opts.critic_init
        if init == "policy":
            return ScalarHeadModel.from_causal_lm(cfg.model, lora=cfg.lora)
        if init == "reward":
            if not isinstance(self.opts.reward, str):
                raise ConfigError("ppo.critic_init: 'reward' needs ppo.reward to be one reward-model directory")
            init = self.opts.reward
        critic = ScalarHeadModel.from_pretrained(init, trainable=True)
        if cfg.lora is not None and not critic.is_lora:
            critic.backbone = apply_lora(critic.backbone, cfg.lora)
        return critic

    def param_groups(self) -> list[dict]:
        critic_lr = self.opts.critic_lr or self.stage.config.train.lr
        models = self.stage.models
        trainable = lambda m: [p for p in m.parameters() if p.requires_grad]  # noqa: E731
        return [{"params": trainable(models["policy"])}, {"params": trainable(models["critic"]), "lr": critic_lr}]

    def _values(self, critic, input_ids, attention_mask, response_start: int) -> torch.Tensor:
        """V(s_t) for each response token: the critic's output at the position before the token (like the logits)."""
        out = critic(input_ids, attention_mask)[..., 0]
        return out[:, response_start - 1 : -1].float()

    def experience(self, data: RolloutData, kl: KLPenalty) -> tuple[Experience, dict[str, float]]:
        stage, opts, mask = self.stage, self.opts, data.response_mask
        n = len(data.scores)
        beta = kl.betas(n, data.uncertainty)
        token_kl = kl.per_token(data.old_logprobs, data.ref_logprobs, mask)
        rewards = token_rewards(data.scores, mask, token_kl if kl.in_reward else None, beta, data.dense_rewards)
        critic = stage.unwrap("critic")
        with stage.eval_mode():
            values = stage.forward_rows(
                lambda s: self._values(critic, data.input_ids[s], data.attention_mask[s], data.response_start), n
            ) * mask
        advantages, returns = ADVANTAGE_ESTIMATORS[opts.advantage](
            rewards, mask, values=values, group_size=opts.num_generations, gamma=opts.gamma, lam=opts.lam
        )
        if opts.whiten_advantages:
            advantages = whiten_advantages(advantages, data.loss_mask, reduce=stage.run.reduce_sum)
        seq_kl = token_kl.sum(dim=1)
        k1_seq = ((data.old_logprobs - data.ref_logprobs) * mask).sum(dim=1)
        stats = {
            "objective/kl": float(k1_seq.mean()),
            "objective/kl_estimate": float(seq_kl.mean()),
            "objective/entropy": float((-data.old_logprobs * mask).sum(dim=1).mean()),
            "objective/non_score_reward": float((-beta * seq_kl).mean()),
            "objective/rlhf_reward": float((data.scores - beta * seq_kl).mean()),
            "objective/scores_used": float(data.scores.mean()),
            "val/values_avg": float(masked_mean(values, mask)),
            "val/returns_avg": float(masked_mean(returns, mask)),
        }
        if kl.per_sample:
            stats["objective/kl_coef_mean"] = float(beta.mean())
            stats["objective/reward_std"] = float(data.uncertainty.mean())
        # the controller sees this rollout's KL and sets β for the next one (Ziegler et al.: n_steps = samples)
        # (over every rank's samples, so all ranks keep the same β)
        kl_sum, samples = stage.run.reduce_sum([float(seq_kl.sum()), float(n)])
        kl.update(kl_sum / max(samples, 1.0), int(samples))
        experience = Experience(
            input_ids=data.input_ids, attention_mask=data.attention_mask, response_start=data.response_start,
            loss_mask=data.loss_mask, old_logprobs=data.old_logprobs, advantages=advantages,
            ref_logprobs=None if kl.in_reward else data.ref_logprobs, kl_coef=None if kl.in_reward else beta,
            returns=returns, old_values=values,
        )
        return experience, stats

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        stage, opts, mask = self.stage, self.opts, batch["loss_mask"]
        if stage.global_step < opts.critic_warmup_steps:
            loss, stats = torch.zeros((), device=stage.run.device), {"policy/critic_warmup": 1.0}
        else:
            loss, stats = stage.policy_loss(batch)
        values = self._values(
            stage.models["critic"], batch["input_ids"], batch["attention_mask"], batch["response_start"]
        )
        vf, vstats = value_loss(
            values, batch["old_values"], batch["returns"], mask, opts.vf_clip, opts.loss_agg, opts.max_new_tokens
        )
        stats.update({k: float(v) for k, v in vstats.items()})
        return loss + opts.vf_coef * vf, stats

    def save(self, out_dir: Path) -> None:
        self.stage.unwrap("critic").save_pretrained(Path(out_dir) / "value_model", tokenizer=self.stage.tokenizer)


PPOConfig.algorithm = PPO
PPOStage = RLStage  # the name users and the registry know: RLStage with PPOConfig runs PPO
