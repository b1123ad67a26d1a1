"""LLM judge: answer-token probabilities, A/B order swapping, position bias, the label stage."""

from __future__ import annotations

import json
import math
import types

import pytest
import torch

from alignloop.config import load_config
from alignloop.data import load_records
from alignloop.models import build_tiny_llama
from alignloop.rewards.judge import LLMJudge, choice_log_probs
from alignloop.stages.label import (
    LabelConfig,
    LabelStage,
    agreement,
    rating_win_probability,
)
from alignloop.train.run_dir import RunDir


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


class TableLM(torch.nn.Module):
    """Next-token log-probs depend only on the last token: ``table[last_token]`` (vocab 4)."""

    def __init__(self, table: list[list[float]]):
        super().__init__()
        self.logp = torch.nn.Parameter(torch.tensor(table).log(), requires_grad=False)

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False):
        return types.SimpleNamespace(logits=self.logp[input_ids])


def test_choice_log_probs_multi_token_choices_by_hand():
    # After context token 0: P(1)=0.5, P(3)=0.3, P(0)=0.1, P(2)=0.1. After token 1: P(2)=0.4.
    table = [[0.1, 0.5, 0.1, 0.3], [0.2, 0.2, 0.4, 0.2], [0.25] * 4, [0.25] * 4]
    logp = choice_log_probs(TableLM(table), [[0]], [[1], [1, 2], [3]])
    # "1" alone = P(1)·(1 − P(2|1)) = 0.5·0.6 = 0.3;  "1 2" = 0.5·0.4 = 0.2;  "3" = 0.3
    assert logp.exp().tolist()[0] == pytest.approx([0.3, 0.2, 0.3], abs=1e-6)


class KeywordJudgeLM(torch.nn.Module):
    """A fake judge: logit(A) = #"good" in response A + bias, logit(B) = #"good" in response B; others -inf."""

    def __init__(self, tokenizer, bias: float):
        super().__init__()
        self.tokenizer = tokenizer
        self.bias = bias
        self.dummy = torch.nn.Parameter(torch.zeros(1), requires_grad=False)
        self.a_id = tokenizer("A", add_special_tokens=False)["input_ids"][0]
        self.b_id = tokenizer("B", add_special_tokens=False)["input_ids"][0]

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False):
        vocab = len(self.tokenizer)
        logits = torch.full((*input_ids.shape, vocab), -1e4)
        for row, ids in enumerate(input_ids):
            text = self.tokenizer.decode(ids[attention_mask[row].bool()])
            a_text = text.split("[Response A]")[1].split("[Response B]")[0]
            b_text = text.split("[Response B]")[1].split("Which response")[0]
            logits[row, -1, self.a_id] = a_text.count("good") + self.bias
            logits[row, -1, self.b_id] = b_text.count("good")
        return types.SimpleNamespace(logits=logits)


def test_swapping_order_flips_raw_verdict_and_average_is_order_independent(tokenizer):
    judge = LLMJudge(KeywordJudgeLM(tokenizer, bias=0.5), tokenizer)
    forward = judge.compare(["q"], ["a good answer"], ["a bad answer"])
    backward = judge.compare(["q"], ["a bad answer"], ["a good answer"])
    # good shown as A: P(A) = σ(1 + 0.5); good shown as B: P(A) = σ(0 − 1 + 0.5)
    assert float(forward.p_ab) == pytest.approx(sigmoid(1.5), abs=1e-5)
    assert float(forward.p_ba) == pytest.approx(sigmoid(-0.5), abs=1e-5)
    assert float(forward.p_ab) > 0.5 > float(forward.p_ba)  # the raw verdict follows the good answer's slot
    # averaged: (σ(1.5) + 1 − σ(−0.5)) / 2 = (0.817574 + 0.622459) / 2 = 0.720017
    assert float(forward.prob_a) == pytest.approx(0.720017, abs=1e-5)
    assert float(backward.prob_a) == pytest.approx(1 - 0.720017, abs=1e-5)
    assert bool(forward.consistent) and forward.position_stats()["position_bias_rate"] == 0.0
    assert float(forward.choice_mass) == pytest.approx(1.0, abs=1e-5)
    # order disagreement: |σ(1.5) − σ(0.5)| / 2 = 0.097558
    assert float(forward.uncertainty) == pytest.approx(0.097558, abs=1e-5)


