"""Pure pieces of the RL stages, checked by hand: per-token rewards, truncation policy, normalisation,
monitors, loss-sum bookkeeping, the mini-batch schedule and micro-batch slicing, value loss on ragged rows."""

from __future__ import annotations

import math

import pytest
import torch

from alignloop.algos import ADVANTAGE_ESTIMATORS, aggregate_loss, value_loss, whiten_advantages
from alignloop.stages.rl.experience import Experience, minibatch_schedule
from alignloop.stages.rl.monitors import pearson, rollout_monitors
from alignloop.stages.rl.rewards import (
    RunningMoments,
    apply_truncation,
    normalise_scores,
    prompt_text,
    token_rewards,
)
from alignloop.stages.rl.stage import loss_sum_factor


def test_token_rewards_hand_example_variable_lengths():
    # row 0 has 3 tokens, row 1 has 1; kl = 0.1·(t+1); β = [0.5, 2]
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 9.0, 9.0]])
    rewards = token_rewards(torch.tensor([1.0, -1.0]), mask, kl, torch.tensor([0.5, 2.0]))
    # row 0: −0.5·[0.1, 0.2, 0.3] = [−0.05, −0.1, −0.15], +1 on the last token → −0.15 + 1 = 0.85
    # row 1: −2·0.4 = −0.8, + (−1) = −1.8; padded positions 0 (the 9.0 must not leak)
    assert torch.allclose(rewards, torch.tensor([[-0.05, -0.1, 0.85], [-1.8, 0.0, 0.0]]))
    # no KL in the reward: only the score on the last token
    assert torch.equal(token_rewards(torch.tensor([1.0, -1.0]), mask, None, None), torch.tensor([[0.0, 0, 1], [-1, 0, 0]]))


def test_token_rewards_put_the_score_on_the_last_trained_token_of_a_mask_with_holes():
    # a multi-turn episode: tool call (2 tokens), tool output (3 tokens, masked out), answer (2 tokens), padding;
    # the score goes on position 6, the answer's last token (the count − 1 = 3 would land in the tool output)
    mask = torch.tensor([[1, 1, 0, 0, 0, 1, 1, 0], [1, 1, 1, 0, 0, 0, 0, 0]])
    rewards = token_rewards(torch.tensor([1.0, 0.5]), mask, None, None)
    assert torch.equal(rewards, torch.tensor([[0.0, 0, 0, 0, 0, 0, 1, 0], [0, 0, 0.5, 0, 0, 0, 0, 0]]))
    # so the group estimator's sequence return (the masked sum) is the score, not 0
    advantages, returns = ADVANTAGE_ESTIMATORS["grpo"](rewards, mask, group_size=2, scale_by_std=False)
    assert torch.equal(returns, torch.tensor([[1.0], [0.5]]) * mask)
    # mean of the group 0.75: +0.25 and −0.25 on every trained token, 0 elsewhere
    assert torch.allclose(advantages, 0.25 * torch.tensor([[1.0, 1, 0, 0, 0, 1, 1, 0], [-1, -1, -1, 0, 0, 0, 0, 0]]))


def test_truncation_policies():
    scores, finished = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([True, False, True])
    assert apply_truncation(scores, finished, "keep", 5.0)[0].tolist() == [1.0, 2.0, 3.0]
    assert apply_truncation(scores, finished, "penalty", 5.0)[0].tolist() == [1.0, -3.0, 3.0]  # 2 − 5
    assert apply_truncation(scores, finished, "score", -1.0)[0].tolist() == [1.0, -1.0, 3.0]
    kept, rows = apply_truncation(scores, finished, "exclude", 5.0)
    assert kept.tolist() == [1.0, 2.0, 3.0] and rows.tolist() == [True, False, True]


def test_running_moments_match_all_values_seen():
    moments = RunningMoments()
    a, b = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 20.0])
    moments.update(a)
    moments.update(b)
    both = torch.cat([a, b]).double()
    # mean of 1,2,3,10,20 = 36/5 = 7.2; unbiased std from torch on all five values
    assert moments.mean == pytest.approx(7.2)
    assert moments.std == pytest.approx(float(both.std()))
    restored = RunningMoments()
    restored.load_state_dict(moments.state_dict())
    assert restored.std == moments.std


