"""Decoding a LoRA model through merged weights (models.lora.lora_merged_view): same function, base untouched."""

from __future__ import annotations

import torch

from alignloop.models import load_causal_lm, load_tokenizer
from alignloop.models.lora import _plain_lora_linears, lora_merged_view
from alignloop.models.precision import cast_frozen_linears
from alignloop.rollout import HFSampler, forward_logprobs

PROMPTS = ["hi", "tell me a long story about dragons and bread", "what is two plus two?"]


def trained_lora(seed: int = 0):
    torch.manual_seed(seed)
    model = load_causal_lm("tiny-llama", lora={"r": 4, "alpha": 8})
    with torch.no_grad():  # a non-zero B, as after training (a fresh adapter is the identity)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    return model


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_merged_view_computes_the_adapted_model_and_restores_the_base():
    model = trained_lora().eval()
    ids = torch.randint(0, 1000, (2, 10), generator=torch.Generator().manual_seed(0))
    before = snapshot(model)
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
        with model.disable_adapter():
            base_only = model(input_ids=ids).logits
        with lora_merged_view(model) as merged:
            merged_logits = merged(input_ids=ids).logits
        after = model(input_ids=ids).logits
    torch.testing.assert_close(merged_logits, adapted, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(merged_logits, base_only, atol=1e-3)  # the adapter matters here
    assert torch.equal(after, adapted)  # adapters back on
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # base and adapter bit-identical


def test_bf16_base_is_restored_bit_for_bit():
    model = trained_lora().eval()
    cast_frozen_linears([model])
    before = snapshot(model)
    with torch.no_grad(), lora_merged_view(model) as merged, torch.autocast("cpu", dtype=torch.bfloat16):
        merged(input_ids=torch.tensor([[1, 2, 3]]))
    assert all(torch.equal(p, before[n]) and p.dtype == before[n].dtype for n, p in model.named_parameters())


def test_sampler_merges_only_for_fp32_decoding(monkeypatch):
    import alignloop.rollout.hf as hf

    calls = []
    real = hf.lora_merged_view
    monkeypatch.setattr(hf, "lora_merged_view", lambda model: calls.append(1) or real(model))
    model, tokenizer = trained_lora(), load_tokenizer("tiny-llama", padding_side="left")
    HFSampler(model, tokenizer, dtype="bf16").generate(PROMPTS, n=1, max_new_tokens=3, seed=0)
    assert calls == []  # bf16: W + ΔW rounded to W's ulp would lose a small adapter
    HFSampler(model, tokenizer, dtype="fp32").generate(PROMPTS, n=1, max_new_tokens=3, seed=0)
    assert calls == [1]


def test_sampling_merged_equals_sampling_unmerged_in_fp32():
    model = trained_lora()
    tokenizer = load_tokenizer("tiny-llama", padding_side="left")
    merged = HFSampler(model, tokenizer, dtype="fp32").generate(PROMPTS, n=2, max_new_tokens=8, seed=3)
    plain = HFSampler(model, tokenizer, dtype="fp32", merge_lora=False).generate(PROMPTS, n=2, max_new_tokens=8, seed=3)
    assert torch.equal(merged.response_ids, plain.response_ids)
    torch.testing.assert_close(merged.logprobs, plain.logprobs, atol=1e-4, rtol=0)
    with torch.no_grad():  # and both match a fresh (unmerged) forward pass of the adapted model
        fresh = forward_logprobs(model.eval(), merged)
    mask = merged.response_mask.bool()
    assert (fresh - merged.logprobs)[mask].abs().max() < 1e-4


def test_dora_is_not_merged():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(load_causal_lm("tiny-llama"), LoraConfig(r=4, use_dora=True, target_modules=["q_proj"]))
    assert _plain_lora_linears(model) is None
    with lora_merged_view(model) as view:  # yielded as is: adapters stay on
        assert view is model and not model.base_model.model.model.layers[0].self_attn.q_proj.disable_adapters
