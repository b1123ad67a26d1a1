"""Asynchronous (one-step-off-policy) rollouts (``grpo.async_rollouts``, stages/rl/async_rollouts.py) on the word-level
toy model: config keys, max_staleness 0 = the synchronous results, rollout k sampled with exactly the weights of
version k − max_staleness, the next rollout queued before this one trains, reproducible runs, exact resume, PPO, and
(slow) the reward going up as in the synchronous run."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from alignloop.config import load_config
from alignloop.errors import ConfigError
from alignloop.models import load_tokenizer, load_trainable_lm
from alignloop.rollout import HFSampler
from alignloop.stages.rl.async_rollouts import AsyncRollouts, sampler_copy
from alignloop.stages.rl.grpo import GRPOConfig, GRPOStage
from alignloop.stages.rl.ppo import PPOConfig, PPOStage
from alignloop.stages.rl.source import rollout_seed
from alignloop.stages.rl.stage import RLStage
from alignloop.train.loop import train
from tests.conftest import write_prompts


@pytest.fixture(scope="module")
def toy(tmp_path_factory, word_model_dir):
    root = tmp_path_factory.mktemp("async")
    return {"model": word_model_dir, "prompts": write_prompts(root / "prompts.jsonl")}


def config(toy, *overrides: str) -> GRPOConfig:
    base = [
        f"model={toy['model']}", f"data.train={toy['prompts']}", "data.eval=null",
        "grpo.reward=tests.conftest:target_fraction", "grpo.rollouts=3", "grpo.prompts_per_rollout=4",
        "grpo.num_generations=2", "grpo.max_new_tokens=6", "grpo.eval_prompts=0", "grpo.samples_count=8",
        "train.batch_size=4", "train.precision=fp32", "train.save_every=0", "train.lr=1e-2",
    ]
    return load_config(GRPOConfig, None, base + list(overrides))


def metrics(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def samples(out, rollout: int) -> list[dict]:
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    return [r for r in rows if r["rollout"] == rollout]


def final_weights(out) -> dict[str, torch.Tensor]:
    last = sorted((out / "checkpoints").glob("step-*"))[-1]
    return load_file(str(last / "policy.safetensors"))


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_async_config_keys(toy):
    sync = config(toy).grpo
    assert not sync.async_rollouts and sync.max_staleness == 1 and sync.tis is None and sync.reuse_sampler_logprobs
    opts = config(toy, "grpo.async_rollouts=true").grpo
    assert opts.tis == 2.0 and not opts.reuse_sampler_logprobs  # the staleness is corrected by TIS by default
    assert config(toy, "grpo.async_rollouts=true", "grpo.tis=3").grpo.tis == 3.0
    assert config(toy, "grpo.async_rollouts=true", "grpo.tis=null").grpo.tis is None  # uncorrected, on request
    with pytest.raises(ConfigError, match="async_rollouts: the sampler's log-probs are those of older weights"):
        config(toy, "grpo.async_rollouts=true", "grpo.reuse_sampler_logprobs=true")
    with pytest.raises(ConfigError, match="grpo.max_staleness"):
        config(toy, "grpo.async_rollouts=true", "grpo.max_staleness=-1")
    ppo = load_config(PPOConfig, None, [f"model={toy['model']}", f"data.train={toy['prompts']}",
                                        "ppo.reward=tests.conftest:target_fraction", "ppo.async_rollouts=true",
                                        "ppo.max_staleness=2"]).ppo
    assert ppo.async_rollouts and ppo.max_staleness == 2 and ppo.tis == 2.0 and not ppo.reuse_sampler_logprobs


def test_async_refuses_dynamic_sampling(tmp_path, toy):
    with pytest.raises(ConfigError, match="grpo.async_rollouts: not with dynamic_sampling or env"):
        train(GRPOStage(config(toy, "grpo.async_rollouts=true", "grpo.dynamic_sampling=true")), tmp_path)


def test_sampler_copy_shares_frozen_storage_and_owns_trainable(toy):
    policy = load_trainable_lm(toy["model"], None, False, "cpu")
    for name, p in policy.named_parameters():
        p.requires_grad_("layers.1" in name)  # some frozen, some trainable
    copy = sampler_copy(policy)
    for (name, p), q in zip(policy.named_parameters(), copy.parameters()):
        assert q.requires_grad == p.requires_grad and q is not p
        assert (q.data_ptr() == p.data_ptr()) == (not p.requires_grad), name
    with torch.no_grad():
        next(p for p in policy.parameters() if p.requires_grad).add_(1.0)  # a trainer update
    assert not all(torch.equal(p, q) for p, q in zip(policy.parameters(), copy.parameters()))


def test_staleness_zero_gives_the_synchronous_results(tmp_path, toy):
    """The same run with the sampling in the background thread, pinned to the current weights: bit for bit."""
    sync, pinned = tmp_path / "sync", tmp_path / "pinned"
    train(GRPOStage(config(toy, "grpo.tis=2.0")), sync)
    train(GRPOStage(config(toy, "grpo.async_rollouts=true", "grpo.max_staleness=0")), pinned)
    assert same_weights(final_weights(sync), final_weights(pinned))
    for k in range(3):
        assert samples(sync, k) == samples(pinned, k)
    assert all(row["rollout/staleness"] == 0 for row in metrics(pinned))
    assert all("rollout/staleness" not in row for row in metrics(sync))  # the synchronous path is unchanged


def test_rollout_k_is_sampled_with_the_weights_of_version_k_minus_staleness(tmp_path, toy):
    sync, ahead = tmp_path / "sync", tmp_path / "ahead"
    train(GRPOStage(config(toy, "grpo.tis=2.0")), sync)
    train(GRPOStage(config(toy, "grpo.async_rollouts=true")), ahead)
    # rollouts 0 and 1 both come from the initial weights: rollout 0 as in the synchronous run, and rollout 1
    # exactly as the initial model samples rollout 1's prompts with rollout 1's seed
    assert samples(ahead, 0) == samples(sync, 0)
    initial = load_trainable_lm(toy["model"], None, False, "cpu")
    sampler = HFSampler(initial, load_tokenizer(toy["model"]), batch_size=32, dtype="fp32")
    prompts = [r["prompt"] for r in samples(ahead, 1)][::2]
    again = sampler.generate(prompts, n=2, max_new_tokens=6, temperature=1.0, seed=rollout_seed(0, 1))
    assert again.responses == [r["response"] for r in samples(ahead, 1)]
    assert [r["response"] for r in samples(sync, 1)] != again.responses  # version 1 samples otherwise (lr 1e-2)
    steps = metrics(ahead)  # 3 rollouts × 2 steps; staleness min(k, 1) per rollout
    assert [row["rollout/staleness"] for row in steps] == [0, 0, 1, 1, 1, 1]
    assert all(row["rollout/logprob_diff_mean"] > 0 for row in steps[2:])  # the stale gap, which TIS corrects
    assert "rollout/tis_weight_mean" in steps[-1] and "rollout/wait_seconds" in steps[-1]


@pytest.mark.parametrize("staleness", [1, 2])
def test_next_rollouts_are_queued_before_this_one_trains(tmp_path, toy, monkeypatch, staleness):
    """Pipelining: rollout k+s is handed to the sampling thread before rollout k's first update; never further."""
    events: list[tuple[str, int]] = []
    submit, step = AsyncRollouts._submit, RLStage.step

    def spy_submit(self, index, records):
        events.append(("sample", index))
        return submit(self, index, records)

    def spy_step(self, batch):
        events.append(("train", self.source.rollouts_done - 1))
        return step(self, batch)

    monkeypatch.setattr(AsyncRollouts, "_submit", spy_submit)
    monkeypatch.setattr(RLStage, "step", spy_step)
    cfg = config(toy, "grpo.async_rollouts=true", f"grpo.max_staleness={staleness}", "grpo.rollouts=4")
    train(GRPOStage(cfg), tmp_path)
    assert sorted(i for kind, i in events if kind == "sample") == [0, 1, 2, 3]  # each sampled once, none past 3
    for k in range(4):
        first_update = events.index(("train", k))
        queued = {i for kind, i in events[:first_update] if kind == "sample"}
        assert queued == set(range(min(k + staleness, 3) + 1)), (k, events)
    assert [row["rollout/staleness"] for row in metrics(tmp_path)][::2] == [min(k, staleness) for k in range(4)]


