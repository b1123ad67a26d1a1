"""Turning a model name into something loadable, without ever touching the network.

A name is one of: a bundled model (converted once into the cache), ``tiny-llama`` (built in
memory), a local HF folder, an alignloop stage folder (holding ``model/`` or the model itself),
or a hub-style ``owner/name`` already in the local Hugging Face cache.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from huggingface_hub import scan_cache_dir, try_to_load_from_cache

from alignloop.errors import ModelError
from alignloop.models.bundled import (
    BUNDLED_MODELS,
    alignloop_home,
    bundled_model_dir,
    bundled_tokenizer_dir,
    ensure_bundled_model,
    gguf_path,
    is_converted,
)
from alignloop.models.bundled_vlm import BUILT_MODELS, ensure_built_model
from alignloop.models.files import (
    ADAPTER_CONFIG,
    HEAD_META,
    folder_size,
    human_size,
)

TINY_MODEL = "tiny-llama"
# tiny-llama borrows the bundled tokenizer so its token ids mean the same as the real model's.
TINY_TOKENIZER_SOURCE = "smollm2-135m-instruct"
TINY_PARAMS = 3_219_776  # 49152*64 tied embedding + 2 layers of 64-wide attention/MLP + norms

_MODEL_MARKERS = ("config.json", ADAPTER_CONFIG, HEAD_META)
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")

__all__ = [
    "BUNDLED_MODELS",
    "TINY_MODEL",
    "alignloop_home",
    "list_models",
    "resolve_model",
]


def _unknown(name: str) -> ModelError:
    known = ", ".join([*BUNDLED_MODELS, *BUILT_MODELS, TINY_MODEL])
    return ModelError(f"model '{name}' is neither a bundled model ({known}) nor a local directory")


def model_folder(path: Path) -> Path:
    """The folder holding the model files: ``path`` itself, or ``path/model`` for a stage folder."""
    if any((path / marker).is_file() for marker in _MODEL_MARKERS):
        return path.resolve()
    if (path / "model").is_dir():
        return model_folder(path / "model")
    raise ModelError(
        f"directory '{path}' holds no model: expected config.json, {ADAPTER_CONFIG}, "
        f"{HEAD_META} or a model/ folder"
    )


def hub_cache_snapshot(name: str) -> Path | None:
    """The local snapshot of a hub model id if it is fully on disk; reads only the cache folder."""
    if not _HUB_ID.match(name):
        return None
    try:
        found = try_to_load_from_cache(name, "config.json")
    except Exception:  # any malformed id or unreadable cache simply means "not cached"
        return None
    return Path(found).parent if isinstance(found, str) else None


def resolve_model(name_or_path: str | Path) -> str | Path:
    """Return ``TINY_MODEL`` or the local folder a model loads from (converting a bundled one once)."""
    name = str(name_or_path)
    if name in BUNDLED_MODELS:
        return ensure_bundled_model(name)
    if name in BUILT_MODELS:
        return ensure_built_model(name)
    if name == TINY_MODEL:
        return TINY_MODEL
    path = Path(name).expanduser()
    if path.is_dir():
        return model_folder(path)
    snapshot = hub_cache_snapshot(name)
    if snapshot is not None:
        return snapshot
    raise _unknown(name)


def origin_name(name_or_path: str | Path, folder: str | Path) -> str:
    """A portable name for where a model came from, stored in saved folders as their base.

    Bundled, tiny and hub names stay names (each machine resolves its own cache); folders
    become absolute paths.
    """
    name = str(name_or_path)
    if name in BUNDLED_MODELS or name in BUILT_MODELS or name == TINY_MODEL:
        return name
    if not Path(name).expanduser().is_dir() and hub_cache_snapshot(name) is not None:
        return name
    return str(Path(folder).resolve())


def loadable_path(origin: str) -> str:
    """What plain ``transformers``/``peft`` should load for ``origin`` (bundled name -> cache folder)."""
    return str(bundled_model_dir(origin)) if origin in BUNDLED_MODELS or origin in BUILT_MODELS else origin


def _cached_hub_models() -> list[dict[str, Any]]:
    try:
        cache = scan_cache_dir()
    except Exception:  # no cache folder yet, or an unreadable one: nothing is cached
        return []
    rows = []
    for repo in sorted(cache.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model":
            continue
        for revision in repo.revisions:
            if any(f.file_name == "config.json" for f in revision.files):
                rows.append(
                    {
                        "name": repo.repo_id,
                        "kind": "cached",
                        "path": str(revision.snapshot_path),
                        "converted": True,
                        "size": human_size(revision.size_on_disk),
                    }
                )
                break
    return rows


def list_models() -> list[dict[str, Any]]:
    """Every model usable by name: ``name``, ``kind`` (bundled/tiny/cached), ``path``, ``converted``, ``size``."""
    rows: list[dict[str, Any]] = []
    for name in BUNDLED_MODELS:
        target = bundled_model_dir(name)
        converted = is_converted(name)
        if converted:
            size = human_size(folder_size(target))
        else:
            try:
                size = human_size(gguf_path(name).stat().st_size) + " (GGUF)"
            except ModelError:
                size = "package missing"
        rows.append({"name": name, "kind": "bundled", "path": str(target), "converted": converted, "size": size})
    for name, description in BUILT_MODELS.items():
        target = bundled_model_dir(name)
        built = (target / "model.safetensors").is_file()
        size = human_size(folder_size(target)) if built else "built on first use"
        rows.append({"name": name, "kind": "built", "path": str(target), "converted": built, "size": size})
    tokenizer_ready = is_converted(TINY_TOKENIZER_SOURCE) or (
        bundled_tokenizer_dir(TINY_TOKENIZER_SOURCE) / "tokenizer_config.json"
    ).is_file()
    rows.append(
        {
            "name": TINY_MODEL,
            "kind": "tiny",
            "path": None,
            "converted": tokenizer_ready,
            "size": f"{TINY_PARAMS / 1e6:.1f}M params (built in memory)",
        }
    )
    rows.extend(_cached_hub_models())
    return rows
