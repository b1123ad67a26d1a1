"""Where a model came from (its portable base name), and a quiet context for peft calls.

Shared by ``loading`` (which records the origin) and ``lora`` (which writes it into adapter configs).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from peft import PeftModel
from torch import nn

__all__ = ["model_origin", "quiet_peft", "set_origin"]

ORIGIN_ATTR = "_alignloop_origin"


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
