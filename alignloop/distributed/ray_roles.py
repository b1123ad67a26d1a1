"""OpenRLHF-style roles for the RL stages, as plain classes that ``ray.remote`` turns into actors.

- ``RolloutWorker``: a copy of the policy behind a sampler (HF or vLLM); receives weights after updates.
- ``RewardScorer``: any reward source (reward model, rules, judge, weighted sum) scoring texts.
- ``ReferenceScorer``: the frozen reference policy computing per-token log-probs.
- ``Learner``: runs the ordinary RL stage (PPO, GRPO, ...) through the one training loop, with roles that
  call the actors above (``alignloop.distributed.remote_roles``). The algorithm code is the stage's own.

The classes hold no Ray import, so they are testable in-process; ``actor_classes()`` wraps them.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch

from alignloop.config import LoraSettings
from alignloop.distributed.remote_roles import remote_stage
from alignloop.distributed.samplers import build_sampler
from alignloop.distributed.weights import weights_checksum
from alignloop.errors import AlignloopError
from alignloop.models import load_causal_lm
from alignloop.rewards import build_reward, has_uncertainty
from alignloop.rollout import Rollout, forward_logprobs
from alignloop.train.loop import train


def _limit_threads(threads: int | None) -> None:
    # actors share the node's cores; without a limit each one starts a thread per core
    if threads:
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)


def _lora_settings(lora: dict | None):
    return LoraSettings(**lora) if lora else None


class RolloutWorker:
    """Samples rollouts from its copy of the policy; ``backend`` is ``hf`` or ``vllm``."""

    def __init__(self, model: str, lora: dict | None = None, backend: str = "hf", generation_batch_size: int = 32,
                 dtype: str = "auto", threads: int | None = 1, vllm_options: dict | None = None,
                 sampler_options: dict | None = None):
        _limit_threads(threads)

        self.sampler = build_sampler(backend, model, lora=_lora_settings(lora), batch_size=generation_batch_size,
                                     dtype=dtype, vllm_options=vllm_options, sampler_options=sampler_options)
        self.version = -1
        self.rows_generated = 0

    def generate(self, prompts: Sequence[Any], kwargs: dict) -> Rollout:
        rollout = self.sampler.generate(list(prompts), **kwargs)
        self.rows_generated += len(rollout)
        return rollout

    def load_weights(self, tensors: dict[str, torch.Tensor], version: int) -> str:
        """Take the learner's trainable tensors; return the checksum of the weights now in use."""
        self.sampler.load_weights(tensors)
        self.version = version
        return self.checksum()

    def checksum(self) -> str:
        return self.sampler.checksum()

    def stats(self) -> dict[str, int]:
        return {"version": self.version, "rows_generated": self.rows_generated}


class RewardScorer:
    """One reward source (anything ``build_reward`` accepts) scoring (prompt, completion) texts."""

    def __init__(self, spec: Any, threads: int | None = 1):
        _limit_threads(threads)

        self.reward = build_reward(spec)
        self.calls = 0

    def score(
        self, prompts: list[str], completions: list[str], fields: dict[str, list]
    ) -> tuple[torch.Tensor, dict | None]:
        self.calls += 1
        scores = self.reward.score(prompts, completions, **fields)
        parts = getattr(self.reward, "last_components", None)
        return torch.as_tensor(scores).float().cpu(), (
            {k: v.float().cpu() for k, v in parts.items()} if parts else None
        )

    def uncertainty(self, prompts: list[str], completions: list[str], fields: dict[str, list]) -> torch.Tensor:
        return torch.as_tensor(self.reward.uncertainty(prompts, completions, **fields)).float().cpu()

    def num_calls(self) -> int:
        return self.calls

    def describe(self) -> dict[str, Any]:
        """What the learner's proxy mirrors: the name used for metrics and whether uncertainty exists."""
        return {"name": getattr(self.reward, "name", "reward"), "uncertainty": has_uncertainty(self.reward)}


class ReferenceScorer:
    """The frozen reference (the base model, without any LoRA adapter) computing response log-probs."""

    def __init__(self, model: str, threads: int | None = 1, chunk_rows: int = 8):
        _limit_threads(threads)

        self.model = load_causal_lm(model).eval().requires_grad_(False)
        self.chunk_rows = chunk_rows
        self.calls = 0

    @torch.no_grad()
    def logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_start: int,
                 temperature: float = 1.0) -> torch.Tensor:
        self.calls += 1
        rows = range(0, input_ids.shape[0], self.chunk_rows)
        return torch.cat([
            forward_logprobs(self.model, input_ids[i:i + self.chunk_rows], attention_mask[i:i + self.chunk_rows],
                             response_start, temperature).float().cpu()
            for i in rows
        ])

    def checksum(self) -> str:
        return weights_checksum(self.model)

    def num_calls(self) -> int:
        return self.calls


class Learner:
    """Runs an RL stage to completion with remote rollout workers (and optionally remote scorers)."""

    def __init__(self, stage: str, config: dict, out_dir: str, workers: list, reward: Any = None,
                 reference: Any = None, threads: int | None = None):
        _limit_threads(threads)
        self.stage_name, self.config, self.out_dir = stage, config, out_dir
        self.workers, self.reward, self.reference = workers, reward, reference
        self.stage = None

    def run(self) -> dict:
        self.stage = remote_stage(self.stage_name, self.config, self.workers, self.reward, self.reference)
        summary = train(self.stage, self.out_dir)
        summary.update(self.stage.sampler.summary())
        return summary

    def checksum(self) -> str:
        assert self.stage is not None, "run() first"
        return weights_checksum(self.stage.unwrap("policy"))


def actor_classes() -> dict[str, Any]:
    """The roles as Ray actor classes (``ray`` is imported here, on first use)."""
    try:
        import ray  # optional dependency: alignloop[ray]
    except ImportError:
        raise AlignloopError("Ray is not installed: pip install 'alignloop[ray]' (or 'ray[default]')") from None
    return {name: ray.remote(cls) for name, cls in
            {"rollout": RolloutWorker, "reward": RewardScorer,
             "reference": ReferenceScorer, "learner": Learner}.items()}


__all__ = ["Learner", "ReferenceScorer", "RewardScorer", "RolloutWorker", "actor_classes"]
