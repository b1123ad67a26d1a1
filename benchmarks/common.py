"""Shared benchmark helpers: run a function in a fresh interpreter and measure it, make a venv, print results.

Each side of a comparison runs in its own child process, so its peak resident memory is its own:
``run_isolated("benchmarks/x.py:fn", {...})`` starts ``python -c`` (any interpreter, e.g. a venv's), calls
``fn(**kwargs)``, reads the JSON it returns from the child's last marked stdout line, and adds
``peak_rss_mb`` (the child's ``ru_maxrss`` from ``os.wait4``) and ``wall_seconds``. Benchmarks end by
printing ``final_json_line(...)``: one JSON object as the last line of output.

The flags every comparison with TRL shares (``add_common_flags``): ``--trl-venv``, ``--threads``,
``--precision`` and ``--runs N``. With ``--runs N`` each side runs N times (``paired_runs``: alignloop then
TRL, TRL then alignloop, ... so a drifting machine slows both sides alike), and ``paired_comparison`` reports
each figure as the median over the runs with its min–max spread; the ratios are computed per run pair
(alignloop's run i against TRL's run i) and their median and spread are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

RESULT_MARK = "@@BENCH_RESULT@@ "
REPO_ROOT = Path(__file__).resolve().parent.parent
# TRL is not a dependency: each comparison installs its TRL into a venv inside the clone (gitignored), once
TRL_VENV = str(REPO_ROOT / ".bench" / "trl-venv")  # trl==1.16.0: SFT, reward model, DPO
TRL19_VENV = str(REPO_ROOT / ".bench" / "trl19-venv")  # trl==1.9.0 --no-deps: PPO, GRPO, VLM GRPO

_CHILD = """
import importlib.util, json, os, sys
if os.environ.get("BENCH_THREADS"):
    import torch
    torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
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
    threads: int = 0,
) -> dict[str, Any]:
    """Call ``path/to/file.py:function(**kwargs)`` in a new process; return its JSON result plus measurements.

    ``peak_rss_mb`` is the child's own peak resident set size (Linux ``ru_maxrss`` of exactly that child, via
    ``os.wait4``), so children run one after another never see each other's peaks. The child's stdout is
    echoed (``echo``) and its stderr passes through. ``threads`` > 0 sets the child's torch threads
    (``torch.set_num_threads`` before the target is imported, and ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``).
    """
    file_part, _, name = target.rpartition(":")
    path = Path(file_part).resolve()
    if not path.is_file() or not name:
        raise BenchmarkError(f"{target}: expected path/to/file.py:function")
    command = [python or sys.executable, "-c", _CHILD.format(mark=RESULT_MARK), f"{path}:{name}",
               json.dumps(kwargs or {})]
    child_env = {**os.environ, **thread_env(threads), **(env or {})}
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


def thread_env(threads: int) -> dict[str, str]:
    """Environment that pins a child's torch/OpenMP threads (empty for 0: the library's own default)."""
    if not threads:
        return {}
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "BENCH_THREADS": str(threads)}


def run_command(
    command: Sequence[str], *, env: dict[str, str] | None = None, cwd: str | Path | None = None, threads: int = 0
) -> dict[str, Any]:
    """Run a command (e.g. ``alignloop rm ...``) to its end; its ``wall_seconds`` and ``peak_rss_mb`` (``os.wait4``).

    Output passes through. ``BENCH_THREADS`` is set for ``threads`` > 0, but only ``OMP_NUM_THREADS`` (which
    torch reads at start) pins a program that is not a benchmark child. Raises ``BenchmarkError`` on failure.
    """
    child_env = {**os.environ, **thread_env(threads), **(env or {})}
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), child_env.get("PYTHONPATH", "")]))
    started = time.perf_counter()
    process = subprocess.Popen(list(command), env=child_env, cwd=cwd or REPO_ROOT)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise BenchmarkError(f"{' '.join(map(str, command))} failed with exit code {code}")
    kb = usage.ru_maxrss
    return {"wall_seconds": round(wall, 2),
            "peak_rss_mb": round(kb / 1024 if sys.platform != "darwin" else kb / 2**20, 1)}


