"""LoRA adapters and the frozen reference model used for KL terms.

With LoRA the reference is the policy itself with its adapter switched off, so the base weights
are held once.  With full fine-tuning it is a frozen deep copy taken before training starts.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.tuners.lora.layer import LoraLayer
from torch import nn
from transformers import GenerationMixin

from alignloop.errors import ModelError
from alignloop.models.origin import SAVE_MERGED_ATTR, model_origin, quiet_peft
from alignloop.models.registry import loadable_path
from alignloop.models.vision import connector_names, is_vision_model, language_model_lora_targets, vision_tower_names


def _field(lora: Any, key: str, default: Any) -> Any:
    value = lora.get(key) if isinstance(lora, Mapping) else getattr(lora, key, None)
    return default if value is None else value


def _vision_modules(model: nn.Module, lora: Any) -> list[str]:
    """Vision-side modules trained in full beside the adapter (``lora.vision``: frozen, connector or all)."""
    choice = _field(lora, "vision", "connector")
    if choice not in ("frozen", "connector", "all"):
        raise ModelError(f"lora.vision: must be frozen, connector or all, not '{choice}'")
    names = [] if choice == "frozen" else connector_names(model)
    return names + vision_tower_names(model) if choice == "all" else names


def lora_config(lora: Any, *, task_type: str | None, model: nn.Module | None = None):
    """A ``peft.LoraConfig`` from any object or mapping with ``r``, ``alpha``, ``dropout``, ``target_modules``.

    On a vision-language model, "all-linear" means the language model's projections only, and the connector
    (``lora.vision``) is trained in full beside the adapter.
    """
    r = int(_field(lora, "r", 8))
    target_modules = _field(lora, "target_modules", "all-linear")
    if not isinstance(target_modules, str):
        target_modules = list(target_modules)
    vision = model is not None and is_vision_model(model)
    if vision and target_modules == "all-linear":
        target_modules = language_model_lora_targets(model)
    return LoraConfig(
        r=r,
        lora_alpha=float(_field(lora, "alpha", 2 * r)),
        lora_dropout=float(_field(lora, "dropout", 0.0)),
        target_modules=target_modules,
        task_type=task_type,
        modules_to_save=_vision_modules(model, lora) if vision else None,
    )


def _is_causal_lm(model: nn.Module) -> bool:
    return isinstance(model, GenerationMixin)


def apply_lora(model: nn.Module, lora: Any) -> nn.Module:
    """Wrap ``model`` in a fresh trainable LoRA adapter (base weights frozen) and return the peft model.

    Works for causal LMs (task ``CAUSAL_LM``, so ``AutoPeftModelForCausalLM`` can reload it) and for
    bare transformer backbones (used by scalar-head models).
    """
    if isinstance(model, PeftModel):
        raise ModelError("this model already has a LoRA adapter; load it with merge=True before adding a new one")
    origin = model_origin(model)
    config = lora_config(lora, task_type="CAUSAL_LM" if _is_causal_lm(model) else None, model=model)
    try:
        with quiet_peft():
            peft_model = get_peft_model(model, config)
    except ValueError as err:  # e.g. target_modules naming layers the model does not have
        raise ModelError(f"cannot apply LoRA: {err}") from err
    if origin is not None:
        # get_peft_model records the in-memory name (None for tiny-llama); point it at a loadable base.
        peft_model.peft_config["default"].base_model_name_or_path = loadable_path(origin)
    # ``lora.save_merged`` travels with the model: its saves (save_model, ScalarHeadModel) write full weights
    setattr(peft_model, SAVE_MERGED_ATTR, bool(_field(lora, "save_merged", False)))
    return peft_model


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode with every parameter frozen."""
    frozen = copy.deepcopy(model)
    frozen.eval()
    frozen.requires_grad_(False)
    return frozen


@contextmanager
def adapter_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` as its base: adapter off, eval mode (no LoRA dropout), no grad.

    Each submodule's train/eval mode is restored afterwards, not just the top one's.
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with model.disable_adapter(), torch.no_grad():
            yield model
    finally:
        for module, training in modes:
            module.training = training


class Reference:
    """The reference policy for KL terms; ``ref(**batch)`` or ``with ref.use() as model:``.

    For a peft policy it shares the policy's weights and switches the adapter off; otherwise it
    holds a frozen copy of the policy as it was when the ``Reference`` was made.
    """

    def __init__(self, policy: nn.Module):
        self.policy = policy
        self.shares_weights = isinstance(policy, PeftModel)
        self.model: nn.Module | None = None if self.shares_weights else frozen_copy(policy)

    @contextmanager
    def use(self) -> Iterator[nn.Module]:
        if self.shares_weights:
            with adapter_disabled(self.policy) as base:
                yield base
        else:
            with torch.no_grad():
                yield self.model

    def held_modules(self) -> list[nn.Module]:
        """The weights this reference holds itself: its frozen copy, or nothing when it shares the policy's."""
        return [] if self.model is None else [self.model]

    def forward(self, **kwargs: Any) -> Any:
        with self.use() as model:
            return model(**kwargs)

    __call__ = forward

    def to(self, *args: Any, **kwargs: Any) -> Reference:
        """Move the frozen copy (a shared-weight reference moves with its policy)."""
        if self.model is not None:
            self.model.to(*args, **kwargs)
        return self


def make_reference(policy: nn.Module) -> Reference:
    """The right reference for ``policy``: adapter-disabled base with LoRA, a frozen copy without."""
    return Reference(policy)


def _plain_lora_linears(model: nn.Module) -> list[tuple[nn.Module, list[str]]] | None:
    """Every LoRA layer with its active adapters, or None when one cannot be merged as ``W + s·B·A``
    (DoRA, a non-linear LoRA layer, or an adapter already merged into the weights)."""
    layers = []
    for module in model.modules():
        if not isinstance(module, LoraLayer):
            continue
        if not isinstance(module, LoraLinear) or getattr(module, "merged", False):
            return None
        active = [a for a in module.active_adapters if a in module.lora_A]
        if any(module.use_dora.get(a, False) for a in active):
            return None
        if active:
            layers.append((module, active))
    return layers


@contextmanager
def lora_merged_view(model: nn.Module) -> Iterator[nn.Module]:
    """Run a LoRA model as one set of weights ``W + s·B·A`` per layer (adapter branches switched off).

    For fp32 decoding: each generated token otherwise pays two extra small matmuls and a peft module call
    per adapted layer (SmolLM2-135M, r 16, batch 32: 138 ms per token with the branches, 121 ms merged).
    The merged weights are new tensors in the base weight's dtype, swapped in for the duration
    and swapped back after, so the stored base is never modified (merging in place and unmerging would
    not restore a bf16 base exactly). A model that is not plain LoRA is yielded unchanged.
    """
    layers = _plain_lora_linears(model) if isinstance(model, PeftModel) else None
    if not layers:
        yield model
        return
    originals = []
    try:
        with torch.no_grad():
            for module, adapters in layers:
                base = module.get_base_layer()
                weight = base.weight.data.float()
                for adapter in adapters:
                    weight = weight + module.get_delta_weight(adapter).float()
                originals.append((base.weight, base.weight.data))
                base.weight.data = weight.to(base.weight.dtype)
        with model.disable_adapter():
            yield model
    finally:
        for param, data in originals:
            param.data = data
