"""Stacked LoRA adapters written as ONE adapter on the original base model.

A stage that puts a new adapter on a LoRA run loads that run's adapter merged into the weights (so the new
adapter's reference, adapter off, is the earlier model). Saving only the new adapter would leave a folder that
plain ``peft`` loads on the original base without the earlier adapter: another model, and no error. So when an
adapter is merged at load time its factors stay beside the merged layer (``record_merge``), and a save writes
every adapter of the lineage as one (``compose``). Per layer, with ``s`` the trained adapter's scaling:

    W + s1·B1·A1 + s2·B2·A2  =  W + s · [B1·s1/s | B2·s2/s] · [A1; A2]

which is exact. Every layer gets the same rank ``R = R1 + R2`` (the largest inherited rank plus the largest
trained one; a layer missing one part has zero rows there), and ``lora_alpha = s·R`` makes peft's scaling
``lora_alpha / r`` equal ``s``: a plain uniform LoRA config, with no ``rank_pattern`` or ``alpha_pattern``, that
any LoRA loader reads. The trained adapter's factors sit verbatim in rows/columns ``R1:R1+r2``, so a training
checkpoint of it drops into the saved adapter (``place_checkpoint_tensor``). A module fully trained beside an
adapter (``modules_to_save``: a VLM connector) is carried over, the newest copy winning.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from peft import LoraConfig, PeftModel
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.tuners.lora.layer import LoraLayer
from peft.utils import ModulesToSaveWrapper
from peft.utils.other import AuxiliaryTrainingWrapper
from torch import nn

__all__ = ["Composed", "Uncomposable", "compose", "describe", "place_checkpoint_tensor", "record_merge"]

MERGED_ATTR = "_alignloop_merged_lora"  # on a layer an adapter was merged into: its Factors (or a reason string)
SAVED_ATTR = "_alignloop_merged_saved"  # on a module whose weights came from an adapter's modules_to_save
ADAPTER = "default"
PREFIX = "base_model.model."  # peft's key prefix in adapter_model.safetensors
WRAPPERS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


class Uncomposable(Exception):
    """The lineage cannot be written as one plain LoRA adapter (DoRA, an embedding LoRA, ...): save merged."""


@dataclass
class Factors:
    """``delta = B @ A`` (scaling already in ``B``), fp32 on CPU."""

    A: torch.Tensor  # [r, in]
    B: torch.Tensor  # [out, r]
    fan_in_fan_out: bool = False

    @property
    def rank(self) -> int:
        return self.A.shape[0]

    def then(self, other: Factors) -> Factors:
        if other.fan_in_fan_out != self.fan_in_fan_out:
            raise Uncomposable("adapters with different fan_in_fan_out layouts")
        return Factors(torch.cat([self.A, other.A]), torch.cat([self.B, other.B], dim=1), self.fan_in_fan_out)


@dataclass
class Composed:
    """One adapter for the whole lineage: its config and its ``adapter_model.safetensors`` tensors."""

    config: LoraConfig
    tensors: dict[str, torch.Tensor]
    inherited_rank: int  # R1: the trained adapter's factors start at this row
    rank: int  # R


def _plain_lora(module: LoraLayer, where: str) -> tuple[torch.Tensor, torch.Tensor, float, bool]:
    """``(A, B, scaling, fan_in_fan_out)`` of a plain single-adapter LoRA linear, else ``Uncomposable``."""
    if not isinstance(module, LoraLinear) or ADAPTER not in module.lora_A or len(module.lora_A) != 1:
        raise Uncomposable(f"{where}: not a plain LoRA linear layer with one adapter")
    if module.use_dora.get(ADAPTER, False) or module.lora_bias.get(ADAPTER, False) or module.merged:
        raise Uncomposable(f"{where}: DoRA, a LoRA bias or an already merged adapter")
    return (module.lora_A[ADAPTER].weight, module.lora_B[ADAPTER].weight, float(module.scaling[ADAPTER]),
            bool(module.fan_in_fan_out))


def record_merge(peft_model: PeftModel) -> None:
    """Before ``merge_and_unload``: keep each LoRA layer's factors on the layer it merges into (added to those
    of earlier merges) and mark the modules_to_save copies that will replace their originals."""
    for name, module in peft_model.get_base_model().named_modules():
        if isinstance(module, LoraLayer):
            base = module.get_base_layer()
            try:
                A, B, scaling, layout = _plain_lora(module, name)
                factors = Factors(A.detach().float().cpu().clone(), (B.detach().float() * scaling).cpu(), layout)
                previous = getattr(base, MERGED_ATTR, None)
                if isinstance(previous, str):
                    continue  # already uncomposable: stays so
                setattr(base, MERGED_ATTR, factors if previous is None else previous.then(factors))
            except Uncomposable as err:
                setattr(base, MERGED_ATTR, str(err))
        elif isinstance(module, ModulesToSaveWrapper) and ADAPTER in module.modules_to_save:
            setattr(module.modules_to_save[ADAPTER], SAVED_ATTR, True)
        elif isinstance(module, AuxiliaryTrainingWrapper):  # trainable tokens: merged into an embedding
            setattr(module.get_base_layer() if hasattr(module, "get_base_layer") else module, MERGED_ATTR,
                    f"{name}: a {type(module).__name__}")


def _walk(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``named_modules`` without the insides of peft's LoRA layers and module wrappers (their own parts), named
    as in a plain model (FSDP1 / activation-checkpoint wrappers add a level that saved names never have)."""
    skip: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix) for prefix in skip):
            continue
        if isinstance(module, (LoraLayer, AuxiliaryTrainingWrapper)):
            skip.append(name + ".")
        for wrapper in WRAPPERS:
            name = name.replace(wrapper, "")
        yield name, module


