"""Reward-model QUALITY and time, side by side in one run: ``alignloop rm`` vs TRL's ``RewardTrainer``.

Both tools train a reward model on the same model and the same pairs, each with its own recipe, and both saved
models are scored by the SAME held-out accuracy code on the same token ids (issue 20, item 2):

* **alignloop**: ``alignloop rm CONFIG`` (default ``examples/rm.yaml``) as a user runs it, in its own process,
  with ``data.train`` set to the train split, no held-out evaluation during training (``data.eval=null``,
  ``data.eval_fraction=0``, ``train.eval_every=0``, ``rm.eval_each_epoch=false``: TRL's side evaluates nothing
  either) and ``train.resume=never``. Everything else is the config's recipe (``--set key=value`` adds more).
* **TRL** 1.16 ``RewardTrainer`` with the recipe issue 20 gives as its best: full fine-tuning, 1 epoch, lr 1e-5,
  batch 8, ``max_length`` 384 (TRL drops longer pairs), bf16 where the CPU has native bf16 (else fp32);
  TRL's defaults otherwise (gradient checkpointing on, linear schedule, no reward centring). Same model
  folder: the config's model resolved as ``benchmarks/reward.py`` does (``alignloop.models.resolve_model``).
* **Data**: ``bundled:hh-harmless-train.jsonl`` (904 HH-RLHF harmless pairs) to train,
  ``bundled:hh-harmless-heldout.jsonl`` (400 pairs, no question shared with train) to score.
* **Scoring** (one function, ``evaluate``, in a fresh process per model, fp32, one sequence per forward, no
  padding): every held-out pair is tokenised ONCE by the same code with the base model's tokenizer and chat
  template (``alignloop.data.tokenize_prompt_completion``: the prompt rendered with the generation prompt,
  then the answer; prompt + answer are exactly the tokens of the whole conversation rendered by the chat
  template, which is what TRL trains on), cut only if prompt + answer exceed ``--eval-max-length`` (prompt cut
  from the left first). alignloop's model is loaded with its loader (``RewardModel.load``) and scored at the
  last token; TRL's saved model is loaded with ``transformers.AutoModelForSequenceClassification`` and scored by
  its own forward (its own pooling) on the same ids. Both children report a digest of the token ids; the
  parent checks that they are equal. Accuracy = share of pairs whose chosen answer scores higher (a tie counts
  as wrong), with a 95% Wilson interval; McNemar's exact test compares the two models on the same pairs.
* **Time**: ``train_seconds`` is the whole training process, start to exit (imports, model load,
  tokenisation, training, saving the model): what a user waits for. ``train_eval_seconds`` adds the scoring
  process. ``train_time_ratio`` = alignloop ÷ TRL (issue 20's target: ≤ 1/3). Each tool's in-process training
  time (``train_loop_seconds``) is reported too.

    python benchmarks/reward_quality.py                          # full size: tens of minutes on a 2-core CPU
    python benchmarks/reward_quality.py --runs 3                 # medians and min-max spreads of 3 run pairs
    python benchmarks/reward_quality.py --train-pairs 16 --heldout-pairs 16 --max-steps 2   # smoke test

Common flags (``benchmarks/common.py``): ``--trl-venv`` (default .bench/trl-venv, created on first use with
``trl==1.16.0``), ``--threads``, ``--precision`` (``recipe``: each tool's own, as above; ``bf16``/``fp32``: both
sides) and ``--runs N``. The last line of output is the JSON summary.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    REPO_ROOT,
    TRL_VENV,
    add_common_flags,
    check_common_flags,
    ensure_venv,
    final_json_line,
    paired_comparison,
    paired_runs,
    print_spread,
    run_command,
    run_isolated,
)

TRL_REQUIREMENT = "trl==1.16.0"
TRAIN = "bundled:hh-harmless-train.jsonl"
HELDOUT = "bundled:hh-harmless-heldout.jsonl"
CHILD_ENV = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
KEYS = ("accuracy", "train_seconds", "eval_seconds", "train_eval_seconds", "train_loop_seconds", "peak_rss_mb")


# --- statistics ---------------------------------------------------------------------------------------------
def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float | None, float | None]:
    """The 95% Wilson score interval of a proportion (``(None, None)`` for n = 0)."""
    if n == 0:
        return None, None
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_p(a: list[bool], b: list[bool]) -> float:
    """Exact two-sided McNemar p-value of two models' right/wrong on the same pairs."""
    from alignloop.eval.metrics import mcnemar_exact

    return mcnemar_exact(sum(y and not x for x, y in zip(a, b)), sum(x and not y for x, y in zip(a, b)))


