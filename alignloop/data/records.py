"""Load records from JSONL / JSON / Parquet / a saved HF dataset, validate all of them, normalise them.

Problems are reported as ``<file>:<line>: <field>: <what is wrong>`` (``<file>:row <n>`` for Parquet and
HF datasets), and every bad record is reported, not only the first.
"""

from __future__ import annotations

import importlib.resources
import json
import logging
import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alignloop.data.images import check_images
from alignloop.data.schema import KINDS, validate_record
from alignloop.data.selection import Selection, split_selection
from alignloop.errors import DataError
from alignloop.utils.lazy import LazyModule

datasets = LazyModule("datasets")  # Parquet and saved HF datasets only (utils/lazy.py)
pq = LazyModule("pyarrow.parquet")

logger = logging.getLogger("alignloop")

BUNDLED_PREFIX = "bundled:"
_JSON_SUFFIXES = (".jsonl", ".json")
# The message fields whose <image> placeholders the record's images fill, per record kind.
_IMAGE_FIELDS = {"sft": ("messages",), "pair": ("prompt",), "ranking": ("prompt",), "prompt": ("prompt",),
                 "process": ("prompt",)}


class Records(list):
    """A list of normalised records that remembers where it came from and how many were skipped."""

    def __init__(self, items: list[dict] = (), *, source: str = "", skipped: int = 0):
        super().__init__(items)
        self.source = source
        self.skipped = skipped


def _bundled_root():
    return importlib.resources.files("alignloop.resources") / "data"


def _names_a_file(text: str) -> bool:
    if text.startswith(BUNDLED_PREFIX):
        return (_bundled_root() / text[len(BUNDLED_PREFIX) :]).is_file()
    return Path(text).expanduser().exists()


def split_data_path(path: str | Path) -> tuple[str, Selection | None]:
    """``(file, record selection or None)`` of a data path such as ``data.jsonl[0:100]`` (data/selection.py)."""
    return split_selection(str(path), _names_a_file)


def resolve_data_path(path: str | Path) -> Path:
    """Turn ``bundled:NAME`` into the packaged file ``alignloop/resources/data/NAME``; check the path exists.

    A record selection at the end (``FILE[0:100]``, ``FILE[1/2]``: data/selection.py) is dropped: this is the file."""
    text, _ = split_selection(str(path), _names_a_file)
    if text.startswith(BUNDLED_PREFIX):
        name = text[len(BUNDLED_PREFIX) :]
        resource = _bundled_root() / name
        if not name or not resource.is_file():
            available = sorted(p.name for p in _bundled_root().iterdir() if p.name.endswith(_JSON_SUFFIXES))
            raise DataError(f"{text}: no such bundled data file (available: {', '.join(available)})")
        # The package is installed as plain files (setuptools package-data), so the resource has a real path.
        return Path(str(resource))
    resolved = Path(text).expanduser()
    if not resolved.exists():
        raise DataError(f"{text}: no such file or directory")
    return resolved


def _read_text(path: Path, label: str) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        byte = f"0x{raw[err.start]:02x}"
        raise DataError(f"{label}:{line}: not UTF-8 text (byte {byte}); save the file as UTF-8") from None


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a valid number (JSON has no NaN or Infinity)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} overflows to infinity")
    return value


def _loads(text: str) -> Any:
    return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)


