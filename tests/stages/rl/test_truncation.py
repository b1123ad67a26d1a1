"""The no-EOS policies that keep state across rollouts, checked by hand: penalty_gap's running gap and the
adaptive cut-rate controller (and that the PPO stage applies, logs and resumes it)."""

from __future__ import annotations

import math

import pytest
import torch

from alignloop.errors import ConfigError
from alignloop.stages.rl.ppo import PPOStage
from alignloop.stages.rl.rewards import apply_truncation
from alignloop.stages.rl.truncation import CutRateController, LengthGap, NoEosControl
from alignloop.train.loop import train
from tests.stages.rl.test_ppo import config, experiences, metrics, toy  # noqa: F401  (toy: a fixture)


def test_penalty_gap_is_the_running_gap_between_cut_and_finished_scores():
    gap = LengthGap()
    assert gap.gap == 0.0  # nothing seen: no penalty
    # rollout 1: cut answers score 3 and 2 (mean 2.5), finished 1 and 0 (mean 0.5): gap 2.0
    scores, finished = torch.tensor([3.0, 1.0, 2.0, 0.0]), torch.tensor([False, True, False, True])
    gap.update(scores, finished)
    assert gap.gap == pytest.approx(2.0)
    assert apply_truncation(scores, finished, "penalty_gap", 1.0, gap.gap)[0].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert apply_truncation(scores, finished, "penalty_gap", 0.5, gap.gap)[0].tolist() == [2.0, 1.0, 1.0, 0.0]
    # rollout 2 joins the running means: cut (3 + 2 + 4) / 3 = 3, finished (1 + 0 + 2 + 2) / 4 = 1.25
    gap.update(torch.tensor([4.0, 2.0, 2.0]), torch.tensor([False, True, True]))
    assert gap.gap == pytest.approx(3.0 - 1.25)
    # a reward that pays less for cut answers gets no negative penalty (no bonus for running long)
    other = LengthGap()
    other.update(torch.tensor([0.0, 1.0]), torch.tensor([False, True]))
    assert other.gap == 0.0
    restored = LengthGap()
    restored.load_state_dict(gap.state_dict())
    assert restored.gap == gap.gap


def test_cut_rate_controller_by_hand():
    ctl = CutRateController(coef=1.0, gain=2.0)  # target None: the first rollout's rate
    # rollout 1: 3 of 4 cut → target 0.75, coef unchanged; scale = std of [1, 2, 3, 4] = sqrt(5/3)
    ctl.update(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([False, False, False, True]))
    assert ctl.target == 0.75 and ctl.coef == 1.0
    assert ctl.penalty == pytest.approx(math.sqrt(5 / 3))
    # rollout 2: all 4 cut → coef = 1 + 2·(1 − 0.75) = 1.5; scale over all 8 values 1,2,3,4,1,2,3,4: sqrt(10/7)
    ctl.update(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([False, False, False, False]))
    assert ctl.coef == pytest.approx(1.5) and ctl.rate == 1.0
    assert ctl.penalty == pytest.approx(1.5 * math.sqrt(10 / 7))
    # rollout 3: none cut → 1.5 + 2·(0 − 0.75) = 0.0, held at the floor (the starting coefficient) 1.0
    ctl.update(torch.tensor([0.0, 0.0]), torch.tensor([True, True]))
    assert ctl.coef == 1.0
    # rollout 4: all cut again → 1 + 2·0.25 = 1.5 (no wind-down below the floor to climb back from)
    ctl.update(torch.tensor([0.0, 0.0]), torch.tensor([False, False]))
    assert ctl.coef == pytest.approx(1.5)
    zero = CutRateController(coef=0.0, gain=1.0, target=0.5)  # a floor of 0: no penalty until the rate exceeds 0.5
    zero.update(torch.tensor([1.0, 2.0]), torch.tensor([True, True]))
    assert zero.coef == 0.0 and zero.penalty == 0.0
    restored = CutRateController(coef=9.0, gain=2.0)
    restored.load_state_dict(ctl.state_dict())
    assert restored.state_dict() == ctl.state_dict()


