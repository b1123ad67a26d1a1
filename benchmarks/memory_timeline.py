"""Where in an SFT step the peak memory is: RSS and glibc heap statistics sampled every 10 ms, by loop phase.

Runs ``benchmarks/sft.py``'s alignloop workload (bundled model, packed rows, bf16, gradient checkpointing) in
this process. A thread reads ``/proc/self/statm`` and tags each sample with the phase the loop is in
(``forward`` = the stage's step function, ``backward``, ``optimizer`` = clipping + optimizer step + the rest of
the step), and records glibc's ``mallinfo2()`` at the highest sample: ``heap_free_mb`` is heap memory that is
free but still resident (fragmentation), ``mmap_mb`` the chunks glibc mapped directly.

    python benchmarks/memory_timeline.py              # 6 steps; prints one line per phase and the peak
    python benchmarks/memory_timeline.py --steps 3

Linux with glibc only (it reads /proc and calls mallinfo2).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


class Timeline:
    def __init__(self, interval: float = 0.01):
        self.phase = "setup"
        self.step = 0
        self.samples: list[tuple[float, float, str, int]] = []
        self.peak: dict = {"rss_mb": 0.0}
        self._libc = ctypes.CDLL("libc.so.6")
        self._libc.mallinfo2.restype = _MallInfo2
        self._t0 = time.perf_counter()
        self._interval = interval
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            rss = _rss_mb()
            self.samples.append((time.perf_counter() - self._t0, rss, self.phase, self.step))
            if rss > self.peak["rss_mb"]:
                m = self._libc.mallinfo2()
                self.peak = {"rss_mb": round(rss), "phase": self.phase, "step": self.step,
                             "heap_mb": m.arena >> 20, "heap_in_use_mb": m.uordblks >> 20,
                             "heap_free_mb": m.fordblks >> 20, "mmap_mb": m.hblkhd >> 20}
            time.sleep(self._interval)

    def summary(self) -> list[dict]:
        rows: list[dict] = []
        for t, rss, phase, step in self.samples:
            if not rows or (rows[-1]["phase"], rows[-1]["step"]) != (phase, step):
                rows.append({"step": step, "phase": phase, "start_s": round(t, 2), "start_mb": round(rss),
                             "max_mb": round(rss)})
            rows[-1]["max_mb"] = max(rows[-1]["max_mb"], round(rss))
        return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    timeline = Timeline()
    import torch

    import sft as bench
    from alignloop.stages.sft import SFTStage

    original_backward = torch.Tensor.backward
    original_step, original_end = SFTStage.step, SFTStage.on_step_end

    def backward(tensor, *a, **k):
        timeline.phase = "backward"
        result = original_backward(tensor, *a, **k)
        timeline.phase = "optimizer"
        return result

    def step(self, batch):
        timeline.phase = "forward"
        return original_step(self, batch)

    def on_step_end(self, n, metrics):
        timeline.step = n
        timeline.phase = "between steps"
        return original_end(self, n, metrics)

    torch.Tensor.backward, SFTStage.step, SFTStage.on_step_end = backward, step, on_step_end
    out_dir = tempfile.mkdtemp(prefix="memory-timeline-")
    try:
        result = bench.run_alignloop("smollm2-135m-instruct", bench.DEFAULT_DATA, args.steps, 1, 8, 256, 2e-5,
                                     args.threads, True, out_dir)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)  # the run's final checkpoint is large
    for row in timeline.summary():
        if row["phase"] in ("setup", "between steps"):
            label = "setup" if row["phase"] == "setup" else f"after step {row['step']}"
        else:
            label = f"step {row['step'] + 1} {row['phase']}"
        print(f"{label:>22}: t={row['start_s']:7.2f} s, RSS {row['start_mb']:6d} MB at start, "
              f"{row['max_mb']:6d} MB max")
    payload = {"peak": timeline.peak, "throughput": round(result["throughput"], 1)}
    print(json.dumps(payload))
    return payload


if __name__ == "__main__":
    main()
