"""Tiny random Llamas with the bundled tokenizer's special ids, shared by the rollout tests."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaForCausalLM

from tests.conftest import tiny_llama as shared_tiny_llama

EOS = 2  # <|im_end|>, also the pad token


def tiny_llama(seed: int = 0, **overrides) -> LlamaForCausalLM:
    """conftest's untied tiny Llama with the bundled tokenizer's special ids (EOS is also the pad token)."""
    return shared_tiny_llama(seed, bos_token_id=1, eos_token_id=EOS, pad_token_id=EOS, **overrides)


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    """Every rollout test module runs on one torch thread (tests/conftest.py says why)."""


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


@pytest.fixture(scope="module")
def eos_model():
    """EOS logit = 6 * (h . u) for a fixed unit vector u: EOS comes up at random steps, so rows leave the batch (and
    the cache) at different times."""
    model = tiny_llama(tie_word_embeddings=False)
    direction = torch.randn(64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model.lm_head.weight[EOS] = 6 * direction / direction.norm()
    return model