def test_async_runs_are_reproducible(tmp_path, toy):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        train(GRPOStage(config(toy, "grpo.async_rollouts=true", "grpo.max_staleness=2")), out)
    assert same_weights(final_weights(a), final_weights(b))
    assert all(samples(a, k) == samples(b, k) for k in range(3))


@pytest.mark.parametrize("stop_at", [2, 3])  # at the rollout-0/1 boundary, and inside rollout 1
def test_resume_samples_the_queued_rollouts_again_with_their_weights(tmp_path, toy, stop_at):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    options = ("grpo.async_rollouts=true", "lora.r=4", "lora.alpha=8")
    train(GRPOStage(config(toy, *options)), straight)
    train(GRPOStage(config(toy, *options, f"train.max_steps={stop_at}")), resumed)  # stops; what was queued is lost
    train(GRPOStage(config(toy, *options)), resumed)
    assert same_weights(final_weights(straight), final_weights(resumed))
    for k in range(3):
        assert samples(resumed, k) == samples(straight, k)
    assert [r["rollout/staleness"] for r in metrics(resumed)] == [r["rollout/staleness"] for r in metrics(straight)]


def test_ppo_async(tmp_path, toy):
    cfg = load_config(PPOConfig, None, [
        f"model={toy['model']}", f"data.train={toy['prompts']}", "data.eval=null",
        "ppo.reward=tests.conftest:target_fraction", "ppo.rollouts=3", "ppo.prompts_per_rollout=4",
        "ppo.max_new_tokens=6", "ppo.eval_prompts=0", "ppo.async_rollouts=true", "train.batch_size=4",
        "train.precision=fp32", "train.save_every=0", "train.lr=5e-3",
    ])
    summary = train(PPOStage(cfg), tmp_path)
    assert summary["steps"] == 3 and summary["rollouts"] == 3
    rows = metrics(tmp_path)
    assert [r["rollout/staleness"] for r in rows] == [0, 1, 1]
    assert all("loss/value_avg" in r and "rollout/tis_weight_mean" in r for r in rows)


@pytest.mark.slow
def test_async_grpo_raises_the_target_word_like_sync(tmp_path, toy):
    """The synchronous test's task (test_grpo.py): 12 updates of 32 responses at lr 1e-2."""
    rewards = {}
    for name, extra in (("sync", ()), ("async", ("grpo.async_rollouts=true",))):
        torch.manual_seed(0)
        cfg = config(toy, "grpo.rollouts=12", "grpo.prompts_per_rollout=8", "grpo.num_generations=4",
                     "grpo.max_new_tokens=8", "train.batch_size=32", *extra)
        train(GRPOStage(cfg), tmp_path / name)
        rewards[name] = [r["reward"] for r in metrics(tmp_path / name)]
    for name, reward in rewards.items():
        first, last = sum(reward[:4]) / 4, sum(reward[-4:]) / 4
        assert last > first + 0.3, (name, first, last)
    # one rollout behind: async trails sync by about a rollout, not by more than a few
    assert sum(rewards["async"][-4:]) / 4 > sum(rewards["sync"][-4:]) / 4 - 0.2, rewards
