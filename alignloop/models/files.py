"""On-disk conventions of alignloop model folders: atomic writes and the small metadata notes."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alignloop.errors import ModelError

MODEL_NOTE = "alignloop_model.json"  # {"format": "full"|"lora", "base_model": str, "lineage": [str], ...}
HEAD_META = "alignloop_head.json"  # scalar-head models, see scalar_head.py
HEAD_WEIGHTS = "head.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


@contextmanager
def atomic_directory(out_dir: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``out_dir``; on success it replaces ``out_dir`` whole.

    A crash mid-save leaves the previous ``out_dir`` (or nothing) rather than a half-written model.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        yield tmp
        tmp.chmod(0o755)  # mkdtemp makes it owner-only; a model folder should be readable by all
        if out_dir.exists():
            # os.replace cannot overwrite a non-empty folder: move the old one aside first.
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, old / "previous")
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ModelError(f"{path}: cannot read: {err}") from err


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def is_adapter_dir(folder: Path) -> bool:
    return (folder / ADAPTER_CONFIG).is_file()


def is_scalar_head_dir(folder: Path) -> bool:
    return (folder / HEAD_META).is_file()


def adapter_base(folder: Path) -> str:
    """The model an adapter folder applies to: our note first, else peft's own record."""
    note = folder / MODEL_NOTE
    if note.is_file():
        base = read_json(note).get("base_model")
    else:
        base = read_json(folder / ADAPTER_CONFIG).get("base_model_name_or_path")
    if not base:
        raise ModelError(f"{folder}: LoRA adapter without a base model (no base_model_name_or_path)")
    return str(base)


def adapter_lineage(folder: Path) -> list[str]:
    """The earlier LoRA runs an adapter folder already holds (composed into it), oldest first."""
    note = folder / MODEL_NOTE
    return [str(p) for p in read_json(note).get("lineage", [])] if note.is_file() else []


def inherited_rank(folder: Path) -> int:
    """Where a composed adapter's trained factors start (``compose.py``); 0 for any other folder."""
    note = folder / MODEL_NOTE
    return int(read_json(note).get("composed", {}).get("inherited_rank", 0)) if note.is_file() else 0


def folder_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def human_size(num_bytes: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.1f} {unit}"
    return f"{num_bytes} B"