Parts = tuple[dict[str, Factors], dict[str, tuple[Factors, float]], dict[str, nn.Module]]


def _lineage_parts(model: nn.Module) -> Parts:
    """``(inherited, trained with its scaling, saved modules)`` of a peft model's wrapped model, by module name."""
    inherited: dict[str, Factors] = {}
    trained: dict[str, tuple[Factors, float]] = {}
    saved: dict[str, nn.Module] = {}
    for name, module in _walk(model):
        inside_saved = any(name.startswith(prefix + ".") for prefix in saved)
        if isinstance(module, LoraLayer):
            if inside_saved:
                raise Uncomposable(f"{name}: a LoRA layer inside a fully trained module")
            A, B, scaling, layout = _plain_lora(module, name)
            trained[name] = (Factors(A.detach(), B.detach(), layout), scaling)
            record = getattr(module.get_base_layer(), MERGED_ATTR, None)
        elif isinstance(module, ModulesToSaveWrapper):
            if ADAPTER not in module.modules_to_save:
                raise Uncomposable(f"{name}: modules_to_save of another adapter")
            saved[name] = module.modules_to_save[ADAPTER]
            continue  # a fully saved copy already holds whatever was merged inside it
        elif isinstance(module, AuxiliaryTrainingWrapper):
            raise Uncomposable(f"{name}: a {type(module).__name__}")
        elif inside_saved:
            continue  # its weights are saved whole with the module that holds it
        else:
            record = getattr(module, MERGED_ATTR, None)
            if getattr(module, SAVED_ATTR, False):
                saved[name] = module
                continue
        if isinstance(record, str):
            raise Uncomposable(record)
        if record is not None:
            inherited[name] = record
    return inherited, trained, saved


def _has_inherited(model: nn.Module) -> bool:
    return any(hasattr(m, MERGED_ATTR) or getattr(m, SAVED_ATTR, False) for m in model.modules())


def _factor_pair(first: Factors | None, second: Factors | None, r1: int, rank: int, scale: float):
    """The composed ``(A, B)`` of one layer: inherited factors (B divided by ``scale``) in rows ``:r1``, the
    trained ones (already over ``scale``) from row ``r1``."""
    like = (second or first).B
    A = torch.zeros(rank, (second or first).A.shape[1], dtype=like.dtype)
    B = torch.zeros(like.shape[0], rank, dtype=like.dtype)
    if first is not None:
        A[: first.rank] = first.A.to(A.dtype)
        B[:, : first.rank] = (first.B / scale).to(B.dtype)
    if second is not None:
        A[r1 : r1 + second.rank] = second.A.to(A.dtype).cpu()
        B[:, r1 : r1 + second.rank] = second.B.to(B.dtype).cpu()
    return A, B


