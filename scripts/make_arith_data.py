"""Generate the bundled arithmetic data (deterministic: the same seed writes the same bytes).

Writes to ``alignloop/resources/data/`` (or ``--out``):
  * ``arith_train.jsonl`` / ``arith_eval.jsonl`` — RL prompt records ``{"prompt", "answer"}``: a mix
    of one-step (+, -, * with small numbers) and two-step problems, easy to hard, so a 135M
    instruct model gets some but not all of them right;
  * ``arith_steps_train.jsonl`` / ``arith_steps_eval.jsonl`` — process-supervision records
    ``{"prompt", "steps", "labels"}``: chained multi-step solutions, about half with one deliberate
    mistake (a wrong result, a mis-copied operand, or a wrong final answer). The labels come from
    ``alignloop.rewards.arith_checker.label_steps``, not from the generator's knowledge.

Usage: ``python scripts/make_arith_data.py [--out DIR] [--seed N] [--check]``; ``--check`` exits 1
when the files on disk differ from what would be written.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from alignloop.rewards.arith_checker import CORRECT, WRONG, label_steps

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "alignloop" / "resources" / "data"
ANSWER_INSTRUCTION = "End your answer with '#### <number>'."
STEPS_INSTRUCTION = "Write one step per line as 'a op b = c' and end with '#### <number>'."
N_PROMPTS = {"train": 500, "eval": 100}
N_STEP_RECORDS = {"train": 400, "eval": 100}

_APPLY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
_VERB = {"+": "add {n}", "-": "subtract {n}", "*": "multiply by {n}"}


def one_step_easy(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    op = rng.choice("+*")
    return f"{a} {op} {b}", _APPLY[op](a, b)


def one_step_two_digit(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    if rng.random() < 0.5:
        return f"{a} + {b}", a + b
    a, b = max(a, b), min(a, b)
    return f"{a} - {b}", a - b


def one_step_product(rng: random.Random) -> tuple[str, int]:
    a, b = rng.randint(2, 9), rng.randint(11, 30)
    return f"{a} * {b}", a * b


def two_step(rng: random.Random) -> tuple[str, int]:
    shape = rng.randrange(3)
    if shape == 0:
        a, b = rng.randint(10, 60), rng.randint(10, 60)
        c = rng.randint(1, a + b)
        return f"{a} + {b} - {c}", a + b - c
    if shape == 1:
        a, b, c = rng.randint(2, 9), rng.randint(2, 9), rng.randint(1, 30)
        return f"{a} * {b} + {c}", a * b + c
    a, b, c = rng.randint(2, 20), rng.randint(2, 20), rng.randint(2, 5)
    return f"({a} + {b}) * {c}", (a + b) * c


# (generator, share of the problems): easy first, two-step last.
PROBLEM_MIX = [(one_step_easy, 0.25), (one_step_two_digit, 0.25), (one_step_product, 0.15), (two_step, 0.35)]


def make_prompts(rng: random.Random, count: int) -> list[dict]:
    """``count`` distinct prompt records in PROBLEM_MIX proportions."""
    records: dict[str, dict] = {}
    for generator, share in PROBLEM_MIX:
        target = len(records) + round(share * count)
        while len(records) < min(target, count):
            expression, answer = generator(rng)
            prompt = f"What is {expression}? {ANSWER_INSTRUCTION}"
            records.setdefault(prompt, {"prompt": prompt, "answer": str(answer)})
    while len(records) < count:  # rounding shortfall
        expression, answer = two_step(rng)
        prompt = f"What is {expression}? {ANSWER_INSTRUCTION}"
        records.setdefault(prompt, {"prompt": prompt, "answer": str(answer)})
    ordered = list(records.values())
    rng.shuffle(ordered)
    return ordered


def make_chain(rng: random.Random) -> tuple[str, list[tuple[int, str, int, int]]]:
    """A problem "Start with a. Add b, multiply by c, ..." and its correct equations (left, op, right, result)."""
    value = rng.randint(2, 50)
    start = value
    equations = []
    for _ in range(rng.randint(2, 4)):
        # Keep every intermediate value positive and below a few hundred.
        op = rng.choice(("+*" if value < 200 else "+") + ("-" if value > 2 else ""))
        operand = rng.randint(2, 9) if op == "*" else rng.randint(1, 60 if op == "+" else value - 1)
        result = _APPLY[op](value, operand)
        equations.append((value, op, operand, result))
        value = result
    verbs = [_VERB[op].format(n=operand) for _, op, operand, _ in equations]
    actions = ", ".join(verbs[:-1]) + f", then {verbs[-1]}"
    prompt = f"Start with {start}. {actions[0].upper()}{actions[1:]}. What is the result? {STEPS_INSTRUCTION}"
    return prompt, equations


def write_steps(equations: list[tuple[int, str, int, int]], error_at: int | None, rng: random.Random) -> list[str]:
    """Step texts; from ``error_at`` on, the work carries one deliberate mistake forward consistently."""
    steps, carried = [], None
    for index, (left, op, right, result) in enumerate(equations):
        if carried is not None:  # after a mistake, keep computing correctly from the wrong value
            left, result = carried, _APPLY[op](carried, right)
        if index == error_at:
            if rng.random() < 0.5:  # arithmetic slip
                result += rng.choice([-10, -2, -1, 1, 2, 10])
            else:  # mis-copied operand, arithmetic right: "follows from correct work" catches it
                left += rng.choice([-3, -1, 1, 3, 20])
                result = _APPLY[op](left, right)
        steps.append(f"{left} {op} {right} = {result}")
        if index >= (error_at if error_at is not None else len(equations)):
            carried = result
    final = carried if carried is not None else equations[-1][3]
    if error_at == len(equations):  # wrong final answer
        final += rng.choice([-1, 1, 10])
    steps.append(f"#### {final}")
    return steps


def make_step_records(rng: random.Random, count: int, taken: set[str]) -> list[dict]:
    """``count`` process-supervision records with prompts not in ``taken``; about half contain a mistake."""
    records = []
    while len(records) < count:
        prompt, equations = make_chain(rng)
        if prompt in taken:
            continue
        error_at = rng.randint(0, len(equations)) if rng.random() < 0.5 else None
        steps = write_steps(equations, error_at, rng)
        labels = label_steps(prompt, steps, answer=equations[-1][3])
        first_wrong = labels.index(WRONG) if WRONG in labels else None
        if first_wrong != error_at:  # the injected mistake happened to be right (e.g. a copied operand that exists)
            continue
        assert error_at is not None or all(label == CORRECT for label in labels)
        taken.add(prompt)
        records.append({"prompt": prompt, "steps": steps, "labels": labels})
    return records


def build_all(seed: int) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    prompts = make_prompts(rng, N_PROMPTS["train"] + N_PROMPTS["eval"])
    taken: set[str] = set()
    step_train = make_step_records(rng, N_STEP_RECORDS["train"], taken)
    step_eval = make_step_records(rng, N_STEP_RECORDS["eval"], taken)
    return {
        "arith_train.jsonl": prompts[: N_PROMPTS["train"]],
        "arith_eval.jsonl": prompts[N_PROMPTS["train"] :],
        "arith_steps_train.jsonl": step_train,
        "arith_steps_eval.jsonl": step_eval,
    }


def render(records: list[dict]) -> str:
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--check", action="store_true", help="compare with the files on disk instead of writing")
    args = parser.parse_args(argv)
    stale = []
    for name, records in build_all(args.seed).items():
        path = args.out / name
        text = render(records)
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {len(records)} records to {path}")
    if stale:
        print("out of date (rerun scripts/make_arith_data.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
