"""Held-out implicit-reward accuracy of a DPO policy (or a uniform weight average of several) against a reference.

Scores pairs the way the DPO stage's evaluation does (chat template, ``--max-length`` / ``--max-prompt-length``
truncation, batches of ``--batch-size`` pairs in file order, a pair counts when β·log π/π_ref is strictly
higher for the chosen answer), with the reference's log-probs computed the way the stage's cache computes
them (length-sorted batches). ``--precision`` sets both forwards: how much the count moves between bf16
autocast and fp32 is the evaluation's own numerical noise (docs/dpo.md, On real human preferences).
Several ``--policy`` folders are averaged weight by weight first (a "model soup"); they must share one
architecture.

    python benchmarks/dpo_accuracy.py --policy runs/dpo-from-sft/model --reference runs/sft-hh/model
    python benchmarks/dpo_accuracy.py --policy runs/a/model runs/b/model --reference runs/sft-hh/model --precision fp32

The last line printed is one JSON object: accuracy, correct, pairs, the 95% Wilson interval, seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from alignloop.algos.dpo_losses import dpo_loss
from alignloop.models import load_tokenizer
from alignloop.models.loading import load_causal_lm
from alignloop.pipeline.runner import wilson_interval
from alignloop.stages.dpo import reference as refcache
from alignloop.stages.dpo.batch import collate_pairs, mask_dtype_for
from alignloop.stages.dpo.data import load_pairs, tokenize_pairs


def averaged_policy(folders: list[str]) -> torch.nn.Module:
    model = load_causal_lm(folders[0], trainable=False)  # frozen, in eval mode
    if len(folders) == 1:
        return model
    files = [Path(f) / "model.safetensors" for f in folders]
    for file in files:
        if not file.is_file():
            sys.exit(f"{file}: not found (averaging reads one unsharded model.safetensors per folder)")
    states = [load_file(str(file)) for file in files]
    names = set(states[0])
    for folder, state in zip(folders[1:], states[1:]):
        if set(state) != names or any(state[k].shape != states[0][k].shape for k in names):
            sys.exit(f"{folder}: its weights do not match {folders[0]}'s names and shapes; cannot average them")
    average = {k: sum(s[k].float() for s in states) / len(states) for k in names}
    missing, unexpected = model.load_state_dict(average, strict=False)
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        sys.exit(f"{folders[0]}: weights missing {sorted(set(missing) - tied)}, unexpected {sorted(unexpected)}")
    return model


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", nargs="+", required=True, help="model folder(s); several are averaged")
    p.add_argument("--reference", required=True, help="the reference model folder (DPO's starting point)")
    p.add_argument("--data", default="bundled:hh-harmless-heldout.jsonl", help="pair records (default: %(default)s)")
    p.add_argument("--max-length", type=int, default=192)
    p.add_argument("--max-prompt-length", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0: torch's default")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    tokenizer = load_tokenizer(args.reference)
    examples, dropped = tokenize_pairs(tokenizer, load_pairs(args.data), args.max_length, args.max_prompt_length)
    policy = averaged_policy(args.policy)
    reference = load_causal_lm(args.reference, trainable=False)
    collate = functools.partial(collate_pairs, pad_id=tokenizer.pad_token_id, mask_dtype=mask_dtype_for(policy))
    autocast = ((lambda: torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False))
                if args.precision == "bf16" else contextlib.nullcontext)
    device = torch.device("cpu")
    ref_chosen, ref_rejected = refcache.compute_logps(reference, examples, collate, args.batch_size, device, autocast)
    chosen, rejected = refcache.compute_logps(policy, examples, collate, args.batch_size, device, autocast, sort=False)
    _, chosen_rewards, rejected_rewards = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=args.beta)
    correct = int((chosen_rewards > rejected_rewards).sum())
    n = len(examples)
    result = {"policy": args.policy, "reference": args.reference, "data": args.data, "precision": args.precision,
              "pairs": n, "dropped": dropped, "correct": correct, "accuracy": correct / max(n, 1),
              "ci95": wilson_interval(correct, n), "seconds": round(time.perf_counter() - started, 1)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
