"""PRM vs outcome reward (ORM) at picking correct solutions in best-of-N, on the bundled arithmetic set.

Both reward models are the same backbone + scalar head trained by the ``prm`` stage on the same
``arith_steps_train.jsonl`` records; only the supervision differs (per-step labels vs one label per
solution). Candidates: for every prompt of ``arith_steps_eval.jsonl``, N solutions written by the
bundled data generator (``scripts/make_arith_data.py``'s ``write_steps``): each is correct with
probability ``--p-correct`` and otherwise carries one mistake (wrong result, mis-copied operand, or
wrong final answer) at a random step; ground truth comes from ``arith_checker``. These candidates are
GENERATED, not sampled from a policy (the 135M model almost never solves the chained problems).

Usage: python benchmarks/prm_best_of_n.py [--model smollm2-135m-instruct] [--steps 60] [--n 8]
       python benchmarks/prm_best_of_n.py --scratch 128,4 --steps 300 --lr 1e-3   (a small Llama trained from scratch)
The last line printed is one JSON object with the best-of-N accuracies.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import re
import sys
import time
from pathlib import Path

import torch

from alignloop.config import load_config
from alignloop.data import load_records
from alignloop.rewards.arith_checker import solution_is_correct
from alignloop.rewards.process import ProcessRewardSource, aggregate_steps
from alignloop.train.loop import train
from alignloop.stages.prm import PRMConfig, PRMStage

ROOT = Path(__file__).resolve().parent.parent
_ACTION = re.compile(r"(add|subtract|multiply by) (\d+)")
_OPS = {"add": "+", "subtract": "-", "multiply by": "*"}
_APPLY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def _generator():
    spec = importlib.util.spec_from_file_location("make_arith_data", ROOT / "scripts" / "make_arith_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def equations_of(prompt: str) -> list[tuple[int, str, int, int]]:
    """The correct chain of a "Start with a. Add b, ..., then multiply by c." prompt."""
    value = int(re.match(r"Start with (\d+)\.", prompt).group(1))
    question = prompt.split(". ", 1)[1].split("What is the result?")[0]
    chain = []
    for verb, number in _ACTION.findall(question.lower()):
        op, operand = _OPS[verb], int(number)
        result = _APPLY[op](value, operand)
        chain.append((value, op, operand, result))
        value = result
    return chain


def candidates(prompt: str, n: int, p_correct: float, rng: random.Random, write_steps) -> list[list[str]]:
    chain = equations_of(prompt)
    out = []
    for _ in range(n):
        error_at = None if rng.random() < p_correct else rng.randint(0, len(chain))
        out.append(write_steps(chain, error_at, rng))
    return out


def scratch_model(out: Path, hidden: int, layers: int) -> str:
    """A randomly initialised small Llama over the bundled tokenizer, saved as an HF folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from alignloop.models import load_tokenizer, save_model

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=49152, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )
    save_model(LlamaForCausalLM(config), load_tokenizer("smollm2-135m-instruct"), out)
    return str(out)


def train_rm(model: str, supervision: str, steps: int, out: Path, lora: bool, lr: float) -> float:
    overrides = [
        f"model={model}", f"prm.supervision={supervision}", f"train.max_steps={steps}", "train.batch_size=16",
        f"train.lr={lr}", "train.warmup_steps=10", "train.save_every=0", "train.resume=never", "train.precision=fp32",
    ]
    if lora:
        overrides += ["lora.r=16", "lora.alpha=32"]
    start = time.time()
    summary = train(PRMStage(load_config(PRMConfig, None, overrides)), out)
    print(f"{supervision}: {json.dumps({k: v for k, v in summary.items() if k.startswith('eval/')})}", file=sys.stderr)
    return time.time() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--p-correct", type=float, default=0.25)
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    parser.add_argument("--scratch", default=None,
                        help="HIDDEN,LAYERS: train a randomly initialised small Llama (full)")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-prm"))
    args = parser.parse_args()
    lora = not args.full
    if args.scratch:
        hidden, layers = (int(x) for x in args.scratch.split(","))
        args.model, lora = scratch_model(args.out / "scratch-model", hidden, layers), False
    lr = args.lr or (3e-4 if lora else 3e-5)
    torch.manual_seed(0)
    write_steps = _generator().write_steps
    rng = random.Random(0)
    records = load_records("bundled:arith_steps_eval.jsonl", "process")[: args.prompts]
    prompts = [r["prompt"][0]["content"] for r in records]
    cands = [candidates(p, args.n, args.p_correct, rng, write_steps) for p in prompts]
    correct = [[solution_is_correct(p, c) for c in cs] for p, cs in zip(prompts, cands)]

    model_name = args.scratch and f"scratch llama {args.scratch}" or args.model
    result = {"benchmark": "prm_best_of_n", "model": model_name, "lr": lr, "train_steps": args.steps, "n": args.n,
              "prompts": len(prompts), "candidates": "generated (write_steps), not sampled",
              "oracle": sum(any(c) for c in correct) / len(prompts),
              "random_pick": sum(sum(c) / len(c) for c in correct) / len(prompts)}
    flat_prompts = [p for p, cs in zip(prompts, cands) for _ in cs]
    flat_steps = [c for cs in cands for c in cs]
    for supervision in ("process", "outcome"):
        out = args.out / supervision
        result[f"{supervision}_train_seconds"] = round(train_rm(args.model, supervision, args.steps, out, lora, lr), 1)
        source = ProcessRewardSource.from_pretrained(out)
        step_probs = source.score_steps(flat_prompts, flat_steps)
        aggregates = ("min", "product", "last") if supervision == "process" else ("last",)
        for how in aggregates:
            scores = [aggregate_steps(s, how) for s in step_probs]
            picks = 0
            for k in range(len(prompts)):
                block = scores[k * args.n : (k + 1) * args.n]
                picks += correct[k][max(range(args.n), key=block.__getitem__)]
            name = "prm" if supervision == "process" else "orm"
            result[f"{name}_{how}_best_of_n_accuracy"] = picks / len(prompts)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
