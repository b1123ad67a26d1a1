"""RLAIF judge agreement: the bundled model judges pairs of its own samples; agreement with the VADER gold.

Runs the ``label`` stage: ``label.policy`` (default: the judge model) samples two completions per prompt of
``bundled:prompts_train.jsonl``, the judge compares them in both A/B orders, and the verdicts are checked
against the quickstart's gold scorer (VADER sentiment; pairs with equal gold scores are skipped).

Usage: python benchmarks/judge_agreement.py [--pairs 200] [--set label.chain_of_thought=true ...]
The last line printed is the label stage's summary as one JSON object.
"""

from __future__ import annotations

import argparse
import json

from alignloop.config import load_config
from alignloop.stages.label import LabelConfig, LabelStage
from alignloop.train.run_dir import RunDir

CRITERIA = "Which response is more positive, warm and cheerful in tone?"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--out", default="runs/bench-judge")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()
    overrides = [
        "model=smollm2-135m-instruct", "data.train=bundled:prompts_train.jsonl", f"label.max_pairs={args.pairs}",
        "label.gold=vader", f"label.criteria={CRITERIA}", "label.max_new_tokens=32", "label.temperature=1.0",
        *args.overrides,
    ]
    summary = LabelStage.run(load_config(LabelConfig, None, overrides), RunDir(args.out))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
