"""Run an RL stage (PPO, GRPO, ...) with Ray actors for rollouts and scoring.

The learner runs the stage's own code through the one training loop; only three things change:

- ``stage.sampler`` becomes a ``RemoteSampler`` that splits each rollout's prompts across the rollout
  workers and joins their rollouts (same rows, same order as one sampler would give);
- ``stage.reward`` becomes a ``RemoteReward`` when a reward actor is used (a reward model on its own GPU);
- ``stage.reference_logprobs`` calls the reference actor, when the stage exposes that hook;
- after the last update on a rollout (and after the final step) the learner broadcasts its trainable
  weights to every worker (one ``ray.put``, read by all) and checks the checksums they report.

Usage: ``alignloop ppo CONFIG.yaml --set rollout.workers=2 [--set rollout.backend=vllm]`` (the ``rollout``
section), or ``python -m alignloop.distributed.ray_stage ppo CONFIG.yaml --rollout-workers 2 [--backend vllm]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from alignloop.distributed.rollouts import concat_rollouts, split_evenly
from alignloop.distributed.weights import trainable_tensors, weights_checksum
from alignloop.errors import AlignloopError, ConfigError
from alignloop.rollout import Rollout

log = logging.getLogger("alignloop")


def _ray():
    try:
        import ray
    except ImportError:
        raise AlignloopError("Ray is not installed: pip install 'alignloop[ray]' (or 'ray[default]')") from None
    return ray


class RemoteSampler:
    """The ``Sampler`` protocol over rollout-worker actors: prompts are split into contiguous chunks."""

    def __init__(self, workers: list, pad_id: int):
        if not workers:
            raise ConfigError("ray: at least one rollout worker is needed")
        self.workers = workers
        self.pad_id = pad_id
        self.rows = 0

    def generate(self, prompts: Sequence[Any], n: int = 1, max_new_tokens: int = 64, temperature: float = 1.0,
                 top_p: float = 1.0, top_k: int = 0, stop: Any = None, seed: int | None = None) -> Rollout:
        ray = _ray()
        chunks = split_evenly(list(prompts), len(self.workers))
        calls = []
        for i, (worker, chunk) in enumerate(zip(self.workers, chunks)):
            kwargs = dict(n=n, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                          stop=stop, seed=None if seed is None else seed + 7_919 * i)  # distinct stream per worker
            calls.append(worker.generate.remote(chunk, kwargs))
        rollout = concat_rollouts(ray.get(calls), self.pad_id)
        self.rows += len(rollout)
        return rollout


class RemoteReward:
    """The reward-source protocol over a ``RewardScorer`` actor."""

    def __init__(self, actor: Any):
        self.actor = actor
        info = _ray().get(actor.describe.remote())
        self.name = info["name"]  # metrics keep the names the local source would give
        self.supports_uncertainty = bool(info["uncertainty"])
        self.last_components: dict[str, torch.Tensor] | None = None

    def score(self, prompts: list[str], completions: list[str], **fields: Any) -> torch.Tensor:
        scores, parts = _ray().get(self.actor.score.remote(list(prompts), list(completions), fields))
        self.last_components = parts
        return scores

    def uncertainty(self, prompts: list[str], completions: list[str], **fields: Any) -> torch.Tensor:
        return _ray().get(self.actor.uncertainty.remote(list(prompts), list(completions), fields))


def remote_stage(stage_name: str, config: dict, workers: list, reward: Any = None, reference: Any = None):
    """The registered stage ``stage_name`` with its sampling (and optionally scoring) done by actors."""
    from alignloop.stages.registry import stage_classes

    cfg_cls, stage_cls = stage_classes(stage_name)
    return remote_stage_class(stage_cls)(cfg_cls.model_validate(config), workers, reward, reference)


def remote_stage_class(base: type) -> type:
    """A subclass of the RL stage ``base`` that samples on rollout workers and keeps them in sync."""

    class RemoteRoles(base):
        def __init__(self, config, workers: list, reward: Any = None, reference: Any = None):
            super().__init__(config)
            self.workers, self.remote_reward, self.remote_reference = workers, reward, reference
            self.weights_version = 0
            self.sync_seconds = 0.0
            self.worker_checksums: list[str] = []

        def setup(self, run) -> None:
            if run.world_size > 1:
                raise ConfigError("ray: the learner is one process here; launch it without torchrun/accelerate")
            super().setup(run)
            self.sampler = RemoteSampler(self.workers, pad_id=self.sampler.pad_id)
            if self.remote_reward is not None:
                self.reward = RemoteReward(self.remote_reward)
            if self.remote_reference is not None and not hasattr(base, "reference_logprobs"):
                log.warning("ray: %s has no reference_logprobs hook; the reference stays with the learner", base.__name__)
            self.sync_weights()  # the workers start from exactly the learner's weights

        def reference_logprobs(self, input_ids, attention_mask, response_start: int, temperature: float):
            if self.remote_reference is None:
                return super().reference_logprobs(input_ids, attention_mask, response_start, temperature)
            call = self.remote_reference.logprobs.remote(input_ids.cpu(), attention_mask.cpu(), response_start, temperature)
            return _ray().get(call).to(input_ids.device)

        def sync_weights(self) -> None:
            """Broadcast the trainable tensors; every worker must report the learner's checksum."""
            ray = _ray()
            started = time.perf_counter()
            policy = self.unwrap("policy")
            ref = ray.put(trainable_tensors(policy))  # stored once in the object store, read by every worker
            self.weights_version += 1
            sums = ray.get([w.load_weights.remote(ref, self.weights_version) for w in self.workers])
            expected = weights_checksum(policy)
            if any(s != expected for s in sums):
                raise AlignloopError(f"ray: weight sync {self.weights_version} failed: a rollout worker holds other weights")
            self.worker_checksums = sums
            self.sync_seconds += time.perf_counter() - started

        def on_step_end(self, step: int, metrics: dict[str, float]) -> None:
            super().on_step_end(step, metrics)
            # the next micro-batch needs a new rollout (or training ends): the workers need the new weights
            if self.source.exhausted or step >= self.config.train.max_steps or self.should_stop():
                self.sync_weights()
            metrics["rollout/weight_syncs"] = float(self.weights_version)

        def remote_summary(self) -> dict[str, Any]:
            return {"rollout_rows": self.sampler.rows, "weight_syncs": self.weights_version,
                    "weight_sync_seconds": round(self.sync_seconds, 3), "learner_checksum": weights_checksum(self.unwrap("policy")),
                    "worker_checksums": list(self.worker_checksums)}

    RemoteRoles.__name__ = RemoteRoles.__qualname__ = f"Ray{base.__name__}"
    return RemoteRoles