def test_cut_rate_controller_with_a_fixed_target_and_over_ranks():
    ctl = CutRateController(coef=0.5, gain=1.0, target=0.25)
    # this rank: 2 rows, 1 cut (0.5); the other rank: 2 rows, both finished, scores 1 and 1
    other = {2: [2.0, 0.0]}  # [rows, cut] (the rate), then [rows, sum] (the score moments)
    calls = []

    def reduce(xs):
        calls.append(len(xs))
        if len(xs) == 2:
            extra = other[2] if len(calls) == 1 else [2.0, 2.0]
            return [x + e for x, e in zip(xs, extra)]
        return [xs[0] + 0.0]  # the other rank's squared deviations from the global mean 1 are 0

    ctl.update(torch.tensor([0.0, 2.0]), torch.tensor([False, True]), reduce=reduce)
    # the rate is over all 4 rows: 1 cut = 0.25 → on target, coef unchanged; the scale over 0, 2, 1, 1
    assert ctl.rate == 0.25 and ctl.coef == 0.5
    assert ctl.scale.count == 4 and ctl.scale.std == pytest.approx(float(torch.tensor([0.0, 2, 1, 1]).std()))


def test_no_eos_control_applies_the_penalty_learned_from_this_rollout():
    control = NoEosControl("adaptive", value=1.0, gain=4.0, target=0.0)
    scores, finished = torch.tensor([2.0, 0.0]), torch.tensor([False, True])
    out, keep = control.apply(scores, finished)
    # rate 0.5 vs target 0 → coef 1 + 4·0.5 = 3; std of [2, 0] = sqrt(2) → penalty 3·sqrt(2) on the cut answer
    assert out.tolist() == pytest.approx([2.0 - 3 * math.sqrt(2), 0.0]) and keep.all()
    assert control.stats()["objective/truncation_penalty"] == pytest.approx(3 * math.sqrt(2))
    assert control.stats()["objective/truncation_coef"] == pytest.approx(3.0)
    assert control.gap.gap == 2.0  # the length gap is tracked under every policy
    fixed = NoEosControl("penalty", value=0.5)
    assert fixed.apply(scores, finished)[0].tolist() == [1.5, 0.0] and fixed.stats() == {}
    fresh = NoEosControl("adaptive", value=1.0, gain=4.0, target=0.0)
    fresh.load_state_dict(control.state_dict())
    assert fresh.state_dict() == control.state_dict()
    fresh.load_state_dict({"length_gap": None})  # a checkpoint from before the controller: left as it is
    assert fresh.controller.coef == pytest.approx(3.0)


def test_ppo_with_adaptive_truncation_penalises_cut_answers_and_logs_it(tmp_path, toy, monkeypatch):  # noqa: F811
    seen = experiences(monkeypatch)
    cfg = config(toy, "ppo.truncation=adaptive", "ppo.truncation_value=1.0", "ppo.truncation_gain=3.0",
                 "ppo.truncation_target=0.0", "ppo.max_new_tokens=2", "ppo.prompts_per_rollout=8",
                 "train.batch_size=8")
    train(PPOStage(cfg), tmp_path)
    logged = [m for m in metrics(tmp_path) if "objective/truncation_coef" in m]
    coef, values = 1.0, []
    for data, _ in seen:
        raw, cut = data.raw_scores, ~data.rollout.finished.cpu()
        coef = max(1.0, coef + 3.0 * float(cut.float().mean()))  # target 0: the rate only raises it
        values += raw.tolist()
        penalty = coef * float(torch.tensor(values).double().std())
        assert torch.allclose(data.scores[cut], raw[cut] - penalty, atol=1e-5)
        assert torch.equal(data.scores[~cut], raw[~cut])
    assert len(seen) == 2 and coef > 1.0
    assert logged and logged[-1]["objective/truncation_coef"] == pytest.approx(coef)


