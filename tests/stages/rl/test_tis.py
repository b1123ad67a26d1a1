"""Off-policy correction in the RL stage (``grpo.tis`` / ``ppo.tis``, stages/rl/off_policy.py) on the word-level toy
model: the config keys, the sampler–trainer gap logged every step, and TIS weights applied under a sampler that
deliberately samples at another temperature than the trainer scores at."""

from __future__ import annotations

import json

import pytest
import torch

from alignloop.config import load_config
from alignloop.errors import ConfigError
from alignloop.rollout import HFSampler
from alignloop.stages.rl.experience import Experience
from alignloop.stages.rl.grpo import GRPOConfig, GRPOStage
from alignloop.stages.rl.off_policy import correct_off_policy
from alignloop.stages.rl.ppo import PPOConfig
from alignloop.stages.rl.roles import RLRoles
from alignloop.train.loop import train
from tests.conftest import write_prompts

GAP_KEYS = ("rollout/logprob_diff_mean", "rollout/logprob_diff_max", "rollout/tis_ratio_mean",
            "rollout/tis_ratio_max", "rollout/seq_ratio_mean")


@pytest.fixture(scope="module")
def toy(tmp_path_factory, word_model_dir):
    root = tmp_path_factory.mktemp("tis")
    return {"model": word_model_dir, "prompts": write_prompts(root / "prompts.jsonl")}


def config(toy, *overrides: str) -> GRPOConfig:
    base = [
        f"model={toy['model']}", f"data.train={toy['prompts']}", "data.eval=null",
        "grpo.reward=tests.conftest:target_fraction", "grpo.rollouts=2", "grpo.prompts_per_rollout=4",
        "grpo.num_generations=2", "grpo.max_new_tokens=6", "grpo.eval_prompts=0", "grpo.samples_every=0",
        "train.batch_size=8", "train.precision=fp32", "train.save_every=0", "train.lr=1e-3",
    ]
    return load_config(GRPOConfig, None, base + list(overrides))


class HotSampler:
    """The policy's HF sampler, drawing at ``factor`` × the configured temperature: a sampler that disagrees with
    the trainer, reporting the log-probs of the distribution it really drew from (as vLLM's would)."""

    def __init__(self, factor: float):
        self.factor, self.stage = factor, None

    def generate(self, prompts, n=1, max_new_tokens=64, temperature=1.0, top_p=1.0, top_k=0, stop=None, seed=None):
        inner = HFSampler(self.stage.unwrap("policy"), self.stage.tokenizer, dtype="fp32")
        return inner.generate(prompts, n=n, max_new_tokens=max_new_tokens, temperature=temperature * self.factor,
                              top_p=top_p, top_k=top_k, stop=stop, seed=seed)


def rows(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_tis_config_keys(toy):
    assert config(toy).grpo.tis is None and config(toy).grpo.reuse_sampler_logprobs
    opts = config(toy, "grpo.tis=2.0").grpo
    assert opts.tis == 2.0 and not opts.reuse_sampler_logprobs  # both log-probs are computed
    assert (opts.tis_mode, opts.tis_level) == ("truncate", "token")
    with pytest.raises(ConfigError, match="tis needs the trainer's own old log-probs"):
        config(toy, "grpo.tis=2.0", "grpo.reuse_sampler_logprobs=true")
    with pytest.raises(ConfigError, match="grpo.tis"):
        config(toy, "grpo.tis=0")
    ppo = load_config(PPOConfig, None, [f"model={toy['model']}", f"data.train={toy['prompts']}", "ppo.tis=3",
                                        "ppo.tis_mode=mask", "ppo.reward=tests.conftest:target_fraction"]).ppo
    assert ppo.tis == 3.0 and ppo.tis_mode == "mask" and not ppo.reuse_sampler_logprobs


def test_correct_off_policy_weights_the_advantages_once():
    old = torch.log(torch.tensor([[0.5, 0.4, 1.0], [0.2, 0.9, 1.0]]))
    sampler = torch.log(torch.tensor([[0.25, 0.4, 1.0], [0.5, 0.3, 1.0]]))  # ρ = (2, 1, ·), (0.4, 3, ·)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    exp = Experience(input_ids=torch.zeros(2, 5, dtype=torch.long), attention_mask=torch.ones(2, 5), response_start=2,
                     loss_mask=mask, old_logprobs=old * mask, advantages=torch.tensor([[1.0, 1.0, 0.0], [-2.0] * 3]))
    opts = type("Opts", (), {"tis": 2.5, "tis_mode": "truncate", "tis_level": "token"})()
    stats = correct_off_policy(exp, sampler * mask, mask, opts)
    assert torch.allclose(exp.advantages, torch.tensor([[2.0, 1.0, 0.0], [-0.8, -5.0, 0.0]]))
    assert stats["rollout/tis_clipfrac"] == pytest.approx(0.25) and stats["rollout/tis_ratio_max"] == pytest.approx(3)
    assert stats["rollout/tis_weight_mean"] == pytest.approx((2 + 1 + 0.4 + 2.5) / 4)
    assert correct_off_policy(exp, None, mask, opts) == {}  # old log-probs ARE the sampler's: nothing to do


def test_matched_sampler_logs_a_tiny_gap(tmp_path, toy):
    torch.manual_seed(0)
    train(GRPOStage(config(toy, "grpo.reuse_sampler_logprobs=false")), tmp_path)
    for row in rows(tmp_path):
        assert all(k in row for k in GAP_KEYS) and "rollout/tis_clipfrac" not in row
        assert row["rollout/logprob_diff_max"] < 1e-3  # fp32 KV-cached decode vs one full forward
        assert row["rollout/tis_ratio_mean"] == pytest.approx(1.0, abs=1e-3)


