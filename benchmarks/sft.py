"""SFT throughput and peak memory: alignloop vs TRL's ``SFTTrainer`` on the same workload, in one run.

Workload (identical on both sides): the bundled SmolLM2-135M-Instruct (full fine-tuning, fp32 master weights,
the same converted HF folder), the bundled demonstrations ``bundled:sft_demo_train.jsonl`` (chat messages;
TRL gets the same conversations as a ``datasets.Dataset`` with a ``messages`` column), max length 256, a
global batch of 8 examples with no accumulation, the same learning rate, ``--steps`` optimizer steps.

Two comparisons are run, each side in its own child process (peak RSS per side, ``benchmarks/common.py``):

* **defaults** (the JSON last line): each tool as it comes. alignloop: bf16 autocast, packing on (several
  examples per 256-token row), gradient checkpointing on. TRL 1.16 ``SFTConfig``: bf16 on (its default when
  fp16 is off), ``gradient_checkpointing=True``, ``packing=False`` (pads each batch to its longest example),
  loss on all tokens, linear LR schedule.
* **matched** (``--no-matched`` skips it): both bf16, no packing, no gradient checkpointing — the same
  batches of 8 padded conversations, so the remaining gap is the trainers' own overhead.

Throughput is input tokens per second: the non-pad tokens of the batches fed to the model (packed rows count
their real tokens, padded batches their attention mask), summed over the steps after ``--warmup``, divided by
the time from the end of the warm-up steps to the end of the last step. On a machine shared with other jobs,
wall-clock rates are noisy, so tokens per CPU-second of each process (``cpu_throughput``) are reported too.

    python benchmarks/sft.py                         # last line: the JSON summary
    python benchmarks/sft.py --runs 3                # median and min-max spread of three run pairs
    python benchmarks/sft.py --steps 4 --threads 1   # quicker

Common flags (``benchmarks/common.py``): ``--trl-venv`` (default .bench/trl-venv in the clone, created on first
use with ``trl==1.16.0`` over the system site-packages), ``--threads`` (torch threads on both sides),
``--precision`` (bf16, both tools' default, or fp32 on both sides) and ``--runs N``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    TRL_VENV,
    StepClock,
    add_common_flags,
    check_common_flags,
    ensure_venv,
    final_json_line,
    paired_comparison,
    paired_runs,
    print_spread,
    run_isolated,
)
from utilisation import linear_weights, step_flops  # noqa: E402

TRL_REQUIREMENT = "trl==1.16.0"
DEFAULT_DATA = "bundled:sft_demo_train.jsonl"


def _peak_rss_so_far_mb() -> float:
    """This process's peak RSS up to now: at the last step it excludes what a trainer does after training."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _rates(clock: StepClock, tokens_per_step: list[int], warmup: int) -> dict:
    """Tokens/s and tokens/CPU-s over the steps after ``warmup`` (steps hold different token counts)."""
    timed = tokens_per_step[warmup:]
    mean_tokens = sum(timed) / len(timed)
    return {
        "throughput": clock.throughput(mean_tokens, warmup),
        "cpu_throughput": clock.cpu_throughput(mean_tokens, warmup),
        "tokens_per_step": tokens_per_step,
        "step_seconds": [round(s, 3) for s in clock.step_seconds()],
    }