def compose(peft_model: PeftModel, base_model_name_or_path: str) -> Composed | None:
    """The adapter of ``peft_model`` and every adapter merged into its base, as one adapter on the original base.

    None when nothing was merged into the base (the live adapter alone is the whole model); ``Uncomposable``
    when the lineage is not plain LoRA.
    """
    model = peft_model.get_base_model()
    if not _has_inherited(model):
        return None
    if list(peft_model.peft_config) != [ADAPTER]:
        raise Uncomposable(f"adapters {list(peft_model.peft_config)}: only one, named {ADAPTER!r}, is composed")
    inherited, trained_scaled, saved = _lineage_parts(model)
    if not inherited and not saved:
        return None
    scalings = {scaling for _, scaling in trained_scaled.values()}
    scale = scalings.pop() if len(scalings) == 1 else 1.0  # one scaling (a fresh adapter): its B goes in as is
    trained = {
        name: part if scaling == scale else Factors(part.A, part.B * (scaling / scale), part.fan_in_fan_out)
        for name, (part, scaling) in trained_scaled.items()
    }
    layouts = {f.fan_in_fan_out for f in [*inherited.values(), *trained.values()]}
    if len(layouts) > 1:
        raise Uncomposable("adapters with different fan_in_fan_out layouts")
    r1 = max((f.rank for f in inherited.values()), default=0)
    rank = r1 + max((f.rank for f in trained.values()), default=0)
    targets = sorted(set(inherited) | set(trained))
    if not targets:
        raise Uncomposable("no LoRA layer to compose")
    tensors: dict[str, torch.Tensor] = {}
    for name in targets:
        A, B = _factor_pair(inherited.get(name), trained.get(name), r1, rank, scale)
        tensors[f"{PREFIX}{name}.lora_A.weight"] = A
        tensors[f"{PREFIX}{name}.lora_B.weight"] = B
    for name, module in saved.items():
        for key, value in module.state_dict().items():
            tensors[f"{PREFIX}{name}.{key}"] = value.detach().cpu().clone()  # no shared storage (tied)
    alpha = scale * rank  # peft's scaling lora_alpha / r is then exactly `scale`
    live = peft_model.peft_config[ADAPTER]
    config = LoraConfig(
        r=rank,
        lora_alpha=int(alpha) if float(alpha).is_integer() else alpha,
        lora_dropout=live.lora_dropout,
        target_modules=targets,
        modules_to_save=sorted(saved) or None,
        fan_in_fan_out=layouts.pop(),
        task_type=live.task_type,
        base_model_name_or_path=base_model_name_or_path,
    )
    return Composed(config, tensors, r1, rank)


def place_checkpoint_tensor(param: torch.Tensor, name: str, value: torch.Tensor, inherited_rank: int) -> None:
    """Copy a training checkpoint's tensor of the trained (stacked) adapter into the composed adapter's
    parameter: LoRA factors go to rows/columns ``inherited_rank:``, anything else is copied whole."""
    value = value.to(param.device, param.dtype)
    if param.shape == value.shape:
        param.copy_(value)
    elif ".lora_A." in name and param.shape[1:] == value.shape[1:]:
        param[inherited_rank : inherited_rank + value.shape[0]] = value
    elif ".lora_B." in name and param.shape[0] == value.shape[0]:
        param[:, inherited_rank : inherited_rank + value.shape[1]] = value
    else:
        raise ValueError(f"{name}: checkpoint shape {tuple(value.shape)} does not fit {tuple(param.shape)}")


def describe(composed: Composed) -> dict[str, Any]:
    """What ``alignloop_model.json`` records about a composed adapter."""
    return {"inherited_rank": composed.inherited_rank, "rank": composed.rank}
