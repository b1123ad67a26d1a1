"""Preference data for DPO: pair or ranking records -> tokenised ``PairExample``s."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal

from alignloop.data import load_records, rankings_to_pairs, resolve_data_path, tokenize_prompt_completion
from alignloop.errors import DataError
from alignloop.models.vision_tokenizer import VisionTokenizer
from alignloop.stages.dpo.batch import PairExample
from alignloop.utils.lazy import LazyModule

datasets = LazyModule("datasets")  # Parquet and saved HF datasets only (utils/lazy.py)
pq = LazyModule("pyarrow.parquet")

log = logging.getLogger("alignloop")

RecordFormat = Literal["auto", "pair", "ranking"]


def _first_keys(path: Path) -> set[str]:
    """The field names of the first record (JSONL / JSON array / Parquet / saved HF dataset)."""
    if path.is_dir():
        return set(datasets.load_from_disk(str(path)).column_names)
    if path.suffix.lower() == ".parquet":
        return set(pq.read_schema(path).names)
    with path.open(encoding="utf-8") as handle:
        head = handle.read(64).lstrip()
        handle.seek(0)
        if path.suffix.lower() == ".json" and head.startswith("["):
            items = json.load(handle)
            return set(items[0]) if items and isinstance(items[0], dict) else set()
        for line in handle:
            if line.strip():
                try:
                    first = json.loads(line)
                except json.JSONDecodeError:
                    return set()  # the loader reports the bad line with its number
                return set(first) if isinstance(first, dict) else set()
    return set()


def detect_format(path: str | Path) -> Literal["pair", "ranking"]:
    """``ranking`` when the first record has ``completions`` and no ``chosen``; else ``pair``."""
    keys = _first_keys(resolve_data_path(path))
    return "ranking" if "completions" in keys and "chosen" not in keys else "pair"


def load_pairs(path: str | Path, record_format: RecordFormat = "auto", skip_invalid: bool = False) -> list[dict]:
    """Pair records from ``path``; ranking records are expanded into every (better, worse) pair."""
    kind = detect_format(path) if record_format == "auto" else record_format
    records = load_records(path, kind, skip_invalid=skip_invalid)
    if kind == "pair":
        return records  # a list that remembers its file (error messages name it)
    pairs = [pair for record in records for pair in rankings_to_pairs(record)]
    if not pairs:
        raise DataError(f"{path}: the rankings give no preference pairs (every completion is tied)")
    log.info("dpo: %d rankings expanded to %d pairs", len(records), len(pairs))
    return pairs


def _tokenize(tokenizer, vision: VisionTokenizer | None, record: dict, side: str, max_length: int,
              max_prompt_length: int | None, where: str) -> tuple[list[int], list[int], tuple]:
    if vision is None:
        if record.get("images"):
            raise DataError(f"{where}: the pair has images but the model is not a vision-language model")
        prompt, completion = tokenize_prompt_completion(
            tokenizer, record["prompt"], record[side], max_length=max_length, max_prompt_length=max_prompt_length
        )
        return prompt, completion, ()
    return vision.prompt_completion(record["prompt"], record[side], record.get("images"), max_length,
                                    max_prompt_length, where=where)


def tokenize_pairs(
    tokenizer, records: list[dict], max_length: int, max_prompt_length: int | None,
    vision: VisionTokenizer | None = None,
) -> tuple[list[PairExample], int]:
    """Tokenise pairs with the chat template; returns the examples and how many pairs were dropped.

    A pair is dropped when truncation leaves an empty completion or makes chosen and rejected identical.
    Each completion is cut to fit ``max_length`` together with the prompt. With ``vision`` (a vision-language
    model) the prompt's ``<image>`` placeholders become image tokens, never truncated, and the pair carries its
    images: chosen and rejected get the same ``EncodedImage`` objects.
    """
    examples: list[PairExample] = []
    dropped = 0
    source = getattr(records, "source", "") or "data"
    image_token = vision.encoder.image_token_id if vision is not None else None
    for number, record in enumerate(records, start=1):
        where = f"{source}: pair {number}"
        prompt, chosen, images = _tokenize(tokenizer, vision, record, "chosen", max_length, max_prompt_length, where)
        prompt_r, rejected, _ = _tokenize(tokenizer, vision, record, "rejected", max_length, max_prompt_length, where)
        if not prompt or not chosen or not rejected or chosen == rejected or prompt != prompt_r:
            dropped += 1
            continue
        if prompt[-1] == image_token:  # it would be repeated in both branches (batch.py): never with a chat template
            raise DataError(f"{where}: the prompt ends with an image; put text (the assistant header) after it")
        examples.append(PairExample(prompt, chosen, rejected, index=len(examples), images=images))
    return examples, dropped
