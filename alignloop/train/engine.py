"""The engine-specific parts of the training loop: DeepSpeed / FSDP / DDP details behind accelerate.

DeepSpeed owns accumulation and clipping, FSDP shards weights that must be gathered to save or load, and DDP
needs ``no_sync`` on all but the last micro-batch of a step.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from accelerate.utils import DistributedType
from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel

__all__ = [
    "backward_kwargs", "clip_and_norm", "configure_deepspeed", "full_weights", "no_sync", "shards_model",
    "shards_optimizer", "uses_deepspeed",
]


def uses_deepspeed(run) -> bool:
    return run.accelerator.state.deepspeed_plugin is not None


def configure_deepspeed(run, micro: int, accum: int) -> None:
    """DeepSpeed owns accumulation and clipping: give it our micro-batch, accumulation and clip norm.

    Without a dataloader ``accelerate.prepare`` cannot infer the micro-batch size, and the loss is
    already normalised over the whole step, so the engine must not divide it by the accumulation again
    (see ``backward_kwargs``).
    """
    if not uses_deepspeed(run):
        return
    ds = run.accelerator.state.deepspeed_plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = micro
    ds["gradient_accumulation_steps"] = accum
    ds["train_batch_size"] = micro * accum * run.world_size
    ds["gradient_clipping"] = run.config.train.max_grad_norm or 0.0


def shards_model(run) -> bool:
    """FSDP or DeepSpeed: the engine owns parameter dtypes (mixed dtypes break flat parameters)."""
    return run.accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def shards_optimizer(run) -> bool:
    return run.world_size > 1 and shards_model(run)


@contextlib.contextmanager
def full_weights(run, models: dict[str, torch.nn.Module], for_writing: bool = False):
    """Inside, the modules hold their full parameters on every rank, so rank 0 can save them.

    All ranks must enter (the gathers are collective). A no-op unless FSDP or ZeRO-3 shards the weights.
    ``for_writing``: weights set inside are kept (ZeRO-3 / FSDP1 write them back; FSDP2 is left sharded
    because ``load_trainable_state`` re-shards full tensors into its DTensor parameters itself).
    """
    if run.world_size == 1:
        yield
        return
    modules = list(models.values())
    with contextlib.ExitStack() as stack:
        if uses_deepspeed(run) and run.accelerator.state.deepspeed_plugin.zero_stage == 3:
            import deepspeed  # optional dependency: only present when DeepSpeed is configured

            params = [p for m in modules for p in m.parameters()]
            stack.enter_context(deepspeed.zero.GatheredParameters(params, modifier_rank=0 if for_writing else None))
        for m in modules:
            if isinstance(m, FullyShardedDataParallel):  # FSDP1
                stack.enter_context(FullyShardedDataParallel.summon_full_params(
                    m, writeback=for_writing, offload_to_cpu=not for_writing))
        fsdp2 = [] if for_writing else [x for m in modules for x in m.modules() if isinstance(x, FSDPModule)]
        for x in fsdp2:
            x.unshard()
        stack.callback(lambda: [x.reshard() for x in fsdp2])
        yield


def backward_kwargs(run) -> dict[str, Any]:
    return {"scale_wrt_gas": False} if uses_deepspeed(run) else {}


def clip_and_norm(run, params: list[torch.Tensor], max_norm: float | None) -> float:
    if uses_deepspeed(run):  # the engine clipped at its step; it only reports the norm
        norm = run.accelerator.clip_grad_norm_(params, max_norm or 0.0)
        return float(norm) if norm is not None else float("nan")
    if max_norm:
        return float(run.accelerator.clip_grad_norm_(params, max_norm))
    return float(torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]))


def no_sync(run, models: dict[str, torch.nn.Module]):
    """DDP: skip the gradient all-reduce of the modules (all but the last micro-batch of a step)."""
    if run.world_size == 1:
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    for m in models.values():
        stack.enter_context(run.accelerator.no_sync(m))
    return stack