def test_normalise_scores_batch_running_and_clip():
    s = torch.tensor([1.0, 3.0])  # mean 2, unbiased std √2
    assert torch.allclose(normalise_scores(s, "batch", RunningMoments(), None), torch.tensor([-1, 1]) / math.sqrt(2), atol=1e-6)
    assert torch.allclose(normalise_scores(s, "batch", RunningMoments(), 0.5), torch.tensor([-0.5, 0.5]))
    running = RunningMoments()
    running.update(torch.tensor([0.0, 4.0]))  # after the update with s: values 0,4,1,3 → mean 2, std √(10/3)
    out = normalise_scores(s, "running", running, None)
    assert torch.allclose(out, (s - 2) / math.sqrt(10 / 3), atol=1e-6)
    assert torch.equal(normalise_scores(s, "none", RunningMoments(), None), s)


def test_pearson_and_monitors():
    assert pearson(torch.tensor([1.0, 2, 3]), torch.tensor([2.0, 4, 6])) == pytest.approx(1.0)
    assert pearson(torch.tensor([1.0, 1, 1]), torch.tensor([2.0, 4, 6])) == 0.0  # constant side: 0, not NaN
    m = rollout_monitors(torch.tensor([0.0, 1.0]), torch.tensor([4, 8]), torch.tensor([True, False]), gold=torch.tensor([2.0, 4.0]))
    assert m["completions/mean_length"] == 6.0 and m["completions/clipped_ratio"] == 0.5
    assert m["monitor/reward_length_corr"] == pytest.approx(1.0) and m["objective/gold_scores"] == 3.0


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum"])
def test_loss_sums_over_micro_batches_equal_the_whole_batch(agg):
    # the loop divides Σ(micro-batch sums) by Σ units; that must equal aggregating the whole mini-batch at once
    torch.manual_seed(0)
    x = torch.randn(4, 5)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]).float()
    whole = aggregate_loss(x, mask, agg, max_len=5)

    parts = [(x[:2], mask[:2]), (x[2:], mask[2:])]
    total = sum(aggregate_loss(xp, mp, agg, max_len=5) * loss_sum_factor(mp, agg) for xp, mp in parts)
    n_units = sum(loss_sum_factor(mp, agg) for _, mp in parts)
    assert float(total / n_units) == pytest.approx(float(whole), rel=1e-6)


def test_value_loss_hand_example_ragged_rows():
    # row 0: 2 valid tokens, row 1: 1; clip 0.5 around old values 0
    values = torch.tensor([[1.0, 0.2], [-2.0, 7.0]])
    old = torch.zeros(2, 2)
    returns = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    loss, stats = value_loss(values, old, returns, mask, clip_range_value=0.5)
    # tok (0,0): unclipped (1−0)²=1, clipped (0.5−0)²=0.25 → 1
    # tok (0,1): unclipped (0.2−1)²=0.64, clipped (0.2−1)²=0.64 (inside range) → 0.64
    # tok (1,0): unclipped 4, clipped (−0.5)²=0.25 → 4;  mean = 5.64/3 = 1.88; ×½ = 0.94
    assert float(loss) == pytest.approx(0.94)
    assert float(stats["val/clipfrac_avg"]) == 0.0  # the clipped error is never the larger one here


def test_minibatch_schedule_is_deterministic_and_covers_every_row_each_epoch():
    a = minibatch_schedule(8, minibatch=4, micro=2, epochs=2, seed=3, rollout_index=5)
    assert a == minibatch_schedule(8, minibatch=4, micro=2, epochs=2, seed=3, rollout_index=5)
    assert a != minibatch_schedule(8, minibatch=4, micro=2, epochs=2, seed=3, rollout_index=6)
    assert len(a) == 8 and all(len(m) == 2 for m in a)
    assert sorted(sum(a[:4], [])) == list(range(8)) and sorted(sum(a[4:], [])) == list(range(8))
    with pytest.raises(ValueError):
        minibatch_schedule(6, minibatch=4, micro=2, epochs=1, seed=0, rollout_index=0)


