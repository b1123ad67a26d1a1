"""DPO throughput and peak memory: alignloop vs TRL's ``DPOTrainer`` on the same workload, in one run.

Workload (identical on both sides): the bundled SmolLM2-135M-Instruct (full fine-tuning, fp32 weights), the
first ``steps × batch`` real human pairs of ``bundled:hh-harmless-train.jsonl`` (shipped in the package) whose
prompt + answer fits ``--max-length`` tokens untruncated, sigmoid DPO with β = 0.1, batch ``--batch`` with no
accumulation, one epoch, AdamW with a cosine schedule, the same precision, gradient checkpointing off on both
sides (TRL turns it on by default; ``--gradient-checkpointing`` turns it on for both). TRL runs with its
defaults otherwise: its reference is a frozen copy of the model, run on every step
(``precompute_ref_log_probs=False``). Each side runs in its own subprocess; the parent reads each child's peak
RSS with ``os.wait4`` (``benchmarks/common.py``).

Throughput = pairs / seconds spent on training steps PLUS reference log-probs (alignloop: the reference
precompute, then the end of setup to the end of the last step; TRL: the start of training to the end of the
last step, whose steps include the reference forward). The same spans are also timed in process CPU seconds
(all threads): on a machine shared with other jobs, wall time swings with their load, CPU time much less, so
``cpu_throughput_ratio`` is the steadier comparison. Peak RSS is the child's whole-process peak (both sides
load the same fp32 weights and save the final model); ``train_peak_rss_mb`` is the peak when training ended.

    python benchmarks/dpo.py                     # last line: the JSON summary
    python benchmarks/dpo.py --runs 3            # median and min-max spread of three run pairs
    python benchmarks/dpo.py --steps 4 --batch 4 # quicker

Common flags (``benchmarks/common.py``): ``--trl-venv`` (default .bench/trl-venv in the clone, created on first
use with ``trl==1.16.0`` over the system site-packages), ``--threads`` (torch threads on both sides),
``--precision`` and ``--runs N``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    TRL_VENV,
    add_common_flags,
    check_common_flags,
    ensure_venv,
    final_json_line,
    paired_comparison,
    paired_runs,
    print_spread,
    run_isolated,
)

DEFAULT_DATA = "bundled:hh-harmless-train.jsonl"
TRL_REQUIREMENT = "trl==1.16.0"
CHILD_ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--gradient-checkpointing", action="store_true", help="On both sides (TRL's default is on).")
    add_common_flags(p, trl_venv=TRL_VENV, precision="bf16", precision_help="both sides")
    args = p.parse_args(argv)
    check_common_flags(p, args)
    return args


# --- workers (each in its own process) ----------------------------------------------------------
class Clock:
    """Wall and process-CPU seconds (all threads) over marked spans, and the peak RSS so far."""

    def __init__(self):
        self.wall = self.cpu = 0.0
        self._start: tuple[float, float] | None = None

    def start(self) -> None:
        self._start = (time.perf_counter(), time.process_time())

    def stop(self) -> None:
        wall, cpu = self._start
        self.wall += time.perf_counter() - wall
        self.cpu += time.process_time() - cpu
        self._start = None

    @staticmethod
    def rss_mb() -> float:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_alignloop(model: str, subset: str, out: str, steps: int, batch: int, max_length: int, lr: float,
                  precision: str, gradient_checkpointing: bool) -> dict:
    from alignloop.config import load_config
    from alignloop.stages.dpo.stage import DPOConfig, DPOStage
    from alignloop.train.loop import train

    clock = Clock()
    marks: dict[str, float] = {}

    class TimedDPO(DPOStage):
        """Times the reference precompute and the training steps (from setup's end to the last step's end)."""

        def _precompute_reference(self, run, policy):
            clock.start()
            super()._precompute_reference(run, policy)
            clock.stop()

        def setup(self, run):
            super().setup(run)
            clock.start()

        def on_step_end(self, step, metrics):
            super().on_step_end(step, metrics)
            if step == self.config.train.max_steps:
                clock.stop()
                marks["train_peak_rss_mb"] = Clock.rss_mb()

    overrides = [
        f"model={model}", f"data.train={subset}", "data.eval_fraction=0", f"data.max_length={max_length}",
        f"train.max_steps={steps}", f"train.batch_size={batch}", f"train.lr={lr}",
        f"train.precision={precision}", "train.warmup_steps=0", "train.lr_schedule=cosine", "train.save_every=0",
        "train.resume=never", "dpo.beta=0.1", "dpo.loss_type=sigmoid",
        f"train.gradient_checkpointing={gradient_checkpointing}",
    ]
    summary = train(TimedDPO(load_config(DPOConfig, None, overrides)), out)
    rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "step_time" in r]
    return {
        "wall_seconds_train": clock.wall,
        "cpu_seconds_train": clock.cpu,
        "ref_seconds": summary["ref_precompute_seconds"],
        "losses": [r["loss"] for r in rows],
        **marks,
    }


def run_trl(model_dir: str, subset: str, out: str, steps: int, batch: int, max_length: int, lr: float,
            precision: str, gradient_checkpointing: bool) -> dict:
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    clock = Clock()
    marks: dict[str, float] = {}

    class Timer(TrainerCallback):
        """Times from the start of training to the last step's end (reference forwards are inside the steps)."""

        def on_train_begin(self, *_, **__):
            clock.start()

        def on_step_end(self, _args, state, *__, **___):
            if state.global_step == steps:
                clock.stop()
                marks["train_peak_rss_mb"] = Clock.rss_mb()

    records = [json.loads(line) for line in Path(subset).read_text().splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = DPOConfig(
        output_dir=out, per_device_train_batch_size=batch, gradient_accumulation_steps=1,
        max_steps=steps, learning_rate=lr, lr_scheduler_type="cosine", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=1.0, beta=0.1, loss_type=["sigmoid"], max_length=None, bf16=precision == "bf16",
        use_cpu=not torch.cuda.is_available(), logging_steps=1, report_to="none", save_strategy="no", seed=0,
        dataloader_num_workers=0, disable_tqdm=True, gradient_checkpointing=gradient_checkpointing,
    )
    trainer = DPOTrainer(model=model, args=config, train_dataset=Dataset.from_list(records),
                         processing_class=tokenizer, callbacks=[Timer()])
    trainer.train()
    trainer.save_model(str(Path(out) / "model"))  # alignloop saves its model too
    logs = [h for h in trainer.state.log_history if "loss" in h]
    return {
        "wall_seconds_train": clock.wall,
        "cpu_seconds_train": clock.cpu,
        "ref_seconds": 0.0,  # inside the step times
        "losses": [h["loss"] for h in logs],
        "version": trl.__version__,
        **marks,
    }


# --- parent -------------------------------------------------------------------------------------
def build_subset(args: argparse.Namespace, path: Path) -> int:
    """The first steps × batch pairs that fit max_length untruncated on both sides (same tokens for TRL)."""
    from alignloop.models import load_tokenizer
    from alignloop.stages.dpo.data import load_pairs, tokenize_pairs

    tokenizer = load_tokenizer(args.model)
    want = args.steps * args.batch
    chosen = []
    for record in load_pairs(args.data):
        examples, _ = tokenize_pairs(tokenizer, [record], 10**6, None)
        if examples:
            e = examples[0]
            if len(e.prompt_ids) + max(len(e.chosen_ids), len(e.rejected_ids)) <= args.max_length:
                chosen.append(record)
        if len(chosen) == want:
            break
    if len(chosen) < want:
        sys.exit(f"only {len(chosen)} pairs of {args.data} fit max_length {args.max_length}; need {want}")
    path.write_text("".join(json.dumps(r) + "\n" for r in chosen))
    return want


def _rates(result: dict, pairs: int) -> dict:
    result["throughput"] = pairs / result["wall_seconds_train"]
    result["cpu_throughput"] = pairs / result["cpu_seconds_train"]
    return result


def main(argv=None) -> dict:
    args = parse_args(argv)
    from alignloop.models.bundled import ensure_bundled_model

    model_dir = ensure_bundled_model(args.model)
    python = ensure_venv(args.trl_venv, [TRL_REQUIREMENT])
    with tempfile.TemporaryDirectory(prefix="bench-dpo-") as tmp:
        work = Path(tmp)
        subset = work / "pairs.jsonl"
        pairs = build_subset(args, subset)
        common = dict(subset=str(subset), steps=args.steps, batch=args.batch, max_length=args.max_length,
                      lr=args.lr, precision=args.precision, gradient_checkpointing=args.gradient_checkpointing)

        def ours(i: int) -> dict:
            return _rates(run_isolated(f"{__file__}:run_alignloop", {**common, "model": args.model,
                                                                     "out": str(work / f"alignloop-{i}")},
                                       env=CHILD_ENV, threads=args.threads), pairs)

        def theirs(i: int) -> dict:
            return _rates(run_isolated(f"{__file__}:run_trl", {**common, "model_dir": str(model_dir),
                                                               "out": str(work / f"trl-{i}")},
                                       python=python, env=CHILD_ENV, threads=args.threads), pairs)

        runs = paired_runs(args.runs, ours, theirs)
    for i, run in enumerate(runs):
        for side, r in zip(("alignloop", "trl"), run):
            print(
                f"run {i + 1} {side:>9}: {r['throughput']:.4f} pairs/s wall ({r['wall_seconds_train']:.1f}s, of "
                f"which reference precompute {r['ref_seconds']:.1f}s), {r['cpu_throughput']:.4f} pairs per "
                f"CPU-second, peak RSS {r['peak_rss_mb']:.0f} MB ({r['train_peak_rss_mb']:.0f} MB when training "
                f"ended), first/last loss {r['losses'][0]:.4f}/{r['losses'][-1]:.4f}"
            )
    keys = ("throughput", "cpu_throughput", "peak_rss_mb", "train_peak_rss_mb")
    runs = [tuple({k: r[k] for k in (*keys, "version") if k in r} for r in run) for run in runs]
    payload = paired_comparison(
        "dpo", runs, keys=keys, unit="pairs/s",
        workload={"model": args.model, "pairs": pairs, "batch": args.batch, "steps": args.steps,
                  "max_length": args.max_length, "precision": args.precision, "data": args.data,
                  "gradient_checkpointing": args.gradient_checkpointing, "threads": args.threads},
    )
    print_spread(payload, keys=keys)
    final_json_line(payload)
    return payload


if __name__ == "__main__":
    main()
