"""Heavy third-party modules that only some inputs need, named at a module's top and imported on first use.

``datasets = LazyModule("datasets")`` costs nothing until an attribute is read (a Parquet file or a saved HF
dataset is loaded): importing ``datasets`` and ``pyarrow`` takes ~80 MB of resident memory and ~1 s, which every
run paid before although JSONL inputs never touch them.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

__all__ = ["LazyModule"]


class LazyModule:
    def __init__(self, name: str):
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str) -> Any:
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attr)

    def __repr__(self) -> str:
        state = "imported" if self._module is not None else "not imported yet"
        return f"<lazy module {self._name!r} ({state})>"
