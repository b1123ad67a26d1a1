"""Scaling out on existing engines: helpers for multi-process launches and Ray roles for RL stages.

Training stages need nothing from here to run under ``accelerate launch`` / ``torchrun``: the loop in
``alignloop.train.loop`` already shards data, synchronises gradients and reduces metrics. This package
adds launch helpers (used by the tests and docs) and, in ``alignloop.distributed.ray_roles``, the
OpenRLHF-style Ray actors (imported lazily: Ray is an optional dependency).
"""

from alignloop.distributed.launch import free_port, launch_command, run_launched

__all__ = ["free_port", "launch_command", "run_launched"]
