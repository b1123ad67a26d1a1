"""What a stage sees of the loop: config, output dir, device, accelerator, autocast, cross-rank reductions."""

from __future__ import annotations

import atexit
import contextlib
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import gather_object

from alignloop.config import StageConfig
from alignloop.errors import AlignloopError

__all__ = ["Run"]


class Run:
    """What a stage sees of the loop: config, output dir, device, accelerator, autocast."""

    def __init__(self, config: StageConfig, out_dir: Path):
        self.config = config
        self.out_dir = out_dir
        tc = config.train
        cpu = tc.device == "cpu" or (tc.device == "auto" and not torch.cuda.is_available())
        if tc.device == "cuda" and not torch.cuda.is_available():
            raise AlignloopError("train.device is 'cuda' but no CUDA device is available (use 'auto' or 'cpu')")
        self.accelerator = Accelerator(cpu=cpu)
        self.device = self.accelerator.device
        self.rank = self.accelerator.process_index
        self.world_size = self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process
        if self.world_size > 1:
            _destroy_process_group_at_exit()

    def autocast(self):
        # No weight-cast cache: with gradient checkpointing it held a bf16 copy of every trainable weight for
        # the whole forward (270 MB on a 135M model) and saved nothing, since each weight is cast once per forward.
        if self.config.train.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=False)
        return contextlib.nullcontext()

    def reduce_sum(self, values: list[float]) -> list[float]:
        if self.world_size == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        return self.accelerator.reduce(t, reduction="sum").tolist()

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any rank (keeps ranks taking the same branch)."""
        return self.reduce_sum([float(flag)])[0] > 0 if self.world_size > 1 else flag

    def gather(self, obj: Any) -> list[Any]:
        """``obj`` from every rank, in rank order (a picklable object)."""
        if self.world_size == 1:
            return [obj]
        return gather_object([obj])


_teardown_registered = False


def _destroy_process_group_at_exit() -> None:
    """Tear the process group down before interpreter shutdown: a gloo group left to static destructors
    can abort a rank at exit ("terminate called without an active exception") after a finished run."""
    global _teardown_registered
    if _teardown_registered:
        return
    _teardown_registered = True
    def teardown() -> None:
        if dist.is_available() and dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()

    atexit.register(teardown)
