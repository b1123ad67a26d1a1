"""Split the bundled human preference data into a fixed train part and a fixed held-out part.

Deterministic: records are ordered by a SHA-256 of their first user message, so the same input always gives the
same split, and records that open with the same question land on the same side (no prompt leaks across).

    python scripts/split_human_prefs.py SOURCE_DIR   # SOURCE_DIR holds hh-harmless-pairs.jsonl, oasst-rankings.jsonl
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "alignloop" / "resources" / "data"
SPLITS = {"hh-harmless-pairs.jsonl": ("hh-harmless", 400), "oasst-rankings.jsonl": ("oasst-rankings", 60)}


def first_user_message(record: dict) -> str:
    prompt = record["prompt"]
    if isinstance(prompt, str):
        return prompt
    return next(m["content"] for m in prompt if m["role"] == "user")


def split(lines: list[str], held_out: int) -> tuple[list[str], list[str]]:
    def key(line: str) -> str:
        return hashlib.sha256(first_user_message(json.loads(line)).encode()).hexdigest()

    groups: dict[str, list[str]] = {}
    for line in lines:
        groups.setdefault(key(line), []).append(line)
    train, heldout = [], []
    for k in sorted(groups):
        (heldout if len(heldout) < held_out else train).extend(groups[k])
    order = {line: i for i, line in enumerate(lines)}  # keep the source order inside each part
    return sorted(train, key=order.__getitem__), sorted(heldout, key=order.__getitem__)


def main(source: Path) -> None:
    for name, (stem, held_out) in SPLITS.items():
        lines = [line for line in (source / name).read_text(encoding="utf-8").splitlines() if line.strip()]
        train, heldout = split(lines, held_out)
        (OUT / f"{stem}-train.jsonl").write_text("".join(line + "\n" for line in train), encoding="utf-8")
        (OUT / f"{stem}-heldout.jsonl").write_text("".join(line + "\n" for line in heldout), encoding="utf-8")
        print(f"{name}: {len(train)} train, {len(heldout)} held out")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
