"""Part of a data file, chosen in the path itself: ``FILE[START:END]`` or ``FILE[K/N]``.

* ``data.jsonl[0:452]`` keeps records 0 to 451 (positions among the file's records, 0-based, ``END`` excluded;
  either end may be left out: ``[:100]``, ``[452:]``). Blank lines do not count; invalid records do.
* ``data.jsonl[1/2]`` keeps part 1 of 2 when the records are dealt into N parts by a hash of their first user
  message (the prompt's, or the conversation's for SFT records): records that open with the same question land in
  the same part, so two parts never share a prompt. Deterministic; part sizes are only roughly equal.

The selection lives in the path, so every stage and every key that takes a data file accepts it (``data.train``,
``data.eval``, ``rm.more_train``, ``--set data.train=...``). A file whose own name ends in ``]`` is read whole.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Iterable, TypeVar

from alignloop.errors import DataError

__all__ = ["Selection", "split_selection"]

_SELECTOR = re.compile(r"^(?P<base>.+)\[(?P<inner>[^\[\]]*)\]$")
_RANGE = re.compile(r"^\s*(?P<start>\d*)\s*:\s*(?P<end>\d*)\s*$")
_PART = re.compile(r"^\s*(?P<k>\d+)\s*/\s*(?P<n>\d+)\s*$")
_HELP = "expected [START:END] (record positions, 0-based, END excluded) or [K/N] (part K of N, grouped by prompt)"

T = TypeVar("T")


@dataclass(frozen=True)
class Selection:
    """Which records of a file to keep; ``text`` is the selector as written, for messages."""

    text: str
    start: int | None = None
    end: int | None = None
    part: tuple[int, int] | None = None

    def apply(self, items: Iterable[T], value_of: Any, label: str) -> list[T]:
        """The selected ``items`` (file order); ``value_of(item)`` gives the parsed record (None if unparsable)."""
        items = list(items)
        if self.part is None:
            start, end = self.start or 0, len(items) if self.end is None else self.end
            if end > len(items) or start >= len(items):
                raise DataError(f"{label}{self.text}: the file holds {len(items)} records; "
                                f"[{start}:{end}] reaches past its end")
            return items[start:end]
        k, n = self.part
        # an unparsable record goes to every part, so loading any part reports it with its line
        return [item for item in items if value_of(item) is None or part_of(value_of(item), n) == k]


def part_of(record: Any, n: int) -> int:
    """The part (1..n) of a record: a hash of its first user message, else of the whole record."""
    key = _first_user_message(record)
    if key is None:
        key = json.dumps(record, sort_keys=True, ensure_ascii=False)
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest(), 16) % n + 1


def _first_user_message(record: Any) -> str | None:
    if not isinstance(record, dict):
        return None
    conversation = record.get("prompt", record.get("messages"))
    if isinstance(conversation, str):
        return conversation
    if isinstance(conversation, list):
        for message in conversation:
            if isinstance(message, dict) and message.get("role") == "user" and isinstance(message.get("content"), str):
                return message["content"]
    return None


def split_selection(path: str, exists: Any) -> tuple[str, Selection | None]:
    """``(file path, selection)`` of a data path; ``exists(text)`` says whether a path names a real file, so a
    file whose name ends in ``]`` is never taken for a selection."""
    match = _SELECTOR.match(path)
    if match is None or exists(path):
        return path, None
    base, inner = match.group("base"), match.group("inner")
    text = f"[{inner}]"
    if (found := _RANGE.match(inner)) is not None:
        start = int(found.group("start")) if found.group("start") else None
        end = int(found.group("end")) if found.group("end") else None
        if start is not None and end is not None and end <= start:
            raise DataError(f"{path}: the selection {text} is empty ({_HELP})")
        return base, Selection(text, start=start, end=end)
    if (found := _PART.match(inner)) is not None:
        k, n = int(found.group("k")), int(found.group("n"))
        if n < 2 or not 1 <= k <= n:
            raise DataError(f"{path}: {text}: K/N needs N >= 2 and 1 <= K <= N")
        return base, Selection(text, part=(k, n))
    raise DataError(f"{path}: {text}: not a record selection; {_HELP}")
