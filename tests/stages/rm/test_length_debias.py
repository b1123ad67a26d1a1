"""Length bias of the reward model: the length metrics, and ODIN's length head (``rm.length_debias: odin``).

The unit tests check the ODIN loss wiring by hand; the stage tests train tiny-llama on synthetic pairs whose
labels follow ONLY the answers' lengths (noisy Bradley–Terry on the word count), where a plain reward model learns
length and ODIN's quality head should not.
"""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from safetensors.torch import load_file

from alignloop.config import load_config
from alignloop.errors import ConfigError
from alignloop.models import TINY_MODEL
from alignloop.models.scalar_head import score_groups
from alignloop.models.shared_prompt import PackedGroups
from alignloop.pipeline.launch import run_stage
from alignloop.rewards.model import RewardModel
from alignloop.stages.rm.data import PreferenceBatch, PreferenceExample
from alignloop.stages.rm.loss import LossSettings, evaluate_examples, preference_loss, unique_lengths
from alignloop.stages.rm.stage import RMConfig, RMOptions, RMStage, output_names
from alignloop.stages.rm.synthetic import write_jsonl
from alignloop.train.loop import train

FAST = ["train.precision=fp32", "train.save_every=0", f"model={TINY_MODEL}"]
WORDS = ["coffee", "garden", "music", "window", "river", "paper", "stone", "light", "table", "green", "quiet",
         "street", "bread", "cloud", "market", "yellow"]
PROMPTS = ["Describe the place.", "Tell me about your day.", "What did you see?", "Write a note."]


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


# ---- the loss and the evaluation by hand ---------------------------------------------------------------------------
def _batch() -> PreferenceBatch:
    # pair A: chosen 1 token, rejected 3; pair B: chosen 2 tokens, rejected 1 -> unique lengths (1, 3, 2, 1)
    examples = [PreferenceExample([1], [[2], [3, 4, 5]], [[0], [1]], is_pair=True),
                PreferenceExample([1], [[6, 7], [8]], [[0], [1]], is_pair=True)]
    index = [[0, 1], [2, 3]]
    empty = torch.zeros(0, dtype=torch.long)
    packed = PackedGroups(empty, empty, torch.zeros(0, dtype=torch.bool), torch.zeros(4, dtype=torch.long),
                          torch.zeros(4, dtype=torch.long), index)
    return PreferenceBatch(examples, packed)


def test_odin_loss_scores_the_sum_and_adds_the_length_term_per_record():
    batch = _batch()
    assert unique_lengths(batch) == [1, 3, 2, 1]
    odin = LossSettings(length_debias="odin", odin_length_coef=0.5)
    # columns (quality, length); the length head IS the length (ρ = 1, term 0) and quality (1, 0, 3, 0) is
    # uncorrelated with it (centred lengths (−0.75, 1.25, 0.25, −0.75): −0.75 + 0.75 = 0): only Bradley–Terry on the
    # sums remains. A: 1 + 1 = 2 vs 0 + 3 -> softplus(1), wrong; B: 3 + 2 = 5 vs 0 + 1 -> softplus(−4), right
    scores = torch.tensor([[1.0, 1.0], [0.0, 3.0], [3.0, 2.0], [0.0, 1.0]])
    loss, metrics = preference_loss(scores, batch, odin)
    assert loss.item() == pytest.approx(softplus(1) + softplus(-4), abs=1e-6)
    assert metrics == pytest.approx({"accuracy": 1.0, "margin": -1.0 + 4.0})
    # quality (1, 0, 0, 0): centred (0.75, −0.25, −0.25, −0.25), Σ with centred lengths = −0.75,
    # ρ = −0.75 / √(0.75 · 2.75) = −0.52223; the term 0 + 0.52223 is added once per record: 0.5 · 0.52223 · 2
    scores[2, 0] = 0.0  # B: 0 + 2 vs 0 + 1 -> softplus(−1)
    loss, _ = preference_loss(scores, batch, odin)
    assert loss.item() == pytest.approx(softplus(1) + softplus(-1) + 0.52223, abs=1e-5)
    plain, _ = preference_loss(scores[:, :1], batch, LossSettings())  # the plain loss ignores any length
    assert plain.item() == pytest.approx(softplus(-1) + softplus(0), abs=1e-6)


