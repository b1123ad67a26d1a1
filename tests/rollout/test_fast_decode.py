"""The decode loop's speed levers give the eager path's results: the preallocated KV cache (identical samples under a
seed), the shared-prefix prefill (same greedy tokens, log-probs within 1e-4 in fp32), on tiny random Llamas."""

from __future__ import annotations

import pytest
import torch
from transformers.cache_utils import DynamicLayer

from alignloop.rollout import HFSampler
from alignloop.rollout.hf import left_pad
from alignloop.rollout.kv_cache import PreallocatedLayer, make_decode_cache
from alignloop.rollout.prefill import MIN_SHARED_PREFIX, shared_prefix_length
from alignloop.rollout.prompts import encode_prompts
from alignloop.rollout.sampling import SamplingSettings, Scratch, sample_next
from alignloop.stages.rl.config import RolloutSettings
from alignloop.stages.rl.roles import RLRoles, local_roles
from tests.rollout.conftest import EOS, tiny_llama

# Chat prompts: the template's system message is a prefix every row shares.
PROMPTS = ["hi", "tell me a long story about dragons and bread", "what is two plus two?", "name three colours"]


def sample(model, tokenizer, prompts, dtype="fp32", **levers):
    settings = dict(n=3, max_new_tokens=40, seed=11)
    return HFSampler(model, tokenizer, batch_size=6, dtype=dtype, **levers).generate(prompts, **settings)


def assert_identical(a, b):
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.response_mask, b.response_mask)
    assert torch.equal(a.logprobs, b.logprobs) and a.responses == b.responses
    assert torch.equal(a.ended_with_eos, b.ended_with_eos)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_static_cache_samples_identical_to_dynamic_cache(eos_model, tokenizer, dtype):
    static = sample(eos_model, tokenizer, PROMPTS, dtype, static_cache=True, share_prefix=False)
    dynamic = sample(eos_model, tokenizer, PROMPTS, dtype, static_cache=False, share_prefix=False)
    assert static.ended_with_eos.any() and not static.ended_with_eos.all()  # rows really left mid-batch
    assert_identical(static, dynamic)


def test_static_cache_is_used_and_grows_past_its_capacity(model):
    cache = make_decode_cache(model, capacity=3, preallocate=True)
    assert cache is not None and all(type(layer) is PreallocatedLayer for layer in cache.layers)
    assert make_decode_cache(model, capacity=3, preallocate=False) is None
    layer, plain = PreallocatedLayer(capacity=3), DynamicLayer()
    for step in range(5):  # 2 + 1 + 1 + 1 + 1 tokens: past the capacity of 3
        keys, values = torch.randn(2, 2, 2 if step == 0 else 1, 4), torch.randn(2, 2, 2 if step == 0 else 1, 4)
        got, expected = layer.update(keys, values), plain.update(keys, values)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert layer.get_seq_length() == plain.get_seq_length() == 6
    layer.reorder_cache(torch.tensor([1, 1, 0]))  # a batch of 3 from rows 1, 1, 0
    plain.reorder_cache(torch.tensor([1, 1, 0]))
    keys, values = torch.randn(3, 2, 1, 4), torch.randn(3, 2, 1, 4)
    got, expected = layer.update(keys, values), plain.update(keys, values)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_sliding_window_models_keep_the_dynamic_cache():
    model = tiny_llama()
    model.config.sliding_window = 4  # a cache layer type the preallocated one does not replace
    model.config.layer_types = ["sliding_attention"] * model.config.num_hidden_layers
    assert make_decode_cache(model, capacity=16, preallocate=True) is None


