"""The one training loop. Every stage (SFT, RM, DPO, PPO, GRPO, ...) runs through ``train(stage)``.

It owns: devices and accelerate (DDP/FSDP/DeepSpeed under ``accelerate launch``), gradient
accumulation with loss scaling over the whole effective batch, bf16 autocast, gradient clipping,
the LR schedule, periodic evaluation, atomic checkpoints and exact resume, metrics and progress,
NaN/inf step skipping, and a clean stop on Ctrl-C / SIGTERM that saves a checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alignloop.config import StageConfig
from alignloop.errors import AlignloopError
from alignloop.models.compile import compile_blocks
from alignloop.models.precision import cast_frozen_linears, native_bf16
from alignloop.train.checkpoint import latest_checkpoint, load_checkpoint, rng_state, save_checkpoint
from alignloop.train.engine import (
    backward_kwargs,
    clip_and_norm,
    configure_deepspeed,
    full_weights,
    no_sync,
    shards_model,
    shards_optimizer,
    uses_deepspeed,
)
from alignloop.train.metrics import MetricsWriter, Progress
from alignloop.train.run import Run
from alignloop.train.run_dir import RunDir
from alignloop.train.schedule import make_scheduler
from alignloop.train.stage import Stage, StepOutput

log = logging.getLogger("alignloop")


class Interrupted(AlignloopError):
    exit_code = 130


def make_optimizer(groups: list[dict], tc) -> torch.optim.Optimizer:
    """AdamW, fused when torch has a fused kernel for the parameters' device and dtype: one pass over the
    states instead of foreach's temporaries (on CPU ~8× faster per step and less peak memory)."""
    kwargs = dict(lr=tc.lr, weight_decay=tc.weight_decay, betas=(0.9, 0.999), eps=1e-8)
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, ValueError, TypeError):  # e.g. a device type without a fused kernel
        return torch.optim.AdamW(groups, **kwargs)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class _StopFlag:
    """First Ctrl-C / SIGTERM asks for a clean stop at the end of the step; a second one aborts."""

    def __init__(self):
        self.requested = False
        self._old: dict[int, Any] = {}

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("stop requested: finishing the current step and saving a checkpoint (Ctrl-C again to abort)")

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not in the main thread
                pass
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _total_steps(cfg: StageConfig, source: Any, accum: int) -> int:
    if cfg.train.max_steps >= 0:
        return cfg.train.max_steps
    per_epoch = getattr(source, "batches_per_epoch", None)
    if per_epoch is None:
        raise AlignloopError("train.max_steps: -1 (epochs) needs a dataset of known size; set max_steps")
    return max(1, math.ceil(cfg.train.epochs * per_epoch / accum))


def _store_frozen_in_bf16(run: Run, stage: Stage) -> None:
    tc = run.config.train
    if not (tc.frozen_bf16 and tc.precision == "bf16" and native_bf16(run.device)) or shards_model(run):
        return
    saved = cast_frozen_linears([*stage.models.values(), *stage.frozen_modules()], torch.bfloat16)
    if saved and run.is_main:
        log.info("frozen linear weights stored in bf16 (train.frozen_bf16): %.0f MB saved", saved / 2**20)


