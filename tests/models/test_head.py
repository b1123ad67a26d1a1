"""token_logprobs: the fused LM-head path gives the logits path's values and gradients on real model classes."""

from __future__ import annotations

import pytest
import torch

from alignloop.config import LoraSettings
from alignloop.models import build_tiny_llama
from alignloop.models.head import fused_head, token_logprobs
from alignloop.models.lora import apply_lora


def batch():
    torch.manual_seed(0)
    ids = torch.randint(3, 49152, (3, 12))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # a left-padded row
    labels = torch.full((3, 12), -100)
    labels[:, 5:-1] = ids[:, 6:]
    labels[1, 7] = -100
    return {"input_ids": ids, "attention_mask": mask}, labels


def logits_path(model, inputs, labels, temperature=1.0):
    logits = model(**inputs, use_cache=False).logits.float() / temperature
    logp = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
    return torch.where(labels != -100, logp, torch.zeros_like(logp))


@pytest.mark.parametrize("lora", [False, True])
def test_fused_path_matches_logits_path_with_gradients(lora, monkeypatch):
    model = build_tiny_llama()
    if lora:
        model = apply_lora(model, LoraSettings(r=4, alpha=8))
    assert fused_head(model) is not None  # the tiny Llama takes the fused path (through PEFT too)
    inputs, labels = batch()
    fused = token_logprobs(model, inputs, labels, temperature=0.8)
    fused.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    naive = logits_path(model, inputs, labels, temperature=0.8)
    naive.sum().backward()
    assert torch.allclose(fused, naive, atol=1e-5)
    assert (fused[labels == -100] == 0).all() and (fused[labels != -100] < 0).all()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert torch.allclose(grads[name], p.grad, atol=1e-5, rtol=1e-4), name
    # and the head is restored: the model gives logits again
    assert model(**inputs).logits.shape[-1] == 49152


def test_env_switch_and_keep_columns(monkeypatch):
    model = build_tiny_llama()
    inputs, labels = batch()
    with torch.no_grad():
        full = token_logprobs(model, inputs, labels)
        last = token_logprobs(model, inputs, labels[:, -4:], logits_to_keep=4)
        monkeypatch.setenv("ALIGNLOOP_FUSED_HEAD", "0")
        assert fused_head(model) is None
        plain = token_logprobs(model, inputs, labels)
    assert torch.allclose(full[:, -4:], last, atol=1e-5) and torch.allclose(full, plain, atol=1e-5)


@pytest.mark.parametrize("lora", [False, True])
def test_gradient_checkpointing_keeps_the_gradients(lora):
    from alignloop.models import enable_gradient_checkpointing

    def grads(checkpointing: bool) -> dict:
        model = build_tiny_llama()
        if lora:
            model = apply_lora(model, LoraSettings(r=4, alpha=8))
        model.train()
        if checkpointing:
            enable_gradient_checkpointing(model)
        inputs, labels = batch()
        token_logprobs(model, inputs, labels).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}

    plain, checkpointed = grads(False), grads(True)
    assert plain and set(plain) == set(checkpointed)  # LoRA adapters get gradients through checkpointed blocks
    for name in plain:
        assert torch.allclose(plain[name], checkpointed[name], atol=1e-6), name