def _non_finite(value: Any, where: str = "") -> str | None:
    """The first field holding NaN or ±inf (Parquet and HF datasets can store them), or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return where or "value"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _non_finite(item, f"{where}.{key}" if where else str(key))
        if found:
            return found
    return None


def _iter_json_lines(path: Path, label: str) -> Iterator[tuple[str, Any, str | None]]:
    """Yield ``(location, value, parse_error)``; blank lines are skipped, line numbers start at 1."""
    text = _read_text(path, label)
    # A .json file may also be one JSON array of records (what pretty-printers and `json.dump` write).
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            items = _loads(text)
        except json.JSONDecodeError as err:
            yield f"{label}:{err.lineno}", None, f"invalid JSON: {err.msg} (column {err.colno})"
            return
        except ValueError as err:
            yield f"{label}", None, f"invalid JSON: {err}"
            return
        for number, item in enumerate(items, start=1):
            yield f"{label}:item {number}", item, None
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = _loads(line)
        except json.JSONDecodeError as err:
            yield f"{label}:{number}", None, f"invalid JSON: {err.msg} (column {err.colno})"
        except ValueError as err:
            yield f"{label}:{number}", None, f"invalid JSON: {err}"
        else:
            yield f"{label}:{number}", value, None


def _drop_nulls(row: dict) -> dict:
    # Columnar formats store a missing optional field as null; treat it as absent.
    return {key: value for key, value in row.items() if value is not None}


def _iter_rows(rows: list[dict], label: str) -> Iterator[tuple[str, Any, str | None]]:
    for number, row in enumerate(rows, start=1):
        yield f"{label}:row {number}", _drop_nulls(row), None


def _read_parquet(path: Path, label: str) -> list[dict]:
    try:
        return pq.read_table(path).to_pylist()
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"{label}: not a readable Parquet file ({str(err).splitlines()[0]})") from None


def _read_hf_dataset(path: Path, label: str) -> list[dict]:
    try:
        dataset = datasets.load_from_disk(str(path))
    except FileNotFoundError as err:
        raise DataError(f"{label}: not a dataset saved with datasets' save_to_disk ({err})") from err
    if isinstance(dataset, datasets.DatasetDict):
        splits = ", ".join(dataset.keys())
        raise DataError(f"{label}: holds several splits ({splits}); point to one split's folder, e.g. {label}/train")
    return dataset.to_list()


def _iter_source(path: Path, label: str) -> Iterator[tuple[str, Any, str | None]]:
    if path.is_dir():
        return _iter_rows(_read_hf_dataset(path, label), label)
    suffix = path.suffix.lower()
    if suffix in _JSON_SUFFIXES:
        return _iter_json_lines(path, label)
    if suffix == ".parquet":
        return _iter_rows(_read_parquet(path, label), label)
    raise DataError(
        f"{label}: unsupported data file type {suffix or '(none)'!r}; "
        "use .jsonl, .json, .parquet or a folder written by datasets' save_to_disk"
    )


def load_records(
    path: str | Path, kind: str, *, max_errors: int = 20, skip_invalid: bool = False
) -> Records:
    """Read, validate and normalise every record of ``kind`` (one of sft, pair, ranking, prompt, process).

    Raises ``DataError`` listing up to ``max_errors`` problems (and the total) when any record is bad,
    unless ``skip_invalid`` is set: then bad records are dropped, counted in ``.skipped`` and logged.
    """
    if kind not in KINDS:
        raise DataError(f"unknown record kind {kind!r}; expected one of {', '.join(KINDS)}")
    label = str(path)
    file_label, selection = split_selection(label, _names_a_file)
    resolved = resolve_data_path(file_label)
    base_dir = resolved.parent if resolved.is_file() else resolved
    records: list[dict] = []
    problems: list[str] = []
    total_problems = 0
    bad_records = 0
    first_problem = ""
    items = _iter_source(resolved, file_label)  # locations name the file itself: "data.jsonl:17"
    if selection is not None:
        items = selection.apply(items, lambda item: None if item[2] else item[1], file_label)
    for location, value, parse_error in items:
        bad_number = None if parse_error else _non_finite(value)
        if bad_number:
            parse_error = f"{bad_number}: NaN or infinite number"
        record, found = (None, [parse_error]) if parse_error else validate_record(value, kind)
        if record is not None and "images" in record:
            check_images(record, base_dir, found, fields=_IMAGE_FIELDS[kind])
            record = None if found else record
        if record is not None:
            records.append(record)
            continue
        bad_records += 1
        total_problems += len(found)
        problems.extend(f"{location}: {p}" for p in found[: max(0, max_errors - len(problems))])
        first_problem = first_problem or f"{location}: {found[0]}"
    if bad_records and (not skip_invalid or not records):
        raise DataError(problems or [first_problem], total_problems)
    if not records:
        raise DataError(f"{label}: no records")
    if bad_records:
        logger.warning("skipped %d invalid record(s) in %s; the first: %s", bad_records, label, first_problem)
    return Records(records, source=label, skipped=bad_records)


def first_record_keys(path: str | Path) -> set[str]:
    """The field names of a file's first record (JSONL / JSON array), or its columns (Parquet, HF dataset)."""
    resolved = resolve_data_path(path)
    if resolved.is_dir():
        return set(datasets.load_from_disk(str(resolved)).column_names)
    if resolved.suffix.lower() == ".parquet":
        try:
            return set(pq.read_schema(resolved).names)
        except (OSError, ValueError) as err:
            raise DataError(f"{path}: not a readable Parquet file ({str(err).splitlines()[0]})") from None
    text = _read_text(resolved, str(path))
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            first = json.loads(line)
        except json.JSONDecodeError:
            if line.lstrip().startswith("["):  # a .json file holding one array of records
                first = json.loads(text or "[]")
                first = first[0] if first else {}
            else:
                raise DataError(f"{path}:{number}: invalid JSON") from None
        return set(first) if isinstance(first, dict) else set()
    return set()