def run_with_ray(stage: str, config: str | Path | None = None, overrides: list[str] | None = None,
                 out: str | Path | None = None, rollout_workers: int = 2, backend: str = "hf",
                 remote_reward: bool = False, remote_reference: bool = False, worker_gpus: float = 0.0,
                 learner_gpus: float = 0.0, threads_per_actor: int = 1, vllm_options: dict | None = None) -> dict:
    """``run_configured`` for a stage YAML + overrides, with the ``rollout`` section set from the arguments."""
    from alignloop.config import load_config
    from alignloop.stages.registry import resolve_out_dir, stage_classes

    cfg_cls, _ = stage_classes(stage)
    cfg = load_config(cfg_cls, config, overrides or [])
    if getattr(cfg, "rollout", None) is None:
        raise ConfigError(f"ray: stage {stage!r} is not an RL stage (it has no rollouts to distribute)")
    cfg.rollout = cfg.rollout.model_copy(update=dict(
        workers=rollout_workers, backend=backend, remote_reward=remote_reward, remote_reference=remote_reference,
        worker_gpus=worker_gpus, learner_gpus=learner_gpus, vllm=vllm_options or {}))
    return run_configured(stage, cfg, resolve_out_dir(stage, cfg, out), threads_per_actor)


def run_configured(stage: str, cfg: Any, out: str | Path, threads_per_actor: int = 1) -> dict:
    """Start the actors on the current Ray cluster (a local one if none), run the stage, return its summary.

    ``cfg.rollout`` says how: ``workers`` rollout actors on ``backend``; placement by Ray GPU shares
    (``worker_gpus``/``learner_gpus``): 0 everywhere is the CPU layout used in tests, 1 and 1 puts each role
    on its own GPU (separate placement), fractions (e.g. 0.5/0.5) colocate them on one GPU.
    """
    from alignloop.distributed.ray_roles import actor_classes

    ray = _ray()
    rc, opts = cfg.rollout, getattr(cfg, stage, None)
    if opts is None or not hasattr(opts, "reward"):
        raise ConfigError(f"ray: stage {stage!r} is not an RL stage (it has no rollouts to distribute)")
    if rc.workers < 1:
        raise ConfigError("rollout.workers: the Ray path needs at least one rollout worker")
    out_dir = Path(out).resolve()
    if not ray.is_initialized():
        ray.init(address=rc.address, include_dashboard=False, log_to_driver=False)
    roles = actor_classes()
    dtype = "auto" if cfg.train.precision == "bf16" else "fp32"
    lora = cfg.lora.model_dump() if cfg.lora is not None else None
    cpu = 0.5 if rc.worker_gpus == 0 else 1
    workers = [
        roles["rollout"].options(num_cpus=cpu, num_gpus=rc.worker_gpus).remote(
            cfg.model, lora, rc.backend, opts.generation_batch_size, dtype, threads_per_actor, rc.vllm)
        for _ in range(rc.workers)
    ]
    reward = roles["reward"].options(num_cpus=0).remote(opts.reward, threads_per_actor) if rc.remote_reward else None
    reference = roles["reference"].options(num_cpus=0).remote(cfg.model, threads_per_actor) if rc.remote_reference else None
    learner = roles["learner"].options(num_cpus=cpu, num_gpus=rc.learner_gpus).remote(
        stage, cfg.model_dump(mode="json"), str(out_dir), workers, reward, reference, threads_per_actor)
    try:
        summary = ray.get(learner.run.remote())
        summary["worker_stats"] = ray.get([w.stats.remote() for w in workers])
        summary["worker_checksums"] = ray.get([w.checksum.remote() for w in workers])
        if reward is not None:
            summary["reward_calls"] = ray.get(reward.num_calls.remote())
        if reference is not None:
            summary["reference_calls"] = ray.get(reference.num_calls.remote())
    finally:
        for actor in [learner, *workers, *(a for a in (reward, reference) if a is not None)]:
            ray.kill(actor)
    return summary


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m alignloop.distributed.ray_stage", description=__doc__.splitlines()[0])
    p.add_argument("stage", help="an RL stage: ppo, grpo, ...")
    p.add_argument("config", nargs="?", help="stage YAML")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out")
    p.add_argument("--rollout-workers", type=int, default=2)
    p.add_argument("--backend", choices=["hf", "vllm"], default="hf")
    p.add_argument("--remote-reward", action="store_true", help="score on a separate reward actor")
    p.add_argument("--remote-reference", action="store_true", help="reference log-probs on a separate actor")
    p.add_argument("--worker-gpus", type=float, default=0.0)
    p.add_argument("--learner-gpus", type=float, default=0.0)
    p.add_argument("--address", help="an existing Ray cluster (default: start a local one)")
    args = p.parse_args(argv)
    if args.address:
        _ray().init(address=args.address)
    summary = run_with_ray(args.stage, args.config, args.overrides, args.out, args.rollout_workers, args.backend,
                           args.remote_reward, args.remote_reference, args.worker_gpus, args.learner_gpus)
    print(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main()
