"""``torch.compile`` on a training step: SFT eager vs each decoder layer compiled, each in its own process.

Reports the first step (where compilation happens), the steady-state step time after ``--warmup`` steps,
the steady-state gain, and the break-even step count: the steps after which the compiled run's total time
falls below the eager run's (compile cost ÷ saving per step). Same workload as ``benchmarks/sft.py``
(alignloop's defaults: packed 256-token rows, batch 8, gradient checkpointing, bf16 autocast).

    python benchmarks/compile_train.py --steps 12 --runs 3
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_common_flags, check_common_flags, final_json_line, run_isolated  # noqa: E402

SFT = str(Path(__file__).resolve().parent / "sft.py")


def _one(compiled: bool, args, out: Path) -> dict:
    result = run_isolated(f"{SFT}:run_alignloop", {
        "model": args.model, "data": args.data, "steps": args.steps, "warmup": args.warmup, "batch": args.batch,
        "max_length": args.max_length, "lr": 2e-5, "precision": args.precision, "packing": True,
        "out_dir": str(out), "compile_layers": args.mode if compiled else ""}, threads=args.threads, echo=False,
        env={"TORCHINDUCTOR_CACHE_DIR": str(out) + "-inductor-cache"})  # cold: what a first run pays
    steps = [result["first_step_seconds"], *result["step_seconds"]]
    steady = statistics.median(steps[args.warmup:])
    return {"first_step_s": round(steps[0], 2), "steady_step_s": round(steady, 3),
            "total_s": round(sum(steps), 1), "final_loss": result["final_loss"], "step_seconds": steps,
            "peak_rss_mb": result["peak_rss_mb"], "throughput": result["throughput"]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data", default="bundled:sft_demo_train.jsonl")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3, help="first steps left out of the steady-state time")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--mode", choices=["layers", "blocks"], default="layers",
                        help="compile each decoder layer whole, or its attention, MLP and norms apart")
    add_common_flags(parser, trl_venv=None)
    args = parser.parse_args(argv)
    check_common_flags(parser, args)
    work = Path(tempfile.mkdtemp(prefix="bench-compile-"))
    runs = []
    try:  # each run saves a full checkpoint: gigabytes
        for i in range(args.runs):
            order = (False, True) if i % 2 == 0 else (True, False)
            got = {}
            for compiled in order:
                got["compiled" if compiled else "eager"] = _one(compiled, args, work / f"{i}-{compiled}")
                r = got["compiled" if compiled else "eager"]
                print(f"run {i + 1} {'compiled' if compiled else 'eager':>8}: first step {r['first_step_s']} s, "
                      f"steady {r['steady_step_s']} s/step, loss {r['final_loss']:.4f}, "
                      f"RSS {r['peak_rss_mb']:.0f} MB", flush=True)
            runs.append(got)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    gains = [r["eager"]["steady_step_s"] / r["compiled"]["steady_step_s"] for r in runs]
    cost = [r["compiled"]["first_step_s"] - r["eager"]["first_step_s"] for r in runs]
    saving = [r["eager"]["steady_step_s"] - r["compiled"]["steady_step_s"] for r in runs]
    breakeven = [c / s if s > 0 else None for c, s in zip(cost, saving)]
    payload = {"stage": "sft", "runs": runs, "steady_gain": statistics.median(gains),
               "steady_gain_spread": [min(gains), max(gains)], "compile_cost_s": statistics.median(cost),
               "breakeven_steps": (statistics.median([b for b in breakeven if b is not None])
                                   if any(b is not None for b in breakeven) else None),
               "settings": {"mode": args.mode, "precision": args.precision, "threads": args.threads,
                            "steps": args.steps, "inductor_cache": "cold (a fresh cache folder per run)"}}
    print(f"steady-state gain {payload['steady_gain']:.3f}x [{min(gains):.3f}-{max(gains):.3f}], compile cost "
          f"{payload['compile_cost_s']:.1f} s, break-even after {payload['breakeven_steps']} steps", flush=True)
    final_json_line({k: v for k, v in payload.items() if k != "runs"} | {"per_run": [
        {side: {k: v for k, v in r[side].items() if k != "step_seconds"} for side in r} for r in runs]})
    return payload


if __name__ == "__main__":
    main()
