"""Rollout-worker samplers: the policy copy a worker owns, behind the ``Sampler`` protocol.

``hf`` runs anywhere (CPU included); ``vllm`` needs a CUDA GPU and the optional ``vllm`` package
(``alignloop.distributed.vllm_sampler``). Both also load weights sent by the learner and report a
checksum of what they hold.
"""

from __future__ import annotations

from typing import Any, Sequence

from alignloop.distributed.vllm_sampler import VLLMSampler
from alignloop.distributed.weights import load_tensors, weights_checksum
from alignloop.errors import ConfigError
from alignloop.models import load_causal_lm, load_tokenizer
from alignloop.rollout import HFSampler, Rollout

BACKENDS = ("hf", "vllm")


class HFRolloutSampler:
    """A private copy of the policy (LoRA adapter included) sampled with ``HFSampler``; ``sampler_options`` are
    ``HFSampler``'s keyword arguments from the rollout section (``static_cache``, ``share_prefix``, ``logprobs``)."""

    def __init__(self, model: str, lora: Any = None, batch_size: int = 32, dtype: str = "auto",
                 sampler_options: dict | None = None):
        self.tokenizer = load_tokenizer(model)
        self.policy = load_causal_lm(model, lora=lora)
        self.policy.eval()
        self.sampler = HFSampler(self.policy, self.tokenizer, batch_size=batch_size, dtype=dtype,
                                 **(sampler_options or {}))
        self.pad_id = self.sampler.pad_id

    def generate(self, prompts: Sequence[Any], **kwargs: Any) -> Rollout:
        return self.sampler.generate(prompts, **kwargs)

    def load_weights(self, tensors: dict) -> None:
        load_tensors(self.policy, tensors)

    def checksum(self) -> str:
        return weights_checksum(self.policy)


def build_sampler(backend: str, model: str, lora: Any = None, batch_size: int = 32, dtype: str = "auto",
                  vllm_options: dict | None = None, sampler_options: dict | None = None):
    """The sampler of one rollout worker for ``backend`` (``hf`` or ``vllm``); ``sampler_options`` go to the hf one."""
    if backend == "hf":
        return HFRolloutSampler(model, lora=lora, batch_size=batch_size, dtype=dtype, sampler_options=sampler_options)
    if backend == "vllm":
        return VLLMSampler(model, lora=lora, dtype=dtype, **(vllm_options or {}))
    raise ConfigError(f"rollout backend: expected one of {', '.join(BACKENDS)}, got {backend!r}")