def test_shared_prefix_found_and_same_results_as_plain_prefill(model, tokenizer):
    encoded, _ = encode_prompts(tokenizer, PROMPTS)
    ids, mask = left_pad(encoded, EOS, torch.device("cpu"))
    shared = shared_prefix_length(ids, mask)
    common = next(j for j in range(min(map(len, encoded))) if len({row[j] for row in encoded}) > 1)
    assert shared == common >= MIN_SHARED_PREFIX  # the chat template's system message
    assert shared_prefix_length(ids[:1], mask[:1]) == 0  # one row: nothing to share

    greedy = {flag: HFSampler(model, tokenizer, dtype="fp32", share_prefix=flag).generate(
        PROMPTS, max_new_tokens=12, temperature=0) for flag in (True, False)}
    assert torch.equal(greedy[True].response_ids, greedy[False].response_ids)
    torch.testing.assert_close(greedy[True].logprobs, greedy[False].logprobs, atol=1e-4, rtol=0)
    sampled = {flag: sample(model, tokenizer, PROMPTS, share_prefix=flag) for flag in (True, False)}
    assert torch.equal(sampled[True].response_ids, sampled[False].response_ids)
    torch.testing.assert_close(sampled[True].logprobs, sampled[False].logprobs, atol=1e-4, rtol=0)
    # The rollout's prompt tensors are the usual left-padded layout either way.
    assert torch.equal(sampled[True].prompt_ids, sampled[False].prompt_ids)
    assert torch.equal(sampled[True].prompt_mask, sampled[False].prompt_mask)


def test_shared_prefix_with_a_prompt_that_is_all_prefix(model, tokenizer):
    """A row whose prompt is the shared prefix plus one token: its suffix is a single token."""
    encoded, _ = encode_prompts(tokenizer, PROMPTS[:2])
    shared = shared_prefix_length(*left_pad(encoded, EOS, torch.device("cpu")))
    prompts = [encoded[0][: shared + 1], encoded[1]]
    runs = [HFSampler(model, tokenizer, dtype="fp32", share_prefix=flag).generate(prompts, max_new_tokens=6,
                                                                                 temperature=0)
            for flag in (True, False)]
    assert torch.equal(runs[0].response_ids, runs[1].response_ids)
    torch.testing.assert_close(runs[0].logprobs, runs[1].logprobs, atol=1e-4, rtol=0)


def test_rollout_switches_reach_the_rl_sampler(model, tokenizer):
    assert RolloutSettings().sampler_options() == {"static_cache": True, "share_prefix": True, "logprobs": "full"}
    off = RolloutSettings(static_cache=False, share_prefix=False, sampler_logprobs="sampled").sampler_options()
    roles = local_roles(RLRoles(reward=object()), model, tokenizer, None, False, 4, "fp32", None, off)
    assert not roles.sampler.static_cache and not roles.sampler.share_prefix and roles.sampler.logprobs == "sampled"


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_fused_sampling_matches_the_plain_path(temperature):
    """Same uniforms, same distribution: the same tokens (the summation order differs only inside float64 rounding)
    and log-probs within 1e-5; a vocabulary that is not a multiple of the block and tokens with zero weight too."""
    settings = SamplingSettings(temperature=temperature)
    logits = torch.randn(64, 3000, generator=torch.Generator().manual_seed(0)) * 4
    logits[:, 2500:] = float("-inf")  # never sampled
    for dtype in (torch.float32, torch.bfloat16):
        low = logits.to(dtype)
        plain = sample_next(low, settings, torch.Generator().manual_seed(3))
        fused = sample_next(low, settings, torch.Generator().manual_seed(3), Scratch())
        assert torch.equal(plain[0], fused[0]) and (fused[0] < 2500).all()
        torch.testing.assert_close(fused[1], plain[1], atol=1e-5, rtol=0)


def test_fused_sampling_follows_the_distribution():
    weights = torch.tensor([1.0, 0.0, 3.0] + [0.0] * 2100)  # entries across more than two blocks
    weights[2050] = 4.0
    logits = weights.log().expand(8000, -1).contiguous()
    picks, _ = sample_next(logits, SamplingSettings(), torch.Generator().manual_seed(0), Scratch())
    counts = torch.bincount(picks, minlength=weights.numel()).double() / 8000
    assert set(picks.unique().tolist()) == {0, 2, 2050}
    # expected 1/8, 3/8, 4/8; binomial std <= 0.0056, so 0.025 is > 4 std
    torch.testing.assert_close(counts[[0, 2, 2050]], torch.tensor([0.125, 0.375, 0.5], dtype=torch.float64),
                               atol=0.025, rtol=0)


def test_fused_sampling_in_the_sampler_gives_the_same_rollout(eos_model, tokenizer):
    fused = sample(eos_model, tokenizer, PROMPTS, fused_sampling=True)
    plain = sample(eos_model, tokenizer, PROMPTS, fused_sampling=False)
    assert torch.equal(fused.response_ids, plain.response_ids)
    torch.testing.assert_close(fused.logprobs, plain.logprobs, atol=1e-5, rtol=0)