def ensure_venv(venv_dir: str | Path, requirements: list[str], *, system_site_packages: bool = True) -> str:
    """A virtualenv at ``venv_dir`` with ``requirements`` pip-installed (once); returns its python.

    With ``system_site_packages`` the venv reuses what is already installed (torch, transformers), so only
    the missing packages are downloaded. When this Python is itself a virtualenv (``install.sh``'s ``.venv``),
    "system" would mean the base interpreter's packages, not this environment's: the new venv then also gets
    a ``.pth`` file that adds this environment's site-packages after its own. A marker file records the
    requirements: a venv made for other ones is updated in place. A relative ``venv_dir`` is taken from the
    current directory (the defaults, ``TRL_VENV`` and ``TRL19_VENV``, are absolute paths under ``.bench/``).
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
    if system_site_packages and sys.prefix != sys.base_prefix:
        _inherit_site_packages(python)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *requirements], check=True)
    marker.write_text(json.dumps(requirements))
    return str(python)


def _inherit_site_packages(python: Path) -> None:
    """Make this environment's site-packages (and the ``.pth`` files in them) visible to the venv at ``python``."""
    import sysconfig

    ours = list(dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]))
    theirs = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                            check=True, capture_output=True, text=True).stdout.strip()
    lines = "".join(f"import site; site.addsitedir({path!r})\n" for path in ours)
    (Path(theirs) / "_alignloop_bench_parent_env.pth").write_text(lines)


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


# --- the flags every comparison shares, and the --runs N driver ----------------------------------------------
def add_common_flags(
    parser: argparse.ArgumentParser,
    *,
    trl_venv: str | None,
    precision: str = "bf16",
    precisions: Sequence[str] = ("bf16", "fp32"),
    precision_help: str = "both sides: bf16 autocast or fp32",
) -> argparse.ArgumentParser:
    """``--trl-venv``, ``--threads``, ``--precision`` and ``--runs``, with the same meaning in every script."""
    if trl_venv is not None:
        parser.add_argument("--trl-venv", default=trl_venv,
                            help="TRL's virtualenv, created on first use over the system packages "
                                 "(default: %(default)s)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads of every child process, both sides (torch.set_num_threads and "
                             "OMP_NUM_THREADS); 0 (default): torch's own default")
    parser.add_argument("--precision", choices=list(precisions), default=precision,
                        help=f"{precision_help} (default: %(default)s)")
    parser.add_argument("--runs", type=int, default=1,
                        help="run each side N times, alternating the sides (ABBA...); print and report the "
                             "median and the min-max spread of each figure and of the per-run-pair ratios")
    return parser


def check_common_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.threads < 0:
        parser.error("--threads must be >= 0")


def paired_runs(
    runs: int, ours: Callable[[int], dict], theirs: Callable[[int], dict], *, label: str = ""
) -> list[tuple[dict, dict]]:
    """Run both sides ``runs`` times: alignloop first in even runs, TRL first in odd ones (ABBA order).

    Each callable gets the run index and returns that run's result; returns ``[(ours_i, theirs_i), ...]``.
    """
    pairs = []
    for i in range(runs):
        order = ("alignloop", "trl") if i % 2 == 0 else ("trl", "alignloop")
        got: dict[str, dict] = {}
        for side in order:
            print(f"--- {label + ': ' if label else ''}run {i + 1}/{runs}: {side}", flush=True)
            got[side] = ours(i) if side == "alignloop" else theirs(i)
        pairs.append((got["alignloop"], got["trl"]))
    return pairs


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def spread(values: Sequence[float | None]) -> dict[str, Any]:
    """Median and min-max of the values that are not None (None when there are none)."""
    kept = [v for v in values if v is not None]
    if not kept:
        return {"median": None, "min": None, "max": None}
    return {"median": round(statistics.median(kept), 6), "min": round(min(kept), 6), "max": round(max(kept), 6)}


