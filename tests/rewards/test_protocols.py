"""The optional reward abilities as protocols (``alignloop.rewards.base``), and the frozen-module helper."""

from __future__ import annotations

import pytest
import torch

from alignloop.errors import ConfigError
from alignloop.models import ScalarHeadModel, build_tiny_llama
from alignloop.rewards import (
    HasDenseRewards,
    HasMetrics,
    HasObjectiveHeads,
    HasOnlineState,
    HasUncertainty,
    HoldsFrozenModules,
    RuleReward,
    StepRewardSource,
    WeightedSum,
    build_source,
    has_uncertainty,
    reward_members,
    reward_parts,
)
from alignloop.rewards.model import RewardModel
from alignloop.rewards.multi import ConstrainedReward, Constraint
from alignloop.rewards.process import ProcessRewardSource


def ones(prompts, completions, **_):
    return [1.0] * len(completions)


class Ensemble:
    name = "ensemble"

    def score(self, prompts, completions, **fields):
        return torch.ones(len(completions))

    def uncertainty(self, prompts, completions, **fields):
        return torch.full((len(completions),), 0.5)


@pytest.fixture(scope="module")
def reward_model():
    """A one-member reward model on the library's tiny Llama (random weights, CPU)."""
    member = ScalarHeadModel.from_causal_lm(build_tiny_llama(), output_names=None)
    return RewardModel([member], tokenizer=None, name="rm", device="cpu")


def test_uncertainty_protocol_and_has_uncertainty():
    rule = RuleReward(ones)
    assert isinstance(Ensemble(), HasUncertainty)
    assert not isinstance(rule, HasUncertainty)
    # a weighted sum always has the method, but only a meaningful std when a part has one
    assert isinstance(WeightedSum([rule]), HasUncertainty)
    assert not has_uncertainty(WeightedSum([rule]))
    assert has_uncertainty(WeightedSum([rule, Ensemble()]))


def test_online_state_and_metrics_of_a_constrained_reward():
    reward = ConstrainedReward(RuleReward(ones, name="helpful"), [Constraint(RuleReward(ones, name="safe"), 0.0)])
    assert isinstance(reward, HasOnlineState) and isinstance(reward, HasMetrics)
    assert not isinstance(RuleReward(ones), HasOnlineState)
    assert not isinstance(RuleReward(ones), HasMetrics)
    assert not isinstance(WeightedSum([RuleReward(ones)]), HasOnlineState)


def test_dense_and_step_rewards_belong_to_process_reward_models():
    assert issubclass(ProcessRewardSource, HasDenseRewards)
    assert not issubclass(RuleReward, HasDenseRewards)
    assert not issubclass(WeightedSum, HasDenseRewards)
    assert not isinstance(RuleReward(ones), StepRewardSource)


def test_objective_heads(reward_model):
    assert isinstance(reward_model, HasObjectiveHeads)
    assert not isinstance(RuleReward(ones), HasObjectiveHeads)
    with pytest.raises(ConfigError, match="not a reward model with criterion heads"):
        build_source({"source": "rule:boxed_format", "head": "safety"}, "reward.objective")


def test_reward_members_finds_a_reward_model_inside_a_weighted_sum(reward_model):
    rule = RuleReward(ones)
    assert isinstance(reward_model, HoldsFrozenModules)
    assert not isinstance(rule, HoldsFrozenModules)
    combined = WeightedSum([rule, reward_model], [1.0, 0.5])
    assert reward_parts(combined) == [rule, reward_model]
    assert reward_parts(rule) == [rule]
    members = reward_members(combined)
    assert len(members) == 1 and members[0] is reward_model.members[0]
    assert all(isinstance(m, torch.nn.Module) and not m.training for m in members)
    assert all(not p.requires_grad for p in members[0].parameters())
    assert reward_members(reward_model) == reward_model.members
    assert reward_members(rule) == []
    assert reward_members(WeightedSum([rule, Ensemble()])) == []
