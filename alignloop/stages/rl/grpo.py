"""GRPO and RLOO (``alignloop grpo CONFIG.yaml``): G samples per prompt, group-relative advantages, no critic.

``grpo.advantage: group_norm`` is GRPO (Shao et al. 2024): ``A_i = (r_i − mean_g)/(std_g + 1e-6)``
(``scale_by_std: false`` gives Dr. GRPO, Liu et al. 2025); ``rloo`` is REINFORCE leave-one-out (Ahmadian et
al. 2024). Every response token gets its sequence's advantage. The KL to the reference is a loss term with the
k3 estimator (``β·k3``, as in DeepSeekMath); ``kl_coef: 0`` skips the reference forward entirely.
Rollout shape, steps and resume: config.py / source.py; docs/grpo.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import torch
from pydantic import Field, model_validator

from alignloop.algos import ADVANTAGE_ESTIMATORS, frac_zero_std
from alignloop.config import DataConfig, SamplingSettings, StageConfig, TrainConfig
from alignloop.stages.rl.config import RLOptions, RolloutSettings, check_rollout_shape
from alignloop.stages.rl.experience import Experience, RolloutData
from alignloop.stages.rl.kl import KLPenalty
from alignloop.stages.rl.stage import RLStage

__all__ = ["GRPO", "GRPOConfig", "GRPOOptions", "GRPOStage"]

_ESTIMATOR = {"group_norm": "grpo", "rloo": "rloo"}


class GRPOOptions(RLOptions):
    reward: object = Field("rule:exact_match", description=RLOptions.model_fields["reward"].description)
    num_generations: int = Field(4, ge=2, description="G: responses per prompt (a group).")
    advantage: Literal["group_norm", "rloo"] = Field(
        "group_norm", description="GRPO group normalisation or RLOO leave-one-out."
    )
    scale_by_std: bool = Field(True, description="group_norm only: divide by the group std (false = Dr. GRPO).")
    kl_coef: float = Field(0.04, ge=0, description="β of the k3 KL loss term; 0 = no reference model at all.")
    kl_estimator: Literal["k1", "k2", "k3", "abs"] = Field("k3", description="KL estimator of the loss term.")
    max_new_tokens: int = SamplingSettings.field("max_new_tokens", 64)
    share_prompt: bool = Field(
        True, description="A prompt's G responses share one copy of it in the policy and reference forwards (same "
        "log-probs, fewer tokens; each mini-batch's rows are ordered by group). docs/grpo.md.",
    )


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
    """GRPO's and RLOO's part of ``RLStage``: group-relative advantages, the policy loss with a β·KL term."""

    kl_placement = "loss"
    default_micro_batch = None

    def __init__(self, stage: RLStage):
        self.stage = stage
        self.opts: GRPOOptions = stage.config.grpo
        self.needs_reference = self.opts.kl_coef > 0

    def setup(self, run) -> None:
        """No critic: nothing to build beyond the policy."""

    def param_groups(self) -> None:
        return None  # one group: the policy's trainable parameters

    def experience(self, data: RolloutData, kl: KLPenalty) -> tuple[Experience, dict[str, float]]:
        opts = self.opts
        G = opts.num_generations
        # the whole score sits on the last token, so the estimators' sequence return Σ_t r_t is the score
        rewards = torch.zeros_like(data.response_mask)
        rows = torch.arange(len(data.scores))
        rewards[rows, (data.response_mask.sum(1).long() - 1).clamp(min=0)] = data.scores
        advantages, _ = ADVANTAGE_ESTIMATORS[_ESTIMATOR[opts.advantage]](
            rewards, data.response_mask, group_size=G, scale_by_std=opts.scale_by_std
        )
        kl_coef = None
        if data.ref_logprobs is not None:
            kl_coef = kl.betas(len(data.scores))
        experience = Experience(
            input_ids=data.input_ids, attention_mask=data.attention_mask, response_start=data.response_start,
            loss_mask=data.loss_mask, old_logprobs=data.old_logprobs, advantages=advantages,
            ref_logprobs=data.ref_logprobs, images=data.rollout.images, kl_coef=kl_coef,
        )
        raw = data.raw_scores
        stats = {
            "reward": float(raw.mean()),
            "reward_std": float(raw.view(-1, G).std(dim=1).mean()),
            "frac_reward_zero_std": float(frac_zero_std(data.scores, G)),
        }
        for name, values in data.components.items():
            stats[f"rewards/{name}/mean"] = float(values.mean())
        return experience, stats

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        return self.stage.policy_loss(batch)

    def save(self, out_dir: Path) -> None:
        """Nothing beyond the policy, which RLStage saves."""


GRPOConfig.algorithm = GRPO
GRPOStage = RLStage  # the name users and the registry know: RLStage with GRPOConfig runs GRPO/RLOO