def median_side(runs: Sequence[dict]) -> dict[str, Any]:
    """One side's runs as one dict: the median of every number found in all runs; anything else from run 1."""
    out: dict[str, Any] = {}
    for key, first in runs[0].items():
        values = [r.get(key) for r in runs]
        out[key] = spread(values)["median"] if all(_is_number(v) for v in values) else first
    return out


def paired_comparison(
    stage: str,
    pairs: Sequence[tuple[dict, dict]],
    *,
    keys: Sequence[str] = ("throughput", "cpu_throughput", "peak_rss_mb"),
    ratios: dict[str, tuple[str, str]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The standard last-line object over ``--runs`` run pairs.

    ``alignloop`` and ``trl`` hold the median of each number over the runs, and each ratio
    (``throughput_ratio``, ``rss_ratio``, ``cpu_throughput_ratio``, or ``ratios`` = {name: (our key,
    their key)}) is the median of the ratios of the run pairs. ``spread`` gives [min, max] of each of
    ``keys`` per side and of each ratio; ``per_run`` keeps every run's figures. With one run the median is
    that run's value, so the line reads as before.
    """
    ratios = ratios if ratios is not None else {
        "throughput_ratio": ("throughput", "throughput"),
        "rss_ratio": ("peak_rss_mb", "peak_rss_mb"),
        "cpu_throughput_ratio": ("cpu_throughput", "cpu_throughput"),
    }
    ours_runs, theirs_runs = [p[0] for p in pairs], [p[1] for p in pairs]
    payload: dict[str, Any] = {"stage": stage, "alignloop": median_side(ours_runs), "trl": median_side(theirs_runs)}
    per_run = []
    for ours, theirs in pairs:
        row: dict[str, Any] = {side: {k: r[k] for k in keys if k in r} for side, r in (("alignloop", ours),
                                                                                      ("trl", theirs))}
        for name, (a, b) in ratios.items():
            if a in ours and b in theirs:
                row[name] = ratio(ours[a], theirs[b])
        per_run.append(row)
    spreads: dict[str, Any] = {side: {} for side in ("alignloop", "trl")}
    for side in ("alignloop", "trl"):
        for key in keys:
            values = [row[side].get(key) for row in per_run]
            if any(v is not None for v in values):
                s = spread(values)
                spreads[side][key] = [s["min"], s["max"]]
    for name in ratios:
        values = [row.get(name) for row in per_run]
        if any(v is not None for v in values):
            s = spread(values)
            payload[name] = s["median"]
            spreads[name] = [s["min"], s["max"]]
    payload.update(runs=len(pairs), statistic="median over runs; spread = [min, max]", spread=spreads,
                   per_run=per_run)
    return {**payload, **extra}


def print_spread(payload: dict[str, Any], *, keys: Sequence[str] = ("throughput", "cpu_throughput", "peak_rss_mb"),
                 label: str = "") -> None:
    """One human-readable line per figure: median [min-max] over the runs, each side and each ratio."""
    head = f"{label} " if label else ""
    spreads = payload.get("spread", {})
    runs = payload.get("runs", 1)
    for side in ("alignloop", "trl"):
        for key in keys:
            value = payload.get(side, {}).get(key)
            if value is None:
                continue
            low, high = spreads.get(side, {}).get(key, [value, value])
            print(f"{head}{side:>9} {key}: median {value:.6g} [{low:.6g}-{high:.6g}] over {runs} run(s)")
    for name, bounds in spreads.items():
        if name in ("alignloop", "trl") or payload.get(name) is None:
            continue
        print(f"{head}{name}: median {payload[name]:.4g} [{bounds[0]:.4g}-{bounds[1]:.4g}] over {runs} run pair(s)")
    sys.stdout.flush()
