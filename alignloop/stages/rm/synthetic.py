"""Synthetic preference data with a KNOWN hidden scoring rule and Bradley–Terry label noise.

Completions are short reviews built from clauses like "The coffee was wonderful."; the hidden score of a
completion is the number of positive adjectives minus the number of negative ones. A pair is labelled
``a ≻ b`` with probability ``σ((s_a − s_b) / temperature)`` (noisy Bradley–Terry); a ranking is sampled from
the Plackett–Luce model with the same scores. With ``criteria=True`` some completions also carry an unsafe
suggestion ("Bring a knife."): criterion ``helpful`` is the sentiment score, ``harmless`` is minus the unsafe
count, and the overall label follows ``helpful + 2·harmless``.

Because the rule is known, tests can check that a reward model learns it (held-out accuracy against the
noisy labels, whose Bayes-optimal value ``bayes_accuracy`` reports). Run as a script to write a JSONL file:
``python -m alignloop.stages.rm.synthetic out.jsonl --n 400 [--kind ranking] [--criteria]``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

POSITIVE = ["wonderful", "excellent", "delightful", "lovely", "superb", "fantastic", "pleasant", "great"]
NEGATIVE = ["terrible", "awful", "horrible", "dreadful", "poor", "nasty", "disappointing", "bad"]
NEUTRAL = ["ordinary", "typical", "standard", "usual", "average", "plain"]
NOUNS = ["coffee", "service", "room", "view", "music", "staff", "bread", "garden", "lighting", "menu"]
PLACES = ["cafe", "hotel", "museum", "bakery", "park", "library", "restaurant", "market"]
UNSAFE = ["knife", "lighter", "firework", "crowbar"]
HARMLESS_WEIGHT = 2.0


def _sigmoid(x: float) -> float:
    return 0.5 * (1.0 + math.tanh(0.5 * x))


def helpful_score(text: str) -> int:
    words = [w.strip(".,!").lower() for w in text.split()]
    return sum(w in POSITIVE for w in words) - sum(w in NEGATIVE for w in words)


def harmless_score(text: str) -> int:
    words = [w.strip(".,!").lower() for w in text.split()]
    return -sum(w in UNSAFE for w in words)


def hidden_score(text: str, criteria: bool = False) -> float:
    """The rule the labels come from."""
    return helpful_score(text) + (HARMLESS_WEIGHT * harmless_score(text) if criteria else 0.0)


def _completion(rng: random.Random, clauses: int, criteria: bool) -> str:
    parts = []
    for noun in rng.sample(NOUNS, clauses):
        adjective = rng.choice(rng.choice([POSITIVE, NEGATIVE, NEUTRAL]))
        parts.append(f"The {noun} was {adjective}.")
    if criteria and rng.random() < 0.4:
        parts.insert(rng.randrange(len(parts) + 1), f"Bring a {rng.choice(UNSAFE)}.")
    return " ".join(parts)


def _prompt(rng: random.Random) -> str:
    return f"How was your visit to the {rng.choice(PLACES)}?"


def _distinct_completions(rng: random.Random, k: int, clauses: int, criteria: bool) -> list[str]:
    texts: list[str] = []
    while len(texts) < k:
        text = _completion(rng, clauses, criteria)
        if text not in texts:
            texts.append(text)
    return texts


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def synthetic_preferences(
    n: int,
    *,
    seed: int = 0,
    temperature: float = 0.5,
    kind: str = "pair",
    k: int = 4,
    clauses: int = 3,
    criteria: bool = False,
) -> list[dict]:
    """``n`` pair (or ranking) records labelled by noisy Bradley–Terry (or Plackett–Luce) on ``hidden_score``."""
    if kind not in ("pair", "ranking"):
        raise ValueError(f"kind must be 'pair' or 'ranking', not {kind!r}")
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        prompt = _prompt(rng)
        if kind == "pair":
            a, b = _distinct_completions(rng, 2, clauses, criteria)
            p_a = _sigmoid((hidden_score(a, criteria) - hidden_score(b, criteria)) / temperature)
            chosen, rejected = (a, b) if rng.random() < p_a else (b, a)
            record: dict = {"prompt": prompt, "chosen": chosen, "rejected": rejected, "source": "synthetic"}
            if criteria:
                record["criteria"] = {
                    "helpful": _sign(helpful_score(chosen) - helpful_score(rejected)),
                    "harmless": _sign(harmless_score(chosen) - harmless_score(rejected)),
                }
            records.append(record)
            continue
        texts = _distinct_completions(rng, k, clauses, criteria)
        remaining = list(range(k))
        order = []
        while remaining:  # Plackett–Luce: pick the next best with probability ∝ exp(score / T)
            weights = [math.exp(hidden_score(texts[i], criteria) / temperature) for i in remaining]
            pick = rng.choices(remaining, weights=weights)[0]
            order.append(pick)
            remaining.remove(pick)
        records.append({"prompt": prompt, "completions": texts, "ranking": order, "source": "synthetic"})
    return records


def bayes_accuracy(records: list[dict], temperature: float = 0.5, criteria: bool = False) -> float:
    """Expected accuracy of the true rule against these noisy pair labels (the best any model can do)."""
    total = 0.0
    for record in records:
        diff = abs(hidden_score(record["chosen"], criteria) - hidden_score(record["rejected"], criteria))
        total += _sigmoid(diff / temperature) if diff else 0.5
    return total / len(records)


def write_jsonl(records: list[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write synthetic preference records with a known hidden rule.")
    parser.add_argument("out")
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--kind", choices=["pair", "ranking"], default="pair")
    parser.add_argument("--k", type=int, default=4, help="completions per ranking")
    parser.add_argument("--temperature", type=float, default=0.5)
    parser.add_argument("--criteria", action="store_true", help="add helpful/harmless criterion labels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    records = synthetic_preferences(
        args.n, seed=args.seed, temperature=args.temperature, kind=args.kind, k=args.k, criteria=args.criteria
    )
    print(write_jsonl(records, args.out))


if __name__ == "__main__":
    main()
