"""Reward and value models: a causal-LM backbone (no LM head) plus a linear scalar head.

``forward`` gives a value per token (PPO critic, process reward models); ``score`` pools at the
last non-pad token, so left- and right-padded batches of the same sequences score the same.
A saved folder holds the backbone in HF format (or its LoRA adapter), ``head.safetensors`` and
``alignloop_head.json``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel

from alignloop.errors import ModelError
from alignloop.models.files import (
    HEAD_META,
    HEAD_WEIGHTS,
    atomic_directory,
    is_scalar_head_dir,
    read_json,
    write_json,
)
from alignloop.models.loading import load_causal_lm, save_adapter
from alignloop.models.lora import apply_lora
from alignloop.models.origin import model_origin, quiet_peft, set_origin
from alignloop.models.registry import resolve_model

POOLING = "last_non_pad_token"


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counting only real tokens, so a left-padded sequence sees the same positions."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last position with mask 1 in each row; right or left padding alike."""
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    return torch.where(attention_mask.bool(), positions, -1).amax(-1).clamp(min=0)


class ScalarHeadModel(nn.Module):
    """``backbone`` (e.g. ``LlamaModel``, possibly peft-wrapped) + ``nn.Linear(hidden, num_outputs)``."""

    def __init__(
        self,
        backbone: nn.Module,
        num_outputs: int = 1,
        output_names: list[str] | None = None,
        base_model: str | None = None,
    ):
        super().__init__()
        if num_outputs < 1:
            raise ModelError(f"num_outputs must be at least 1, not {num_outputs}")
        names = list(output_names) if output_names else _default_names(num_outputs)
        if len(names) != num_outputs:
            raise ModelError(f"{len(names)} output names given for {num_outputs} outputs")
        self.backbone = backbone
        self.num_outputs = num_outputs
        self.output_names = names
        self.base_model_name = base_model
        hidden = self.config.hidden_size
        self.head = nn.Linear(hidden, num_outputs)
        # Small initial scores (~unit scale): std 1/sqrt(hidden+1), as in common RM heads.
        nn.init.normal_(self.head.weight, std=1.0 / math.sqrt(hidden + 1))
        nn.init.zeros_(self.head.bias)

    @property
    def config(self) -> Any:
        return self.backbone.config

    @property
    def is_lora(self) -> bool:
        return isinstance(self.backbone, PeftModel)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-token values, shape ``[batch, seq, num_outputs]``."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if position_ids is None:
            position_ids = position_ids_from_mask(attention_mask)
        out = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        )
        hidden = out.last_hidden_state
        return self.head(hidden.to(self.head.weight.dtype))

    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """One score per sequence, taken at its last non-pad token: shape ``[batch, num_outputs]``."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        values = self.forward(input_ids, attention_mask)
        rows = torch.arange(values.shape[0], device=values.device)
        return values[rows, last_token_index(attention_mask)]

    @classmethod
    def from_causal_lm(
        cls,
        name_or_model: str | Path | nn.Module,
        num_outputs: int = 1,
        lora: Any = None,
        *,
        output_names: list[str] | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> ScalarHeadModel:
        """A fresh head on a causal LM's backbone (its LM head is dropped); ``lora`` adapts the backbone."""
        if isinstance(name_or_model, nn.Module):
            causal_lm = name_or_model
        else:
            # A LoRA SFT folder is merged: the head sits on the SFT model's actual weights.
            causal_lm = load_causal_lm(name_or_model, dtype=dtype, merge=True)
        if isinstance(causal_lm, PeftModel):
            raise ModelError("pass a causal LM without an adapter (merge it first) to build a scalar-head model")
        origin = model_origin(causal_lm)
        backbone = causal_lm.base_model  # e.g. LlamaForCausalLM.model: no LM-head logits computed
        if lora is not None:
            # apply_lora reads the origin from the backbone, which does not carry it itself.
            if origin is not None:
                set_origin(backbone, origin)
            backbone = apply_lora(backbone, lora)
        return cls(backbone, num_outputs, output_names, base_model=origin)

    def save_pretrained(self, out_dir: str | Path, tokenizer: Any = None) -> Path:
        """Backbone (full HF folder, or LoRA adapter), ``head.safetensors``, ``alignloop_head.json``."""
        out_dir = Path(out_dir)
        with atomic_directory(out_dir) as tmp:
            if self.is_lora:
                if self.base_model_name is None:
                    raise ModelError("cannot save a LoRA scalar-head model whose base model is unknown")
                save_adapter(self.backbone, tmp, self.base_model_name)
            else:
                self.backbone.save_pretrained(tmp)
            head = {"weight": self.head.weight.detach().cpu().contiguous(), "bias": self.head.bias.detach().cpu()}
            save_file(head, str(tmp / HEAD_WEIGHTS))
            meta = {
                "format": "lora" if self.is_lora else "full",
                "num_outputs": self.num_outputs,
                "output_names": self.output_names,
                "base_model": self.base_model_name,
                "hidden_size": self.config.hidden_size,
                "pooling": POOLING,
            }
            write_json(tmp / HEAD_META, meta)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
        return out_dir

    @classmethod
    def from_pretrained(
        cls, name_or_dir: str | Path, *, trainable: bool = True, dtype: torch.dtype = torch.float32
    ) -> ScalarHeadModel:
        """Load a folder written by ``save_pretrained`` (a stage folder holding ``model/`` works too)."""
        folder = resolve_model(name_or_dir)
        if not isinstance(folder, Path) or not is_scalar_head_dir(folder):
            raise ModelError(f"'{name_or_dir}' is not a scalar-head model folder (no {HEAD_META})")
        meta = read_json(folder / HEAD_META)
        if meta.get("format") == "lora":
            base = load_causal_lm(meta["base_model"], dtype=dtype, merge=True).base_model
            with quiet_peft():
                backbone = PeftModel.from_pretrained(base, folder, is_trainable=trainable)
        else:
            try:
                backbone = AutoModel.from_pretrained(folder, dtype=dtype, local_files_only=True)
            except (OSError, ValueError, KeyError) as err:
                raise ModelError(f"cannot load the backbone in '{folder}': {err}") from err
        # For a full model base_model is lineage only (what it was initialised from).
        with torch.random.fork_rng(devices=[]):  # the head's init is overwritten: spare the caller's RNG
            model = cls(backbone, int(meta["num_outputs"]), meta.get("output_names"), base_model=meta.get("base_model"))
        model.head.load_state_dict(load_file(str(folder / HEAD_WEIGHTS)))
        if not trainable:
            model.eval()
            model.requires_grad_(False)
        return model


def _default_names(num_outputs: int) -> list[str]:
    return ["score"] if num_outputs == 1 else [f"score_{i}" for i in range(num_outputs)]
