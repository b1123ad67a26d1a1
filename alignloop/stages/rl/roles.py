"""The roles an RL stage composes: who samples, who scores, who gives reference log-probs.

``RLRoles`` is what ``RLStage(config, roles)`` takes. A role left ``None`` is built in the learner process by
``local_roles`` (an HF sampler over the policy, the configured reward source, the reference view of the policy);
``alignloop.distributed`` fills roles with proxies to Ray actors instead, so a Ray learner never builds the local
reward model or reference it does not use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, runtime_checkable

import torch
from torch import nn

from alignloop.models import Reference, make_reference
from alignloop.rewards import build_reward
from alignloop.rollout import HFSampler, Sampler

__all__ = ["LocalReference", "ReferenceRole", "RLRoles", "SyncsWeights", "local_roles"]


@runtime_checkable
class ReferenceRole(Protocol):
    """Per-token reference log-probs ``[N, R]`` of the responses in a rollout's rows."""

    def logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_start: int,
                 temperature: float, images: list[tuple] | None = None) -> torch.Tensor: ...


@runtime_checkable
class SyncsWeights(Protocol):
    """A sampler holding its own copy of the policy (Ray rollout workers): it is sent the weights after updates."""

    def sync_weights(self, policy: nn.Module) -> None: ...


class LocalReference:
    """The frozen reference in the learner: the adapter-off view with LoRA, a frozen copy otherwise."""

    def __init__(self, reference: Reference, forward: Callable[..., torch.Tensor]):
        self.reference = reference
        self.forward = forward  # (model, input_ids, attention_mask, response_start, temperature, images) -> [N, R]

    def logprobs(self, input_ids, attention_mask, response_start: int, temperature: float,
                 images: list[tuple] | None = None) -> torch.Tensor:
        with self.reference.use() as model:
            return self.forward(model, input_ids, attention_mask, response_start, temperature, images)

    def held_modules(self) -> list[nn.Module]:
        return self.reference.held_modules()


@dataclass
class RLRoles:
    sampler: Sampler | None = None
    reward: Any = None  # a reward source (rewards.base.RewardSource)
    reference: ReferenceRole | None = None


def local_roles(given: RLRoles, policy: nn.Module, tokenizer: Any, reward_spec: Any, needs_reference: bool,
                generation_batch_size: int, precision: str, forward: Callable[..., torch.Tensor],
                sampler_options: dict[str, Any] | None = None) -> RLRoles:
    """``given`` with every missing role built here. The reference is taken now, before any update.
    ``sampler_options`` go to ``HFSampler`` (``rollout.static_cache``, ``share_prefix``,
    ``sampler_logprobs``)."""
    sampler = given.sampler
    if sampler is None:
        dtype = "auto" if precision == "bf16" else "fp32"
        sampler = HFSampler(policy, tokenizer, batch_size=generation_batch_size, dtype=dtype,
                            **(sampler_options or {}))
    reward = given.reward if given.reward is not None else build_reward(reward_spec)
    reference = given.reference
    if reference is None and needs_reference:
        reference = LocalReference(make_reference(policy), forward)
    return RLRoles(sampler=sampler, reward=reward, reference=reference if needs_reference else None)