def truncate_pair(
    prompt_ids: list[int], completion_ids: list[int], max_length: int, max_prompt_length: int | None
) -> tuple[list[int], list[int]]:
    """Same rule as ``tokenize_prompt_completion``: prompt cut from the left, then completion from the right."""
    if max_prompt_length is not None and len(prompt_ids) > max_prompt_length:
        prompt_ids = prompt_ids[-max_prompt_length:]
    if len(prompt_ids) >= max_length:
        return prompt_ids[-max_length:], []
    return prompt_ids, completion_ids[: max_length - len(prompt_ids)]


def _as_completion(value: str | list[dict]) -> list[dict]:
    return [{"role": "assistant", "content": value}] if isinstance(value, str) else value


def rankings_to_pairs(record: dict) -> list[dict]:
    """Expand one ranking record into every (better, worse) preference pair; tied completions give no pair.

    Other fields of the record (``source``, ...) are copied into each pair; identical texts ranked apart are
    skipped because a pair needs two different completions.
    """
    groups = [entry if isinstance(entry, list) else [entry] for entry in record["ranking"]]
    completions = [_as_completion(c) for c in record["completions"]]
    prompt = record["prompt"]
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    extra = {k: v for k, v in record.items() if k not in ("prompt", "completions", "ranking")}
    pairs = []
    for better_rank, better_group in enumerate(groups):
        for worse_group in groups[better_rank + 1 :]:
            for better in better_group:
                for worse in worse_group:
                    if completions[better] != completions[worse]:
                        pair = {"prompt": prompt, "chosen": completions[better], "rejected": completions[worse]}
                        pairs.append({**pair, **extra})
    return pairs


def split_records(records: list[dict], eval_fraction: float, seed: int,
                  by: str = "record") -> tuple[Records, Records]:
    """Deterministically hold out ``eval_fraction`` of the records; both parts keep the original order.

    ``by="prompt"`` holds out whole prompts (records with equal ``prompt`` fields stay on one side), so no
    held-out answer shares its question with a training one; with every prompt distinct the split is the
    same as ``by="record"``'s. Records without a ``prompt`` field count as prompts of their own.
    """
    if not 0.0 <= eval_fraction < 1.0:
        raise DataError(f"eval_fraction: must be in [0, 1) (got {eval_fraction})")
    if by not in ("record", "prompt"):
        raise DataError(f"split_by: must be 'record' or 'prompt' (got {by!r})")
    groups = _prompt_groups(records) if by == "prompt" else [[i] for i in range(len(records))]
    n_eval = round(len(groups) * eval_fraction)
    if eval_fraction > 0 and n_eval == 0 and len(groups) > 1:
        n_eval = 1  # a requested eval split is never silently empty
    held_out = {i for g in random.Random(seed).sample(range(len(groups)), n_eval) for i in groups[g]}
    source = getattr(records, "source", "")
    train = Records([r for i, r in enumerate(records) if i not in held_out], source=source)
    evaluation = Records([r for i, r in enumerate(records) if i in held_out], source=source)
    return train, evaluation


def prompt_key(record: dict) -> str | None:
    """What makes two records "the same prompt" for a split: equal ``prompt`` fields (and ``images``, if any);
    None for a record without a prompt."""
    if "prompt" not in record:
        return None
    return json.dumps([record["prompt"], record.get("images")], sort_keys=True, default=str)


def _prompt_groups(records: list[dict]) -> list[list[int]]:
    """Record indices grouped by prompt (a record without one is its own group), in order of first appearance."""
    groups: dict[object, list[int]] = {}
    for i, record in enumerate(records):
        key = prompt_key(record)
        groups.setdefault(i if key is None else key, []).append(i)
    return list(groups.values())
