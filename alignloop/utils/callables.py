"""Load a user object named ``"package.module:attr"`` or ``"path/to/file.py:attr"`` (reward functions, gold scorers)."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from alignloop.errors import ConfigError

__all__ = ["load_callable"]


def _import_module(module_name: str, spec: str, what: str) -> Any:
    # Console scripts do not put the working directory on sys.path; user reward modules usually live there.
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        missing = err.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise ConfigError(f"{what} {spec!r}: module {module_name!r} not found") from err
        raise ConfigError(f"{what} {spec!r}: importing {module_name!r} failed: {err}") from err


def _import_file(path_text: str, spec: str, what: str) -> Any:
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise ConfigError(f"{what} {spec!r}: file {path_text!r} not found")
    module_name = f"alignloop_user_{path.stem}_{abs(hash(str(path.resolve()))):x}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    import_spec = importlib.util.spec_from_file_location(module_name, path)
    if import_spec is None or import_spec.loader is None:
        raise ConfigError(f"{what} {spec!r}: cannot import {path_text!r} as Python")
    module = importlib.util.module_from_spec(import_spec)
    sys.modules[module_name] = module  # lets dataclasses and pickling inside the file find it
    try:
        import_spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[module_name]
        raise ConfigError(f"{what} {spec!r}: importing {path_text!r} failed: {type(err).__name__}: {err}") from err
    return module


def load_callable(spec: str, what: str = "reward") -> Any:
    """The object named by ``"package.module:attr"`` or ``"path/to/file.py:attr"`` (``attr`` may be dotted).

    ``what`` starts the error messages (``"reward 'm:f': module 'm' not found"``).
    """
    module_part, sep, attr_path = spec.rpartition(":")
    if not sep or not module_part or not attr_path:
        raise ConfigError(f"{what} {spec!r}: expected 'module:function' or 'path/to/file.py:function'")
    is_file = module_part.endswith(".py") or "/" in module_part or os.sep in module_part
    module = _import_file(module_part, spec, what) if is_file else _import_module(module_part, spec, what)
    obj: Any = module
    for attr in attr_path.split("."):
        if not hasattr(obj, attr):
            raise ConfigError(f"{what} {spec!r}: {module_part!r} has no function {attr_path!r}")
        obj = getattr(obj, attr)
    return obj
