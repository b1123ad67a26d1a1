"""Where a model came from (its portable base name and the adapters merged into it), and a quiet context for peft
calls.

Shared by ``loading`` (which records the origin) and ``lora`` (which writes it into adapter configs).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from peft import PeftModel
from torch import nn

__all__ = ["model_lineage", "model_origin", "quiet_peft", "saves_merged", "set_lineage", "set_origin"]

ORIGIN_ATTR = "_alignloop_origin"
LINEAGE_ATTR = "_alignloop_lineage"
SAVE_MERGED_ATTR = "_alignloop_save_merged"  # on a peft model made with lora.save_merged: save full weights


@contextmanager
def quiet_peft() -> Iterator[None]:
    """Hide peft's call of a deprecated transformers API: noise for our users, nothing to act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def model_origin(model: nn.Module) -> str | None:
    """The portable name of the model ``model`` was loaded from (its base, for a LoRA model)."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    origin = getattr(base, ORIGIN_ATTR, None)
    if origin is None and getattr(base, "config", None) is not None:
        origin = getattr(base.config, "_name_or_path", None) or None
    return origin


def set_origin(model: nn.Module, origin: str) -> None:
    setattr(model, ORIGIN_ATTR, origin)


def model_lineage(model: nn.Module) -> list[str]:
    """The LoRA run folders folded into ``model`` since its origin (merged into its weights or composed into its
    adapter), oldest first; empty when none."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    return list(getattr(base, LINEAGE_ATTR, []))


def set_lineage(model: nn.Module, lineage: list[str]) -> None:
    setattr(model, LINEAGE_ATTR, list(lineage))


def saves_merged(model: nn.Module) -> bool:
    """True for a LoRA model whose ``lora.save_merged`` asked for full weights on save."""
    return bool(getattr(model, SAVE_MERGED_ATTR, False))
