"""Reward-model data: pair and ranking files -> tokenised preference examples -> packed micro-batches.

Every record becomes one ``PreferenceExample``: a prompt, its completions, and a ranking of them as tie
groups, best first. A pair is the ranking ``[[0], [1]]`` (chosen, rejected) plus its optional ``margin`` and
``criteria``. Records that cannot train anything after tokenisation (all completions tied, completions
identical once truncated, a prompt that fills ``max_length``) are dropped, counted per reason and logged.

With a vision-language model (a ``VisionTokenizer``) a record's ``images`` become the example's ``EncodedImage``
tuple (one object per image entry, shared by all its completions) and their tokens stay in the prompt.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignloop.algos.reward_losses import normalize_ranking
from alignloop.data import load_records, tokenize_prompt_completion
from alignloop.data.records import first_record_keys, truncate_pair
from alignloop.data.splits import split_by_config
from alignloop.errors import DataError
from alignloop.models.images import EncodedImage
from alignloop.models.scalar_head import pack_image_groups
from alignloop.models.shared_prompt import PackedGroups, ScoreGroup
from alignloop.models.vision_tokenizer import VisionTokenizer

if TYPE_CHECKING:
    from alignloop.stages.rm.stage import RMConfig

log = logging.getLogger("alignloop")


@dataclass
class PreferenceExample:
    """One tokenised pair or ranking record."""

    prompt_ids: list[int]
    completions: list[list[int]]
    ranking: list[list[int]]  # tie groups of completion indices, best first; a pair is [[0], [1]]
    is_pair: bool
    margin: float | None = None
    criteria: dict[str, int] = field(default_factory=dict)  # +1: completion 0 (chosen) better, -1: worse
    images: tuple[EncodedImage, ...] = ()  # the prompt's images (vision-language models), in token order


@dataclass
class PreferenceBatch:
    examples: list[PreferenceExample]
    packed: PackedGroups


@dataclass
class TokenizeReport:
    kept: int = 0
    truncated: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> count

    @property
    def n_dropped(self) -> int:
        return sum(self.dropped.values())

    def log(self, label: str) -> None:
        if self.truncated:
            log.info("rm: %s: %d record(s) truncated to data.max_length", label, self.truncated)
        for reason, count in sorted(self.dropped.items()):
            log.warning("rm: %s: dropped %d record(s): %s", label, count, reason)


def record_kind(path: str | Path) -> str:
    """``"pair"`` or ``"ranking"``, from the first record of a file (a file holds one kind)."""
    keys = first_record_keys(path)
    if "completions" in keys:
        return "ranking"
    if "chosen" in keys or "rejected" in keys:
        return "pair"
    raise DataError(
        f"{path}:1: record: neither a preference pair (prompt, chosen, rejected) nor a ranking "
        "(prompt, completions, ranking)"
    )


def load_preference_records(paths: list[str], skip_invalid: bool) -> tuple[list[dict], int]:
    """Validated records of every file (pairs and rankings may be in separate files), and how many were skipped."""
    records: list[dict] = []
    skipped = 0
    for path in paths:
        kind = record_kind(path)
        loaded = load_records(path, kind, skip_invalid=skip_invalid)
        skipped += loaded.skipped
        records.extend({**r, "_kind": kind, "_where": f"{path}: record {i + 1}"} for i, r in enumerate(loaded))
    return records, skipped


def criterion_labels(record: dict, names: list[str]) -> dict[str, int]:
    votes = record.get("criteria") or {}
    return {name: int(votes[name]) for name in names if votes.get(name) in (1, -1)}


def tokenize_preferences(
    records: list[dict],
    tokenizer: Any,
    max_length: int,
    max_prompt_length: int | None,
    criteria: list[str],
    vision: VisionTokenizer | None = None,
) -> tuple[list[PreferenceExample], TokenizeReport]:
    report = TokenizeReport()
    examples = []
    for record in records:
        if record["_kind"] == "pair":
            completions, ranking = [record["chosen"], record["rejected"]], [[0], [1]]
        else:
            completions, ranking = record["completions"], normalize_ranking(record["ranking"])
        if len(ranking) < 2:
            report.dropped["every completion is tied: no preference to learn"] += 1
            continue
        prompt_ids: list[int] = []
        ids: list[list[int]] = []
        images: tuple[EncodedImage, ...] = ()
        truncated = False
        for completion in completions:
            if vision is not None:  # image tokens are never cut (a DataError names the record)
                full = vision.prompt_completion(record["prompt"], completion, record.get("images"), None,
                                                where=record.get("_where", "record"))
                prompt_ids, completion_ids, images = vision.prompt_completion(
                    record["prompt"], completion, record.get("images"), max_length, max_prompt_length,
                    where=record.get("_where", "record"))
                full_prompt, full_completion = full[0], full[1]
            else:
                full_prompt, full_completion = tokenize_prompt_completion(tokenizer, record["prompt"], completion)
                prompt_ids, completion_ids = truncate_pair(full_prompt, full_completion, max_length, max_prompt_length)
            truncated = truncated or len(prompt_ids) + len(completion_ids) < len(full_prompt) + len(full_completion)
            ids.append(completion_ids)
        if any(not c for c in ids):
            report.dropped["the prompt fills data.max_length (raise it or set rm.max_prompt_length)"] += 1
            continue
        if _ranked_apart_but_identical(ids, ranking):
            report.dropped["completions ranked apart are identical after truncation to data.max_length"] += 1
            continue
        report.truncated += truncated
        is_pair = record["_kind"] == "pair"
        examples.append(
            PreferenceExample(
                prompt_ids=prompt_ids,
                completions=ids,
                ranking=ranking,
                is_pair=is_pair,
                margin=float(record["margin"]) if is_pair and "margin" in record else None,
                criteria=criterion_labels(record, criteria) if is_pair else {},
                images=images,
            )
        )
    report.kept = len(examples)
    return examples, report


def _ranked_apart_but_identical(ids: list[list[int]], ranking: list[list[int]]) -> bool:
    level = {index: rank for rank, group in enumerate(ranking) for index in group}
    seen: dict[tuple[int, ...], int] = {}
    for index, tokens in enumerate(ids):
        key = tuple(tokens)
        if key in seen and level[seen[key]] != level[index]:
            return True
        seen.setdefault(key, index)
    return False


def collate_preferences(
    examples: list[PreferenceExample], pad_id: int, *, share_prompt: bool = True, max_segment: int | None = None,
    image_token_id: int | None = None,
) -> PreferenceBatch:
    """One micro-batch: every completion of every example in one packed forward pass (rows carry their images)."""
    groups = [ScoreGroup(ex.prompt_ids, ex.completions) for ex in examples]
    images = [ex.images for ex in examples]
    packed = pack_image_groups(groups, images, pad_id, image_token_id, share_prompt=share_prompt,
                               max_segment=max_segment)
    return PreferenceBatch(examples, packed)


def load_rm_examples(
    cfg: RMConfig, tokenizer: Any, *, with_train: bool = True, vision: VisionTokenizer | None = None
) -> tuple[list[PreferenceExample], list[PreferenceExample], dict[str, int]]:
    """Tokenised train and held-out examples, and counts of skipped, dropped and truncated records.

    ``vision`` (a VLM's ``VisionTokenizer``): records' images are prepared and kept with their examples.
    """
    opts = cfg.rm
    if not cfg.data.train:
        raise DataError("data.train: no training data given (pair or ranking records)")
    train_records, skipped = load_preference_records([cfg.data.train, *opts.more_train], cfg.data.skip_invalid)
    if cfg.data.eval:
        eval_records, eval_skipped = load_preference_records([cfg.data.eval], cfg.data.skip_invalid)
        skipped += eval_skipped
    elif cfg.data.eval_fraction > 0:
        # the split depends on train.seed only, so every ensemble member holds out the same records
        train_records, eval_records = split_by_config(train_records, cfg.data, cfg.train.seed)
    else:
        eval_records = []
    if vision is None and any(r.get("images") for r in [*train_records, *eval_records]):
        log.warning("rm: the records have images but %s is a text model: it scores them without", cfg.model)
    max_prompt = opts.max_prompt_length or cfg.data.max_length // 2
    tokenize = lambda records: tokenize_preferences(  # noqa: E731
        records, tokenizer, cfg.data.max_length, max_prompt, opts.criteria, vision
    )
    train, report = tokenize(train_records if with_train else [])
    evals, eval_report = tokenize(eval_records)
    report.log("train")
    eval_report.log("eval")
    if skipped:
        log.warning("rm: skipped %d invalid record(s) (data.skip_invalid)", skipped)
    counts = {
        "skipped_records": skipped,
        "dropped_records": report.n_dropped + eval_report.n_dropped,
        "truncated_records": report.truncated + eval_report.truncated,
        "train_records": len(train),
        "eval_records": len(evals),
    }
    if with_train and not train:
        raise DataError(f"{cfg.data.train}: no usable preference records after tokenisation")
    if with_train and opts.criteria and not any(ex.criteria for ex in train):
        raise DataError(f"{cfg.data.train}: rm.criteria is set but no pair record carries those `criteria` labels")
    return train, evals, counts
