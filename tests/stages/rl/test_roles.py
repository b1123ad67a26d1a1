"""RLStage(config, roles): roles given from outside are used as they are, and only missing ones are built."""

from __future__ import annotations

import pytest
import torch

from alignloop.config import load_config
from alignloop.stages.rl import roles as roles_module
from alignloop.stages.rl.grpo import GRPOConfig, GRPOStage
from alignloop.stages.rl.roles import LocalReference, RLRoles
from alignloop.train.loop import train
from tests.conftest import target_fraction, write_prompts


class CountingReward:
    name = "counting"

    def __init__(self):
        self.calls = 0

    def score(self, prompts, completions, **fields):
        self.calls += 1
        return torch.tensor(target_fraction(prompts, completions), dtype=torch.float32)


class RecordingReference:
    """A reference role answering with zeros (log-prob 0 everywhere) and counting its calls."""

    def __init__(self):
        self.calls = 0

    def logprobs(self, input_ids, attention_mask, response_start, temperature):
        self.calls += 1
        return torch.zeros(input_ids.shape[0], input_ids.shape[1] - response_start)


@pytest.fixture(scope="module")
def cfg(tmp_path_factory, word_model_dir):
    prompts = write_prompts(tmp_path_factory.mktemp("roles") / "prompts.jsonl")
    return [f"model={word_model_dir}", f"data.train={prompts}", "data.eval=null", "grpo.rollouts=2",
            "grpo.prompts_per_rollout=4", "grpo.num_generations=2", "grpo.max_new_tokens=6", "grpo.eval_prompts=0",
            "train.batch_size=4", "train.precision=fp32", "train.save_every=0"]


def test_given_roles_are_used_and_nothing_is_built_for_them(tmp_path, cfg, monkeypatch):
    def refuse(*_a, **_k):
        raise AssertionError("a role given to RLStage was built locally")

    monkeypatch.setattr(roles_module, "build_reward", refuse)
    monkeypatch.setattr(roles_module, "make_reference", refuse)
    reward, reference = CountingReward(), RecordingReference()
    stage = GRPOStage(load_config(GRPOConfig, None, cfg), RLRoles(reward=reward, reference=reference))
    train(stage, tmp_path)
    assert stage.reward is reward and stage.reference is reference
    assert reward.calls == 2 and reference.calls == 2  # once per rollout each


def test_missing_roles_are_built_locally(tmp_path, cfg):
    stage = GRPOStage(load_config(GRPOConfig, None, cfg + ["grpo.reward=tests.conftest:target_fraction"]))
    train(stage, tmp_path)
    assert isinstance(stage.reference, LocalReference) and stage.reward.name == "tests.conftest:target_fraction"


def test_no_reference_role_when_the_algorithm_needs_none(tmp_path, cfg):
    stage = GRPOStage(load_config(GRPOConfig, None, cfg + ["grpo.kl_coef=0"]), RLRoles(reward=CountingReward()))
    train(stage, tmp_path)
    assert stage.reference is None