def run_alignloop(model: str, data: str, steps: int, warmup: int, batch: int, max_length: int, lr: float,
                  precision: str, packing: bool, out_dir: str, gradient_checkpointing: bool | None = None,
                  profile_steps: int = 0, compile_layers: str = "") -> dict:
    """alignloop's SFT stage, timed per step; ``profile_steps`` > 0 also profiles the last steps by op class.

    ``compile_layers`` (for ``benchmarks/compile_train.py``): ``blocks`` is the shipped ``train.compile:
    blocks``; ``layers`` compiles each decoder layer whole (regional compilation: the layers share one compiled
    graph; the checkpoint's replay skips forward side effects, transformers' context variable).
    """
    import torch

    from alignloop.config import load_config
    from alignloop.data.packing import example_fields
    from alignloop.train.loop import train
    from alignloop.stages.sft import SFTConfig, SFTStage
    from utilisation import profile_by_class

    clock = StepClock()
    tokens_per_step: list[int] = []
    work_per_step: list[dict] = []  # what the FLOP count needs (benchmarks/utilisation.py)
    training_rss = [0.0]
    profile: dict = {}

    class TimedSFT(SFTStage):
        pending_tokens = 0
        pending_work = {"scored": 0, "rows_by_length_sq": 0}

        def setup(self, run) -> None:
            super().setup(run)
            if compile_layers == "layers":
                torch._dynamo.config.skip_fwd_side_effects_in_bwd_under_checkpoint = True
                for module in self.models["policy"].modules():
                    if type(module).__name__.endswith("DecoderLayer"):
                        module.compile()
            profile["setup_done"] = time.perf_counter()

        def _collate(self, rows: list) -> dict:
            # real tokens only: a packed row's length, or an example's own length before padding
            self.pending_tokens += sum(len(r) if packing else len(example_fields(r)[0]) for r in rows)
            batch = super()._collate(rows)
            labels = batch["labels"]
            self.pending_work["scored"] += int((labels[:, 1:] != -100).sum())  # sft.token_nll_sum's count
            self.pending_work["rows_by_length_sq"] += int(labels.shape[0] * labels.shape[1] ** 2)
            return batch

        def on_step_end(self, step: int, metrics: dict) -> None:
            clock.tick()
            training_rss[0] = _peak_rss_so_far_mb()
            tokens_per_step.append(self.pending_tokens)
            work_per_step.append(dict(self.pending_work))
            self.pending_tokens = 0
            self.pending_work = {"scored": 0, "rows_by_length_sq": 0}
            if profile_steps and len(tokens_per_step) == steps - profile_steps:
                profile["profiler"] = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
                profile["profiler"].start()
                profile["started"] = time.perf_counter()
            elif profile_steps and len(tokens_per_step) == steps:
                profile["profiler"].stop()
                wall = time.perf_counter() - profile["started"]
                profile["table"] = profile_by_class(profile["profiler"].key_averages(), wall)
                profile["seconds"] = round(wall, 3)
            super().on_step_end(step, metrics)

        def save(self, out_dir: Path) -> None:  # TRL saves nothing either (save_strategy="no")
            pass

    overrides = [
        f"model={model}", f"data.train={data}", "data.eval=null", "data.eval_fraction=0",
        f"data.max_length={max_length}", f"train.max_steps={steps}", f"train.batch_size={batch}", f"train.lr={lr}",
        "train.save_every=0", "train.resume=never", f"sft.packing={str(packing).lower()}",
        f"train.precision={precision}",
    ]
    if gradient_checkpointing is not None:
        overrides.append(f"train.gradient_checkpointing={str(gradient_checkpointing).lower()}")
    if compile_layers == "blocks":
        overrides.append("train.compile=blocks")
    cfg = load_config(SFTConfig, None, overrides)
    summary = train(TimedSFT(cfg), out_dir)
    return {**_rates(clock, tokens_per_step, warmup), "final_loss": summary["loss"],
            "peak_rss_training_mb": training_rss[0], "work_per_step": work_per_step,
            "first_step_seconds": round(clock.times[0] - profile["setup_done"], 3),
            **({"profile": {"steps": profile_steps, "seconds": profile["seconds"], "by_class": profile["table"]}}
               if profile_steps else {}),
            "settings": {"precision": cfg.train.precision, "packing": packing,
                         "gradient_checkpointing": cfg.train.gradient_checkpointing,
                         "lr_schedule": cfg.train.lr_schedule}}