def test_mismatched_sampler_logs_the_gap_and_tis_clips(tmp_path, toy):
    torch.manual_seed(0)
    sampler = HotSampler(factor=2.0)
    stage = GRPOStage(config(toy, "grpo.tis=1.5", "grpo.temperature=0.7"), RLRoles(sampler=sampler))
    sampler.stage = stage
    summary = train(stage, tmp_path)
    assert summary["steps"] == 2
    for row in rows(tmp_path):  # every step carries its rollout's gap
        assert all(k in row for k in GAP_KEYS + ("rollout/tis_clipfrac", "rollout/tis_weight_mean")), row
        assert row["rollout/logprob_diff_mean"] > 0.05
        assert row["rollout/tis_ratio_max"] > 1.5 and 0 < row["rollout/tis_clipfrac"] < 1
        assert row["rollout/tis_weight_mean"] <= 1.5


class Bf16Sampler(HotSampler):
    """The policy's HF sampler under bf16 autocast, the trainer in fp32: the precision mismatch."""

    def generate(self, prompts, n=1, max_new_tokens=64, temperature=1.0, top_p=1.0, top_k=0, stop=None, seed=None):
        inner = HFSampler(self.stage.unwrap("policy"), self.stage.tokenizer, dtype="bf16")
        return inner.generate(prompts, n=n, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                              top_k=top_k, stop=stop, seed=seed)


def test_bf16_sampler_against_fp32_trainer_logs_a_gap(tmp_path, toy):
    torch.manual_seed(0)
    sampler = Bf16Sampler(1.0)
    stage = GRPOStage(config(toy, "grpo.tis=2.0"), RLRoles(sampler=sampler))
    sampler.stage = stage
    train(stage, tmp_path)
    for row in rows(tmp_path):
        assert 0 < row["rollout/logprob_diff_mean"] < 0.05, row["rollout/logprob_diff_mean"]
        assert row["rollout/tis_clipfrac"] == 0.0  # a precision gap stays far below C = 2


def test_sampler_logprobs_config(toy):
    def resolve(*overrides: str) -> str:
        cfg = config(toy, *overrides)
        return cfg.rollout.logprobs_for(cfg.grpo)

    assert resolve() == "full" and resolve("grpo.reuse_sampler_logprobs=false") == "full"  # TIS off: as before
    assert resolve("grpo.tis=2.0") == "sampled" and resolve("grpo.async_rollouts=true") == "sampled"  # auto
    assert resolve("grpo.tis=2.0", "rollout.sampler_logprobs=full") == "full"  # an explicit choice wins
    assert resolve("grpo.tis=2.0", "rollout.workers=1") == "sampled"  # hf Ray workers report them too
    assert resolve("grpo.tis=2.0", "rollout.workers=1", "rollout.backend=vllm") == "full"  # vLLM: its logprobs_mode
    with pytest.raises(ConfigError, match="cannot be π_old"):
        config(toy, "rollout.sampler_logprobs=sampled")  # reuse_sampler_logprobs is on by default
    assert config(toy, "rollout.sampler_logprobs=sampled", "grpo.tis=2.0", "rollout.workers=1").rollout.workers == 1
    with pytest.raises(ConfigError, match="logprobs_mode: processed_logprobs"):
        config(toy, "rollout.sampler_logprobs=sampled", "grpo.tis=2.0", "rollout.workers=1", "rollout.backend=vllm")


TOP_K = 3  # of the toy's 16 words: the sampler draws from ~3/16 of a near-uniform distribution


@pytest.mark.parametrize("logprobs", ["full", "sampled"])
def test_top_k_truncation_is_visible_with_sampled_logprobs(tmp_path, toy, logprobs):
    """The sampler is the trainer's own (fp32, same weights): the only gap left is the top-k cut, which the sampled
    log-probs show (ρ_t = the kept mass Σ_top-k π ≤ 1 on every token) and the full ones hide."""
    torch.manual_seed(0)
    train(GRPOStage(config(toy, "grpo.reuse_sampler_logprobs=false", f"grpo.top_k={TOP_K}",
                           f"rollout.sampler_logprobs={logprobs}")), tmp_path)
    for row in rows(tmp_path):
        if logprobs == "full":
            assert row["rollout/logprob_diff_max"] < 1e-3
            assert row["rollout/tis_ratio_mean"] == pytest.approx(1, abs=1e-3)
        else:
            assert row["rollout/logprob_diff_mean"] > 0.5, row  # log(16/3) ≈ 1.7 for a uniform policy
            assert row["rollout/tis_ratio_max"] <= 1 + 1e-4 and row["rollout/tis_ratio_mean"] < 0.6


@pytest.mark.parametrize("tis", ["grpo.tis=2.0", "grpo.async_rollouts=true"])
def test_tis_uses_the_sampled_logprobs_under_top_k(tmp_path, toy, tis):
    """``tis`` (set, or by async_rollouts; sampler_logprobs auto): the weights are the kept masses, below 1, never
    clipped at C; the async path's own sampler copy reports the sampled log-probs too."""
    torch.manual_seed(0)
    train(GRPOStage(config(toy, tis, f"grpo.top_k={TOP_K}")), tmp_path)
    for row in rows(tmp_path):
        assert row["rollout/logprob_diff_mean"] > 0.5 and row["rollout/tis_clipfrac"] == 0.0
        assert row["rollout/tis_weight_mean"] == pytest.approx(row["rollout/tis_ratio_mean"], rel=1e-5)
        assert row["rollout/tis_weight_mean"] < 0.6
