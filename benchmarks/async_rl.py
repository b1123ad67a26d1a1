"""Asynchronous (one-step-off-policy) GRPO against synchronous GRPO: wall time per update and reward per step.

``--workload bundled`` (default): the bundled SmolLM2-135M-Instruct with LoRA (r 16, α 32), bf16 autocast, 8
arithmetic prompts × 4 generations × up to 48 new tokens, examples/grpo.yaml's reward (exact_match + 0.2 ·
answer_format), lr 1e-4, β 0.04, one optimizer step per rollout (batch 32, micro-batch 8). Modes:

  sync         the default synchronous path (old log-probs = the sampler's: no extra policy forward)
  sync_tis     synchronous, the trainer's own old log-probs + TIS 2.0 (the forwards async does, no overlap)
  async        grpo.async_rollouts (max_staleness 1, TIS 2.0); both threads use the process's torch threads
  async_split  async with the training thread on 1 torch thread and the sampling thread on 1 (rollout_threads)
  async_notis  async without the TIS correction (tis: null); async2: max_staleness 2 (for --modes)

Seconds per update = wall time from the end of update 1 to the end of update N, / (N − 1) (update 1 includes
the first rollout, which no mode can overlap). Each run is its own process (benchmarks/common.py); with
``--runs R`` the modes are interleaved (run 1 of every mode, then run 2, ...), so a drifting machine slows all.

``--workload word``: the tests' word-level toy model (tests/conftest.py ``make_word_model``), reward = share of
the word "yes" (``tests.conftest:target_fraction``), 12 rollouts × 32 responses at lr 1e-2, fp32, sync against
async over ``--runs`` seeds: the reward per step, where a one-rollout lag shows.

    python benchmarks/async_rl.py --rollouts 6 --runs 3                  # bundled model; last line: JSON
    python benchmarks/async_rl.py --workload word --runs 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import StepClock, final_json_line, run_isolated  # noqa: E402

MODEL = "smollm2-135m-instruct"
MODES = ("sync", "sync_tis", "async", "async_split")
MODE_KEYS = {
    "sync": [],
    "sync_tis": ["grpo.tis=2.0"],
    "async": ["grpo.async_rollouts=true"],
    "async_split": ["grpo.async_rollouts=true", "grpo.rollout_threads=1"],
    "async_notis": ["grpo.async_rollouts=true", "grpo.tis=null"],  # stale and uncorrected (for comparison)
    "async2": ["grpo.async_rollouts=true", "grpo.max_staleness=2"],
}


def _overrides(workload: str, rollouts: int, workdir: str, seed: int) -> list[str]:
    if workload == "word":
        from tests.conftest import make_word_model, write_prompts

        model = make_word_model(Path(workdir) / "word-model")
        prompts = write_prompts(Path(workdir) / "prompts.jsonl")
        return [
            f"model={model}", f"data.train={prompts}", "data.eval=null", "grpo.reward=tests.conftest:target_fraction",
            f"grpo.rollouts={rollouts}", "grpo.prompts_per_rollout=8", "grpo.num_generations=4",
            "grpo.max_new_tokens=8", "grpo.eval_prompts=0", "grpo.samples_every=0", "train.batch_size=32",
            "train.precision=fp32", "train.save_every=0", "train.lr=1e-2", f"train.seed={seed}",
        ]
    return [
        f"model={MODEL}", "lora.r=16", "lora.alpha=32", "data.eval=null",
        "grpo.reward=[{source: 'rule:exact_match', weight: 1.0}, {source: 'rule:answer_format', weight: 0.2}]",
        f"grpo.rollouts={rollouts}", "grpo.prompts_per_rollout=8", "grpo.num_generations=4", "grpo.max_new_tokens=48",
        "grpo.kl_coef=0.04", "grpo.eval_prompts=0", "grpo.eval_before=false", "grpo.samples_every=0",
        "train.batch_size=32", "train.micro_batch_size=8", "train.lr=1e-4", "train.precision=bf16",
        "train.save_every=0", f"train.seed={seed}",
    ]


def one_run(mode: str, workload: str, rollouts: int, workdir: str, seed: int = 0, run: int = 0) -> dict:
    """In the child process: one GRPO run in ``mode``; per-update times and the metrics rows."""
    import os

    import torch

    from alignloop.config import load_config
    from alignloop.stages.rl.grpo import GRPOConfig, GRPOStage
    from alignloop.train.loop import train

    if mode == "async_split":
        torch.set_num_threads(1)  # this (training) thread; the sampling thread sets its own (rollout_threads: 1)
    torch.manual_seed(seed)
    clock = StepClock()

    class Timed(GRPOStage):
        def on_step_end(self, step, metrics):
            super().on_step_end(step, metrics)
            clock.tick()

    out = Path(workdir) / f"{mode}-{seed}-{run}"  # a fresh run directory each time (an old one would resume)
    cfg = load_config(GRPOConfig, None, _overrides(workload, rollouts, workdir, seed) + MODE_KEYS[mode])
    load_before = os.getloadavg()[0]
    summary = train(Timed(cfg), out)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "reward" in r]
    steps = clock.step_seconds()
    return {
        "mode": mode, "seed": seed, "threads_main": torch.get_num_threads(),
        "load_average": [load_before, os.getloadavg()[0]],  # 1-min load of the machine: others' jobs show here
        "seconds_per_update": sum(steps) / len(steps), "update_seconds": steps,
        "generation_seconds": summary["generation_seconds"],
        "reward": [r["reward"] for r in rows],
        "wait_seconds": [r.get("rollout/wait_seconds") for r in rows],
        "sample_seconds": [r.get("rollout/sample_seconds") for r in rows],
        "staleness": [r.get("rollout/staleness", 0.0) for r in rows],
        "logprob_diff_mean": [r.get("rollout/logprob_diff_mean") for r in rows],
        "tis_clipfrac": [r.get("rollout/tis_clipfrac") for r in rows],
    }


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", choices=("bundled", "word"), default="bundled")
    p.add_argument("--rollouts", type=int, default=None, help="rollouts = updates per run (bundled 6, word 12)")
    p.add_argument("--runs", type=int, default=1, help="repetitions (bundled: same seed; word: seeds 0..runs-1)")
    p.add_argument("--modes", default=None, help="comma-separated (bundled: all four; word: sync,async)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of each child process")
    args = p.parse_args(argv)
    rollouts = args.rollouts or (6 if args.workload == "bundled" else 12)
    modes = args.modes.split(",") if args.modes else (list(MODES) if args.workload == "bundled" else ["sync", "async"])
    results: dict[str, list[dict]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as work:
        for run in range(args.runs):
            seed = run if args.workload == "word" else 0
            for mode in modes:
                kwargs = {"mode": mode, "workload": args.workload, "rollouts": rollouts, "workdir": work, "seed": seed,
                          "run": run}
                result = run_isolated(f"{__file__}:one_run", kwargs, threads=args.threads, echo=False)
                results[mode].append(result)
                shown = ("mode", "seed", "seconds_per_update", "load_average", "reward")
                print(json.dumps({k: result[k] for k in shown}), flush=True)
    payload: dict = {"workload": args.workload, "rollouts": rollouts, "runs": args.runs, "threads": args.threads}
    for mode, runs in results.items():
        rewards = [r["reward"] for r in runs]
        payload[mode] = {
            "seconds_per_update": _spread([r["seconds_per_update"] for r in runs]),
            "peak_rss_mb": _spread([r["peak_rss_mb"] for r in runs]),
            "reward_per_step_mean": [statistics.mean(col) for col in zip(*rewards)],
            "reward_mean": _spread([statistics.mean(r) for r in rewards]),
            "generation_seconds": _spread([r["generation_seconds"] for r in runs]),
            "load_average": _spread([x for r in runs for x in r["load_average"]]),
        }
        waits = [w for r in runs for w in r["wait_seconds"][1:] if w is not None]
        if waits:
            payload[mode]["wait_seconds_per_rollout"] = statistics.mean(waits)
    base = payload.get("sync", {}).get("seconds_per_update", {}).get("median")
    for mode in modes:
        if base and mode != "sync":
            payload[mode]["speedup_vs_sync"] = base / payload[mode]["seconds_per_update"]["median"]
    print(json.dumps(payload, indent=1))
    final_json_line(payload)
    return payload


if __name__ == "__main__":
    main()
