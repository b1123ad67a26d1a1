"""Rollouts: the sampler interface, the HF KV-cache backend and the shared log-prob convention."""

from alignloop.rollout.base import Prompt, Rollout, Sampler, TokenizedPrompt, concat_rollouts, position_ids_from_mask
from alignloop.rollout.hf import HFSampler
from alignloop.rollout.logprobs import entropy_from_logits, forward_logprobs, logprobs_from_logits

__all__ = [
    "HFSampler",
    "Prompt",
    "TokenizedPrompt",
    "Rollout",
    "Sampler",
    "concat_rollouts",
    "entropy_from_logits",
    "forward_logprobs",
    "logprobs_from_logits",
    "position_ids_from_mask",
]
