"""GRPO with a tool environment (``grpo.env=calculator``) on the tiny Llama: the multi-turn rollout trains with the
tool output masked out of the loss and the KL, logs ``env/*``, and resumes to the same weights."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from alignloop.config import load_config
from alignloop.envs import MultiTurnSampler, format_tool_call
from alignloop.errors import ConfigError
from alignloop.rollout import Rollout
from alignloop.stages.rl import env_rollouts
from alignloop.stages.rl.grpo import GRPO, GRPOConfig, GRPOStage
from alignloop.stages.rl.rewards import token_rewards
from alignloop.train.loop import train

CALL = format_tool_call("calculator", {"expression": "(13 + 16) * 5"})


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class ForcedFirstCall:
    """Turn 1 of every episode is the scripted calculator call (a random tiny model never writes one); later turns
    are the real sampler's."""

    def __init__(self, sampler):
        self.sampler = sampler

    def generate(self, prompts, n=1, **kwargs):
        tokenizer = self.sampler.tokenizer
        # the turn before the open assistant header is a tool turn: not the first turn (demonstrations aside)
        if any(tokenizer.decode(p).rsplit("<|im_start|>", 2)[-2].startswith("tool") for p in prompts):
            return self.sampler.generate(prompts, n=n, **kwargs)
        ids = torch.tensor([tokenizer(CALL, add_special_tokens=False)["input_ids"]] * len(prompts))
        rows = len(prompts)
        return Rollout(
            prompt_ids=torch.zeros(rows, 1, dtype=torch.long), prompt_mask=torch.ones(rows, 1, dtype=torch.long),
            response_ids=ids, response_mask=torch.ones_like(ids), logprobs=torch.full(ids.shape, -1.0),
            ended_with_eos=torch.zeros(rows, dtype=torch.bool), ended_with_stop=torch.ones(rows, dtype=torch.bool),
            prompts=list(prompts), responses=[CALL] * rows, group_index=torch.arange(rows),
        )


class ForcingMultiTurn(MultiTurnSampler):
    def __init__(self, sampler, *args, **kwargs):
        super().__init__(ForcedFirstCall(sampler), *args, **kwargs)


def config(tiny_model_dir, *overrides: str) -> GRPOConfig:
    base = [
        f"model={tiny_model_dir}", "data.train=bundled:arith_train.jsonl", "data.eval=null", "data.max_length=320",
        "grpo.reward=rule:exact_match", "grpo.env=calculator", "grpo.max_turns=2", "grpo.rollouts=2",
        "grpo.prompts_per_rollout=2", "grpo.num_generations=2", "grpo.max_new_tokens=64", "grpo.eval_prompts=0",
        "train.batch_size=4", "train.precision=fp32", "train.save_every=0", "train.lr=1e-3",
        "train.gradient_checkpointing=false",
    ]
    return load_config(GRPOConfig, None, base + list(overrides))


def metrics(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_grpo_with_the_calculator_masks_tool_tokens_and_logs_env_metrics(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setattr(env_rollouts, "MultiTurnSampler", ForcingMultiTurn)
    seen = []
    real = GRPO.experience

    def spy(self, data, kl):
        seen.append(data)
        return real(self, data, kl)

    monkeypatch.setattr(GRPO, "experience", spy)
    torch.manual_seed(0)
    summary = train(GRPOStage(config(tiny_model_dir, "grpo.rollouts=1")), tmp_path)
    assert summary["rollouts"] == 1
    data = seen[0]
    rollout = data.rollout
    inserted = rollout.response_mask.bool() & ~rollout.action_mask.bool()
    assert inserted.any(dim=1).all()  # every episode got the calculator's answer in its context
    assert (data.loss_mask[inserted] == 0).all() and (data.response_mask[inserted] == 0).all()
    assert (data.old_logprobs[inserted] == 0).all() and (data.ref_logprobs[inserted] == 0).all()
    assert data.loss_mask[rollout.action_mask.bool()].eq(1).all()
    assert data.attention_mask[:, data.response_start:][inserted].eq(1).all()  # ... but in the context
    # each episode's score lands on its final answer's last generated token, so the return is the score
    scores = torch.arange(1.0, len(rollout) + 1)
    placed = token_rewards(scores, data.response_mask, None, None)
    assert torch.equal((placed * data.response_mask).sum(dim=1), scores)
    last_trained = data.response_mask.shape[1] - 1 - data.response_mask.flip(1).argmax(dim=1)
    assert torch.equal(placed.argmax(dim=1), last_trained) and (last_trained > inserted.float().argmax(dim=1)).all()
    row = metrics(tmp_path)[-1]
    assert row["env/tool_calls_mean"] == 1.0 and row["env/turns_mean"] == 2.0 and row["env/tool_errors"] == 0.0


def test_grpo_with_the_calculator_resumes_to_the_same_weights(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setattr(env_rollouts, "MultiTurnSampler", ForcingMultiTurn)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(GRPOStage(config(tiny_model_dir, "grpo.rollouts=2")), straight)
    train(GRPOStage(config(tiny_model_dir, "grpo.rollouts=1")), resumed)  # stops (and checkpoints) after rollout 0
    train(GRPOStage(config(tiny_model_dir, "grpo.rollouts=2")), resumed)
    a = load_file(str(straight / "checkpoints" / "step-0000002" / "policy.safetensors"))
    b = load_file(str(resumed / "checkpoints" / "step-0000002" / "policy.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_unknown_environment_is_a_config_error(tiny_model_dir):
    with pytest.raises(Exception, match="grpo.env"):
        config(tiny_model_dir, "grpo.env=search")
    with pytest.raises(ConfigError, match="unknown environment 'search'"):
        env_rollouts.with_environment(object(), type("O", (), {"env": "search"})(), None, "grpo")