def train(stage: Stage, out_dir: str | Path) -> dict[str, Any]:
    """Run ``stage`` to completion (or resume it) in ``out_dir``; return the summary."""
    cfg = stage.config
    tc = cfg.train
    out_dir = Path(out_dir)
    run = Run(cfg, out_dir)
    run_dir = RunDir(out_dir, is_main=run.is_main)
    stage.run = run
    seed_everything(tc.seed + run.rank)
    stage.resolve(run)  # derived config values, so config.yaml holds what the run uses
    run_dir.begin(cfg)

    stage.setup(run)
    _store_frozen_in_bf16(run, stage)
    if tc.compile == "blocks":
        if shards_model(run):
            raise AlignloopError("train.compile: blocks is not supported with FSDP or DeepSpeed yet (untested); "
                                 "set train.compile: off")
        compiled = sum(compile_blocks(m, run.device.type) for m in stage.models.values())
        if run.is_main:
            log.info("train.compile: %d attention/MLP/norm modules compiled (the first steps compile them)", compiled)
    micro = tc.micro_batch_size or tc.batch_size
    if tc.batch_size % (micro * run.world_size):
        raise AlignloopError(
            f"train.batch_size ({tc.batch_size}) must be a multiple of micro_batch_size × processes "
            f"({micro}×{run.world_size})"
        )
    accum = tc.batch_size // (micro * run.world_size)
    source = stage.batches()
    total = _total_steps(cfg, source, accum)

    names = list(stage.models)
    configure_deepspeed(run, micro, accum)
    groups = stage.param_groups()
    optimizer = make_optimizer(groups, tc)
    scheduler = make_scheduler(optimizer, tc.lr_schedule, tc.warmup_steps, total)
    prepared = run.accelerator.prepare(*[stage.models[n] for n in names], optimizer)
    *wrapped, optimizer = prepared if isinstance(prepared, (tuple, list)) else (prepared,)
    stage.models = dict(zip(names, wrapped))
    unwrapped = lambda: {n: run.accelerator.unwrap_model(m) for n, m in stage.models.items()}  # noqa: E731

    step = 0
    writer = MetricsWriter(out_dir / "metrics.jsonl", enabled=run.is_main)
    ckpt = latest_checkpoint(out_dir) if tc.resume == "auto" else None
    if ckpt is not None:
        with full_weights(run, stage.models, for_writing=True):
            meta, stage_state = load_checkpoint(ckpt, unwrapped(), optimizer, scheduler, rank=run.rank)
        step = int(meta["step"])
        if int(meta.get("world_size", 1)) != run.world_size:
            # RNG streams are per rank; with a new process count give every rank a fresh, distinct one
            seed_everything(tc.seed + run.rank + 7919 * step)
        source.load_state_dict(meta["data"])
        stage.load_state_dict(stage_state)
        writer.truncate_after(step)
        if run.is_main:
            log.info("resumed from %s (step %d)", ckpt, step)

    def checkpoint() -> None:
        run.accelerator.wait_for_everyone()
        rng_states = run.gather(rng_state())  # every rank's RNG, so sampling stays distinct per rank after resume
        with full_weights(run, stage.models):
            if run.is_main:
                save_checkpoint(
                    out_dir, step, unwrapped(), optimizer, scheduler,
                    meta={"data": source.state_dict(), "total_steps": total, "world_size": run.world_size},
                    stage_state=stage.state_dict(), keep=tc.keep_checkpoints, rng_states=rng_states,
                    save_optimizer=not shards_optimizer(run),
                )
        run.accelerator.wait_for_everyone()

    for m in stage.models.values():
        m.train()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    bad_streak = 0
    last_saved = step
    progress = Progress(stage.name, total, enabled=run.is_main)
    progress.start(step)
    with _StopFlag() as stop:
        try:
            while step < total and not stage.should_stop():
                t0 = time.perf_counter()
                batches = [source.next_batch() for _ in range(accum)]
                units_local = [float(stage.units(b)) for b in batches]
                total_units = run.reduce_sum([sum(units_local)])[0]
                optimizer.zero_grad(set_to_none=True)
                outs: list[StepOutput] = []
                finite = True
                for i, batch in enumerate(batches):
                    last = i == len(batches) - 1
                    sync = contextlib.nullcontext() if last else no_sync(run, stage.models)
                    with sync:
                        with run.autocast():
                            out = stage.step(batch)
                        # all ranks must agree, or one skips the backward the others wait on
                        if run.any(not bool(torch.isfinite(out.loss.detach()).all())):
                            finite = False
                            break
                        scale = run.world_size / max(total_units, 1e-12)
                        run.accelerator.backward(out.loss * scale, **backward_kwargs(run))
                    outs.append(out)
                grad_norm = float("nan")
                if finite:
                    grad_norm = clip_and_norm(run, params, tc.max_grad_norm)
                    finite = math.isfinite(grad_norm) or uses_deepspeed(run)
                if finite:
                    optimizer.step()
                    bad_streak = 0
                else:
                    optimizer.zero_grad(set_to_none=True)
                    bad_streak += 1
                    log.warning("step %d: non-finite loss or gradient; step skipped (%d in a row)",
                                step + 1, bad_streak)
                    if bad_streak >= tc.max_bad_steps:
                        raise AlignloopError(
                            f"{bad_streak} consecutive steps had NaN/inf loss or gradients (train.max_bad_steps); "
                            "lower train.lr or check the data"
                        )
                scheduler.step()
                step += 1
                metrics = _step_metrics(run, outs, total_units, time.perf_counter() - t0)
                metrics.update(lr=scheduler.get_last_lr()[0], grad_norm=grad_norm, epoch=source.epoch)
                if not finite:
                    metrics["skipped"] = 1.0
                stage.on_step_end(step, metrics)
                if tc.eval_every and step % tc.eval_every == 0 and step < total:
                    metrics.update(stage.evaluate())
                if step % tc.log_every == 0 or step == total:
                    writer.write(step, metrics)
                progress.update(step, metrics)
                if tc.save_every and step % tc.save_every == 0:
                    checkpoint()
                    last_saved = step
                if run.any(stop.requested):  # a signal may reach one rank only; all stop together
                    stop.requested = True
                    break
        except KeyboardInterrupt:
            stop.requested = True
        finally:
            progress.stop()
        if stop.requested:
            if step > last_saved:
                checkpoint()
            raise Interrupted(f"interrupted at step {step}/{total}; checkpoint saved — run the same command to resume")

    final_eval = stage.evaluate()
    if final_eval:
        writer.write(step, final_eval)
    if step > last_saved or latest_checkpoint(out_dir) is None:
        checkpoint()
    run.accelerator.wait_for_everyone()
    summary: dict[str, Any] = {"stage": stage.name, "steps": step, **writer.last_values(), **final_eval,
                               **stage.summary()}
    if torch.cuda.is_available():
        summary["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    summary = run_dir.finish(summary, write=False)
    with full_weights(run, stage.models):
        if run.is_main:
            stage.save(out_dir)
            run_dir.write_summary(summary)
    run_dir.release()
    run.accelerator.wait_for_everyone()
    writer.close()
    return summary


def _step_metrics(run: Run, outs: list[StepOutput], total_units: float, seconds: float) -> dict[str, float]:
    keys = {k for o in outs for k in o.metrics}
    stat_keys = {k for o in outs for k in o.stats}
    if run.world_size > 1:  # the reduced vector must have the same layout on every rank
        for rank_keys, rank_stats in run.gather((keys, stat_keys)):
            keys |= rank_keys
            stat_keys |= rank_stats
    keys, stat_keys = sorted(keys), sorted(stat_keys)
    local = [sum(float(o.loss.detach()) for o in outs), float(sum(o.n_tokens for o in outs))]
    local += [sum(float(o.metrics.get(k, 0.0)) for o in outs) for k in keys]
    local += [sum(float(o.stats.get(k, 0.0)) for o in outs) / max(len(outs), 1) for k in stat_keys]
    summed = run.reduce_sum(local)
    denom = max(total_units, 1e-12)
    metrics = {"loss": summed[0] / denom}
    for i, k in enumerate(keys):
        metrics[k] = summed[2 + i] / denom
    for i, k in enumerate(stat_keys):
        metrics[k] = summed[2 + len(keys) + i] / run.world_size
    metrics["tokens_per_second"] = summed[1] / max(seconds, 1e-9)
    metrics["step_time"] = seconds
    return metrics
