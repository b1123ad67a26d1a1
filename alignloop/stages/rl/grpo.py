"""GRPO and its relatives (``alignloop grpo CONFIG.yaml``): G samples per prompt, group-relative advantages, no critic.

``grpo.advantage`` picks the estimator (``algos.ADVANTAGE_ESTIMATORS``): ``group_norm`` is GRPO (Shao et al.
2024), ``dr_grpo`` Dr. GRPO (Liu et al. 2025), ``rloo`` REINFORCE leave-one-out (Ahmadian et al. 2024),
``reinforce_pp`` / ``reinforce_pp_baseline`` REINFORCE++ (Hu 2025). ``grpo.policy_loss`` picks the loss
(``algos.POLICY_LOSSES``: ``ppo_clip``, ``gspo``, ``cispo``, ``vanilla``). ``grpo.loss`` is a preset that fills
those, the aggregation, the clip range and DAPO's switches (``LOSS_PRESETS``) wherever the config leaves them
unset: a key the config sets itself always wins. The KL to the reference is a loss term with the k3 estimator
(``β·k3``, as in DeepSeekMath), or k1 in the per-token reward for REINFORCE++ (``kl_placement: reward``);
``kl_coef: 0`` skips the reference forward entirely. Dynamic sampling and overlong shaping: sampling.py.
Rollout shape, steps and resume: config.py / source.py; docs/grpo.md.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator

from alignloop.algos import ADVANTAGE_ESTIMATORS, frac_zero_std, masked_mean
from alignloop.config import DataConfig, SamplingSettings, StageConfig, TrainConfig
from alignloop.stages.rl.config import RLOptions, RolloutSettings, check_rollout_shape
from alignloop.stages.rl.experience import Experience, RolloutData
from alignloop.stages.rl.kl import KLPenalty
from alignloop.stages.rl.rewards import token_rewards
from alignloop.stages.rl.stage import RLStage

__all__ = ["GRPO", "GRPOConfig", "GRPOOptions", "GRPOStage", "LOSS_PRESETS"]

log = logging.getLogger("alignloop")

_ESTIMATOR = {"group_norm": "grpo", "dr_grpo": "dr_grpo", "rloo": "rloo", "reinforce_pp": "reinforce_pp",
              "reinforce_pp_baseline": "reinforce_pp_baseline"}
_MAX_NEW_TOKENS = 64  # GRPO's default generation limit (the overlong buffer of the dapo preset is a fifth of it)

# What each ``grpo.loss`` preset sets, for the keys the config leaves unset (docs/grpo.md has the table).
# "overlong_buffer": None in dapo stands for max_new_tokens // 5 (DAPO: L_cache 4096 of L_max 20480).
LOSS_PRESETS: dict[str, dict[str, Any]] = {
    # DeepSeekMath (Shao et al. 2024) eq. 3: 1/G Σ_i 1/|o_i| Σ_t, group mean/std advantages
    "grpo": {"policy_loss": "ppo_clip", "loss_agg": "seq_mean_token_mean", "advantage": "group_norm"},
    # Liu et al. 2025: no std scaling, a constant normaliser (max_new_tokens) instead of |o_i|
    "dr_grpo": {"policy_loss": "ppo_clip", "loss_agg": "seq_mean_token_sum", "advantage": "dr_grpo"},
    # Yu et al. 2025: clip-higher (0.2 / 0.28), token-level loss, dynamic sampling, soft overlong punishment
    "dapo": {"policy_loss": "ppo_clip", "loss_agg": "token_mean", "advantage": "group_norm", "clip_eps": 0.2,
             "clip_eps_high": 0.28, "dynamic_sampling": True, "overlong_buffer": None},
    # Zheng et al. 2025 §5.1: sequence ratio, ranges 3e-4 / 4e-4, per-response mean
    "gspo": {"policy_loss": "gspo", "loss_agg": "seq_mean_token_mean", "advantage": "group_norm",
             "clip_eps": 3e-4, "clip_eps_high": 4e-4},
    # MiniMax 2025: clipped IS weight (no lower bound, upper 4), token-level loss
    "cispo": {"policy_loss": "cispo", "loss_agg": "token_mean", "advantage": "group_norm", "clip_eps": 1.0,
              "clip_eps_high": 3.0},
}


def _preset_values(name: str, max_new_tokens: Any) -> dict[str, Any]:
    values = dict(LOSS_PRESETS[name])
    if "overlong_buffer" in values:
        limit = max_new_tokens if isinstance(max_new_tokens, int) else _MAX_NEW_TOKENS
        values["overlong_buffer"] = max(1, limit // 5)
    return values


class GRPOOptions(RLOptions):
    reward: object = Field("rule:exact_match", description=RLOptions.model_fields["reward"].description)
    num_generations: int = Field(4, ge=2, description="G: responses per prompt (a group).")
    loss: Literal["grpo", "dr_grpo", "dapo", "gspo", "cispo"] | None = Field(
        None, description="Preset (docs/grpo.md): sets policy_loss, loss_agg, advantage and, per preset, clip_eps/"
        "clip_eps_high, dynamic_sampling, overlong_buffer — only the keys the config leaves unset. null: no preset.",
    )
    advantage: Literal["group_norm", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline"] = Field(
        "group_norm", description="group_norm: GRPO (r − mean)/std; dr_grpo: r − mean; rloo: leave-one-out; "
        "reinforce_pp: whitened per-token return (KL in the reward); reinforce_pp_baseline: r − mean, whitened.",
    )
    scale_by_std: bool = Field(True, description="group_norm only: divide by the group std (false = Dr. GRPO).")
    gamma: float = Field(1.0, ge=0, le=1, description="Discount of the per-token return (reinforce_pp*).")
    kl_coef: float = Field(0.04, ge=0, description="β of the KL term; 0 = no reference model at all.")
    kl_estimator: Literal["k1", "k2", "k3", "abs"] = Field(
        "k3", description="KL estimator (reinforce_pp fills k1 when unset).")
    kl_placement: Literal["loss", "reward"] = Field(
        "loss", description="loss: a β·KL loss term (DeepSeekMath); reward: −β·KL_t in the per-token reward "
        "(REINFORCE++; reinforce_pp fills it when unset).",
    )
    dynamic_sampling: bool = Field(
        False, description="DAPO: drop groups whose rewards are all equal and sample more prompts until the rollout "
        "has prompts_per_rollout informative groups.",
    )
    dynamic_sampling_max_rounds: int = Field(
        3, ge=0, description="Dynamic sampling: extra sampling rounds per rollout at most; a rollout still short is "
        "topped up with all-equal groups (logged as dynamic_sampling/topped_up_groups).",
    )
    max_new_tokens: int = SamplingSettings.field("max_new_tokens", _MAX_NEW_TOKENS)
    env: Literal["calculator"] | None = Field(
        None, description="Multi-turn rollouts with a tool environment (docs/tools.md): calculator = arithmetic with a "
        "calculator tool; tool outputs are in the context but out of the loss and KL. null: one turn.",
    )
    max_turns: int = Field(4, ge=1, description="With env: assistant turns per episode at most.")

    @model_validator(mode="before")
    @classmethod
    def _fill_from_preset(cls, data: Any) -> Any:
        """``loss`` fills the keys the config does not set; ``reinforce_pp`` fills its KL placement / estimator."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if data.get("loss") in LOSS_PRESETS:
            for key, value in _preset_values(data["loss"], data.get("max_new_tokens")).items():
                data.setdefault(key, value)
        if data.get("advantage") == "reinforce_pp":
            data.setdefault("kl_placement", "reward")
            data.setdefault("kl_estimator", "k1")
        return data

    def preset_overrides(self) -> dict[str, tuple[Any, Any]]:
        """Keys the config set to something other than what ``loss`` would set: ``{key: (value, preset's)}``."""
        if self.loss is None:
            return {}
        preset = _preset_values(self.loss, self.max_new_tokens)
        return {k: (getattr(self, k), v) for k, v in preset.items() if getattr(self, k) != v}


