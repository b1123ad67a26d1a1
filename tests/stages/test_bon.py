"""Best-of-N: the subset estimator by hand and by brute force, the stage's files, and one RSFT round."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from alignloop.config import SFTConfig, load_config
from alignloop.data import load_records
from alignloop.errors import ConfigError
from alignloop.stages.bon import BoNConfig, BoNStage, expected_best_of_n, prompt_text
from alignloop.stages.sft import SFTStage
from alignloop.train.loop import train
from alignloop.train.run_dir import RunDir
from tests.conftest import ROOT


def char_count(prompts: list[str], completions: list[str], **fields) -> list[float]:
    """Test reward: longer answers are better (random tiny-llama answers vary a lot in characters)."""
    return [float(len(c)) for c in completions]


def minus_char_count(prompts: list[str], completions: list[str]) -> list[float]:
    """Test gold scorer that disagrees with the reward completely."""
    return [-float(len(c)) for c in completions]


def test_expected_best_of_n_hand_example():
    # samples with rewards 1, 3, 2: N=1 is the mean 2; N=3 the max 3;
    # N=2 averages the 3 pairs: max(1,3)=3, max(1,2)=2, max(3,2)=3 → 8/3
    rewards = torch.tensor([[1.0, 3.0, 2.0]])
    assert expected_best_of_n(rewards, 1).item() == pytest.approx(2.0)
    assert expected_best_of_n(rewards, 2).item() == pytest.approx(8 / 3)
    assert expected_best_of_n(rewards, 3).item() == pytest.approx(3.0)
    # gold of the reward-best: pairs pick samples 1 (gold 0), 2 (gold 20), 1 (gold 0) → 20/3
    gold = torch.tensor([[10.0, 0.0, 20.0]])
    assert expected_best_of_n(rewards, 2, gold).item() == pytest.approx(20 / 3)


def test_tied_rewards_average_the_values():
    # both samples tie on reward, so the pick is a coin flip: expected gold (0 + 10)/2 = 5
    assert expected_best_of_n(torch.tensor([[1.0, 1.0]]), 2, torch.tensor([[0.0, 10.0]])).item() == pytest.approx(5.0)


def test_expected_best_of_n_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    rewards = torch.randint(0, 4, (3, 7), generator=g).float()  # small integers: plenty of ties
    gold = torch.randn(3, 7, generator=g)
    for n in range(1, 8):
        for row in range(3):
            r, v = rewards[row].tolist(), gold[row].tolist()
            picks = []
            for subset in itertools.combinations(range(7), n):
                top = max(r[i] for i in subset)
                tied = [i for i in range(7) if r[i] == top]  # uniform tie-break: mean over ALL samples with that reward
                picks.append((top, sum(v[i] for i in tied) / len(tied)))
            assert expected_best_of_n(rewards[row : row + 1], n).item() == pytest.approx(sum(p[0] for p in picks) / len(picks))
            assert expected_best_of_n(rewards[row : row + 1], n, gold[row : row + 1]).item() == pytest.approx(
                sum(p[1] for p in picks) / len(picks)
            )


def test_bad_n_is_rejected():
    with pytest.raises(ValueError, match=r"n must be in \[1, 3\]"):
        expected_best_of_n(torch.zeros(1, 3), 4)
    with pytest.raises(ConfigError, match="bon.n: must be a non-empty list of integers >= 1"):
        load_config(BoNConfig, None, ["bon.n=[0, 2]"])


def test_prompt_text():
    assert prompt_text([{"role": "user", "content": "Hi?"}]) == "Hi?"
    two = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]
    assert prompt_text(two) == "system: Be brief.\nuser: Hi?"


def test_missing_reward_is_a_clear_error(tmp_path):
    cfg = load_config(BoNConfig, None, ["model=tiny-llama"])
    with pytest.raises(ConfigError, match=r"^reward: no reward source given"):
        BoNStage.run(cfg, RunDir(tmp_path / "bon"))


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_bon_gain_grows_with_n_and_feeds_an_sft_round(tmp_path):
    torch.manual_seed(0)
    cfg = load_config(BoNConfig, None, [
        "model=tiny-llama", "reward=tests.stages.test_bon:char_count", "bon.n=[1, 2, 4, 8]", "bon.max_prompts=4",
        "bon.max_new_tokens=8", "bon.batch_size=32", "train.precision=fp32", "bon.gold=tests.stages.test_bon:minus_char_count",
    ])
    out = tmp_path / "bon"
    summary = BoNStage.run(cfg, RunDir(out))
    by_n = summary["by_n"]
    gains = [by_n[str(n)]["gain"] for n in (1, 2, 4, 8)]
    assert gains[0] == pytest.approx(0.0, abs=1e-9)
    assert all(a < b for a, b in zip(gains, gains[1:]))  # strictly: rewards are not all tied
    for n in (1, 2, 4, 8):
        assert by_n[str(n)]["kl_bound"] == pytest.approx(math.log(n) - (n - 1) / n)
    assert [row["step"] for row in read(out / "metrics.jsonl")] == [1, 2, 4, 8]
    assert by_n["8"]["kl_bound"] == pytest.approx(1.204442, abs=1e-6)  # log 8 − 7/8 = 2.079442 − 0.875
    for n in (1, 2, 4, 8):  # the gold is minus the reward, so selection lowers it exactly as much
        assert by_n[str(n)]["mean_best_gold"] == pytest.approx(-by_n[str(n)]["mean_best_reward"])

    samples = read(out / "samples.jsonl")
    assert len(samples) == 4 * 8 and summary["samples_per_prompt"] == 8
    best = {}
    for s in samples:  # first maximal sample per prompt, as the selection breaks ties
        if s["prompt_index"] not in best or s["reward"] > best[s["prompt_index"]]["reward"]:
            best[s["prompt_index"]] = s
    sft = load_records(out / "sft_records.jsonl", "sft")
    assert [r["messages"][-1]["content"] for r in sft] == [best[p]["completion"] for p in sorted(best)]
    assert by_n["8"]["mean_best_reward"] == pytest.approx(sum(b["reward"] for b in best.values()) / 4)
    pairs = load_records(out / "pairs.jsonl", "pair")
    assert all(p["margin"] > 0 for p in pairs) and len(pairs) == summary["pairs"] > 0

    # one RSFT round: SFT on the best samples
    sft_cfg = load_config(SFTConfig, None, [
        "model=tiny-llama", f"data.train={out / 'sft_records.jsonl'}", "data.eval=null",
        "train.max_steps=1", "train.batch_size=2", "train.precision=fp32",
    ])
    result = train(SFTStage(sft_cfg), tmp_path / "sft")
    assert result["steps"] == 1 and (tmp_path / "sft" / "model" / "config.json").is_file()


def test_min_reward_keeps_only_good_enough_demonstrations():
    prompt = [{"role": "user", "content": "Q"}]
    records = [{"prompt": prompt, "answer": "1"}, {"prompt": prompt, "answer": "2"}]
    texts = ["a", "bb", "ccc", "dd"]  # prompt 0: rewards 1, 2; prompt 1: rewards 3, 2
    samples = [{"completion": t, "reward": float(len(t))} for t in texts]
    rewards = torch.tensor([[1.0, 2.0], [3.0, 2.0]])
    sft, pairs = BoNStage._select(records, samples, rewards, min_reward=2.5, reward_name="len")
    assert sft == [{"messages": prompt + [{"role": "assistant", "content": "ccc"}], "answer": "2", "reward": 3.0}]
    assert [(p["chosen"], p["rejected"], p["margin"]) for p in pairs] == [("bb", "a", 1.0), ("ccc", "dd", 1.0)]


@pytest.mark.parametrize(
    "path, config_class",
    [("examples/bon.yaml", BoNConfig), ("examples/rsft.yaml", SFTConfig)],
)
def test_example_configs_are_valid(path, config_class):
    from alignloop.rewards import build_reward

    cfg = load_config(config_class, ROOT / path)
    if config_class is BoNConfig:
        assert cfg.bon.n == [1, 2, 4, 8] and cfg.bon.gold == "vader"
        assert build_reward(cfg.reward).name == "weighted_sum"
