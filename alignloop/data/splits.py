"""The train / held-out split every training stage uses: ``data.train`` and ``data.eval``, or a fraction held out."""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from alignloop.data.records import split_records
from alignloop.errors import DataError

__all__ = ["load_splits"]

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
        return split_records(train, data.eval_fraction, seed)
    return train, []
