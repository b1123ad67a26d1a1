"""Shared benchmark helpers: run a function in a fresh interpreter and measure it, make a venv, print results.

Each side of a comparison runs in its own child process, so its peak resident memory is its own:
``run_isolated("benchmarks/x.py:fn", {...})`` starts ``python -c`` (any interpreter, e.g. a venv's), calls
``fn(**kwargs)``, reads the JSON it returns from the child's last marked stdout line, and adds
``peak_rss_mb`` (the child's ``ru_maxrss`` from ``os.wait4``) and ``wall_seconds``. Benchmarks end by
printing ``final_json_line(...)``: one JSON object as the last line of output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

RESULT_MARK = "@@BENCH_RESULT@@ "
REPO_ROOT = Path(__file__).resolve().parent.parent

_CHILD = """
import importlib.util, json, sys
path, name = sys.argv[1].rsplit(":", 1)
spec = importlib.util.spec_from_file_location("bench_target", path)
module = importlib.util.module_from_spec(spec)
sys.modules["bench_target"] = module
spec.loader.exec_module(module)
result = getattr(module, name)(**json.loads(sys.argv[2]))
sys.stdout.flush()
print("\\n" + {mark!r} + json.dumps(result), flush=True)
"""


class BenchmarkError(RuntimeError):
    """A benchmark child process failed or printed no result."""


def run_isolated(
    target: str,
    kwargs: dict[str, Any] | None = None,
    *,
    python: str | None = None,
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
    echo: bool = True,
) -> dict[str, Any]:
    """Call ``path/to/file.py:function(**kwargs)`` in a new process; return its JSON result plus measurements.

    ``peak_rss_mb`` is the child's own peak resident set size (Linux ``ru_maxrss`` of exactly that child, via
    ``os.wait4``), so children run one after another never see each other's peaks. The child's stdout is
    echoed (``echo``) and its stderr passes through.
    """
    file_part, _, name = target.rpartition(":")
    path = Path(file_part).resolve()
    if not path.is_file() or not name:
        raise BenchmarkError(f"{target}: expected path/to/file.py:function")
    command = [python or sys.executable, "-c", _CHILD.format(mark=RESULT_MARK), f"{path}:{name}", json.dumps(kwargs or {})]
    child_env = {**os.environ, **(env or {})}
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), child_env.get("PYTHONPATH", "")]))
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=child_env, cwd=cwd or REPO_ROOT)
    result: dict[str, Any] | None = None
    assert process.stdout is not None
    for line in process.stdout:  # stream, so long runs show progress
        if line.startswith(RESULT_MARK):
            result = json.loads(line[len(RESULT_MARK) :])
        elif echo:
            print(line, end="", flush=True)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if process.returncode != 0 or result is None:
        raise BenchmarkError(f"{target} failed with exit code {process.returncode}")
    if not isinstance(result, dict):
        result = {"result": result}
    kb = usage.ru_maxrss
    result["peak_rss_mb"] = round(kb / 1024 if sys.platform != "darwin" else kb / 2**20, 1)
    result["wall_seconds"] = round(wall, 2)
    return result


def ensure_venv(venv_dir: str | Path, requirements: list[str], *, system_site_packages: bool = True) -> str:
    """A virtualenv at ``venv_dir`` with ``requirements`` pip-installed (once); returns its python.

    With ``system_site_packages`` the venv reuses what is already installed (torch, transformers), so only
    the missing packages are downloaded.
    """
    venv_dir = Path(venv_dir)
    python = venv_dir / "bin" / "python"
    marker = venv_dir / ".bench-requirements.json"
    if python.is_file() and marker.is_file() and json.loads(marker.read_text()) == requirements:
        return str(python)
    args = [sys.executable, "-m", "venv", str(venv_dir)]
    if system_site_packages:
        args.append("--system-site-packages")
    subprocess.run(args, check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *requirements], check=True)
    marker.write_text(json.dumps(requirements))
    return str(python)


class StepClock:
    """Timestamps of optimizer-step ends; ``throughput`` counts items per second after the warm-up steps.

    It also keeps the process's CPU time: on a machine shared with other jobs, items per CPU-second
    (``cpu_throughput``) measures the work done and varies far less than wall-clock throughput.
    """

    def __init__(self) -> None:
        self.times: list[float] = []
        self.cpu_times: list[float] = []

    def tick(self) -> None:
        self.times.append(time.perf_counter())
        self.cpu_times.append(time.process_time())

    def throughput(self, items_per_step: float, warmup: int = 1) -> float:
        """Items/s over steps ``warmup+1 .. N`` (the interval from the end of step ``warmup`` to the last)."""
        if warmup < 1 or len(self.times) <= warmup:
            raise BenchmarkError(f"need warmup >= 1 and more than {warmup} timed steps, got {len(self.times)}")
        steps = len(self.times) - warmup
        return items_per_step * steps / (self.times[-1] - self.times[warmup - 1])

    def cpu_throughput(self, items_per_step: float, warmup: int = 1) -> float:
        """Items per CPU-second (all threads of this process) over the same steps as ``throughput``."""
        if warmup < 1 or len(self.cpu_times) <= warmup:
            raise BenchmarkError(f"need warmup >= 1 and more than {warmup} timed steps, got {len(self.cpu_times)}")
        steps = len(self.cpu_times) - warmup
        return items_per_step * steps / (self.cpu_times[-1] - self.cpu_times[warmup - 1])

    def step_seconds(self) -> list[float]:
        return [b - a for a, b in zip(self.times, self.times[1:])]


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def comparison(stage: str, ours: dict[str, Any], theirs: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The standard last-line object: each side's throughput and peak RSS, and the two ratios."""
    payload = {
        "stage": stage,
        "alignloop": ours,
        "trl": theirs,
        "throughput_ratio": ratio(ours.get("throughput"), theirs.get("throughput")),
        "rss_ratio": ratio(ours.get("peak_rss_mb"), theirs.get("peak_rss_mb")),
    }
    if "cpu_throughput" in ours and "cpu_throughput" in theirs:
        payload["cpu_throughput_ratio"] = ratio(ours["cpu_throughput"], theirs["cpu_throughput"])
    return {**payload, **extra}


def final_json_line(payload: dict[str, Any]) -> str:
    """Print ``payload`` as one JSON line (the benchmark's last line of output) and return it."""
    line = json.dumps(payload, sort_keys=False)
    print(line, flush=True)
    return line
