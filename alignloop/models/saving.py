"""Saving causal LMs in plain HF format: full weights, or ONE LoRA adapter on the true base model.

Every saved folder loads with ``transformers`` / ``peft`` alone and gives the model alignloop trained:

- a full model: ``config.json`` + ``model.safetensors`` (``AutoModelForCausalLM``);
- a LoRA model: ``adapter_config.json`` + ``adapter_model.safetensors`` (``AutoPeftModelForCausalLM``), whose
  base is the original model, also when the adapter was trained on top of an earlier LoRA run: the adapters
  are then composed into one (``compose.py``), never saved stacked on a folder only alignloop knows to merge;
- ``merge=True`` (``lora.save_merged``), or a lineage that is not plain LoRA: the adapter merged into full weights.

``alignloop_model.json`` records the format, the base (a bundled name stays a name) and the lineage: the adapter
folders folded in. ``README.md`` (the model card) names the same base as ``adapter_config.json``.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard
from peft import PeftModel
from safetensors.torch import save_file
from torch import nn

from alignloop.errors import ModelError
from alignloop.models.compose import Uncomposable, compose, describe
from alignloop.models.files import MODEL_NOTE, atomic_directory, write_json
from alignloop.models.origin import model_lineage, model_origin, saves_merged
from alignloop.models.registry import loadable_path

__all__ = ["save_adapter", "save_merged", "save_model"]

log = logging.getLogger("alignloop")

ADAPTER_WEIGHTS = "adapter_model.safetensors"
CARD = "README.md"


def _unwrap(model: nn.Module) -> nn.Module:
    """Strip DDP-style wrappers (``.module``) that accelerate may add around a model."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def save_adapter(peft_model: PeftModel, folder: Path, origin: str, lineage: list[str] | None = None) -> dict | None:
    """Write ``peft_model``'s adapter for the base ``origin`` (fully offline); what ``alignloop_model.json`` adds.

    Adapters merged into the base at load time (``lineage``) are composed with the trained one into one adapter
    on ``origin``. None, with nothing written, when that cannot be done exactly: the caller saves merged weights.
    """
    base = loadable_path(origin)
    try:
        composed = compose(peft_model, base)
    except Uncomposable as err:
        log.warning("the adapter and the adapters merged into its base (%s) cannot be saved as one LoRA adapter "
                    "(%s): saving merged full weights", ", ".join(lineage or []) or "none", err)
        return None
    extra: dict[str, Any] = {}
    if composed is None:
        for config in peft_model.peft_config.values():
            config.base_model_name_or_path = base
        # peft's "auto" mode asks the Hub whether the vocabulary was resized unless the base folder
        # has a config.json; alignloop never resizes it, so only a LoRA on the embeddings saves them.
        adapts_embeddings = any(
            isinstance(getattr(module, "base_layer", None), nn.Embedding) for module in peft_model.modules()
        )
        peft_model.save_pretrained(folder, save_embedding_layers="auto" if adapts_embeddings else False)
    else:
        composed.config.save_pretrained(str(folder))
        save_file(composed.tensors, str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        peft_model.create_or_update_model_card(str(folder))
        extra["composed"] = describe(composed)
    _name_base_in_card(folder, base, lineage or [])
    return extra


def _name_base_in_card(folder: Path, base: str, lineage: list[str]) -> None:
    """peft's card takes its base from the in-memory model; name the base the adapter is saved for."""
    card = ModelCard.load(folder / CARD)
    card.data.base_model = base
    tags = [t for t in (card.data.tags or []) if not str(t).startswith("base_model:adapter:")]
    card.data.tags = [*tags, f"base_model:adapter:{base}"]
    if lineage:
        folded = ", ".join(f"`{path}`" for path in lineage)
        card.text = (f"\nA LoRA adapter on `{base}` trained with alignloop. It already holds the earlier adapters "
                     f"it was trained on top of ({folded}): load it on `{base}` alone.\n" + card.text)
    card.save(folder / CARD)


def save_merged(model: nn.Module, folder: Path) -> None:
    """Full weights; a LoRA model is merged on a copy (the model itself keeps its adapter)."""
    if isinstance(model, PeftModel):
        model = copy.deepcopy(model).merge_and_unload()
    model.save_pretrained(folder)


def _full_card(folder: Path, origin: str | None, lineage: list[str]) -> None:
    lines = ["---", "library_name: transformers"]
    if origin is not None:
        lines.append(f"base_model: {loadable_path(origin)}")
    lines += ["---", "", "Full weights saved by alignloop; load them with `AutoModelForCausalLM.from_pretrained`."]
    if lineage:
        lines.append("They already hold the LoRA adapters " + ", ".join(f"`{p}`" for p in lineage) + ".")
    (folder / CARD).write_text("\n".join(lines) + "\n")


def save_model(model: nn.Module, tokenizer: Any, out_dir: str | Path, *, merge: bool | None = None) -> Path:
    """Save a full model or a LoRA adapter (+ tokenizer) atomically in plain HF format.

    ``merge``: save a LoRA model merged into full weights instead of as an adapter (default: what the model's
    ``lora.save_merged`` said).
    """
    model = _unwrap(model)
    merge = saves_merged(model) if merge is None else merge
    out_dir = Path(out_dir)
    origin = model_origin(model)
    lineage = model_lineage(model)
    with atomic_directory(out_dir) as tmp:
        note: dict[str, Any] | None = None
        if isinstance(model, PeftModel) and not merge:
            if origin is None:
                raise ModelError("cannot save a LoRA adapter whose base model is unknown")
            extra = save_adapter(model, tmp, origin, lineage)
            if extra is not None:
                note = {"format": "lora", "base_model": origin, **extra}
        if note is None:
            save_merged(model, tmp)
            note = {"format": "full", "base_model": origin}
            if isinstance(model, PeftModel):
                note["merged_adapter"] = True
            _full_card(tmp, origin, lineage)
        if lineage:
            note["lineage"] = lineage
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_json(tmp / MODEL_NOTE, note)
    return out_dir
