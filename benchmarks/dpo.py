"""DPO throughput and peak memory: alignloop vs TRL's ``DPOTrainer`` on the same workload, in one run.

Workload (identical on both sides): the bundled SmolLM2-135M-Instruct (full fine-tuning, fp32 weights), the
first ``steps × batch`` real human pairs of ``hh-harmless-pairs.jsonl`` whose prompt + answer fits
``--max-length`` tokens untruncated, sigmoid DPO with β = 0.1, batch ``--batch`` with no accumulation, one
epoch, AdamW with a cosine schedule, the same precision, gradient checkpointing off on both sides (TRL turns
it on by default; ``--gradient-checkpointing`` turns it on for both). TRL runs with its defaults otherwise: its
reference is a frozen copy of the model, run on every step (``precompute_ref_log_probs=False``). Each side runs in its own subprocess; the parent reads each child's peak
RSS with ``os.wait4``.

Throughput = pairs / seconds spent on training steps PLUS reference log-probs (alignloop: the reference
precompute, then the end of setup to the end of the last step; TRL: the start of training to the end of the
last step, whose steps include the reference forward). The same spans are also timed in process CPU seconds
(all threads): on a machine shared with other jobs, wall time swings with their load, CPU time much less, so
``cpu_throughput_ratio`` is the steadier comparison. Peak RSS is the child's whole-process peak (both sides
load the same fp32 weights and save the final model); ``train_peak_rss_mb`` is the peak when training ended.

    python benchmarks/dpo.py                     # last line: the JSON summary
    python benchmarks/dpo.py --steps 4 --batch 4 # quicker

TRL is not a dependency of alignloop: the benchmark uses ``--trl-python`` (default: a virtualenv at
.bench/trl-venv, created on first use with ``pip install trl``, system site-packages visible).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "hh-harmless-pairs.jsonl"
TRL_VENV = Path(".bench/trl-venv")
TRL_VERSION = "1.16.0"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-6)
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--gradient-checkpointing", action="store_true", help="On both sides (TRL's default is on).")
    p.add_argument("--trl-python", default=None, help="A Python with trl installed (default: .bench/trl-venv).")
    p.add_argument("--worker", choices=["alignloop", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--subset", help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    return p.parse_args(argv)


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


def alignloop_worker(args: argparse.Namespace) -> dict:
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
        f"model={args.model}", f"data.train={args.subset}", "data.eval_fraction=0", f"data.max_length={args.max_length}",
        f"train.max_steps={args.steps}", f"train.batch_size={args.batch}", f"train.lr={args.lr}",
        f"train.precision={args.precision}", "train.warmup_steps=0", "train.lr_schedule=cosine", "train.save_every=0",
        "train.resume=never", "dpo.beta=0.1", "dpo.loss_type=sigmoid",
        f"train.gradient_checkpointing={args.gradient_checkpointing}",
    ]
    summary = train(TimedDPO(load_config(DPOConfig, None, overrides)), args.out)
    rows = [json.loads(line) for line in (Path(args.out) / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "step_time" in r]
    return {
        "wall_seconds_train": clock.wall,
        "cpu_seconds_train": clock.cpu,
        "ref_seconds": summary["ref_precompute_seconds"],
        "losses": [r["loss"] for r in rows],
        **marks,
    }


def trl_worker(args: argparse.Namespace) -> dict:
    import torch
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
            if state.global_step == args.steps:
                clock.stop()
                marks["train_peak_rss_mb"] = Clock.rss_mb()

    records = [json.loads(line) for line in Path(args.subset).read_text().splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
    config = DPOConfig(
        output_dir=args.out, per_device_train_batch_size=args.batch, gradient_accumulation_steps=1,
        max_steps=args.steps, learning_rate=args.lr, lr_scheduler_type="cosine", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=1.0, beta=0.1, loss_type=["sigmoid"], max_length=None, bf16=args.precision == "bf16",
        use_cpu=not torch.cuda.is_available(), logging_steps=1, report_to="none", save_strategy="no", seed=0,
        dataloader_num_workers=0, disable_tqdm=True, gradient_checkpointing=args.gradient_checkpointing,
    )
    trainer = DPOTrainer(model=model, args=config, train_dataset=Dataset.from_list(records),
                         processing_class=tokenizer, callbacks=[Timer()])
    trainer.train()
    trainer.save_model(str(Path(args.out) / "model"))  # alignloop saves its model too
    logs = [h for h in trainer.state.log_history if "loss" in h]
    return {
        "wall_seconds_train": clock.wall,
        "cpu_seconds_train": clock.cpu,
        "ref_seconds": 0.0,  # inside the step times
        "losses": [h["loss"] for h in logs],
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


def trl_python(explicit: str | None) -> str:
    if explicit:
        return explicit
    python = TRL_VENV / "bin" / "python"
    has_trl = python.exists() and subprocess.run([str(python), "-c", "import trl"], capture_output=True).returncode == 0
    if not has_trl:
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(TRL_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"trl=={TRL_VERSION}"], check=True)
    return str(python)


def run_worker(python: str, side: str, args: argparse.Namespace, subset: Path, model_dir: Path, work: Path) -> dict:
    """Run one side in a child process; return its result plus the child's own peak RSS (os.wait4)."""
    result_file = work / f"{side}.json"
    cmd = [
        python, str(Path(__file__).resolve()), "--worker", side, "--subset", str(subset), "--model-dir", str(model_dir),
        "--out", str(work / side), "--model", args.model, "--steps", str(args.steps), "--batch", str(args.batch),
        "--max-length", str(args.max_length), "--lr", str(args.lr), "--precision", args.precision,
    ] + (["--gradient-checkpointing"] if args.gradient_checkpointing else [])
    env = {**os.environ, "BENCH_RESULT": str(result_file), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    log = open(work / f"{side}.log", "w")
    started = time.time()
    child = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    _, status, usage = os.wait4(child.pid, 0)
    log.close()
    if status != 0 or not result_file.exists():
        tail = (work / f"{side}.log").read_text()[-3000:]
        sys.exit(f"{side} worker failed (status {status}):\n{tail}")
    result = json.loads(result_file.read_text())
    result["wall_seconds"] = round(time.time() - started, 1)
    result["peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)
    return result


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        result = alignloop_worker(args) if args.worker == "alignloop" else trl_worker(args)
        Path(os.environ["BENCH_RESULT"]).write_text(json.dumps(result))
        return
    from alignloop.models.bundled import ensure_bundled_model

    model_dir = ensure_bundled_model(args.model)
    with tempfile.TemporaryDirectory(prefix="bench-dpo-") as tmp:
        work = Path(tmp)
        pairs = build_subset(args, work / "pairs.jsonl")
        python = trl_python(args.trl_python)
        sides = {
            "alignloop": run_worker(sys.executable, "alignloop", args, work / "pairs.jsonl", model_dir, work),
            "trl": run_worker(python, "trl", args, work / "pairs.jsonl", model_dir, work),
        }
    for side, r in sides.items():
        r["throughput"] = pairs / r["wall_seconds_train"]
        r["cpu_throughput"] = pairs / r["cpu_seconds_train"]
        print(
            f"{side:>9}: {r['throughput']:.4f} pairs/s wall ({r['wall_seconds_train']:.1f}s, of which reference "
            f"precompute {r['ref_seconds']:.1f}s), {r['cpu_throughput']:.4f} pairs per CPU-second, peak RSS "
            f"{r['peak_rss_mb']:.0f} MB ({r['train_peak_rss_mb']:.0f} MB when training ended), "
            f"first/last loss {r['losses'][0]:.4f}/{r['losses'][-1]:.4f}"
        )
    a, t = sides["alignloop"], sides["trl"]
    keys = ("throughput", "cpu_throughput", "peak_rss_mb", "train_peak_rss_mb")
    print(json.dumps({
        "stage": "dpo",
        "workload": {"model": args.model, "pairs": pairs, "batch": args.batch, "steps": args.steps,
                     "max_length": args.max_length, "precision": args.precision, "data": Path(args.data).name,
                     "gradient_checkpointing": args.gradient_checkpointing},
        "alignloop": {k: a[k] for k in keys},
        "trl": {k: t[k] for k in keys},
        "throughput_ratio": a["throughput"] / t["throughput"],
        "cpu_throughput_ratio": a["cpu_throughput"] / t["cpu_throughput"],
        "rss_ratio": a["peak_rss_mb"] / t["peak_rss_mb"],
    }))


if __name__ == "__main__":
    main()
