"""Reward sources behind one protocol: ``score(prompts, completions, **fields) -> Tensor[batch]``.

See docs/rewards.md. ``build_reward(spec)`` turns a config ``reward:`` value into a source.
"""

from alignloop.rewards.base import RewardSource, RuleReward, WeightedSum, build_reward, load_reward_function

__all__ = ["RewardSource", "RuleReward", "WeightedSum", "build_reward", "load_reward_function"]
