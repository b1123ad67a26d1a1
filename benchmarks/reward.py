"""Reward-model training: alignloop's RM stage vs TRL's ``RewardTrainer`` on the same workload, in one run.

Same model (the bundled SmolLM2-135M-Instruct, full fine-tuning), same pairs in the same order (no shuffling on
either side), same batch, max length, optimizer (AdamW, constant LR, clipping 1.0), precision, gradient
checkpointing (on by default, as in TRL's ``RewardConfig``) and steps.
The pairs are real human preferences (HH-RLHF harmless, ``bundled:hh-harmless-train.jsonl``, shipped in the
package) filtered to those whose prompt + completion fits ``--max-length`` on both sides, so neither trainer
truncates or drops anything.

Throughput is pairs per second between the end of the warm-up step and the end of the last step, from a
callback at each optimizer step; peak memory is each side's own child process (``benchmarks/common.py``).
TRL runs in a virtualenv (``--trl-venv``, default .bench/trl-venv in the clone, created on first use:
``trl==1.16.0`` over the system packages). ``--threads`` pins torch threads on both sides; ``--runs N`` runs
each side N times, alternating, and reports medians with their min-max spread (``benchmarks/common.py``).

    python benchmarks/reward.py [--pairs-per-step 8 --steps 6 --max-length 256 --precision fp32] [--runs 3]

The last line of output is the JSON summary.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
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

DEFAULT_DATA = "bundled:hh-harmless-train.jsonl"
TRL_REQUIREMENT = "trl==1.16.0"


def prepare_pairs(data: str, model: str, n_pairs: int, max_length: int, out: str) -> dict:
    """Write the first ``n_pairs`` pairs whose prompt + chosen and prompt + rejected fit ``max_length`` tokens."""
    from alignloop.data import load_records, tokenize_prompt_completion
    from alignloop.models import load_tokenizer

    tokenizer = load_tokenizer(model)
    kept, tokens_separate, tokens_shared = [], 0, 0
    for record in load_records(data, "pair"):
        p, c = tokenize_prompt_completion(tokenizer, record["prompt"], record["chosen"])
        _, r = tokenize_prompt_completion(tokenizer, record["prompt"], record["rejected"])
        if max(len(p) + len(c), len(p) + len(r)) > max_length:
            continue
        kept.append({"prompt": record["prompt"], "chosen": record["chosen"], "rejected": record["rejected"]})
        tokens_separate += 2 * len(p) + len(c) + len(r)
        tokens_shared += len(p) + len(c) + len(r)
        if len(kept) == n_pairs:
            break
    if len(kept) < n_pairs:
        raise SystemExit(f"only {len(kept)} pairs of {data} fit max_length={max_length}; need {n_pairs}")
    Path(out).write_text("".join(json.dumps(r) + "\n" for r in kept))
    return {"pairs": len(kept), "tokens_per_pair_separate": tokens_separate / len(kept),
            "tokens_per_pair_shared_prompt": tokens_shared / len(kept)}


def run_alignloop(data: str, model: str, batch: int, steps: int, max_length: int, lr: float, precision: str,
                  gradient_checkpointing: bool, out_dir: str, share_prompt: bool = True) -> dict:
    from alignloop.config import load_config
    from alignloop.train.batches import EpochBatchSource
    from alignloop.train.loop import train
    from alignloop.stages.rm.stage import RMConfig, RMStage

    clock = StepClock()

    class TimedRM(RMStage):
        def batches(self):
            super().batches()  # computes the stage's step total
            return EpochBatchSource(self.train_examples, batch, self._collate, shuffle=False)  # same order as TRL

        def on_step_end(self, step, metrics):
            clock.tick()
            super().on_step_end(step, metrics)

        def save(self, out_dir):
            """No final model: TRL saves nothing either (save_strategy="no")."""

    overrides = [
        f"model={model}", f"data.train={data}", "data.eval_fraction=0", f"data.max_length={max_length}",
        f"train.max_steps={steps}", f"train.batch_size={batch}", f"train.lr={lr}", "train.lr_schedule=constant",
        "train.warmup_steps=0", f"train.precision={precision}", "train.save_every=0", "train.resume=never",
        "train.max_grad_norm=1.0", f"rm.max_prompt_length={max_length}", f"rm.share_prompt={share_prompt}",
        "rm.eval_each_epoch=false", "rm.use_margin=false", f"train.gradient_checkpointing={gradient_checkpointing}",
    ]
    summary = train(TimedRM(load_config(RMConfig, None, overrides)), out_dir)
    return {"throughput": clock.throughput(batch), "cpu_throughput": clock.cpu_throughput(batch),
            "step_seconds": clock.step_seconds(), "final_loss": summary["loss"]}


def run_trl(data: str, model: str, batch: int, steps: int, max_length: int, lr: float, precision: str,
            gradient_checkpointing: bool, out_dir: str) -> dict:
    import datasets
    import torch
    from torch.utils.data import SequentialSampler
    from transformers import AutoTokenizer, TrainerCallback
    from trl import RewardConfig, RewardTrainer

    from alignloop.models import resolve_model

    folder = str(resolve_model(model))  # the bundled model's converted HF folder: the same weights
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    dataset = datasets.load_dataset("json", data_files=data, split="train")
    clock = StepClock()

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.tick()

    class SequentialRewardTrainer(RewardTrainer):
        def _get_train_sampler(self, train_dataset=None):
            return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)

    args = RewardConfig(
        output_dir=out_dir, per_device_train_batch_size=batch, gradient_accumulation_steps=1, max_steps=steps,
        learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        optim="adamw_torch", bf16=precision == "bf16", use_cpu=not torch.cuda.is_available(), max_length=max_length,
        logging_steps=10**6, save_strategy="no", eval_strategy="no", report_to=[], disable_tqdm=True,
        dataloader_num_workers=0, seed=0, center_rewards_coefficient=None,
        gradient_checkpointing=gradient_checkpointing,
    )
    trainer = SequentialRewardTrainer(
        model=folder, args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=[Clock()]
    )
    result = trainer.train()
    return {"throughput": clock.throughput(batch), "cpu_throughput": clock.cpu_throughput(batch),
            "step_seconds": clock.step_seconds(), "final_loss": float(result.training_loss),
            "trl_version": __import__("trl").__version__}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--pairs-per-step", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps; the first is warm-up, not timed")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--gradient-checkpointing", choices=["on", "off"], default="on",
                        help="on both sides (TRL's RewardConfig turns it on by default)")
    add_common_flags(parser, trl_venv=TRL_VENV, precision="fp32", precision_help="both sides")
    args = parser.parse_args(argv)
    check_common_flags(parser, args)

    trl_python = ensure_venv(args.trl_venv, [TRL_REQUIREMENT])
    work = Path(tempfile.mkdtemp(prefix="bench-reward-"))
    pairs_file = str(work / "pairs.jsonl")
    data_info = prepare_pairs(args.data, args.model, args.pairs_per_step * args.steps, args.max_length, pairs_file)
    common = dict(data=pairs_file, model=args.model, batch=args.pairs_per_step, steps=args.steps,
                  max_length=args.max_length, lr=args.lr, precision=args.precision,
                  gradient_checkpointing=args.gradient_checkpointing == "on")
    keep = ("throughput", "cpu_throughput", "peak_rss_mb", "final_loss", "wall_seconds")

    def ours(i: int) -> dict:
        result = run_isolated(f"{__file__}:run_alignloop", {**common, "out_dir": str(work / f"ours-{i}")},
                              threads=args.threads)
        return {k: result[k] for k in keep}

    def theirs(i: int) -> dict:
        result = run_isolated(f"{__file__}:run_trl", {**common, "out_dir": str(work / f"trl-{i}")},
                              python=trl_python, threads=args.threads)
        return {**{k: result[k] for k in keep}, "version": result.get("trl_version")}

    try:  # each side's run folder holds a full checkpoint
        pairs = paired_runs(args.runs, ours, theirs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    payload = paired_comparison(
        "rm", pairs, unit="pairs/s",
        workload={**{k: v for k, v in common.items() if k != "data"}, "data": args.data, "threads": args.threads,
                  **data_info},
    )
    print_spread(payload)
    final_json_line(payload)
    return payload


if __name__ == "__main__":
    main()