def test_odin_evaluation_measures_the_quality_head_alone():
    scores = torch.tensor([[1.0, 1.0], [0.0, 3.0], [3.0, 2.0], [0.0, 1.0]])
    metrics, result = evaluate_examples([_batch()], lambda packed: (scores, None),
                                        LossSettings(length_debias="odin"))
    # quality head: A 1 > 0 (chosen shorter, right), B 3 > 0 (chosen longer, right); the sums would get A wrong
    assert metrics["eval/accuracy"] == 1.0
    assert metrics["eval/loss"] == pytest.approx((softplus(-1) + softplus(-3)) / 2, abs=1e-6)
    assert metrics["eval/accuracy_chosen_shorter"] == metrics["eval/accuracy_chosen_longer"] == 1.0
    assert metrics["eval/length_correlation"] == pytest.approx(0.0, abs=1e-9)
    assert metrics["eval/length_head_correlation"] == pytest.approx(1.0)
    assert result.winner_lengths.tolist() == [1, 2] and result.loser_lengths.tolist() == [3, 1]
    plain, _ = evaluate_examples([_batch()], lambda packed: (scores[:, 1:], None), LossSettings())
    # the length head scored as a plain reward: right on B only (the longer answer won there)
    assert plain["eval/accuracy"] == 0.5 and plain["eval/length_correlation"] == pytest.approx(1.0)
    assert plain["eval/accuracy_chosen_shorter"] == 0.0 and "eval/length_head_correlation" not in plain


def test_a_criterion_may_not_take_the_length_heads_name():
    assert output_names(RMOptions(criteria=["length"])) == ["score", "length"]  # fine without ODIN
    with pytest.raises(ConfigError, match="'length' is the name of ODIN's length head"):
        output_names(RMOptions(criteria=["length"], length_debias="odin"))


# ---- training on pairs whose label is length alone ------------------------------------------------------------------
def length_pairs(n: int, seed: int, temperature: float = 4.0) -> list[dict]:
    """Answers of 1–16 random words; the longer is preferred with probability σ((words_a − words_b) / T)."""
    rng = random.Random(seed)
    records = []
    while len(records) < n:
        a, b = rng.randint(1, 16), rng.randint(1, 16)
        if a == b:
            continue
        first, second = (" ".join(rng.choice(WORDS) for _ in range(k)) + "." for k in (a, b))
        a_wins = rng.random() < 1 / (1 + math.exp(-(a - b) / temperature))
        chosen, rejected = (first, second) if a_wins else (second, first)
        records.append({"prompt": rng.choice(PROMPTS), "chosen": chosen, "rejected": rejected})
    return records


@pytest.fixture(scope="module")
def length_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("length")
    return (write_jsonl(length_pairs(240, seed=1), folder / "train.jsonl"),
            write_jsonl(length_pairs(80, seed=2), folder / "eval.jsonl"), folder)


def _config(train_file, eval_file, *more: str) -> RMConfig:
    overrides = [*FAST, f"data.train={train_file}", f"data.eval={eval_file}", "train.max_steps=-1",
                 "train.epochs=2", "train.lr=3e-3", "train.batch_size=16", "train.seed=0", *more]
    return load_config(RMConfig, None, overrides)


@pytest.fixture(scope="module")
def runs(length_data):
    train_file, eval_file, folder = length_data
    out = {}
    for debias in ("none", "odin"):
        stage = RMStage(_config(train_file, eval_file, f"rm.length_debias={debias}"))
        torch.manual_seed(0)
        summary = train(stage, folder / debias)
        out[debias] = (stage, summary, folder / debias)
    return out


def test_plain_reward_model_learns_length_and_the_summary_says_so(runs):
    _, summary, folder = runs["none"]
    # measured (train.seed 0, 1, 2): correlation 0.94-0.95; accuracy 0.00-0.06 on the 17 pairs where the shorter
    # answer won, 0.98-1.0 on the 61 where the longer did (2 pairs' answers have one token count)
    assert summary["eval_length_correlation"] > 0.6
    assert summary["eval_pairs_chosen_shorter"] == 17 and summary["eval_pairs_chosen_longer"] == 61
    assert summary["eval_accuracy_chosen_longer"] - summary["eval_accuracy_chosen_shorter"] > 0.5
    saved = json.loads((folder / "summary.json").read_text())
    report = json.loads((folder / "rm_report.json").read_text())
    assert saved["eval_length_correlation"] == pytest.approx(report["length_reward_correlation"]["pearson"])
    assert saved["eval_pairs_chosen_shorter"] == report["length_split"]["pairs_chosen_shorter"]
    assert "preferred answer shorter" in (folder / "report.html").read_text()
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert "eval/length_correlation" in [r for r in rows if "eval/accuracy" in r][-1]


