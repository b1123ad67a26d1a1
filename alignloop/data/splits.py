"""The train / held-out split every training stage uses: ``data.train`` and ``data.eval``, or a fraction held out."""

from __future__ import annotations

import logging
from typing import Any, Callable, TypeVar

from alignloop.data.records import prompt_key, split_records
from alignloop.errors import DataError

__all__ = ["load_splits", "split_by_config"]

logger = logging.getLogger("alignloop")

R = TypeVar("R")


def load_splits(data: Any, seed: int, load: Callable[[str], R], missing: str = "no training data given",
                min_records_to_split: int = 1) -> tuple[R, R | list]:
    """``(train, eval)`` records from a ``DataConfig``: ``data.eval`` when given, else ``data.eval_fraction`` of
    ``data.train`` held out (deterministic in ``seed``, so ensemble members and resumed runs hold out the same
    records), else no eval records. ``load(path)`` reads one file; ``missing`` says what no ``data.train`` lacks."""
    if not data.train:
        raise DataError(f"data.train: {missing}")
    train = load(data.train)
    if data.eval:
        return train, load(data.eval)
    if data.eval_fraction > 0 and len(train) >= min_records_to_split:
        return split_by_config(train, data, seed)
    return train, []


def split_by_config(records: Any, data: Any, seed: int) -> tuple[Any, Any]:
    """``split_records`` with ``data.eval_fraction`` and ``data.split_by``; warns when the default per-record
    split holds out answers to prompts that training also has (their accuracy then measures seen questions)."""
    train, evaluation = split_records(records, data.eval_fraction, seed, by=data.split_by)
    if data.split_by == "record" and "split_by" not in data.model_fields_set:
        seen = {prompt_key(r) for r in train} - {None}
        shared = sum(1 for r in evaluation if prompt_key(r) in seen)
        if shared:
            logger.warning(
                "data.eval_fraction: %d of %d held-out records share their prompt with training records; "
                "set data.split_by: prompt to hold out whole prompts", shared, len(evaluation))
    return train, evaluation
