"""GRPO/RLOO on a word-level toy model (tests/conftest.py): config errors, metrics, no reference at β = 0, exact resume, reward going up."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from alignloop.config import load_config
from alignloop.errors import ConfigError
from alignloop.stages.rl.grpo import GRPO, GRPOConfig, GRPOStage
from alignloop.train.loop import train
from tests.conftest import write_prompts


@pytest.fixture(scope="module")
def toy(tmp_path_factory, word_model_dir):
    root = tmp_path_factory.mktemp("toy")
    return {"model": word_model_dir, "prompts": write_prompts(root / "prompts.jsonl")}


def config(toy, *overrides: str) -> GRPOConfig:
    base = [
        f"model={toy['model']}", f"data.train={toy['prompts']}", "data.eval=null",
        "grpo.reward=tests.conftest:target_fraction", "grpo.rollouts=2", "grpo.prompts_per_rollout=4",
        "grpo.num_generations=2", "grpo.max_new_tokens=6", "grpo.eval_prompts=0", "grpo.samples_count=8",
        "train.batch_size=4", "train.precision=fp32", "train.save_every=0", "train.lr=1e-3",
    ]
    return load_config(GRPOConfig, None, base + list(overrides))


def metrics(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def samples(out, rollout: int) -> list[str]:
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    return [r["response"] for r in rows if r["rollout"] == rollout]


def test_rollout_shape_must_split_into_minibatches(toy):
    with pytest.raises(ConfigError, match=r"grpo.prompts_per_rollout × grpo.num_generations \(4 × 2 = 8\) must be a multiple of train.batch_size \(3\)"):
        config(toy, "train.batch_size=3")
    with pytest.raises(ConfigError, match="grpo.num_generations: Input should be greater than or equal to 2"):
        config(toy, "grpo.num_generations=1")


def test_grpo_with_lora_logs_trl_names_and_derives_steps(tmp_path, toy):
    torch.manual_seed(0)
    summary = train(GRPOStage(config(toy, "lora.r=4", "lora.alpha=8")), tmp_path)
    rows = metrics(tmp_path)
    # 2 rollouts × 1 epoch × (4 prompts × 2 samples / batch 4) = 4 optimizer steps
    assert summary["steps"] == 4 and summary["rollouts"] == 2
    for key in ("reward", "reward_std", "kl", "completions/mean_length", "frac_reward_zero_std",
                "rewards/tests.conftest:target_fraction/mean", "policy/clipfrac_avg", "tokens_per_second"):
        assert key in rows[-1], key
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # first update: the policy is still the reference
    assert rows[0]["policy/ratio_avg"] == pytest.approx(1.0, abs=1e-4)  # sampler log-probs = training log-probs
    assert (tmp_path / "model" / "adapter_config.json").exists()  # LoRA: the adapter, reference = adapter off
    assert len(samples(tmp_path, 1)) == 8
    # config.yaml holds the resolved config: the derived step count, not the -1 that asks for it
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["train"]["max_steps"] == 4


def test_beta_zero_does_no_reference_forward(tmp_path, toy, monkeypatch):
    calls = []
    stage = GRPOStage(config(toy, "grpo.kl_coef=0", "grpo.rollouts=1", "grpo.advantage=rloo"))
    real = GRPO.experience

    def spy(self, data, kl):
        calls.append(data.ref_logprobs)
        return real(self, data, kl)

    monkeypatch.setattr(GRPO, "experience", spy)
    train(stage, tmp_path)
    assert stage.reference is None and calls == [None]
    assert "kl" not in metrics(tmp_path)[-1]


def test_resume_at_rollout_boundary_gives_the_same_next_rollout(tmp_path, toy):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(GRPOStage(config(toy, "grpo.rollouts=2")), straight)
    train(GRPOStage(config(toy, "grpo.rollouts=1")), resumed)  # stops (and checkpoints) after rollout 0
    train(GRPOStage(config(toy, "grpo.rollouts=2")), resumed)  # resumes at the boundary, makes rollout 1
    assert samples(resumed, 1) == samples(straight, 1)
    a = load_file(str(straight / "checkpoints" / "step-0000004" / "policy.safetensors"))
    b = load_file(str(resumed / "checkpoints" / "step-0000004" / "policy.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_inside_a_rollout_replays_the_saved_experience(tmp_path, toy):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(GRPOStage(config(toy, "grpo.rollouts=1")), straight)  # 2 steps on one rollout
    train(GRPOStage(config(toy, "grpo.rollouts=1", "train.max_steps=1")), resumed)  # stops between them
    train(GRPOStage(config(toy, "grpo.rollouts=1")), resumed)
    a = load_file(str(straight / "checkpoints" / "step-0000002" / "policy.safetensors"))
    b = load_file(str(resumed / "checkpoints" / "step-0000002" / "policy.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_grpo_raises_the_target_word(tmp_path, toy):
    torch.manual_seed(0)
    cfg = config(toy, "grpo.rollouts=12", "grpo.prompts_per_rollout=8", "grpo.num_generations=4", "grpo.max_new_tokens=8",
                 "train.batch_size=32", "train.lr=1e-2")
    train(GRPOStage(cfg), tmp_path)
    reward = [r["reward"] for r in metrics(tmp_path)]
    first, last = sum(reward[:4]) / 4, sum(reward[-4:]) / 4
    assert last > first + 0.3, (first, last)  # measured: 0.09 → 0.9 within 12 updates


def test_grpo_takes_the_ptx_term_too(tmp_path, toy):
    from tests.stages.rl.test_ppo import demo_nll, write_demos

    demos = write_demos(tmp_path / "demos.jsonl")
    with pytest.raises(ConfigError, match="grpo.ptx_data: grpo.ptx_coef > 0 needs demonstrations"):
        config(toy, "grpo.ptx_coef=1.0")
    torch.manual_seed(0)
    train(GRPOStage(config(toy, "grpo.rollouts=3", "grpo.ptx_coef=2.0", f"grpo.ptx_data={demos}")), tmp_path / "run")
    assert all("policy/ptx_loss" in row for row in metrics(tmp_path / "run"))
    assert demo_nll(tmp_path / "run" / "model", demos) < demo_nll(toy["model"], demos) - 0.3
