"""Chunked log-probs / entropy, masked statistics, label shifting."""

from __future__ import annotations

import math

import pytest
import torch

from alignloop.algos import (
    entropy_from_logits,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    selective_log_softmax,
    sequence_logprob,
    shift_labels,
)


def _upcast(logits: torch.Tensor) -> torch.Tensor:
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def naive_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(_upcast(logits), dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def naive_entropy(logits: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(_upcast(logits), dim=-1)
    return -(logp.exp() * logp).sum(-1)


# ---------------------------------------------------------------- hand examples


def test_selective_log_softmax_hand_example():
    # logits = log [1, 2, 3] → softmax = [1/6, 2/6, 3/6]
    # label 2: log(3/6) = −0.693147; label 0: log(1/6) = −1.791759
    # logits [0, 0, 0, 0] → uniform, log(1/4) = −1.386294 for any label
    logits = torch.tensor([[[math.log(1), math.log(2), math.log(3), -1e9], [0.0, 0.0, 0.0, 0.0]]])
    # (the −1e9 column has probability ~0, so row 0 behaves like a 3-way softmax)
    labels = torch.tensor([[2, 1]])
    out = selective_log_softmax(logits, labels)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([[math.log(0.5), math.log(0.25)]]))
    out0 = selective_log_softmax(logits, torch.tensor([[0, 3]]))
    torch.testing.assert_close(out0, torch.tensor([[math.log(1 / 6), math.log(0.25)]]))


def test_entropy_hand_example():
    # p = [1/6, 1/3, 1/2]: H = (1/6)ln6 + (1/3)ln3 + (1/2)ln2 = 0.298627 + 0.366204 + 0.346574 = 1.011404
    # uniform over 4: H = ln 4 = 1.386294
    logits = torch.tensor([[math.log(1), math.log(2), math.log(3), -1e9], [0.0, 0.0, 0.0, 0.0]])
    expected = torch.tensor([math.log(6) / 6 + math.log(3) / 3 + math.log(2) / 2, math.log(4)])
    torch.testing.assert_close(entropy_from_logits(logits), expected)
    assert abs(expected[0].item() - 1.011404) < 1e-6


def test_log_softmax_gradient_hand_example():
    # d log p(y) / dz_v = 1[v = y] − p_v; uniform over 4 with y = 1 → [−1/4, 3/4, −1/4, −1/4]
    logits = torch.zeros(1, 1, 4, requires_grad=True)
    selective_log_softmax(logits, torch.tensor([[1]])).sum().backward()
    torch.testing.assert_close(logits.grad, torch.tensor([[[-0.25, 0.75, -0.25, -0.25]]]))


def test_entropy_gradient_hand_example():
    # dH/dz_v = −p_v (z_v − E_p[z]). logits [0, ln 3]: p = [1/4, 3/4], E_p[z] = (3/4) ln 3
    # dH/dz_0 = −(1/4)(0 − 0.75 ln3) = 0.1875 ln3 = 0.205993; dH/dz_1 = −(3/4)(ln3 − 0.75 ln3) = −0.1875 ln3
    logits = torch.tensor([[0.0, math.log(3)]], requires_grad=True)
    entropy_from_logits(logits).sum().backward()
    g = 0.1875 * math.log(3)
    torch.testing.assert_close(logits.grad, torch.tensor([[g, -g]]))


# ---------------------------------------------------------------- against torch's full log-softmax


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 8, 21, 1000])
def test_selective_log_softmax_matches_full_fp32(chunk_size):
    torch.manual_seed(0)
    # chunk_size < T walks over time inside a row; chunk_size >= T walks over whole rows
    logits = (torch.randn(3, 7, 11) * 3).requires_grad_()
    labels = torch.randint(0, 11, (3, 7))
    out = selective_log_softmax(logits, labels, chunk_size=chunk_size)
    ref_logits = logits.detach().clone().requires_grad_()
    ref = naive_logps(ref_logits, labels)
    torch.testing.assert_close(out, ref)
    weights = torch.randn(3, 7)
    (out * weights).sum().backward()
    (ref * weights).sum().backward()
    torch.testing.assert_close(logits.grad, ref_logits.grad)


def test_selective_log_softmax_bf16_upcasts_per_chunk():
    torch.manual_seed(1)
    logits = (torch.randn(2, 5, 300) * 4).to(torch.bfloat16).requires_grad_()
    labels = torch.randint(0, 300, (2, 5))
    out = selective_log_softmax(logits, labels, chunk_size=4)
    assert out.dtype == torch.float32
    # the same bf16 values upcast to fp32 → identical up to fp32 rounding
    torch.testing.assert_close(out, naive_logps(logits.detach(), labels), atol=1e-5, rtol=1e-5)
    out.sum().backward()
    assert logits.grad.dtype == torch.bfloat16
    ref_logits = logits.detach().float().requires_grad_()
    naive_logps(ref_logits, labels).sum().backward()
    torch.testing.assert_close(logits.grad.float(), ref_logits.grad, atol=1e-2, rtol=1e-2)