def test_ppo_takes_the_soft_overlong_punishment_too(tmp_path, toy, monkeypatch):  # noqa: F811
    with pytest.raises(ConfigError, match=r"ppo.overlong_buffer \(9\) must be at most ppo.max_new_tokens \(6\)"):
        config(toy, "ppo.overlong_buffer=9")
    seen = experiences(monkeypatch)
    # limit 6, buffer 4: lengths ≤ 2 keep their score, 3..6 lose (L − 2)/4 × 0.5
    train(PPOStage(config(toy, "ppo.overlong_buffer=4", "ppo.overlong_penalty=0.5", "ppo.rollouts=1")), tmp_path)
    data, _ = seen[0]
    lengths = data.rollout.response_lengths().cpu().float()
    expected = torch.where(lengths <= 2, torch.zeros_like(lengths), -(lengths - 2) / 4 * 0.5)
    reward_only = data.components["tests.conftest:target_fraction"]
    assert torch.equal(data.components["overlong"], expected)
    assert torch.allclose(data.raw_scores, reward_only + expected)
    assert (lengths > 2).any()  # the punishment applied to some answer


def test_no_eos_control_residual_fits_length_over_every_rollout_so_far():
    control = NoEosControl("residual", value=0.6)  # the value plays no part
    # rollout 1: score = length + 2·cut exactly (test_length_debias has the sums): every answer gets the mean 2.75
    out, keep = control.apply(torch.tensor([1.0, 2.0, 3.0, 5.0]), torch.tensor([True, True, True, False]),
                              lengths=torch.tensor([1, 2, 3, 3]))
    assert out.tolist() == pytest.approx([2.75] * 4, abs=2e-3) and keep.all()  # the default ridge: slopes −0.1 %
    assert control.stats() == pytest.approx({"objective/length_slope": 1.0, "objective/cut_premium": 2.0}, rel=1e-2)
    # rollout 2 joins the fit: two finished answers of length 2 scoring 0 and 4, checked against a least-squares
    # solve (intercept, length, cut) on all six answers
    out2, _ = control.apply(torch.tensor([0.0, 4.0]), torch.tensor([True, True]), lengths=torch.tensor([2, 2]))
    x = torch.tensor([[1, 1, 0], [1, 2, 0], [1, 3, 0], [1, 3, 1], [1, 2, 0], [1, 2, 0]], dtype=torch.float64)
    y = torch.tensor([1.0, 2.0, 3.0, 5.0, 0.0, 4.0], dtype=torch.float64)
    beta = torch.linalg.lstsq(x, y.unsqueeze(1)).solution.squeeze(1)
    mean_length, mean_cut = x[:, 1].mean(), x[:, 2].mean()
    expected = y[4:] - beta[1] * (2 - mean_length) - beta[2] * (0 - mean_cut)
    assert out2.tolist() == pytest.approx(expected.tolist(), abs=2e-3)
    fresh = NoEosControl("residual", value=0.6)
    fresh.load_state_dict(control.state_dict())
    assert fresh.state_dict() == control.state_dict()
    with pytest.raises(ValueError, match="needs the answers' lengths"):
        fresh.apply(torch.tensor([1.0]), torch.tensor([True]))


def test_ppo_with_residual_truncation_trains_on_length_residuals(tmp_path, toy, monkeypatch):  # noqa: F811
    seen = experiences(monkeypatch)
    cfg = config(toy, "ppo.truncation=residual", "ppo.max_new_tokens=4", "ppo.prompts_per_rollout=8",
                 "train.batch_size=8")
    train(PPOStage(cfg), tmp_path)
    rows, targets = [], []
    for data, _ in seen:  # refit by an independent least-squares solve on every rollout so far
        lengths = data.rollout.response_lengths().cpu().double()
        cut = (~data.rollout.finished.cpu()).double()
        rows.append(torch.stack([torch.ones_like(lengths), lengths, cut], dim=1))
        targets.append(data.raw_scores.double())
        x, y = torch.cat(rows), torch.cat(targets)
        usable = [0] + [j for j in (1, 2) if x[:, j].std() > 0]  # a feature that never varied gets slope 0
        beta = torch.zeros(3, dtype=torch.float64)
        beta[usable] = torch.linalg.lstsq(x[:, usable], y.unsqueeze(1)).solution.squeeze(1)
        shift = (rows[-1][:, 1:] - x[:, 1:].mean(0)) @ beta[1:]
        assert torch.allclose(data.scores.double(), data.raw_scores.double() - shift, atol=1e-2)
    assert len(seen) == 2
    logged = [m for m in metrics(tmp_path) if "objective/length_slope" in m]
    assert len(logged) == 2 and logged[-1]["objective/length_slope"] == pytest.approx(float(beta[1]), abs=1e-2)
