"""linear_log_softmax against a hand-worked example and the naive logits path (values and gradients)."""

from __future__ import annotations

import math

import pytest
import torch

from alignloop.algos.linear_logprobs import linear_log_softmax


def test_hand_worked_two_token_vocab():
    # h = [1, 0], W = [[1, 0], [0, 1]] → logits [1, 0]; log p(0) = 1 − log(e + 1), log p(1) = −log(e + 1)
    h = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    w = torch.eye(2)
    out = linear_log_softmax(h, w, torch.tensor([0, 1]))
    assert torch.allclose(out, torch.tensor([1 - math.log(math.e + 1), -math.log(math.e + 1)]), atol=1e-6)
    # temperature 2 halves the logits: [0.5, 0]
    out_t = linear_log_softmax(h, w, torch.tensor([0, 0]), temperature=2.0)
    assert torch.allclose(out_t, torch.full((2,), 0.5 - math.log(math.exp(0.5) + 1)), atol=1e-6)
    # gradient wrt h of log p(0): W[0] − Σ p_v W[v] = [1 − p0, −p1]
    h.requires_grad_(True)
    linear_log_softmax(h[:1], w, torch.tensor([0])).sum().backward()
    p0 = math.e / (math.e + 1)
    assert torch.allclose(h.grad[0], torch.tensor([1 - p0, -(1 - p0)]), atol=1e-6)


@pytest.mark.parametrize("chunk", [1, 3, 64])
@pytest.mark.parametrize("temperature, with_bias", [(1.0, False), (0.7, True)])
def test_matches_naive_logits_path_values_and_gradients(chunk, temperature, with_bias):
    torch.manual_seed(0)
    n, hdim, vocab = 7, 5, 11
    h = torch.randn(n, hdim, dtype=torch.float64, requires_grad=True)
    w = torch.randn(vocab, hdim, dtype=torch.float64, requires_grad=True)
    b = torch.randn(vocab, dtype=torch.float64, requires_grad=True) if with_bias else None
    labels = torch.randint(0, vocab, (n,))
    weights = torch.randn(n, dtype=torch.float64)  # an arbitrary upstream gradient

    ours = linear_log_softmax(h, w, labels, bias=b, temperature=temperature, chunk_size=chunk)
    (ours * weights).sum().backward()
    got = [h.grad.clone(), w.grad.clone()] + ([b.grad.clone()] if b is not None else [])
    for t in [h, w] + ([b] if b is not None else []):
        t.grad = None

    logits = h @ w.t() + (b if b is not None else 0)
    naive = torch.log_softmax(logits / temperature, -1).gather(-1, labels[:, None]).squeeze(-1)
    (naive * weights).sum().backward()
    want = [h.grad, w.grad] + ([b.grad] if b is not None else [])
    assert torch.allclose(ours, naive, atol=1e-10)
    for g, ref in zip(got, want):
        assert torch.allclose(g, ref, atol=1e-10)


def test_masked_vocabulary_entries_get_no_probability():
    # a -inf bias removes token 2: the remaining two share the mass, as log_softmax over logits with -inf does
    h = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64, requires_grad=True)
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([0.0, 0.0, -math.inf], dtype=torch.float64)
    out = linear_log_softmax(h, w, torch.tensor([0, 0]), bias=b)
    want = torch.tensor([1 - math.log(math.e + 1), -math.log(math.e + 1)], dtype=torch.float64)
    assert torch.allclose(out, want, atol=1e-12)
    out.sum().backward()
    assert torch.isfinite(h.grad).all() and torch.isfinite(w.grad).all()
    assert torch.equal(w.grad[2], torch.zeros(2, dtype=torch.float64))  # p(token 2) = 0 exactly


def test_bf16_autocast_close_to_fp32():
    torch.manual_seed(1)
    h = torch.randn(16, 32, requires_grad=True)
    w = torch.randn(100, 32, requires_grad=True)
    labels = torch.randint(0, 100, (16,))
    exact = linear_log_softmax(h, w, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        approx = linear_log_softmax(h, w, labels)
    assert approx.dtype == torch.float32
    approx.sum().backward()
    assert h.grad.dtype == torch.float32 and w.grad.dtype == torch.float32
    assert torch.allclose(approx, exact, atol=0.3) and not torch.equal(approx, exact)


def test_bf16_chunking_matches_the_same_bf16_math_by_hand():
    # chunks 1 and 7: the weight-gradient term gets its own buffer; 20 and 40: it shares the logits buffer
    torch.manual_seed(2)
    n, hdim, vocab = 40, 32, 100
    h0, w0 = torch.randn(n, hdim), torch.randn(vocab, hdim) * 0.3
    labels = torch.randint(0, vocab, (n,))
    upstream = torch.randn(n)
    logits = (h0.bfloat16() @ w0.bfloat16().t()).float()
    want = torch.log_softmax(logits, -1).gather(-1, labels[:, None]).squeeze(-1)
    g = torch.nn.functional.one_hot(labels, vocab).float() - torch.softmax(logits, -1)
    g = (g * upstream[:, None]).bfloat16()
    want_gh = (g @ w0.bfloat16()).float()
    want_gw = (g.t() @ h0.bfloat16()).float()
    for chunk in (1, 7, 20, 40):
        h, w = h0.clone().requires_grad_(True), w0.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = linear_log_softmax(h, w, labels, chunk_size=chunk)
        (got * upstream).sum().backward()
        assert torch.allclose(got, want, atol=1e-5)
        assert torch.allclose(h.grad, want_gh, atol=2e-2, rtol=1e-2)
        assert torch.allclose(w.grad, want_gw, atol=5e-2, rtol=2e-2)


def test_bad_shapes_and_labels_are_clear_errors():
    h, w = torch.zeros(3, 4), torch.zeros(6, 4)
    with pytest.raises(ValueError, match="labels"):
        linear_log_softmax(h, w, torch.tensor([0, 1, 6]))
    with pytest.raises(ValueError, match="weight"):
        linear_log_softmax(h, torch.zeros(6, 5), torch.tensor([0, 1, 2]))
