"""The roles of an RL stage as proxies to Ray actors (``stages.rl.roles.RLRoles`` filled remotely).

``remote_stage`` builds the learner's ``RLStage`` with these roles; ``ray_stage`` starts the actors.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import torch

from alignloop.distributed.rollouts import concat_rollouts, split_evenly
from alignloop.distributed.weights import tensors_checksum, trainable_tensors, weights_checksum
from alignloop.errors import AlignloopError, ConfigError
from alignloop.models import load_tokenizer
from alignloop.rollout import Rollout
from alignloop.stages.registry import stage_classes
from alignloop.stages.rl.roles import RLRoles
from alignloop.stages.rl.stage import RLStage

__all__ = ["RemoteReference", "RemoteReward", "RemoteSampler", "import_ray", "remote_roles", "remote_stage"]


def import_ray():
    try:
        import ray  # optional dependency: alignloop[ray]
    except ImportError:
        raise AlignloopError("Ray is not installed: pip install 'alignloop[ray]' (or 'ray[default]')") from None
    return ray


class RemoteSampler:
    """The ``Sampler`` protocol over rollout-worker actors: prompts are split into contiguous chunks.

    It holds no weights of its own: ``sync_weights`` (called by ``RLStage`` at setup and after the last update
    of a rollout) broadcasts the learner's trainable tensors and checks the checksums the workers report. With
    ``async_rollouts`` the stage's sampling thread calls ``sync_tensors`` instead, before each rollout, with the
    snapshot that rollout is pinned to (stages/rl/async_rollouts.py), while the learner trains the previous one.
    """

    def __init__(self, workers: list, pad_id: int):
        if not workers:
            raise ConfigError("ray: at least one rollout worker is needed")
        self.workers = workers
        self.pad_id = pad_id
        self.rows = 0
        self.weights_version = 0
        self.sync_seconds = 0.0
        self.worker_checksums: list[str] = []
        self.learner_checksum = ""

    def generate(self, prompts: Sequence[Any], n: int = 1, max_new_tokens: int = 64, temperature: float = 1.0,
                 top_p: float = 1.0, top_k: int = 0, stop: Any = None, seed: int | None = None) -> Rollout:
        ray = import_ray()
        chunks = split_evenly(list(prompts), len(self.workers))
        calls = []
        for i, (worker, chunk) in enumerate(zip(self.workers, chunks)):
            kwargs = dict(n=n, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                          stop=stop, seed=None if seed is None else seed + 7_919 * i)  # distinct stream per worker
            calls.append(worker.generate.remote(chunk, kwargs))
        rollout = concat_rollouts(ray.get(calls), self.pad_id)
        self.rows += len(rollout)
        return rollout

    def sync_weights(self, policy: torch.nn.Module) -> None:
        """Broadcast the trainable tensors; every worker must report the learner's checksum."""
        self.sync_tensors(trainable_tensors(policy), weights_checksum(policy))

    def sync_tensors(self, tensors: dict[str, torch.Tensor], expected: str | None = None) -> None:
        """Broadcast trainable tensors by name (a learner snapshot: ``async_rollouts`` pins each rollout to one);
        every worker must report their checksum."""
        ray = import_ray()
        started = time.perf_counter()
        tensors = {n: t.detach().to("cpu") for n, t in tensors.items()}
        ref = ray.put(tensors)  # stored once in the object store, read by every worker
        self.weights_version += 1
        sums = ray.get([w.load_weights.remote(ref, self.weights_version) for w in self.workers])
        expected = expected or tensors_checksum(tensors)
        if any(s != expected for s in sums):
            raise AlignloopError(
                f"ray: weight sync {self.weights_version} failed: a rollout worker holds other weights"
            )
        self.worker_checksums, self.learner_checksum = sums, expected
        self.sync_seconds += time.perf_counter() - started

    def metrics(self) -> dict[str, float]:
        return {"rollout/weight_syncs": float(self.weights_version)}

    def summary(self) -> dict[str, Any]:
        return {"rollout_rows": self.rows, "weight_syncs": self.weights_version,
                "weight_sync_seconds": round(self.sync_seconds, 3), "learner_checksum": self.learner_checksum,
                "worker_checksums": list(self.worker_checksums)}


class RemoteReward:
    """The reward-source protocol over a ``RewardScorer`` actor."""

    def __init__(self, actor: Any):
        self.actor = actor
        info = import_ray().get(actor.describe.remote())
        self.name = info["name"]  # metrics keep the names the local source would give
        self.supports_uncertainty = bool(info["uncertainty"])
        self.last_components: dict[str, torch.Tensor] | None = None

    def score(self, prompts: list[str], completions: list[str], **fields: Any) -> torch.Tensor:
        scores, parts = import_ray().get(self.actor.score.remote(list(prompts), list(completions), fields))
        self.last_components = parts
        return scores

    def uncertainty(self, prompts: list[str], completions: list[str], **fields: Any) -> torch.Tensor:
        return import_ray().get(self.actor.uncertainty.remote(list(prompts), list(completions), fields))


class RemoteReference:
    """The reference role (``stages.rl.roles.ReferenceRole``) over a ``ReferenceScorer`` actor."""

    def __init__(self, actor: Any):
        self.actor = actor

    def logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, response_start: int,
                 temperature: float) -> torch.Tensor:
        call = self.actor.logprobs.remote(input_ids.cpu(), attention_mask.cpu(), response_start, temperature)
        return import_ray().get(call).to(input_ids.device)


def remote_roles(model: str, workers: list, reward: Any = None, reference: Any = None) -> RLRoles:
    """Roles that call the actors; the roles left ``None`` (no reward/reference actor) are built by the learner."""
    pad_id = load_tokenizer(model).pad_token_id
    return RLRoles(sampler=RemoteSampler(workers, pad_id=pad_id),
                   reward=RemoteReward(reward) if reward is not None else None,
                   reference=RemoteReference(reference) if reference is not None else None)


def remote_stage(stage_name: str, config: dict, workers: list, reward: Any = None, reference: Any = None) -> RLStage:
    """The registered RL stage ``stage_name`` with its sampling (and optionally scoring) done by actors."""
    cfg_cls, stage_cls = stage_classes(stage_name)
    if not issubclass(stage_cls, RLStage):
        raise ConfigError(f"ray: stage {stage_name!r} is not an RL stage (it has no rollouts to distribute)")
    cfg = cfg_cls.model_validate(config)
    return stage_cls(cfg, remote_roles(cfg.model, workers, reward, reference))
