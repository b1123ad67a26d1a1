"""Parse uploaded prompt and candidate files; every bad line is reported as ``file:line: field: reason``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from itertools import combinations

from alignloop.errors import DataError

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_PROBLEMS = 20


@dataclass
class Candidate:
    text: str
    model: str | None = None


@dataclass
class PromptRow:
    prompt: str
    candidates: list[Candidate] = field(default_factory=list)
    gold_best: int | None = None  # index into candidates of the known-best response


def _decode(data: bytes, filename: str) -> str:
    """UTF-8, with or without the byte-order mark that Windows editors put first."""
    if len(data) > MAX_UPLOAD_BYTES:
        raise DataError(f"{filename}: file is {len(data)} bytes, over the {MAX_UPLOAD_BYTES} byte limit")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(f"{filename}:{line}: not valid UTF-8") from None


def _lone_surrogate(value: object) -> bool:
    """JSON may spell a lone UTF-16 surrogate (``"\\ud800"``): it is no character, and no database stores it."""
    stack = [value]  # iterative: a line nested 900 deep must not overflow the Python stack here
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False


def _raise_if(problems: list[str]) -> None:
    if problems:
        raise DataError(problems[:MAX_PROBLEMS], total=len(problems))


def parse_prompts(data: bytes, filename: str) -> list[PromptRow]:
    """A ``.jsonl`` of ``{"prompt": str}`` (optionally with candidates, see parse_candidates),
    or any other file as plain text with one prompt per non-empty line."""
    text = _decode(data, filename)
    if not filename.endswith(".jsonl"):
        rows = [PromptRow(line.strip()) for line in text.splitlines() if line.strip()]
        if not rows:
            raise DataError(f"{filename}: no prompts found")
        return rows
    return parse_candidates(data, filename, require_candidates=False)


def parse_candidates(data: bytes, filename: str, require_candidates: bool = True) -> list[PromptRow]:
    """JSONL lines ``{"prompt": str, "responses": [str | {"text": str, "model": str}], "gold": int?}``."""
    text = _decode(data, filename)
    rows: list[PromptRow] = []
    problems: list[str] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{filename}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            problems.append(f"{where}: invalid JSON ({err.msg} at column {err.colno})")
            continue
        except RecursionError:
            problems.append(f"{where}: invalid JSON (nested too deeply)")
            continue
        if not isinstance(obj, dict):
            problems.append(f"{where}: expected a JSON object")
            continue
        if _lone_surrogate(obj):
            problems.append(f"{where}: text holds a lone surrogate escape (such as \\ud800), which is not valid "
                            "Unicode")
            continue
        row, errs = _row(obj, where, require_candidates)
        problems.extend(errs)
        if row is not None:
            rows.append(row)
    if not rows and not problems:
        problems.append(f"{filename}: no records found")
    _raise_if(problems)
    return rows


def _row(obj: dict, where: str, require_candidates: bool) -> tuple[PromptRow | None, list[str]]:
    prompt = obj.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return None, [f"{where}: prompt: missing or not a non-empty string"]
    raw = obj.get("responses")
    if raw is None and not require_candidates:
        return PromptRow(prompt), []
    if not isinstance(raw, list) or len(raw) < 2:
        return None, [f"{where}: responses: need a list of at least 2 responses"]
    candidates: list[Candidate] = []
    for i, r in enumerate(raw):
        if isinstance(r, str):
            candidates.append(Candidate(r))
        elif isinstance(r, dict) and isinstance(r.get("text"), str):
            model = r.get("model")
            candidates.append(Candidate(r["text"], str(model) if model is not None else None))
        else:
            return None, [f"{where}: responses[{i}]: must be a string or {{\"text\": str, \"model\": str}}"]
    gold = obj.get("gold")
    if gold is not None and (not isinstance(gold, int) or isinstance(gold, bool) or not 0 <= gold < len(candidates)):
        return None, [f"{where}: gold: must be the index (0..{len(candidates) - 1}) of the best response"]
    return PromptRow(prompt, candidates, gold), []


@dataclass
class ItemSpec:
    prompt: str
    candidates: list[Candidate]
    gold_best: int | None


def item_specs(rows: list[PromptRow], task_type: str) -> list[ItemSpec]:
    """Pairwise and multi-criteria tasks show two responses: K candidates become every pair
    (for a gold prompt, only the pairs holding its known-best response). Ranking and Likert
    show all K at once."""
    specs: list[ItemSpec] = []
    for row in rows:
        if task_type not in ("pairwise", "criteria"):
            specs.append(ItemSpec(row.prompt, row.candidates, row.gold_best))
            continue
        for i, j in combinations(range(len(row.candidates)), 2):
            if row.gold_best is not None and row.gold_best not in (i, j):
                continue
            gold = None if row.gold_best is None else (0 if row.gold_best == i else 1)
            specs.append(ItemSpec(row.prompt, [row.candidates[i], row.candidates[j]], gold))
    return specs