def test_entropy_matches_full_fp32_and_bf16():
    torch.manual_seed(2)
    logits = (torch.randn(4, 6, 13) * 2).requires_grad_()
    ent = entropy_from_logits(logits, chunk_size=5)
    ref_logits = logits.detach().clone().requires_grad_()
    ref = naive_entropy(ref_logits)
    torch.testing.assert_close(ent, ref)
    weights = torch.randn(4, 6)
    (ent * weights).sum().backward()
    (ref * weights).sum().backward()
    torch.testing.assert_close(logits.grad, ref_logits.grad)
    bf = logits.detach().to(torch.bfloat16)
    torch.testing.assert_close(entropy_from_logits(bf, chunk_size=2), naive_entropy(bf), atol=1e-5, rtol=1e-5)


def test_gradcheck_double():
    torch.manual_seed(3)
    logits = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 5, (2, 3))
    # fp64 logits are computed in fp64, so the custom backward is checked at full precision
    assert torch.autograd.gradcheck(lambda z: selective_log_softmax(z, labels, chunk_size=2), (logits,))
    assert torch.autograd.gradcheck(lambda z: entropy_from_logits(z, chunk_size=2), (logits,))


def test_non_contiguous_and_2d_logits():
    torch.manual_seed(4)
    logits = torch.randn(2, 6, 9)
    labels = torch.randint(0, 9, (2, 5))
    sliced = logits[:, :-1]  # the usual causal-LM slice, not contiguous
    assert not sliced.is_contiguous()
    torch.testing.assert_close(selective_log_softmax(sliced, labels, chunk_size=3), naive_logps(sliced, labels))
    flat = logits[0]
    flat_labels = torch.randint(0, 9, (6,))
    torch.testing.assert_close(selective_log_softmax(flat, flat_labels, chunk_size=4), naive_logps(flat, flat_labels))


def test_ignore_index_gives_zero_and_no_gradient():
    logits = torch.randn(1, 3, 4, requires_grad=True)
    labels = torch.tensor([[1, -100, 2]])
    out = selective_log_softmax(logits, labels)
    assert out[0, 1].item() == 0.0
    out.sum().backward()
    assert torch.all(logits.grad[0, 1] == 0)
    assert torch.any(logits.grad[0, 0] != 0)


def test_bad_labels_raise():
    logits = torch.zeros(1, 2, 4)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 4\)"):
        selective_log_softmax(logits, torch.tensor([[0, 4]]))
    with pytest.raises(ValueError, match="labels shape"):
        selective_log_softmax(logits, torch.tensor([[0, 1, 2]]))


# ---------------------------------------------------------------- shifting and sequence sums


def test_shift_labels_hand_example():
    # ids [5, 6, 7, 8], completion = last two tokens
    # targets before shift: [−100, −100, 7, 8]; logits at t predict token t+1 → [−100, 7, 8, −100]
    ids = torch.tensor([[5, 6, 7, 8]])
    mask = torch.tensor([[0, 0, 1, 1]])
    assert shift_labels(ids, mask).tolist() == [[-100, 7, 8, -100]]
    assert shift_labels(ids).tolist() == [[6, 7, 8, -100]]


def test_sequence_logprob_hand_example():
    # row 0: −1 − 2 − 3 = −6, mean −2; row 1: only −0.5 valid (the −inf pad is ignored) → −0.5
    token_logps = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, float("-inf"), 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    torch.testing.assert_close(sequence_logprob(token_logps, mask), torch.tensor([-6.0, -0.5]))
    torch.testing.assert_close(sequence_logprob(token_logps, mask, average=True), torch.tensor([-2.0, -0.5]))


# ---------------------------------------------------------------- masked statistics


def test_masked_stats_hand_example():
    # valid values 1, 2, 4 (the 3 and the NaN are masked)
    # sum 7, mean 7/3; deviations −4/3, −1/3, 5/3; squares 16/9 + 1/9 + 25/9 = 42/9 = 14/3
    # unbiased var = (14/3)/2 = 7/3, biased = (14/3)/3 = 14/9
    x = torch.tensor([1.0, 2.0, 3.0, 4.0, float("nan")])
    m = torch.tensor([1, 1, 0, 1, 0])
    assert masked_sum(x, m).item() == pytest.approx(7.0)
    assert masked_mean(x, m).item() == pytest.approx(7 / 3)
    assert masked_var(x, m).item() == pytest.approx(7 / 3)
    assert masked_var(x, m, unbiased=False).item() == pytest.approx(14 / 9)
    # whiten: (x − 7/3)/sqrt(7/3): 1 → −0.872872, 2 → −0.218218, 4 → 1.091089; masked → 0
    w = masked_whiten(x, m)
    expected = [(v - 7 / 3) / math.sqrt(7 / 3) for v in (1.0, 2.0)] + [0.0, (4 - 7 / 3) / math.sqrt(7 / 3), 0.0]
    torch.testing.assert_close(w, torch.tensor(expected))
    # shift_mean=False adds the mean back: 1 → −0.872872 + 2.333333 = 1.460461
    assert masked_whiten(x, m, shift_mean=False)[0].item() == pytest.approx(expected[0] + 7 / 3, abs=1e-5)


