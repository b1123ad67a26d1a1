"""Per-prompt greedy exact match of two models on the same prompts, with an exact McNemar test.

Used for the GRPO acceptance figure (docs/grpo.md): the base model and a GRPO-trained model answer the
same held-out arithmetic prompts greedily; the script counts prompts each one gets right, the prompts that
flip in each direction, and the exact two-sided McNemar p-value (binomial test on the discordant pairs),
which says whether the gain could be chance on this prompt set.

    python benchmarks/paired_exact_match.py smollm2-135m-instruct runs/grpo/model [--prompts 100]

``--env-a calculator`` / ``--env-b calculator`` let that model answer with the calculator tool (multi-turn,
``--max-turns``, ``--max-new-tokens`` then the budget of the whole episode; docs/tools.md); the final answer
is scored.

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import torch

from alignloop.data import load_records
from alignloop.envs import ENVIRONMENTS, MultiTurnSampler
from alignloop.eval.metrics import mcnemar_exact
from alignloop.models import load_causal_lm
from alignloop.rewards.rules import exact_match
from alignloop.rollout.hf import HFSampler
from alignloop.stages.rl.prompts import RLPrompts


def greedy_correct(model_name: str, records: list[dict], max_new_tokens: int, env: str | None = None,
                   max_turns: int = 4, temperature: float = 0.0, seed: int = 0) -> tuple[list[bool], float]:
    """Per-record exact match of one answer each: greedy, or one sample at ``temperature`` (seeded)."""
    model = load_causal_lm(model_name, trainable=False)
    model.eval()
    prompts = RLPrompts(model_name, max_length=4096)  # vision-language models: prompts with their images
    sampler = HFSampler(model, prompts.tokenizer, batch_size=50)
    if env is not None:
        sampler = MultiTurnSampler(sampler, prompts.tokenizer, ENVIRONMENTS[env], max_turns=max_turns)
    torch.manual_seed(seed)
    rollout = sampler.generate(prompts.for_sampler(records), n=1, max_new_tokens=max_new_tokens,
                               temperature=temperature, seed=seed)
    scores = exact_match(rollout.prompts, rollout.responses, answer=[r["answer"] for r in records])
    return [s > 0 for s in scores], float(rollout.response_lengths().float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_a", help="baseline model (name or directory)")
    parser.add_argument("model_b", help="model to compare (name or directory)")
    parser.add_argument("--data", default="bundled:arith_eval.jsonl")
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--env-a", choices=sorted(ENVIRONMENTS), help="model A answers with this tool environment")
    parser.add_argument("--env-b", choices=sorted(ENVIRONMENTS), help="model B answers with this tool environment")
    parser.add_argument("--max-turns", type=int, default=4, help="assistant turns per episode with --env-*")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="0 (default): greedy; > 0: ONE sample per prompt at this temperature (the policy's own "
                             "distribution, which RL optimises), so the McNemar pairs stay one per prompt")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed with --temperature")
    args = parser.parse_args()
    records = list(load_records(args.data, "prompt"))[: args.prompts]
    sampling = dict(temperature=args.temperature, seed=args.seed)
    a, len_a = greedy_correct(args.model_a, records, args.max_new_tokens, args.env_a, args.max_turns, **sampling)
    b, len_b = greedy_correct(args.model_b, records, args.max_new_tokens, args.env_b, args.max_turns, **sampling)
    gained = sum(1 for x, y in zip(a, b) if y and not x)
    lost = sum(1 for x, y in zip(a, b) if x and not y)
    result = {
        "prompts": len(records), "temperature": args.temperature,
        "accuracy_a": sum(a) / len(a), "accuracy_b": sum(b) / len(b),
        "both_right": sum(1 for x, y in zip(a, b) if x and y), "gained": gained, "lost": lost,
        "mcnemar_p": round(mcnemar_exact(gained, lost), 5),
        "mean_length_a": round(len_a, 2), "mean_length_b": round(len_b, 2),
    }
    kinds = sorted({r["task"] for r in records if "task" in r})
    for kind in kinds:  # per kind of question (the bundled image task: count, colour, compare)
        rows = [i for i, r in enumerate(records) if r.get("task") == kind]
        result[f"accuracy_a/{kind}"] = round(sum(a[i] for i in rows) / len(rows), 3)
        result[f"accuracy_b/{kind}"] = round(sum(b[i] for i in rows) / len(rows), 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
