"""Multi-objective rewards: the Lagrangian reward, online multiplier updates, config building."""

from __future__ import annotations

import pytest
import torch

from alignloop.errors import ConfigError
from alignloop.rewards import RuleReward, build_reward
from alignloop.rewards.build import build_constrained
from alignloop.rewards.multi import ConstrainedReward, Constraint


def constant(value: float, name: str) -> RuleReward:
    return RuleReward(lambda prompts, completions: [value] * len(completions), name=name)


class Settable:
    """A reward source whose scores the test sets between calls."""

    def __init__(self, name: str, value: float):
        self.name = name
        self.value = value

    def score(self, prompts, completions, **fields):
        return torch.full((len(completions),), self.value)


def test_multiplier_rises_while_violated_and_falls_once_met():
    harmless = Settable("harmless", -1.0)
    reward = ConstrainedReward(constant(1.0, "helpful"), [Constraint(harmless, threshold=0.0, lr=0.5)])
    seen = []
    for _ in range(2):  # mean -1 < τ = 0: λ += 0.5 · (0 − (−1)) = +0.5 per batch
        reward.score(["p"], ["c"])
        seen.append(reward.multipliers[0])
    harmless.value = 1.0
    for _ in range(3):  # mean 1 > τ: λ −= 0.5 per batch, never below 0
        reward.score(["p"], ["c"])
        seen.append(reward.multipliers[0])
    assert seen == pytest.approx([0.5, 1.0, 0.5, 0.0, 0.0])


def test_lagrangian_reward_by_hand():
    objective = constant(2.0, "helpful")
    harmless = Settable("harmless", -1.0)
    reward = ConstrainedReward(objective, [Constraint(harmless, threshold=0.5, initial_multiplier=1.0, lr=0.0)])
    # (r + λ (c − τ)) / (1 + λ) = (2 + 1 · (−1 − 0.5)) / 2 = 0.25
    assert reward.score(["p", "q"], ["a", "b"]).tolist() == pytest.approx([0.25, 0.25])
    plain = ConstrainedReward(objective, [Constraint(harmless, threshold=0.5, initial_multiplier=1.0, lr=0.0)], normalize=False)
    assert plain.score(["p"], ["a"]).tolist() == pytest.approx([0.5])  # 2 + 1 · (−1.5)
    assert set(reward.last_components) == {"helpful", "harmless"}
    assert reward.metrics() == {"lagrange/harmless": 1.0, "objectives/helpful": 2.0, "objectives/harmless": -1.0}


def test_state_dict_round_trip_and_frozen_updates():
    reward = ConstrainedReward(constant(0.0, "helpful"), [Constraint(constant(-2.0, "harmless"), 0.0, lr=0.1)],
                               update_on_score=False)
    reward.score(["p"], ["c"])
    assert reward.multipliers == [0.0]
    reward.update([-2.0])  # λ = 0 + 0.1 · (0 − (−2)) = 0.2
    assert reward.multipliers == pytest.approx([0.2])
    other = ConstrainedReward(constant(0.0, "helpful"), [Constraint(constant(-2.0, "harmless"), 0.0)])
    other.load_state_dict(reward.state_dict())
    assert other.multipliers == pytest.approx([0.2])


def test_build_from_config_mapping():
    spec = {
        "objective": {"source": "rule:answer_format", "name": "formatted"},
        "constraints": [{"source": "rule:length_penalty", "args": {"max_chars": 5}, "threshold": -0.5, "lr": 0.2}],
    }
    reward = build_reward(spec)
    assert isinstance(reward, ConstrainedReward)
    scores = reward.score(["q"], ["#### 4"])  # format 1; 6 chars over a 5-char limit: penalty −1 · 1/5 = −0.2
    assert reward.last_components["formatted"].tolist() == [1.0]
    assert reward.last_components["length_penalty"].tolist() == pytest.approx([-0.2])
    # λ started at 0, so the reward is the objective alone; the constraint holds (−0.2 ≥ −0.5): λ stays 0
    assert scores.tolist() == pytest.approx([1.0]) and reward.multipliers == [0.0]


def test_build_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"reward.constraints\[0\].threshold: missing"):
        build_constrained({"objective": "rule:answer_format", "constraints": [{"source": "rule:boxed_format"}]})
    with pytest.raises(ConfigError, match=r"reward.constraints\[0\].lr: expected a finite number, got 'fast'"):
        build_constrained({"objective": "rule:answer_format",
                           "constraints": [{"source": "rule:boxed_format", "threshold": 0, "lr": "fast"}]})
    with pytest.raises(ConfigError, match="objective and constraint names must differ"):
        build_constrained({"objective": "rule:answer_format", "constraints": [{"source": "rule:answer_format", "threshold": 0}]})
