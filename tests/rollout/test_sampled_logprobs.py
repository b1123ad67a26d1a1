"""``logprobs="sampled"``: the sampler reports each token's log-prob under the distribution it really drew from
(the top-k / top-p candidates renormalised at temperature T), worked out by hand on tiny logits, and the same
numbers on every decode path (KV cache, shared prefix, fused plain sampling) against a fresh forward."""

from __future__ import annotations

import math

import pytest
import torch

from alignloop.errors import ConfigError
from alignloop.rollout import HFSampler
from alignloop.rollout.sampling import SamplingSettings, Scratch, sample_next

PROBS = [0.4, 0.3, 0.2, 0.1]  # logits = log PROBS, so softmax(logits) = PROBS at T = 1
ROWS = 4000

# (settings, the candidates' renormalised probabilities by hand); the full-vocabulary probabilities are PROBS
# (T = 1) or PROBS² / 0.30 (T = 0.5: softmax(2 · log p) ∝ p²)
HAND = [
    # top-k 2: {0.4, 0.3} / 0.7
    (dict(top_k=2), {0: 4 / 7, 1: 3 / 7}),
    # top-p 0.75: mass before each sorted token 0, 0.4, 0.7, 0.9 -> the first three survive: {0.4, 0.3, 0.2} / 0.9
    (dict(top_p=0.75), {0: 4 / 9, 1: 3 / 9, 2: 2 / 9}),
    # both: top-3 renormalised {4, 3, 2} / 9, then the nucleus over it: mass before 0, 4/9, 7/9 ≥ 0.75 -> {4, 3} / 7
    (dict(top_k=3, top_p=0.75), {0: 4 / 7, 1: 3 / 7}),
    # T = 0.5 and top-k 2: {0.16, 0.09} / 0.25
    (dict(top_k=2, temperature=0.5), {0: 16 / 25, 1: 9 / 25}),
]


def hand_logits() -> torch.Tensor:
    return torch.tensor(PROBS).log().expand(ROWS, -1).contiguous()


@pytest.mark.parametrize("options, expected", HAND, ids=["top_k", "top_p", "top_k+top_p", "top_k+temperature"])
def test_sampled_logprob_is_the_renormalised_candidate_probability(options, expected):
    settings = SamplingSettings(logprobs="sampled", **options)
    tokens, logprobs = sample_next(hand_logits(), settings, torch.Generator().manual_seed(0), Scratch())
    assert set(tokens.unique().tolist()) == set(expected)  # only candidates are drawn, every one of them
    by_hand = torch.tensor([math.log(expected[t]) for t in tokens.tolist()])
    torch.testing.assert_close(logprobs, by_hand, atol=1e-6, rtol=0)
    # ... and it is the distribution the draws follow (binomial std ≤ 0.008 at 4000 rows, so 0.035 is > 4 std)
    freq = torch.bincount(tokens, minlength=4).double() / ROWS
    for token, p in expected.items():
        assert abs(float(freq[token]) - p) < 0.035, (token, float(freq[token]), p)
    # the default convention keeps the full tempered softmax: the same draws, other numbers
    full_tokens, full = sample_next(hand_logits(), SamplingSettings(**options), torch.Generator().manual_seed(0))
    assert torch.equal(full_tokens, tokens)
    t = options.get("temperature", 1.0)
    tempered = [p ** (1 / t) / sum(q ** (1 / t) for q in PROBS) for p in PROBS]
    torch.testing.assert_close(full, torch.tensor([math.log(tempered[i]) for i in tokens.tolist()]), atol=1e-6,
                               rtol=0)


def test_without_truncation_sampled_is_full_and_greedy_is_a_point_mass():
    logits = torch.randn(64, 3000, generator=torch.Generator().manual_seed(0)) * 3
    for scratch in (None, Scratch()):  # the plain path and the fused one
        full = sample_next(logits, SamplingSettings(temperature=0.7), torch.Generator().manual_seed(1), scratch)
        sampled = sample_next(logits, SamplingSettings(temperature=0.7, logprobs="sampled"),
                              torch.Generator().manual_seed(1), scratch)
        assert torch.equal(full[0], sampled[0]) and torch.equal(full[1], sampled[1])  # bit for bit
    tokens, logprobs = sample_next(logits, SamplingSettings(temperature=0, logprobs="sampled"), None)
    assert torch.equal(tokens, logits.argmax(-1)) and torch.equal(logprobs, torch.zeros(64))
    _, top1 = sample_next(logits, SamplingSettings(top_k=1, logprobs="sampled"), None)
    assert torch.equal(top1, torch.zeros(64))
    with pytest.raises(ConfigError, match="logprobs"):
        SamplingSettings(logprobs="renormalised")


def truncated_reference(model, rollout, temperature: float, top_k: int) -> torch.Tensor:
    """The response tokens' log-probs under the top-k renormalised tempered softmax of a fresh full forward."""
    with torch.no_grad():
        logits = model(input_ids=rollout.input_ids(), attention_mask=rollout.attention_mask(),
                       position_ids=rollout.position_ids()).logits[:, rollout.response_start - 1 : -1].double()
    scaled = logits / temperature
    kth = scaled.topk(top_k, dim=-1).values[..., -1:]
    logp = torch.log_softmax(scaled.masked_fill(scaled < kth, float("-inf")), dim=-1)
    return logp.gather(-1, rollout.response_ids.unsqueeze(-1)).squeeze(-1)


PROMPTS = ["hi", "tell me a long story about dragons and bread", "what is two plus two?", "name three colours"]


@pytest.mark.parametrize("levers", [dict(), dict(static_cache=False, share_prefix=False, fused_sampling=False)],
                         ids=["fast", "eager"])
def test_every_decode_path_reports_the_truncated_distribution(eos_model, tokenizer, levers):
    def run(logprobs, **kwargs):
        sampler = HFSampler(eos_model, tokenizer, batch_size=6, dtype="fp32", logprobs=logprobs, **levers)
        return sampler.generate(PROMPTS, n=3, max_new_tokens=12, seed=4, **kwargs)

    sampled, full = run("sampled", temperature=0.8, top_k=5), run("full", temperature=0.8, top_k=5)
    assert torch.equal(sampled.response_ids, full.response_ids)  # the same draws; only the reported number differs
    mask = sampled.response_mask.bool()
    expected = truncated_reference(eos_model, sampled, 0.8, 5)
    torch.testing.assert_close(sampled.logprobs[mask].double(), expected[mask], atol=1e-4, rtol=0)
    # a token's top-5 renormalised probability is above its full-vocabulary one
    assert (sampled.logprobs[mask] > full.logprobs[mask] + 0.1).all()
    # no top-k / top-p: the two conventions give the same rollout, bit for bit
    plain = run("sampled", temperature=0.8), run("full", temperature=0.8)
    assert torch.equal(plain[0].response_ids, plain[1].response_ids) and torch.equal(plain[0].logprobs,
                                                                                      plain[1].logprobs)
    with pytest.raises(ConfigError, match="logprobs"):
        HFSampler(eos_model, tokenizer, logprobs="truncated")
