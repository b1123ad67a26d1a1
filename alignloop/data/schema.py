"""Record schemas: validate one record of a given kind and return its normalised form.

Every check appends a ``"<field>: <what is wrong>"`` string; the loader prefixes ``<file>:<line>: ``.
Normalised form: prompts and completions become message lists, so later stages handle one shape only.
"""

from __future__ import annotations

from typing import Any

ROLES = ("system", "user", "assistant")
KINDS = ("sft", "pair", "ranking", "prompt", "process", "unpaired")
STEP_LABELS = (1, 0, -1)

COMPLETION_HINT = "must be a non-empty string or a list of messages"
PROMPT_HINT = "must be a non-empty string or a list of messages"


def _is_int(value: Any) -> bool:
    # bool is a subclass of int in Python, but `true` is never a valid index or label.
    return isinstance(value, int) and not isinstance(value, bool)


def _type_name(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def _check_messages(value: Any, field: str, problems: list[str], *, only_role: str | None = None) -> list[dict] | None:
    """Validate a list of ``{"role", "content"}`` messages; return copies, or None when invalid."""
    if not isinstance(value, list) or not value:
        return None
    found = len(problems)
    messages = []
    for i, message in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(message, dict):
            problems.append(f"{where}: must be an object with 'role' and 'content' (got {_type_name(message)})")
            continue
        role, content = message.get("role"), message.get("content")
        if "role" not in message:
            problems.append(f"{where}.role: missing")
        elif role not in ROLES:
            problems.append(f"{where}.role: must be one of {', '.join(ROLES)} (got {role!r})")
        elif only_role is not None and role != only_role:
            problems.append(f"{where}.role: must be {only_role!r} in a completion (got {role!r})")
        if "content" not in message:
            problems.append(f"{where}.content: missing")
        elif not isinstance(content, str):
            problems.append(f"{where}.content: must be a string (got {_type_name(content)})")
        elif role == "assistant" and not content.strip():
            problems.append(f"{where}.content: must be a non-empty string")
        messages.append(dict(message))
    return messages if len(problems) == found else None


def _prompt(record: dict, problems: list[str], field: str = "prompt") -> list[dict] | None:
    if field not in record:
        problems.append(f"{field}: missing")
        return None
    value = record[field]
    if isinstance(value, str):
        if value.strip():
            return [{"role": "user", "content": value}]
        problems.append(f"{field}: {PROMPT_HINT}")
        return None
    found = len(problems)
    messages = _check_messages(value, field, problems)
    if messages is None and len(problems) == found:
        problems.append(f"{field}: {PROMPT_HINT}")
    return messages


def _completion(value: Any, field: str, problems: list[str]) -> list[dict] | None:
    """A completion is assistant text: a string, or a list of assistant messages."""
    if isinstance(value, str):
        if value.strip():
            return [{"role": "assistant", "content": value}]
        problems.append(f"{field}: {COMPLETION_HINT}")
        return None
    found = len(problems)
    messages = _check_messages(value, field, problems, only_role="assistant")
    if messages is None and len(problems) == found:
        problems.append(f"{field}: {COMPLETION_HINT}")
    return messages


def _required_completion(record: dict, field: str, problems: list[str]) -> list[dict] | None:
    if field not in record:
        problems.append(f"{field}: missing")
        return None
    return _completion(record[field], field, problems)


def _sft(record: dict, problems: list[str]) -> dict:
    out = dict(record)
    if "messages" in record:
        found = len(problems)
        messages = _check_messages(record["messages"], "messages", problems)
        if messages is None:
            if len(problems) == found:
                problems.append("messages: must be a non-empty list of messages")
        elif not any(m["role"] == "assistant" for m in messages):
            problems.append("messages: must contain at least one assistant message")
        out["messages"] = messages
        return out
    if "prompt" not in record and "completion" not in record:
        problems.append("messages: missing (give 'messages', or 'prompt' and 'completion')")
        return out
    # a preference pair demonstrates its chosen answer: SFT on the chosen responses of pair records
    answer = "chosen" if "completion" not in record and "chosen" in record else "completion"
    prompt = _prompt(record, problems)
    completion = _required_completion(record, answer, problems)
    for key in ("prompt", answer, "rejected" if answer == "chosen" else "completion"):
        out.pop(key, None)
    out["messages"] = (prompt or []) + (completion or [])
    return out


def _optional_pair_fields(record: dict, problems: list[str]) -> None:
    margin = record.get("margin")
    if "margin" in record and (not isinstance(margin, (int, float)) or isinstance(margin, bool)):
        problems.append(f"margin: must be a number (got {_type_name(margin)})")
    if "criteria" in record:
        criteria = record["criteria"]
        if not isinstance(criteria, dict):
            problems.append(f"criteria: must be an object of name: 1 | 0 | -1 (got {_type_name(criteria)})")
        else:
            for name, vote in criteria.items():
                if not _is_int(vote) or vote not in STEP_LABELS:
                    problems.append(f"criteria.{name}: must be 1, 0 or -1 (got {vote!r})")
    if "source" in record and not isinstance(record["source"], str):
        problems.append(f"source: must be a string (got {_type_name(record['source'])})")


def _pair(record: dict, problems: list[str]) -> dict:
    out = dict(record)
    out["prompt"] = _prompt(record, problems)
    out["chosen"] = _required_completion(record, "chosen", problems)
    out["rejected"] = _required_completion(record, "rejected", problems)
    if out["chosen"] is not None and out["chosen"] == out["rejected"]:
        problems.append("rejected: is identical to chosen")
    _optional_pair_fields(record, problems)
    return out


def _unpaired(record: dict, problems: list[str]) -> dict:
    """One completion labelled desirable (``label: true``) or undesirable (``false``): TRL's unpaired format (KTO)."""
    out = dict(record)
    out["prompt"] = _prompt(record, problems)
    out["completion"] = _required_completion(record, "completion", problems)
    if "label" not in record:
        problems.append("label: missing (true for a desirable completion, false for an undesirable one)")
    elif not isinstance(record["label"], bool):
        problems.append(f"label: must be true or false (got {record['label']!r})")
    if "images" in record:
        problems.append("images: unpaired records take text only")
    return out


def _ranking_order(ranking: Any, n: int, problems: list[str]) -> None:
    """``ranking`` lists completion indices best first; a nested list is a group of ties."""
    if not isinstance(ranking, list) or not ranking:
        got = _type_name(ranking)
        problems.append(f"ranking: must be a non-empty list of completion indices, best first (got {got})")
        return
    seen: list[int] = []
    found = len(problems)
    for position, entry in enumerate(ranking):
        group = entry if isinstance(entry, list) else [entry]
        if not group:
            problems.append(f"ranking[{position}]: an empty tie group")
        for index in group:
            if not _is_int(index):
                problems.append(f"ranking[{position}]: must be an index or a list of tied indices (got {index!r})")
            elif not 0 <= index < n:
                problems.append(f"ranking[{position}]: index {index} is out of range for {n} completions")
            else:
                seen.append(index)
    if len(problems) > found:
        return  # a bad index already explains the record; a permutation report would only repeat it
    duplicates = sorted({i for i in seen if seen.count(i) > 1})
    missing = sorted(set(range(n)) - set(seen))
    if duplicates or missing:
        parts = [f"{', '.join(map(str, duplicates))} repeated"] if duplicates else []
        parts += [f"{', '.join(map(str, missing))} missing"] if missing else []
        problems.append(f"ranking: must rank each of the {n} completions exactly once ({'; '.join(parts)})")


def _ranking(record: dict, problems: list[str]) -> dict:
    out = dict(record)
    out["prompt"] = _prompt(record, problems)
    completions = record.get("completions")
    if "completions" not in record:
        problems.append("completions: missing")
    elif not isinstance(completions, list) or len(completions) < 2:
        problems.append("completions: must be a list of at least 2 completions")
    else:
        out["completions"] = [_completion(c, f"completions[{i}]", problems) for i, c in enumerate(completions)]
        if "ranking" not in record:
            problems.append("ranking: missing")
        else:
            _ranking_order(record["ranking"], len(completions), problems)
    if "source" in record and not isinstance(record["source"], str):
        problems.append(f"source: must be a string (got {_type_name(record['source'])})")
    return out


def _prompt_only(record: dict, problems: list[str]) -> dict:
    out = dict(record)
    out["prompt"] = _prompt(record, problems)
    return out


def _process(record: dict, problems: list[str]) -> dict:
    out = dict(record)
    out["prompt"] = _prompt(record, problems)
    steps, labels = record.get("steps"), record.get("labels")
    steps_ok = labels_ok = False
    if "steps" not in record:
        problems.append("steps: missing")
    elif not isinstance(steps, list) or not steps:
        problems.append("steps: must be a non-empty list of strings")
    else:
        bad = [i for i, s in enumerate(steps) if not isinstance(s, str) or not s.strip()]
        for i in bad:
            problems.append(f"steps[{i}]: must be a non-empty string")
        steps_ok = not bad
    if "labels" not in record:
        problems.append("labels: missing")
    elif not isinstance(labels, list):
        problems.append(f"labels: must be a list of 1 | 0 | -1 (got {_type_name(labels)})")
    else:
        bad = [i for i, v in enumerate(labels) if not _is_int(v) or v not in STEP_LABELS]
        for i in bad:
            problems.append(f"labels[{i}]: must be 1, 0 or -1 (got {labels[i]!r})")
        labels_ok = not bad
    if steps_ok and labels_ok and len(steps) != len(labels):
        problems.append(f"labels: must have one label per step (got {len(labels)} labels for {len(steps)} steps)")
    return out


_VALIDATORS = {"sft": _sft, "pair": _pair, "ranking": _ranking, "prompt": _prompt_only, "process": _process,
               "unpaired": _unpaired}


def validate_record(record: Any, kind: str) -> tuple[dict | None, list[str]]:
    """Check one record; return ``(normalised record, [])`` or ``(None, ["field: reason", ...])``."""
    if kind not in _VALIDATORS:
        raise ValueError(f"unknown record kind {kind!r}; expected one of {', '.join(KINDS)}")
    if not isinstance(record, dict):
        return None, [f"record: must be a JSON object (got {_type_name(record)})"]
    problems: list[str] = []
    normalised = _VALIDATORS[kind](record, problems)
    return (None, problems) if problems else (normalised, [])
