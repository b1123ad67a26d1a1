"""Asynchronous (one-step-off-policy) rollouts: the next rollout is sampled while this one trains (``async_rollouts``).

``AsyncRollouts`` runs the sampler in ONE background thread on its own copy of the policy (``sampler_copy``: the
trainable tensors copied, the frozen ones — a LoRA base — shared read-only with the trainer), or, with Ray rollout
workers (``rollout.workers``), drives the ``RemoteSampler`` from that thread: the workers, which hold their own
weights, sample while the learner trains, and each rollout's snapshot is broadcast first (``sync_tensors``). The trainer
publishes a snapshot of its trainable tensors at every rollout boundary (version ``k`` = the weights after the
updates of rollouts ``0 … k−1``), and rollout ``k`` is always sampled with version ``max(0, k − max_staleness)``:
pinned, never "whatever is newest", so a seeded run gives the same samples however the threads are scheduled, and
the staleness is exactly ``min(k, max_staleness)`` rollouts of updates (logged as ``rollout/staleness``).

At rollout ``k``'s boundary (``rollout(k, records)``, called by ``sampling.sample_and_score``) the trainer
publishes version ``k``, queues rollouts ``k+1 … k+max_staleness`` (their prompts are read ahead from a copy of
the prompt stream, so the stream itself and its checkpointed cursor advance as in a synchronous run) and waits
for rollout ``k``, which was queued ``max_staleness`` boundaries earlier. Everything after sampling — scoring, the
trainer's old log-probs ``π_old``, reference, advantages — runs in the trainer as before. The rollout keeps the
log-probs of the weights that sampled it, so the TIS weights ``min(π_old/π_sampler, C)`` (off_policy.py)
correct the staleness; ``async_rollouts`` therefore turns ``reuse_sampler_logprobs`` off and ``tis`` on (2.0)
unless the config sets ``tis`` itself (config.py).

Resume: rollouts queued but not yet trained are not saved. The snapshots they were pinned to are (``state_dict``:
``max_staleness`` versions of the trainable tensors), so a resumed run samples them again with the same weights
and seeds and continues exactly as an uninterrupted one. ``max_staleness: 0`` samples rollout ``k`` with version
``k`` (no overlap): the async machinery with the synchronous path's results. docs/grpo.md, "Asynchronous rollouts".
"""

from __future__ import annotations

import copy
import logging
import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import nn

from alignloop.errors import ConfigError
from alignloop.rollout import HFSampler, Rollout
from alignloop.stages.rl.config import steps_per_rollout
from alignloop.stages.rl.source import rollout_seed

if TYPE_CHECKING:
    from alignloop.stages.rl.stage import RLStage

__all__ = ["AsyncRollouts", "LoadsTensors", "load_trainable", "sampler_copy", "trainable_snapshot"]

log = logging.getLogger("alignloop")


def sampler_copy(policy: nn.Module) -> nn.Module:
    """A copy of ``policy`` for sampling: its trainable parameters are its own tensors, its frozen parameters are
    new ``Parameter`` objects over the SAME storage (no second copy of a LoRA base; the sampler may flip their
    flags or swap their ``.data`` without touching the trainer's). ``requires_grad`` stays as in the policy: no
    optimizer holds the copy, it only samples without autograd, and torch's CPU kernels can depend on the flag
    (measured: another linear path, log-probs 2e-7 apart), so equal flags give bit-identical samples."""
    memo: dict[int, Any] = {id(p): nn.Parameter(p.data, requires_grad=False)
                            for p in policy.parameters() if not p.requires_grad}
    return copy.deepcopy(policy, memo).eval()


def trainable_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of the trainable parameters (all weights, or a LoRA adapter), by name."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = sorted(set(tensors) - set(params))
    if missing:
        raise KeyError(f"the sampling copy has no parameter {missing[0]!r}")
    with torch.no_grad():
        for name, t in tensors.items():
            params[name].copy_(t)


@runtime_checkable
class LoadsTensors(Protocol):
    """A sampler holding its own weights that takes a snapshot of trainable tensors (Ray's ``RemoteSampler``)."""

    def sync_tensors(self, tensors: dict[str, torch.Tensor]) -> None: ...