def test_masked_stats_along_dim_and_empty():
    # row 0: [2, 4] valid → mean 3, unbiased var ((−1)² + 1²)/1 = 2; row 1: nothing valid → 0, 0
    x = torch.tensor([[2.0, 4.0, 100.0], [1.0, 1.0, 1.0]])
    m = torch.tensor([[1, 1, 0], [0, 0, 0]])
    torch.testing.assert_close(masked_mean(x, m, dim=1), torch.tensor([3.0, 0.0]))
    torch.testing.assert_close(masked_var(x, m, dim=1), torch.tensor([2.0, 0.0]))
    # a single valid entry has no spread: var 0, whitened to 0 (not NaN)
    one = torch.tensor([5.0, 7.0])
    assert masked_var(one, torch.tensor([1, 0])).item() == 0.0
    assert masked_whiten(one, torch.tensor([1, 0])).tolist() == [0.0, 0.0]


def test_chunks_bound_the_fp32_working_set(monkeypatch):
    # Every logsumexp sees at most chunk_size rows of the vocabulary, and autograd keeps
    # no fp32 copy of the bf16 logits: saved tensors are the logits themselves plus [B, T] floats.
    torch.manual_seed(5)
    batch, time, vocab, chunk = 3, 8, 50, 5
    logits = torch.randn(batch, time, vocab).to(torch.bfloat16).requires_grad_()
    labels = torch.randint(0, vocab, (batch, time))
    largest = []
    real_logsumexp = torch.logsumexp
    monkeypatch.setattr(torch, "logsumexp", lambda x, dim: largest.append(x.numel()) or real_logsumexp(x, dim))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append((t.dtype, t.numel())) or t, lambda t: t):
        out = selective_log_softmax(logits, labels, chunk_size=chunk)
        ent = entropy_from_logits(logits, chunk_size=chunk)
    assert max(largest) <= chunk * vocab
    assert saved and not [s for s in saved if s[0] == torch.float32 and s[1] > batch * time]
    (out.sum() + ent.sum()).backward()
    assert logits.grad.shape == logits.shape


def test_masked_reductions_run_in_fp32_for_bf16():
    # 301 valid ones (+ 100 masked tens): sum 301, count 301, mean 1. bf16 cannot hold 301 (it rounds to 300),
    # so an exact 301 shows the reduction ran in fp32
    x = torch.cat([torch.ones(301), torch.full((100,), 10.0)]).to(torch.bfloat16)
    m = torch.cat([torch.ones(301), torch.zeros(100)])
    assert torch.tensor(301.0).to(torch.bfloat16).item() == 300.0
    total = masked_sum(x, m)
    assert total.dtype == torch.float32 and total.item() == 301.0
    assert masked_mean(x, m).item() == 1.0


def test_temperature_hand_example_and_gradient():
    # logits [0, 2 ln 3] at T = 2 → [0, ln 3] → p = [1/4, 3/4]: log p(1) = ln(3/4) = −0.287682
    # H = −(¼ ln ¼ + ¾ ln ¾) = 0.562335
    logits = torch.tensor([[0.0, 2 * math.log(3)]], requires_grad=True)
    out = selective_log_softmax(logits, torch.tensor([1]), temperature=2.0)
    assert out.item() == pytest.approx(math.log(0.75))
    ent = entropy_from_logits(logits, temperature=2.0)
    assert ent.item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    # d/dz log p(1) = (1/T)(1[v=1] − p_v) = ½ · [−¼, ¼] = [−0.125, 0.125]
    out.sum().backward()
    torch.testing.assert_close(logits.grad, torch.tensor([[-0.125, 0.125]]))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        selective_log_softmax(logits, torch.tensor([1]), temperature=0.0)


@pytest.mark.parametrize("temperature", [0.7, 1.3])
def test_temperature_matches_full_softmax_of_scaled_logits(temperature):
    torch.manual_seed(6)
    logits = torch.randn(2, 5, 17, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 17, (2, 5))
    ref = naive_logps(logits / temperature, labels)
    torch.testing.assert_close(selective_log_softmax(logits, labels, chunk_size=3, temperature=temperature), ref)
    torch.testing.assert_close(entropy_from_logits(logits, 4, temperature), naive_entropy(logits / temperature))
    assert torch.autograd.gradcheck(lambda z: selective_log_softmax(z, labels, 3, temperature=temperature), (logits,))
    assert torch.autograd.gradcheck(lambda z: entropy_from_logits(z, 4, temperature), (logits,))
