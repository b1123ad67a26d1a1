"""Run an RL stage (PPO, GRPO, ...) with Ray actors for rollouts and scoring.

The learner runs the stage's own code through the one training loop: ``RLStage(config, roles)`` with roles that
call actors instead of local objects (``remote_roles``):

- the sampler is a ``RemoteSampler`` that splits each rollout's prompts across the rollout workers and joins
  their rollouts (same rows, same order as one sampler would give); after the last update on a rollout (and
  after the final step) the stage has it broadcast the trainable weights (one ``ray.put``, read by all) and
  check the checksums the workers report;
- the reward is a ``RemoteReward`` when a reward actor is used (a reward model on its own GPU);
- the reference is a ``RemoteReference`` when a reference actor is used.

Roles without an actor are built in the learner as in a plain run; the learner never builds one it does not use.

Usage: ``alignloop ppo CONFIG.yaml --set rollout.workers=2 [--set rollout.backend=vllm]`` (the ``rollout``
section), or ``python -m alignloop.distributed.ray_stage ppo CONFIG.yaml --rollout-workers 2 [--backend vllm]``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from alignloop.config import load_config
from alignloop.distributed.ray_roles import actor_classes
from alignloop.distributed.remote_roles import import_ray
from alignloop.errors import ConfigError
from alignloop.stages.rl.config import check_sampler_logprobs
from alignloop.stages.registry import resolve_out_dir, stage_classes

log = logging.getLogger("alignloop")


def run_with_ray(stage: str, config: str | Path | None = None, overrides: list[str] | None = None,
                 out: str | Path | None = None, rollout_workers: int = 2, backend: str = "hf",
                 remote_reward: bool = False, remote_reference: bool = False, worker_gpus: float = 0.0,
                 learner_gpus: float = 0.0, threads_per_actor: int = 1, vllm_options: dict | None = None) -> dict:
    """``run_configured`` for a stage YAML + overrides, with the ``rollout`` section set from the arguments."""
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
    ray = import_ray()
    rc, opts = cfg.rollout, getattr(cfg, stage, None)
    if opts is None or not hasattr(opts, "reward"):
        raise ConfigError(f"ray: stage {stage!r} is not an RL stage (it has no rollouts to distribute)")
    if rc.workers < 1:
        raise ConfigError("rollout.workers: the Ray path needs at least one rollout worker")
    try:  # run_with_ray sets the rollout section after the config was validated
        check_sampler_logprobs(rc, opts, stage)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    out_dir = Path(out).resolve()
    if not ray.is_initialized():
        ray.init(address=rc.address, include_dashboard=False, log_to_driver=False)
    roles = actor_classes()
    dtype = "auto" if cfg.train.precision == "bf16" else "fp32"
    lora = cfg.lora.model_dump() if cfg.lora is not None else None
    cpu = 0.5 if rc.worker_gpus == 0 else 1
    workers = [
        roles["rollout"].options(num_cpus=cpu, num_gpus=rc.worker_gpus).remote(
            cfg.model, lora, rc.backend, opts.generation_batch_size, dtype, threads_per_actor, rc.vllm,
            rc.sampler_options(opts))
        for _ in range(rc.workers)
    ]
    reward = roles["reward"].options(num_cpus=0).remote(opts.reward, threads_per_actor) if rc.remote_reward else None
    reference = (
        roles["reference"].options(num_cpus=0).remote(cfg.model, threads_per_actor) if rc.remote_reference else None
    )
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
        import_ray().init(address=args.address)
    summary = run_with_ray(args.stage, args.config, args.overrides, args.out, args.rollout_workers, args.backend,
                           args.remote_reward, args.remote_reference, args.worker_gpus, args.learner_gpus)
    print(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main()