def run_trl(model: str, data: str, steps: int, warmup: int, batch: int, max_length: int, lr: float,
            precision: str, gradient_checkpointing: bool | None, out_dir: str) -> dict:
    """TRL's ``SFTTrainer`` at its defaults; ``gradient_checkpointing=None`` keeps TRL's own default (True)."""
    import datasets
    import torch
    import trl
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from alignloop.data import load_records
    from alignloop.models import resolve_model

    folder = str(resolve_model(model))  # the bundled model's converted HF folder: the same weights
    records = load_records(data, "sft")
    dataset = datasets.Dataset.from_dict({"messages": [r["messages"] for r in records]})
    clock = StepClock()
    tokens_per_step: list[int] = []
    pending = [0]
    training_rss = [0.0]

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.tick()
            training_rss[0] = _peak_rss_so_far_mb()
            tokens_per_step.append(pending[0])
            pending[0] = 0

    class CountingSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, *args, **kwargs):
            mask = inputs.get("attention_mask")
            pending[0] += int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())
            return super().compute_loss(model, inputs, *args, **kwargs)

    extra = {} if gradient_checkpointing is None else {"gradient_checkpointing": gradient_checkpointing}
    config = SFTConfig(
        output_dir=out_dir, max_length=max_length, per_device_train_batch_size=batch, max_steps=steps,
        learning_rate=lr, report_to=[], save_strategy="no", logging_steps=1, use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True, bf16=precision == "bf16", **extra,
    )
    trainer = CountingSFTTrainer(model=folder, args=config, train_dataset=dataset, callbacks=[Clock()])
    result = trainer.train()
    return {**_rates(clock, tokens_per_step, warmup), "final_loss": float(result.training_loss),
            "peak_rss_training_mb": training_rss[0],
            "version": trl.__version__,
            "settings": {"precision": "bf16" if config.bf16 else "fp32", "packing": config.packing,
                         "gradient_checkpointing": config.gradient_checkpointing,
                         "lr_schedule": str(config.lr_scheduler_type.value)}}


def _side(result: dict) -> dict:
    keys = ("throughput", "cpu_throughput", "peak_rss_mb", "peak_rss_training_mb", "final_loss", "wall_seconds",
            "settings", "tokens_per_step", "work_per_step")
    return {k: result[k] for k in keys if k in result}


def _compare(label: str, common: dict, trl_python: str, work: Path, packing: bool,
             gradient_checkpointing: bool | None, runs: int, threads: int) -> dict:
    def ours(i: int) -> dict:
        out = work / f"{label}-ours-{i}"
        result = run_isolated(f"{__file__}:run_alignloop", {**common, "packing": packing, "out_dir": str(out),
                                                            "gradient_checkpointing": gradient_checkpointing},
                              threads=threads)
        shutil.rmtree(out, ignore_errors=True)  # its final checkpoint is large
        return _side(result)

    def theirs(i: int) -> dict:
        out = work / f"{label}-trl-{i}"
        result = run_isolated(f"{__file__}:run_trl", {**common, "gradient_checkpointing": gradient_checkpointing,
                                                      "out_dir": str(out)}, python=trl_python, threads=threads)
        shutil.rmtree(out, ignore_errors=True)
        return _side(result)

    pairs = paired_runs(runs, ours, theirs, label=label)
    for i, (a, t) in enumerate(pairs):
        for side, r in (("alignloop", a), ("trl", t)):
            print(f"{label:>8} run {i + 1} {side:>9}: {r['throughput']:8.1f} tok/s wall, {r['cpu_throughput']:8.1f} "
                  f"tok/CPU-s, peak RSS {r['peak_rss_mb']:7.0f} MB ({r['peak_rss_training_mb']:.0f} MB by the last "
                  f"step), {r['settings']}", flush=True)
    keys = ("throughput", "cpu_throughput", "peak_rss_mb", "peak_rss_training_mb")
    payload = paired_comparison("sft", pairs, keys=keys)
    print_spread(payload, keys=keys, label=label)
    return payload


