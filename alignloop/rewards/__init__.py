"""Reward sources behind one protocol: ``score(prompts, completions, **fields) -> Tensor[batch]``.

See docs/rewards.md. ``build_reward(spec)`` (``alignloop.rewards.build``) turns a config ``reward:`` value
into a source; the optional abilities of a source are the ``Has*`` protocols of ``alignloop.rewards.base``.
"""

from alignloop.rewards.base import (
    HasDenseRewards,
    HasMetrics,
    HasObjectiveHeads,
    HasOnlineState,
    HasUncertainty,
    HoldsFrozenModules,
    RewardSource,
    RuleReward,
    StepRewardSource,
    UncertaintySource,
    WeightedSum,
    has_uncertainty,
    load_reward_function,
    reward_members,
    reward_parts,
)
from alignloop.rewards.build import build_constrained, build_reward, build_source

__all__ = [
    "HasDenseRewards",
    "HasMetrics",
    "HasObjectiveHeads",
    "HasOnlineState",
    "HasUncertainty",
    "HoldsFrozenModules",
    "RewardSource",
    "RuleReward",
    "StepRewardSource",
    "UncertaintySource",
    "WeightedSum",
    "build_constrained",
    "build_reward",
    "build_source",
    "has_uncertainty",
    "load_reward_function",
    "reward_members",
    "reward_parts",
]