def test_odin_quality_head_is_far_less_length_correlated(runs):
    plain, odin = runs["none"][1], runs["odin"][1]
    # measured (train.seed 0, 1, 2): plain 0.94-0.95; ODIN's quality head 0.18, −0.03, 0.08; its length head 0.97-0.99
    assert abs(odin["eval_length_correlation"]) < plain["eval_length_correlation"] - 0.4
    assert odin["eval_length_head_correlation"] > 0.6
    assert "eval_length_head_correlation" not in plain


def test_odin_model_saves_and_scores_with_the_quality_head_only(runs, length_data):
    stage, summary, folder = runs["odin"]
    assert load_file(str(folder / "model" / "head.safetensors"))["weight"].shape[0] == 1
    assert json.loads((folder / "model" / "alignloop_head.json").read_text())["output_names"] == ["score"]
    assert json.loads((folder / "model" / "alignloop_rm.json").read_text())["length_debias"] == "odin"
    assert stage.models["rm"].output_names == ["score", "length"]  # put back after saving
    loaded = RewardModel.load(folder)
    assert loaded.output_names == ["score"]
    packed = stage.eval_batches[0].packed
    with torch.no_grad():
        trained = score_groups(stage.models["rm"].eval(), packed)
    saved, _ = loaded.score_packed(packed)
    assert torch.allclose(saved[:, 0], trained[:, 0], atol=1e-5)  # the quality head ...
    assert not torch.allclose(saved[:, 0], trained.sum(-1), atol=1e-2)  # ... not quality + length
    records = [json.loads(line) for line in length_data[1].read_text().splitlines()]
    chosen = loaded.score([r["prompt"] for r in records], [r["chosen"] for r in records])
    rejected = loaded.score([r["prompt"] for r in records], [r["rejected"] for r in records])
    assert float((chosen > rejected).float().mean()) == pytest.approx(summary["eval_accuracy"])


def test_odin_trains_further_from_a_saved_model_and_resumes_exactly(runs, length_data, tmp_path):
    train_file, eval_file, _ = length_data
    further = _config(train_file, eval_file, f"model={runs['odin'][2]}", "rm.length_debias=odin", "train.max_steps=2")
    train(RMStage(further), tmp_path / "further")  # the saved model gets a fresh length head, dropped again on save
    assert json.loads((tmp_path / "further" / "model" / "alignloop_head.json").read_text())["output_names"] == ["score"]
    base = [f"data.train={train_file}", f"data.eval={eval_file}", "rm.length_debias=odin", "train.batch_size=8",
            "train.micro_batch_size=4", "train.lr=1e-3", "train.lr_schedule=constant"]
    straight = load_config(RMConfig, None, [*FAST, *base, "train.max_steps=4"])
    train(RMStage(straight), tmp_path / "straight")
    train(RMStage(load_config(RMConfig, None, [*FAST, *base, "train.max_steps=2"])), tmp_path / "resumed")
    train(RMStage(straight), tmp_path / "resumed")  # continues from the step-2 checkpoint, length head included
    heads = [load_file(str(tmp_path / name / "model" / "head.safetensors"))["weight"]
             for name in ("straight", "resumed")]
    assert torch.allclose(*heads, atol=1e-6)


def test_odin_ensemble_members_save_plain_heads_and_the_ensemble_reports_length_bias(length_data, tmp_path):
    train_file, eval_file, _ = length_data
    overrides = [*FAST, f"data.train={train_file}", f"data.eval={eval_file}", "train.max_steps=2",
                 "train.batch_size=8", "rm.length_debias=odin", "rm.ensemble.size=2"]
    summary = run_stage("rm", None, overrides, tmp_path / "ensemble")
    for member in ("member-0", "member-1"):
        meta = json.loads((tmp_path / "ensemble" / member / "model" / "alignloop_head.json").read_text())
        assert meta["output_names"] == ["score"]
    assert RewardModel.load(tmp_path / "ensemble").output_names == ["score"]
    assert -1.0 <= summary["eval_length_correlation"] <= 1.0 and summary["eval_pairs_chosen_longer"] == 61