class GRPOConfig(StageConfig):
    algorithm: ClassVar[type]  # GRPO, set below
    stage: Literal["grpo"] = "grpo"
    data: DataConfig = Field(
        default_factory=lambda: DataConfig(
            train="bundled:arith_train.jsonl", eval="bundled:arith_eval.jsonl", max_length=256
        )
    )
    # checkpointing on by default (as TRL's GRPOConfig): G samples per prompt make large micro-batches
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(max_steps=-1, batch_size=16, lr=1e-5, lr_schedule="constant", save_every=10,
                                            gradient_checkpointing=True)
    )
    grpo: GRPOOptions = Field(default_factory=GRPOOptions)
    rollout: RolloutSettings = Field(default_factory=RolloutSettings)

    @model_validator(mode="after")
    def _rollout_shape(self) -> "GRPOConfig":
        check_rollout_shape(self, self.grpo, "grpo")
        return self


class GRPO:
    """GRPO's part of ``RLStage``: group-relative (or REINFORCE++) advantages, the policy loss with a β·KL term."""

    default_micro_batch = None

    def __init__(self, stage: RLStage):
        self.stage = stage
        self.opts: GRPOOptions = stage.config.grpo
        self.needs_reference = self.opts.kl_coef > 0
        self.kl_placement = self.opts.kl_placement

    def setup(self, run) -> None:
        """No critic: nothing to build beyond the policy. Says which keys the config kept against its preset."""
        kept = self.opts.preset_overrides()
        if kept and run.is_main:
            log.info("grpo.loss=%s: the config's own %s kept (the preset would set %s)", self.opts.loss,
                     ", ".join(f"{k}={v!r}" for k, (v, _) in kept.items()),
                     ", ".join(f"{k}={p!r}" for k, (_, p) in kept.items()))

    def param_groups(self) -> None:
        return None  # one group: the policy's trainable parameters

    def experience(self, data: RolloutData, kl: KLPenalty) -> tuple[Experience, dict[str, float]]:
        opts, mask = self.opts, data.response_mask
        G = opts.num_generations
        kl_coef = token_kl = None
        if data.ref_logprobs is not None:
            kl_coef = kl.betas(len(data.scores))
            if kl.in_reward:  # REINFORCE++: −β·KL_t under the sampling policy in every token's reward
                token_kl = kl.per_token(data.old_logprobs, data.ref_logprobs, mask)
        # the score sits on the last token, so the group estimators' sequence return Σ_t r_t is the score (− β·ΣKL)
        rewards = token_rewards(data.scores, mask, token_kl, kl_coef)
        advantages, _ = ADVANTAGE_ESTIMATORS[_ESTIMATOR[opts.advantage]](
            rewards, mask, group_size=G, scale_by_std=opts.scale_by_std, gamma=opts.gamma,
            reduce=self.stage.run.reduce_sum,
        )
        in_loss = data.ref_logprobs is not None and not kl.in_reward
        experience = Experience(
            input_ids=data.input_ids, attention_mask=data.attention_mask, response_start=data.response_start,
            loss_mask=data.loss_mask, old_logprobs=data.old_logprobs, advantages=advantages,
            ref_logprobs=data.ref_logprobs if in_loss else None, images=data.rollout.images,
            kl_coef=kl_coef if in_loss else None,
        )
        raw = data.raw_scores
        stats = {
            "reward": float(raw.mean()),
            "reward_std": float(raw.view(-1, G).std(dim=1).mean()),
            "frac_reward_zero_std": float(frac_zero_std(data.scores, G)),
        }
        if token_kl is not None:
            stats["kl"] = float(masked_mean(token_kl, mask))
        for name, values in data.components.items():
            stats[f"rewards/{name}/mean"] = float(values.mean())
        return experience, stats

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        return self.stage.policy_loss(batch)

    def save(self, out_dir: Path) -> None:
        """Nothing beyond the policy, which RLStage saves."""


GRPOConfig.algorithm = GRPO
GRPOStage = RLStage  # the name users and the registry know: RLStage with GRPOConfig runs GRPO and its relatives