class AsyncRollouts:
    """Rollouts sampled ahead in a background thread, each pinned to the weight version ``k − max_staleness``."""

    def __init__(self, stage: RLStage):
        opts, tc, run = stage.opts, stage.config.train, stage.run
        section = stage.section
        given = stage.given_roles.sampler
        if given is not None and not isinstance(given, LoadsTensors):
            raise ConfigError(f"{section}.async_rollouts: needs the local HF sampler or Ray rollout workers (a given "
                              "sampler must take weight snapshots: sync_tensors)")
        if getattr(opts, "dynamic_sampling", False) or getattr(opts, "env", None) is not None:
            raise ConfigError(f"{section}.async_rollouts: not with dynamic_sampling or env (they sample further "
                              "prompts or turns inside a rollout)")
        if run.world_size > 1:
            raise ConfigError(f"{section}.async_rollouts: one process only (not under torchrun / accelerate yet)")
        self.stage = stage
        self.staleness = opts.max_staleness
        self.threads = opts.rollout_threads
        per_rollout = max(1, steps_per_rollout(opts, tc.batch_size))
        # rollouts the run will train at most: none is sampled ahead beyond them (an early stop may need one more,
        # which is then sampled on demand)
        self.last = min(opts.rollouts, math.ceil(tc.max_steps / per_rollout)) if tc.max_steps > 0 else opts.rollouts
        self.snapshots: dict[int, dict[str, torch.Tensor]] = {}
        self.jobs: dict[int, tuple[list[Any], int, Future]] = {}  # rollout index -> (prompts, version, future)
        self.model: nn.Module | None = None  # built at the first rollout: after prepare() and the bf16 cast
        self.sampler: Any = given  # Ray: the RemoteSampler, whose workers hold their own weights
        self.loaded: int | None = None  # the version in self.model (touched by the worker thread only)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="alignloop-rollouts")

    def version_for(self, index: int) -> int:
        return max(0, index - self.staleness)

    def _build(self) -> None:
        stage = self.stage
        self.model = sampler_copy(stage.unwrap("policy"))
        dtype = "auto" if stage.config.train.precision == "bf16" else "fp32"
        # its own tokenizer: a fast tokenizer used by two threads at once can fail ("Already borrowed")
        rollout = getattr(stage.config, "rollout", None)  # the same sampler options as the synchronous path's
        options = rollout.sampler_options(stage.opts) if rollout is not None else {}
        self.sampler = HFSampler(self.model, copy.deepcopy(stage.tokenizer),
                                 batch_size=stage.opts.generation_batch_size, dtype=dtype, **options)

    def rollout(self, index: int, records: list[dict]) -> tuple[Rollout, dict[str, float]]:
        """Rollout ``index`` (for ``records``), sampled ahead when the pipeline is full; queues the next ones."""
        if self.sampler is None:
            self._build()
        self.snapshots[index] = trainable_snapshot(self.stage.unwrap("policy"))  # version ``index``
        prompts = [r["prompt"] for r in records]
        if index not in self.jobs:  # the first rollout, one after a resume, or one past ``last`` (early stops)
            self._submit(index, records)
        peek = copy.copy(self.stage.source.prompts)  # the stream's next batches, without moving its cursor
        for ahead in range(index + 1, min(index + self.staleness, self.last - 1) + 1):
            upcoming = peek.next_batch()
            if ahead not in self.jobs:
                self._submit(ahead, upcoming)
        queued, version, future = self.jobs.pop(index)
        if queued != prompts:
            raise RuntimeError(f"async rollouts: rollout {index} was sampled for other prompts than it trains on")
        started = time.perf_counter()
        rollout, seconds = future.result()
        waited = time.perf_counter() - started
        self.stage.generation_seconds += seconds
        for old in [v for v in self.snapshots if v < index + 1 - self.staleness]:
            del self.snapshots[old]  # no queued rollout and no resume needs it
        return rollout, {"rollout/staleness": float(index - version),
                         "rollout/wait_seconds": waited, "rollout/sample_seconds": seconds}

    def _submit(self, index: int, records: list[dict]) -> None:
        stage = self.stage
        version = self.version_for(index)
        if version not in self.snapshots:  # resumed from a checkpoint without it (sync, or a smaller max_staleness)
            version = min(v for v in self.snapshots if v >= version)
        snapshot = self.snapshots[version]
        prompts = stage.prompts.for_sampler(records)
        seed = rollout_seed(stage.config.train.seed, index, stage.run.rank)
        future = self.executor.submit(self._sample, version, snapshot, prompts, seed)
        self.jobs[index] = ([r["prompt"] for r in records], version, future)

    def _sample(self, version: int, snapshot: dict[str, torch.Tensor], prompts: list[Any],
                seed: int) -> tuple[Rollout, float]:
        """In the worker thread: load the pinned weights (when not already there) and sample."""
        started = time.perf_counter()
        if self.threads is not None:
            torch.set_num_threads(self.threads)  # OpenMP's thread count is per calling thread: this one only
        if self.loaded != version:
            if self.model is not None:
                load_trainable(self.model, snapshot)
            else:  # Ray rollout workers: broadcast, checked by checksum
                self.sampler.sync_tensors(snapshot)
            self.loaded = version
        opts = self.stage.opts
        rollout = self.sampler.generate(prompts, n=opts.num_generations, max_new_tokens=opts.max_new_tokens,
                                        temperature=opts.temperature, top_p=opts.top_p, top_k=opts.top_k,
                                        stop=opts.stop, seed=seed)
        return rollout, time.perf_counter() - started

    def state_dict(self) -> dict:
        """The snapshots the queued rollouts are pinned to: enough to sample them again after a resume."""
        return {"snapshots": {v: dict(t) for v, t in self.snapshots.items()}, "max_staleness": self.staleness}

    def load_state_dict(self, state: dict | None) -> None:
        if state is None:
            return
        if int(state["max_staleness"]) != self.staleness:
            log.warning("async rollouts: max_staleness changed since the checkpoint (%s -> %s): the next rollouts "
                        "are sampled with other weights than an uninterrupted run's", state["max_staleness"],
                        self.staleness)
        self.snapshots = {int(v): t for v, t in state["snapshots"].items()}
