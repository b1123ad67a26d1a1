"""Atomic, resumable checkpoints: trainable weights, optimizer, scheduler, RNG, data and stage state.

Layout: ``<out>/checkpoints/step-000050/`` written first as a hidden temp dir and renamed into place,
then ``<out>/checkpoints/latest`` (a one-line file) is atomically replaced. A run killed at any moment
leaves either the old or the new checkpoint, never a torn one.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from alignloop.errors import AlignloopError
from alignloop.utils.io import atomic_write_text

try:
    from torch.distributed.tensor import DTensor, distribute_tensor
except ImportError:  # torch without DTensor: nothing can be sharded that way
    DTensor = distribute_tensor = None  # type: ignore[assignment,misc]

log = logging.getLogger("alignloop")


def trainable_state(model: nn.Module, snapshot: bool = True) -> dict[str, torch.Tensor]:
    """The trainable parameters by name, on CPU. ``snapshot=False`` for a caller that writes them out at once:
    it skips copying parameters that own their storage, which would briefly double a full fine-tune's weights
    (such tensors can change or be freed later, e.g. FSDP frees its gathered full weights on leaving
    ``full_weights``)."""
    # named_parameters() yields tied weights once, so safetensors never sees shared storage
    take = (lambda t: t.clone()) if snapshot else _own_storage
    return {n: take(p.detach().to("cpu").contiguous()) for n, p in model.named_parameters() if p.requires_grad}


def _own_storage(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when it is all of its storage, else a copy (safetensors refuses tensors that share storage)."""
    if t.storage_offset() == 0 and t.untyped_storage().nbytes() == t.numel() * t.element_size():
        return t
    return t.clone()


def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in state]
    if missing:
        raise RuntimeError(f"checkpoint lacks {len(missing)} trainable tensors, e.g. {missing[0]}")
    with torch.no_grad():
        for n, t in state.items():
            param = params[n]
            t = t.to(param.device, param.dtype)
            if DTensor is not None and isinstance(param, DTensor):  # FSDP2-sharded: keep only this rank's shard
                t = distribute_tensor(t, param.device_mesh, param.placements)
            param.copy_(t)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def latest_checkpoint(out_dir: Path) -> Path | None:
    pointer = out_dir / "checkpoints" / "latest"
    if not pointer.exists():
        return None
    path = out_dir / "checkpoints" / pointer.read_text().strip()
    return path if (path / "state.json").exists() else None


def save_checkpoint(
    out_dir: Path,
    step: int,
    models: dict[str, nn.Module],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    meta: dict,
    stage_state: dict,
    keep: int = 2,
    rng_states: list[dict[str, Any]] | None = None,
    save_optimizer: bool = True,
) -> Path:
    """Write a checkpoint; ``rng_states`` holds one RNG state per rank (default: this process's).

    ``save_optimizer=False`` when the optimizer state is sharded across ranks (FSDP, DeepSpeed ZeRO):
    rank 0 holds only its shard, which must not be restored on the other ranks.
    """
    root = out_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:07d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}."))
    try:
        for key, model in models.items():
            save_file(trainable_state(model, snapshot=False), str(tmp / f"{key}.safetensors"))
        torch.save(
            {
                "optimizer": optimizer.state_dict() if save_optimizer else None,
                "scheduler": scheduler.state_dict(),
                "rng": rng_states or [rng_state()],
                "stage": stage_state,
            },
            tmp / "trainer.pt",
        )
        (tmp / "state.json").write_text(json.dumps({"step": step, **meta}, indent=2))
    except (OSError, RuntimeError) as e:  # a full disk surfaces from torch.save as RuntimeError "unexpected pos"
        shutil.rmtree(tmp, ignore_errors=True)
        free = shutil.disk_usage(root).free / 2**30
        raise AlignloopError(
            f"could not write checkpoint {root / name} ({free:.1f} GB free on that disk): {str(e).strip()[:300]}; "
            "earlier checkpoints are untouched"
        ) from e
    final = root / name
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    atomic_write_text(root / "latest", name + "\n")
    for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".step-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return final


def load_checkpoint(path: Path, models: dict[str, nn.Module], optimizer, scheduler, rank: int = 0) -> tuple[dict, dict]:
    """Restore weights, optimizer, scheduler and this rank's RNG; return (meta, stage_state).

    A rank the checkpoint has no RNG state for (resumed with more processes) keeps its own.
    """
    for key, model in models.items():
        load_trainable_state(model, load_file(str(path / f"{key}.safetensors")))
    blob = torch.load(path / "trainer.pt", weights_only=False)
    if blob["optimizer"] is not None:
        optimizer.load_state_dict(blob["optimizer"])
    else:
        log.warning("%s: the optimizer state was sharded (FSDP/ZeRO) and not saved; its moments restart", path.name)
    scheduler.load_state_dict(blob["scheduler"])
    states = blob["rng"] if isinstance(blob["rng"], list) else [blob["rng"]]
    if rank < len(states):
        set_rng_state(states[rank])
    meta = json.loads((path / "state.json").read_text())
    return meta, blob["stage"]
