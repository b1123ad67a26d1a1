"""Build and run multi-process launches of alignloop (torchrun or accelerate launch) on this machine."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Literal, Sequence

import torch

from alignloop.errors import AlignloopError

Launcher = Literal["torchrun", "accelerate"]


def free_port() -> int:
    """A TCP port that is free right now (for ``--master_port``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch_command(
    args: Sequence[str],
    nproc: int = 2,
    launcher: Launcher = "torchrun",
    port: int | None = None,
    config_file: str | Path | None = None,
) -> list[str]:
    """The command line running ``python -m alignloop <args>`` (or a script path) on ``nproc`` processes.

    ``args`` starting with ``-m`` is passed as is; otherwise it is ``python -m alignloop`` arguments.
    ``torchrun`` is always CPU/gloo-capable; ``accelerate`` adds ``--cpu`` when no GPU is present.
    """
    target = list(args) if args and (args[0] == "-m" or str(args[0]).endswith(".py")) else ["-m", "alignloop", *args]
    if launcher == "torchrun":
        # --standalone: torchrun picks a free port itself, so no race between choosing and binding one
        where = ["--master_port", str(port)] if port else ["--standalone"]
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), *where, *target]
    port = port or free_port()
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(nproc),
           "--main_process_port", str(port)]
    if config_file is not None:
        cmd += ["--config_file", str(config_file)]
    else:
        cmd += ["--multi_gpu"] if torch.cuda.device_count() >= nproc else ["--cpu"]
    if target[0] == "-m":
        cmd.append("-m")
        target = target[1:]
    return cmd + target


def run_launched(cmd: list[str], cwd: str | Path | None = None, timeout: float = 600,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a launch command; raise with the tail of its output if it fails or hangs."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    # its own process group, so a timeout ends the launcher AND its workers (no orphans left waiting)
    proc = subprocess.Popen(cmd, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        raise AlignloopError(f"launch timed out after {timeout:.0f}s: {' '.join(cmd)}\n{output[-3000:]}") from None
    if proc.returncode != 0:
        raise AlignloopError(f"launch failed (exit {proc.returncode}): {' '.join(cmd)}\n{output[-4000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, output, "")