def test_strong_position_bias_is_reported(tokenizer):
    judge = LLMJudge(KeywordJudgeLM(tokenizer, bias=3.0), tokenizer)
    verdict = judge.compare(["q"], ["a good answer"], ["a bad answer"])
    # σ(4) and σ(2): slot A wins in both orders, so the verdict flips with the order
    stats = verdict.position_stats()
    assert stats["position_bias_rate"] == 1.0
    assert stats["first_slot_rate"] == pytest.approx((sigmoid(4) + sigmoid(2)) / 2, abs=1e-5)
    one_order = LLMJudge(KeywordJudgeLM(tokenizer, bias=3.0), tokenizer, swap_order=False)
    assert float(one_order.compare(["q"], ["good"], ["bad"]).prob_a) == pytest.approx(sigmoid(4), abs=1e-5)


def test_tiny_model_soft_labels_are_probabilities(tokenizer):
    torch.manual_seed(0)
    judge = LLMJudge(build_tiny_llama(), tokenizer)
    verdict = judge.compare(["Tell me a joke.", "Hi"], ["Why did the cat sit?", "Hello!"], ["No.", "Go away."])
    for t in (verdict.p_ab, verdict.p_ba, verdict.prob_a):
        assert ((t >= 0) & (t <= 1)).all()
    assert ((verdict.choice_mass > 0) & (verdict.choice_mass <= 1)).all()
    swapped = judge.compare(["Tell me a joke.", "Hi"], ["No.", "Go away."], ["Why did the cat sit?", "Hello!"])
    assert torch.allclose(swapped.prob_a, 1 - verdict.prob_a, atol=1e-5)

    rater = LLMJudge(build_tiny_llama(), tokenizer, mode="pointwise")
    rating = rater.rate(["Hi"], ["Hello!"])
    assert rating.probs.sum().item() == pytest.approx(1.0, abs=1e-5) and rating.probs.shape == (1, 10)
    assert 1.0 <= float(rating.expected) <= 10.0
    assert torch.allclose(rater.score(["Hi"], ["Hello!"]), rating.expected)
    assert torch.allclose(rater.uncertainty(["Hi"], ["Hello!"]), rating.std)


def test_rating_win_probability_by_hand():
    probs_a = torch.tensor([[0.5, 0.5, 0.0]])
    probs_b = torch.tensor([[0.0, 1.0, 0.0]])
    # R_a = 1 never beats R_b = 2; R_a = 2 ties it: 0.5 · 0.5 = 0.25
    assert float(rating_win_probability(probs_a, probs_b)) == pytest.approx(0.25)
    assert float(rating_win_probability(probs_b, probs_a)) == pytest.approx(0.75)


def test_agreement_skips_pairs_without_reference():
    assert agreement([0.9, 0.2, 0.7], [1, 1, None]) == (0.5, 2)
    assert agreement([0.9], [None]) == (None, 0)


@pytest.mark.slow
def test_label_stage_writes_ai_pairs(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"Question {i}?", "chosen": f"A kind answer {i}.", "rejected": f"No {i}."} for i in range(3)]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(LabelConfig, None, ["model=tiny-llama", f"data.train={pairs}", "label.gold=vader"])
    summary = LabelStage.run(cfg, RunDir(tmp_path / "out"))
    records = load_records(tmp_path / "out" / "labels.jsonl", "pair")
    assert len(records) == 3 == summary["pairs_written"]
    for record in records:
        assert record["source"] == "ai:tiny-llama"
        assert 0.5 <= record["probability"] <= 1.0
        assert record["margin"] == pytest.approx(2 * record["probability"] - 1, abs=1e-5)
    assert 0.0 <= summary["position_bias_rate"] <= 1.0 and summary["input_labelled_pairs"] == 3
    assert "agreement_with_gold_vader" in summary
    assert (tmp_path / "out" / "config.yaml").is_file() and (tmp_path / "out" / "metrics.jsonl").is_file()