def _utilisation(common: dict, defaults: dict, work: Path, threads: int) -> dict:
    """Achieved FLOP/s of alignloop's side against the GEMM peak measured now, and a profile by op class."""
    from alignloop.models import resolve_model

    ours = defaults["alignloop"]
    warmup = common["warmup"]
    weights = linear_weights(str(resolve_model(common["model"])))
    checkpointing = bool(ours["settings"]["gradient_checkpointing"])
    timed_tokens = ours["tokens_per_step"][warmup:]
    counted = [step_flops(weights, tokens=t, checkpointing=checkpointing, **w)
               for t, w in zip(timed_tokens, ours["work_per_step"][warmup:])]
    per_token = {kind: sum(c[kind] for c in counted) / sum(timed_tokens) for kind in ("hardware", "model")}
    peaks = {}
    for precision in ("bf16", "fp32"):
        print(f"--- utilisation: GEMM peak at the model's shapes, {precision}", flush=True)
        peaks[precision] = run_isolated(f"{Path(__file__).parent / 'utilisation.py'}:gemm_peak",
                                        {"trunk": weights["trunk"], "head": weights["head"],
                                         "rows": common["batch"] * common["max_length"], "head_rows": 512,
                                         "precision": precision}, threads=threads, echo=False)
    print("--- utilisation: alignloop, 2 profiled steps", flush=True)
    profiled = run_isolated(f"{__file__}:run_alignloop",
                            {**common, "steps": warmup + 3, "packing": True, "out_dir": str(work / "profiled"),
                             "profile_steps": 2}, threads=threads)
    peak = peaks[common["precision"]]["model_shapes_gflops"]
    achieved = {kind: ours["throughput"] * per_token[kind] / 1e9 for kind in per_token}
    report = {
        "flops_per_token": {k: round(v) for k, v in per_token.items()},
        "achieved_gflops": {k: round(v, 1) for k, v in achieved.items()},
        "peak_gflops": {p: {k: v for k, v in r.items() if k.endswith("gflops")} for p, r in peaks.items()},
        "peak_per_shape": {p: r["per_shape"] for p, r in peaks.items()},
        "fraction_of_peak": round(achieved["hardware"] / peak, 3),
        "mfu": round(achieved["model"] / peak, 3),
        "profile": profiled["profile"],
    }
    print(f"utilisation: {achieved['hardware']:.1f} GFLOP/s achieved (hardware FLOPs, recompute counted; "
          f"{achieved['model']:.1f} model FLOPs) against {peak:.1f} GFLOP/s measured {common['precision']} GEMM peak "
          f"at the model's shapes: {report['fraction_of_peak']:.1%} of peak (MFU {report['mfu']:.1%})")
    for cls, row in profiled["profile"]["by_class"].items():
        print(f"  {cls:>32}: {row['share']:6.1%} of profiled wall time  {', '.join(row['top_ops'])}")
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps, including the warm-up ones")
    parser.add_argument("--warmup", type=int, default=1, help="first steps not timed")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--no-matched", action="store_true", help="skip the matched-settings comparison")
    parser.add_argument("--no-utilisation", action="store_true",
                        help="skip the FLOP/s against the measured GEMM peak and the profile by op class")
    add_common_flags(parser, trl_venv=TRL_VENV, precision="bf16",
                     precision_help="both sides, in both comparisons: bf16 autocast (both tools' default) or fp32")
    args = parser.parse_args(argv)
    check_common_flags(parser, args)
    if args.steps <= args.warmup:
        parser.error("--steps must exceed --warmup")

    from alignloop.models import resolve_model

    resolve_model(args.model)  # convert the bundled model once, before anything is timed
    trl_python = ensure_venv(args.trl_venv, [TRL_REQUIREMENT])
    common = dict(model=args.model, data=args.data, steps=args.steps, warmup=args.warmup, batch=args.batch,
                  max_length=args.max_length, lr=args.lr, precision=args.precision)
    work = Path(tempfile.mkdtemp(prefix="bench-sft-"))
    try:
        defaults = _compare("defaults", common, trl_python, work, packing=True, gradient_checkpointing=None,
                            runs=args.runs, threads=args.threads)
        utilisation = None if args.no_utilisation else _utilisation(common, defaults, work, args.threads)
        matched = None
        if not args.no_matched:
            matched = _compare("matched", common, trl_python, work, packing=False, gradient_checkpointing=False,
                               runs=args.runs, threads=args.threads)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    extra = {"unit": "input tokens/s", "workload": {**common, "threads": args.threads}}
    if matched is not None:
        extra["matched"] = {k: matched[k] for k in ("alignloop", "trl", "throughput_ratio", "rss_ratio",
                                                     "cpu_throughput_ratio", "spread", "per_run") if k in matched}
    if utilisation is not None:
        extra["utilisation"] = utilisation
    payload = {**defaults, **extra}
    final_json_line(payload)
    return payload


if __name__ == "__main__":
    main()