def test_micro_batch_cuts_shared_padding_only():
    # prompt width 3 (left padded), response width 3 (right padded); response starts at column 3
    ids = torch.tensor([[0, 0, 5, 6, 7, 0], [0, 4, 5, 6, 0, 0], [3, 4, 5, 6, 7, 8]])
    attn = (ids > 0).long()
    resp = attn[:, 3:].float()
    exp = Experience(ids, attn, 3, resp, torch.randn(3, 3), torch.randn(3, 3))
    mb = exp.micro_batch([0, 1])
    # rows 0,1: first real prompt column is 1, last real response column is 4 → columns 1..4, response from 2
    assert mb["input_ids"].tolist() == [[0, 5, 6, 7], [4, 5, 6, 0]]
    assert mb["response_start"] == 2 and mb["loss_mask"].tolist() == [[1, 1], [1, 0]]
    assert torch.equal(mb["old_logprobs"], exp.old_logprobs[[0, 1], :2])
    assert exp.micro_batch([2])["input_ids"].tolist() == [[3, 4, 5, 6, 7, 8]]


def test_prompt_text():
    assert prompt_text("hi") == "hi"
    assert prompt_text([{"role": "user", "content": "What is 2+2?"}]) == "What is 2+2?"
    assert prompt_text([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]) == "system: s\n\nuser: u"


class TwoRanks:
    """A sum-reducer standing in for an all-reduce between this rank and a peer whose values are known.

    Calls alternate between the two ranks' statistics in the order the code asks for them, so the peer's
    contributions come from running the same function on the peer's data with a recording reducer."""

    def __init__(self, peer_calls: list[list[float]]):
        self.peer_calls = list(peer_calls)

    def __call__(self, values: list[float]) -> list[float]:
        peer = self.peer_calls.pop(0)
        return [a + b for a, b in zip(values, peer)]


class Recorder:
    def __init__(self):
        self.calls: list[list[float]] = []

    def __call__(self, values):
        self.calls.append(list(values))
        return values


def _sharded(fn, a, b):
    """fn(shard, reduce) on shard ``a`` as rank 0, with shard ``b`` as its peer."""
    # The peer's first statistics (counts, sums) don't depend on the global mean; its later ones do, so
    # record them with the global mean the reduction will give: run the peer with a reducer that answers
    # with the sum of both ranks' first-call statistics.
    first_a, first_b = Recorder(), Recorder()
    fn(a, first_a), fn(b, first_b)
    totals = [x + y for x, y in zip(first_a.calls[0], first_b.calls[0])]

    class Peer:
        calls: list[list[float]] = []
        n = 0

        def __call__(self, values):
            self.calls.append(list(values))
            self.n += 1
            return totals if self.n == 1 else values

    peer = Peer()
    fn(b, peer)
    return fn(a, TwoRanks(peer.calls))


def test_whitening_over_two_ranks_equals_whitening_the_whole_batch():
    x = torch.tensor([[1.0, 2.0, 9.0], [4.0, -1.0, 0.0], [3.0, 5.0, 7.0], [0.5, 0.0, 8.0]])
    m = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1]])
    whole = whiten_advantages(x, m)
    rank0 = _sharded(lambda s, r: whiten_advantages(x[s], m[s], reduce=r), slice(0, 2), slice(2, 4))
    assert torch.allclose(rank0, whole[:2], atol=1e-6)
    assert not torch.allclose(whiten_advantages(x[:2], m[:2]), whole[:2], atol=1e-3)  # per-rank stats differ


def test_batch_reward_normalisation_over_two_ranks_equals_the_whole_batch():
    s = torch.tensor([1.0, 4.0, -2.0, 0.5, 3.0, 3.5])
    whole = normalise_scores(s, "batch", RunningMoments(), None)
    rank0 = _sharded(lambda sl, r: normalise_scores(s[sl], "batch", RunningMoments(), None, r), slice(0, 3), slice(3, 6))
    assert torch.allclose(rank0, whole[:3], atol=1e-6)
    # running moments: after one global update the moments are those of all six scores
    moments = RunningMoments()
    _sharded(lambda sl, r: (moments if isinstance(r, TwoRanks) else RunningMoments()).update(s[sl], r), slice(0, 3), slice(3, 6))
    assert moments.count == 6 and abs(moments.mean - float(s.double().mean())) < 1e-12
    assert abs(moments.std - float(s.double().std())) < 1e-9