# --- the shared held-out scoring (one function for both tools' models) ---------------------------------------
def _messages(value, role: str) -> list[dict]:
    return [{"role": role, "content": value}] if isinstance(value, str) else list(value)


def fit(prompt: list[int], chosen: list[int], rejected: list[int], limit: int) -> tuple[list[int], ...]:
    """Cut so that prompt + each answer fits ``limit`` tokens: the prompt from the left first, then the answers."""
    longest = max(len(chosen), len(rejected))
    if len(prompt) + longest > limit:
        prompt = prompt[-max(limit // 2, limit - longest):]
        chosen, rejected = chosen[: limit - len(prompt)], rejected[: limit - len(prompt)]
    return prompt, chosen, rejected


def heldout_tokens(base_model: str, heldout: str, limit: int) -> tuple[list[tuple[list[int], ...]], int]:
    """Each held-out pair as ``(prompt_ids, chosen_ids, rejected_ids)``; and how many pairs were cut."""
    from alignloop.data import load_records, tokenize_prompt_completion
    from alignloop.models import load_tokenizer

    tokenizer = load_tokenizer(base_model)
    pairs, cut = [], 0
    for record in load_records(heldout, "pair"):
        prompt = _messages(record["prompt"], "user")
        p, c = tokenize_prompt_completion(tokenizer, prompt, _messages(record["chosen"], "assistant"))
        _, r = tokenize_prompt_completion(tokenizer, prompt, _messages(record["rejected"], "assistant"))
        fitted = fit(p, c, r, limit)
        cut += fitted != (p, c, r)
        pairs.append(fitted)
    return pairs, cut


def evaluate(kind: str, model_dir: str, base_model: str, heldout: str, eval_max_length: int) -> dict:
    """Held-out accuracy of a saved reward model: ``kind`` = ``alignloop`` (RewardModel.load) or ``trl`` (HF)."""
    import torch

    pairs, cut = heldout_tokens(base_model, heldout, eval_max_length)
    digest = hashlib.sha256(json.dumps(pairs).encode()).hexdigest()[:16]
    if kind == "alignloop":
        from alignloop.models.shared_prompt import ScoreGroup, pack_groups
        from alignloop.rewards.model import RewardModel

        rm = RewardModel.load(model_dir, device="cpu")
        pad_id = rm.tokenizer.pad_token_id

        def score(prompt: list[int], answer: list[int]) -> float:
            packed = pack_groups([ScoreGroup(prompt, [answer])], pad_id, share_prompt=True)  # one sequence
            return float(rm.member_scores_packed(packed)[:, 0, 0].mean())
    else:
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32).eval()

        def score(prompt: list[int], answer: list[int]) -> float:
            return float(model(input_ids=torch.tensor([prompt + answer])).logits[0, 0])

    started = time.perf_counter()
    chosen, rejected = [], []
    with torch.no_grad():
        for p, c, r in pairs:
            chosen.append(score(p, c))
            rejected.append(score(p, r))
    correct = [a > b for a, b in zip(chosen, rejected)]
    low, high = wilson_interval(sum(correct), len(correct))
    return {"accuracy": sum(correct) / len(correct), "accuracy_ci95": [round(low, 4), round(high, 4)],
            "correct": correct,
            "pairs": len(pairs), "pairs_cut": cut, "token_digest": digest,
            "mean_margin": sum(a - b for a, b in zip(chosen, rejected)) / len(pairs),
            "scoring_seconds": round(time.perf_counter() - started, 2)}


# --- TRL's side (runs in the TRL venv) -----------------------------------------------------------------------
def run_trl(model_dir: str, train_file: str, out_dir: str, lr: float, batch: int, max_length: int, epochs: float,
            max_steps: int, precision: str, seed: int) -> dict:
    import datasets
    import torch
    import trl
    from transformers import AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    records = [json.loads(line) for line in Path(train_file).read_text().splitlines() if line.strip()]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    args = RewardConfig(
        output_dir=out_dir, per_device_train_batch_size=batch, num_train_epochs=epochs, max_steps=max_steps,
        learning_rate=lr, max_length=max_length, bf16=precision == "bf16", use_cpu=not torch.cuda.is_available(),
        save_strategy="no", eval_strategy="no", report_to=[], disable_tqdm=True, logging_steps=10, seed=seed,
    )
    trainer = RewardTrainer(model=model_dir, args=args, train_dataset=datasets.Dataset.from_list(records),
                            processing_class=tokenizer)
    started = time.perf_counter()
    result = trainer.train()
    loop_seconds = time.perf_counter() - started
    trainer.save_model(str(Path(out_dir) / "model"))
    return {"train_loop_seconds": round(loop_seconds, 2), "pairs_trained": len(trainer.train_dataset),
            "steps": trainer.state.global_step, "final_loss": float(result.training_loss),
            "tokens_as_scored": _same_tokens(tokenizer, records, trainer.train_dataset, max_length),
            "gradient_checkpointing": args.gradient_checkpointing, "bf16": args.bf16, "version": trl.__version__}


def _same_tokens(tokenizer, records: list[dict], dataset, max_length: int, n: int = 16) -> float:
    """Share of TRL's first ``n`` tokenised pairs that equal the scoring code's prompt + answer ids.

    TRL keeps the records' order and drops pairs longer than ``max_length``; the scoring code's ids, filtered
    the same way, must line up with TRL's rows one for one.
    """
    from alignloop.data import tokenize_prompt_completion

    ours = []
    for record in records:
        prompt = _messages(record["prompt"], "user")
        p, c = tokenize_prompt_completion(tokenizer, prompt, _messages(record["chosen"], "assistant"))
        _, r = tokenize_prompt_completion(tokenizer, prompt, _messages(record["rejected"], "assistant"))
        if max(len(p) + len(c), len(p) + len(r)) <= max_length:
            ours.append((p + c, p + r))
        if len(ours) == n:
            break
    rows = dataset.select(range(min(n, len(dataset))))
    same = sum(list(row["chosen_ids"]) == a and list(row["rejected_ids"]) == b for row, (a, b) in zip(rows, ours))
    return same / len(rows) if len(rows) else float("nan")


# --- parent -------------------------------------------------------------------------------------------------
def _subset(source: str, count: int, path: Path) -> str:
    """The first ``count`` records of ``source`` written to ``path`` (0: all of them)."""
    from alignloop.data.records import resolve_data_path

    lines = [line for line in Path(resolve_data_path(source)).read_text().splitlines() if line.strip()]
    lines = lines[:count] if count else lines
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO_ROOT / "examples" / "rm.yaml"), help="alignloop's RM config")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                        help="more overrides for alignloop's side (repeatable)")
    parser.add_argument("--train", default=TRAIN)
    parser.add_argument("--heldout", default=HELDOUT)
    parser.add_argument("--train-pairs", type=int, default=0, help="first N train pairs only (0: all; smoke runs)")
    parser.add_argument("--heldout-pairs", type=int, default=0, help="first N held-out pairs only (0: all)")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="optimizer steps on BOTH sides (default: each recipe's own length; smoke runs)")
    parser.add_argument("--eval-max-length", type=int, default=1024,
                        help="longest prompt + answer scored; longer pairs are cut (prompt from the left first)")
    parser.add_argument("--trl-lr", type=float, default=1e-5)
    parser.add_argument("--trl-batch", type=int, default=8)
    parser.add_argument("--trl-max-length", type=int, default=384)
    parser.add_argument("--trl-epochs", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0, help="TRL's seed (alignloop's is the config's train.seed)")
    parser.add_argument("--out", default=None, help="keep both runs' models here (default: a temporary folder)")
    add_common_flags(parser, trl_venv=TRL_VENV, precision="recipe", precisions=("recipe", "bf16", "fp32"),
                     precision_help="recipe: alignloop's config and TRL bf16 where the CPU has native bf16; "
                                    "bf16 or fp32: both sides")
    args = parser.parse_args(argv)
    check_common_flags(parser, args)

    import torch

    from alignloop.config import load_config
    from alignloop.models import resolve_model
    from alignloop.models.precision import native_bf16
    from alignloop.stages.rm.stage import RMConfig, resolve_init

    trl_python = ensure_venv(args.trl_venv, [TRL_REQUIREMENT])
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench-rm-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    train_file = _subset(args.train, args.train_pairs, work / "train.jsonl")
    heldout_file = _subset(args.heldout, args.heldout_pairs, work / "heldout.jsonl")
    overrides = [f"data.train={train_file}", "data.eval=null", "data.eval_fraction=0", "train.eval_every=0",
                 "rm.eval_each_epoch=false", "train.resume=never", "train.save_every=0"]
    if args.precision != "recipe":
        overrides.append(f"train.precision={args.precision}")
    if args.max_steps is not None:
        overrides.append(f"train.max_steps={args.max_steps}")
    overrides += args.overrides
    cfg = load_config(RMConfig, args.config, overrides)
    base_model = resolve_init(cfg.model)
    model_dir = str(resolve_model(base_model))  # the converted HF folder: both tools start from these weights
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    trl_precision = args.precision if args.precision != "recipe" else "bf16" if native_bf16(device) else "fp32"
    evaluation = dict(base_model=base_model, heldout=heldout_file, eval_max_length=args.eval_max_length)

    def finish(side: str, out: Path, trained: dict) -> dict:
        scored = run_isolated(f"{__file__}:evaluate", {"kind": side, "model_dir": str(out), **evaluation},
                              env=CHILD_ENV, threads=args.threads)
        return {**trained, "accuracy": scored["accuracy"], "accuracy_ci95": scored["accuracy_ci95"],
                "eval_seconds": scored["wall_seconds"], "eval_peak_rss_mb": scored["peak_rss_mb"],
                "train_eval_seconds": round(trained["train_seconds"] + scored["wall_seconds"], 2),
                "correct": scored["correct"], "token_digest": scored["token_digest"], "pairs": scored["pairs"],
                "pairs_cut": scored["pairs_cut"], "mean_margin": scored["mean_margin"]}

    def ours(i: int) -> dict:
        out = work / f"alignloop-{i}"
        shutil.rmtree(out, ignore_errors=True)
        command = [sys.executable, "-m", "alignloop", "rm", str(args.config), "--out", str(out)]
        for override in overrides:
            command += ["--set", override]
        measured = run_command(command, env=CHILD_ENV, threads=args.threads)
        summary = json.loads((out / "summary.json").read_text())
        trained = {"train_seconds": measured["wall_seconds"], "peak_rss_mb": measured["peak_rss_mb"],
                   "train_loop_seconds": summary.get("wall_seconds"), "steps": summary.get("steps"),
                   "final_loss": summary.get("loss"), "precision": cfg.train.precision}
        return finish("alignloop", out, trained)

    def theirs(i: int) -> dict:
        out = work / f"trl-{i}"
        shutil.rmtree(out, ignore_errors=True)
        trained = run_isolated(
            f"{__file__}:run_trl",
            {"model_dir": model_dir, "train_file": train_file, "out_dir": str(out), "lr": args.trl_lr,
             "batch": args.trl_batch, "max_length": args.trl_max_length, "epochs": args.trl_epochs,
             "max_steps": -1 if args.max_steps is None else args.max_steps, "precision": trl_precision,
             "seed": args.seed},
            python=trl_python, env=CHILD_ENV, threads=args.threads)
        trained["train_seconds"] = trained.pop("wall_seconds")
        return finish("trl", out / "model", trained)

    try:
        pairs = paired_runs(args.runs, ours, theirs)
    finally:
        if not args.out:
            shutil.rmtree(work, ignore_errors=True)
    for ours_run, theirs_run in pairs:
        if ours_run["token_digest"] != theirs_run["token_digest"]:
            raise SystemExit("the two models were scored on different token ids (a bug in this benchmark)")
    p_values = [mcnemar_p(a["correct"], t["correct"]) for a, t in pairs]
    trimmed = [tuple({k: v for k, v in side.items() if k not in ("correct", "token_digest")} for side in pair)
               for pair in pairs]
    payload = paired_comparison(
        "rm_quality", trimmed, keys=KEYS,
        ratios={"train_time_ratio": ("train_seconds", "train_seconds"),
                "train_eval_time_ratio": ("train_eval_seconds", "train_eval_seconds"),
                "rss_ratio": ("peak_rss_mb", "peak_rss_mb")},
    )
    for side in ("alignloop", "trl"):  # the interval of the run whose accuracy is the (lower) median
        runs = sorted((r[0 if side == "alignloop" else 1] for r in trimmed), key=lambda r: r["accuracy"])
        payload[side]["accuracy_ci95"] = runs[(len(runs) - 1) // 2]["accuracy_ci95"]
    for row, p in zip(payload["per_run"], p_values):
        row["mcnemar_p"] = round(p, 4)
    payload["accuracy_difference"] = round(payload["alignloop"]["accuracy"] - payload["trl"]["accuracy"], 4)
    payload["mcnemar_p"] = sorted(p_values)[(len(p_values) - 1) // 2]
    payload["workload"] = {
        "model": base_model, "train": args.train, "train_pairs": args.train_pairs or "all",
        "heldout": args.heldout, "heldout_pairs": pairs[0][0]["pairs"], "heldout_pairs_cut": pairs[0][0]["pairs_cut"],
        "eval_max_length": args.eval_max_length, "threads": args.threads, "max_steps": args.max_steps,
        "alignloop": {"config": str(args.config), "overrides": overrides, "precision": cfg.train.precision},
        "trl": {"lr": args.trl_lr, "batch": args.trl_batch, "max_length": args.trl_max_length,
                "epochs": args.trl_epochs, "precision": trl_precision, "full_fine_tuning": True},
        "scoring": "same token ids (chat template via alignloop.data.tokenize_prompt_completion, base tokenizer), "
                   "fp32, one sequence per forward; alignloop: RewardModel.load; TRL: "
                   "AutoModelForSequenceClassification",
    }
    for side in ("alignloop", "trl"):
        r = payload[side]
        low, high = r["accuracy_ci95"]
        print(f"{side:>9}: held-out accuracy {r['accuracy']:.3f} [{low:.3f}, {high:.3f}] on "
              f"{payload['workload']['heldout_pairs']} pairs; train {r['train_seconds']:.1f} s, "
              f"train+eval {r['train_eval_seconds']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    print(f"McNemar exact p (alignloop vs TRL on the same pairs): {payload['mcnemar_p']:.4g}")
    print_spread(payload, keys=KEYS)
    final_json_line(payload)
    return payload


if __name__ == "__main__":
    main()
