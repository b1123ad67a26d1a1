"""Reward and value models: a causal-LM backbone (no LM head) plus a linear scalar head.

``forward`` gives a value per token (PPO critic, process reward models); ``score`` pools at the
last non-pad token, so left- and right-padded batches of the same sequences score the same.
A saved folder holds the backbone in HF format (or its LoRA adapter), ``head.safetensors`` and
``alignloop_head.json``.

On a vision-language model the backbone is its base model (e.g. ``Idefics3Model``: vision tower, connector and
language model, no LM head); ``images`` (one tuple of ``EncodedImage`` per row) are encoded and spliced into the
token embeddings. ``pack_image_groups`` / ``score_groups`` are shared-prompt packing for such models: packed
rows carry their prompts' images, and two prompts with the same tokens but different images are never merged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

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
from alignloop.models.images import EncodedImage, image_features, multimodal_inputs
from alignloop.models.loading import load_causal_lm
from alignloop.models.lora import apply_lora
from alignloop.models.origin import model_lineage, model_origin, quiet_peft, saves_merged, set_lineage, set_origin
from alignloop.models.registry import resolve_model
from alignloop.models.saving import save_adapter, save_merged
from alignloop.models.shared_prompt import PackedGroups, ScoreGroup, attention_mask_for, pack_groups, score_packed
from alignloop.models.vision import innermost_model, is_vision_config

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
        hidden = hidden_size(self.config)
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
        images: Sequence[Sequence[EncodedImage]] | None = None,
        image_positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-token values, shape ``[batch, seq, num_outputs]``.

        ``images``: one tuple of ``EncodedImage`` per row (vision-language backbones). Their features fill the
        row's first image tokens, or exactly the ``image_positions`` (``[batch, seq]`` bool) when given.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if position_ids is None:
            position_ids = position_ids_from_mask(attention_mask)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        # M-RoPE models (Qwen2-VL) need positions computed with the images: ``multimodal_inputs`` does that
        if image_positions is not None and images is not None and not _has_mrope(self.backbone):
            inputs["inputs_embeds"] = self._spliced_embeddings(inputs.pop("input_ids"), images, image_positions)
        elif images is not None:
            inputs = multimodal_inputs(self.backbone, {**inputs, "images": list(images)})
        out = self.backbone(**inputs, use_cache=False)
        hidden = out.last_hidden_state
        return self.head(hidden.to(self.head.weight.dtype))

    def _spliced_embeddings(self, input_ids, images, positions: torch.Tensor) -> torch.Tensor:
        flat = [image for row in images for image in row]
        features = image_features(self.backbone, flat)  # each distinct image object encoded once
        embeds = innermost_model(self.backbone).get_input_embeddings()(input_ids)
        stacked = torch.cat([features[id(image)] for image in flat]) if flat else embeds.new_zeros(0, embeds.shape[-1])
        if stacked.shape[0] != int(positions.sum()):
            raise ModelError(f"{stacked.shape[0]} image features for {int(positions.sum())} image positions")
        return embeds.masked_scatter(positions.unsqueeze(-1), stacked.to(embeds.dtype))

    def score(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        images: Sequence[Sequence[EncodedImage]] | None = None,
    ) -> torch.Tensor:
        """One score per sequence, taken at its last non-pad token: shape ``[batch, num_outputs]``."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        values = self.forward(input_ids, attention_mask, images=images)
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
        set_lineage(backbone, model_lineage(causal_lm))
        if lora is not None:
            # apply_lora reads the origin from the backbone, which does not carry it itself.
            if origin is not None:
                set_origin(backbone, origin)
            backbone = apply_lora(backbone, lora)
        return cls(backbone, num_outputs, output_names, base_model=origin)

    @property
    def is_vision(self) -> bool:
        return is_vision_config(innermost_model(self.backbone).config)

    def save_pretrained(self, out_dir: str | Path, tokenizer: Any = None, *, merge: bool | None = None) -> Path:
        """Backbone (full HF folder, or LoRA adapter on the original base), ``head.safetensors``,
        ``alignloop_head.json``. ``merge``: a LoRA backbone is saved merged (default: its ``lora.save_merged``)."""
        out_dir = Path(out_dir)
        merge = saves_merged(self.backbone) if merge is None else merge
        lineage = model_lineage(self.backbone)
        with atomic_directory(out_dir) as tmp:
            extra = None
            if self.is_lora and not merge:
                if self.base_model_name is None:
                    raise ModelError("cannot save a LoRA scalar-head model whose base model is unknown")
                extra = save_adapter(self.backbone, tmp, self.base_model_name, lineage)
            if extra is None:
                save_merged(self.backbone, tmp)
            head = {"weight": self.head.weight.detach().cpu().contiguous(), "bias": self.head.bias.detach().cpu()}
            save_file(head, str(tmp / HEAD_WEIGHTS))
            meta = {
                "format": "full" if extra is None else "lora",
                "num_outputs": self.num_outputs,
                "output_names": self.output_names,
                "base_model": self.base_model_name,
                "hidden_size": hidden_size(self.config),
                "pooling": POOLING,
                **(extra or {}),
            }
            if lineage:
                meta["lineage"] = lineage
            write_json(tmp / HEAD_META, meta)
            if tokenizer is not None:  # a VLM's processor (its tokenizer included) goes here too
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
        base_name, lineage = meta.get("base_model"), meta.get("lineage", [])
        if meta.get("format") == "lora":
            # older versions named an SFT adapter folder as the base (merged here); now it is the original model
            causal_lm = load_causal_lm(base_name, dtype=dtype, merge=True)
            base_name, lineage = model_origin(causal_lm) or base_name, [*model_lineage(causal_lm), *lineage]
            base = causal_lm.base_model
            with quiet_peft():
                backbone = PeftModel.from_pretrained(base, folder, is_trainable=trainable)
        else:
            try:
                backbone = AutoModel.from_pretrained(folder, dtype=dtype, local_files_only=True)
            except (OSError, ValueError, KeyError) as err:
                raise ModelError(f"cannot load the backbone in '{folder}': {err}") from err
        set_lineage(backbone.get_base_model() if isinstance(backbone, PeftModel) else backbone, lineage)
        # For a full model base_model is lineage only (what it was initialised from).
        with torch.random.fork_rng(devices=[]):  # the head's init is overwritten: spare the caller's RNG
            model = cls(backbone, int(meta["num_outputs"]), meta.get("output_names"), base_model=base_name)
        model.head.load_state_dict(load_file(str(folder / HEAD_WEIGHTS)))
        if not trainable:
            model.eval()
            model.requires_grad_(False)
        return model


def load_shared_lora_members(folders: list[Path], dtype: torch.dtype = torch.float32) -> list[ScalarHeadModel]:
    """Frozen LoRA scalar-head models on the same base: one backbone in memory, one adapter (+ head) each.

    Member ``i``'s adapter is named ``member-<i>``; switch it on with ``backbone.set_adapter`` before scoring.
    """
    meta = read_json(folders[0] / HEAD_META)
    base = load_causal_lm(meta["base_model"], dtype=dtype, trainable=False, merge=True).base_model
    backbone = PeftModel.from_pretrained(base, folders[0], adapter_name="member-0", is_trainable=False)
    for i, folder in enumerate(folders[1:], start=1):
        backbone.load_adapter(folder, adapter_name=f"member-{i}", is_trainable=False)
    members = []
    for folder in folders:
        meta = read_json(folder / HEAD_META)
        member = ScalarHeadModel(backbone, int(meta["num_outputs"]), meta.get("output_names"),
                                 base_model=meta["base_model"])
        member.head.load_state_dict(load_file(str(folder / HEAD_WEIGHTS)))
        members.append(member.eval().requires_grad_(False))
    return members


def _default_names(num_outputs: int) -> list[str]:
    return ["score"] if num_outputs == 1 else [f"score_{i}" for i in range(num_outputs)]


def _has_mrope(backbone: nn.Module) -> bool:
    return callable(getattr(innermost_model(backbone), "get_rope_index", None))


def hidden_size(config: Any) -> int:
    """The width of the backbone's last hidden states (a VLM's config keeps it in its text config)."""
    size = getattr(config, "hidden_size", None)
    return int(size if size is not None else config.get_text_config().hidden_size)


@dataclass
class ImagePacked(PackedGroups):
    """``PackedGroups`` of a vision-language model: each row's images in token order, and their positions."""

    row_images: list[tuple[EncodedImage, ...]] = field(default_factory=list)
    image_positions: torch.Tensor | None = None  # [R, W] bool: where image features go

    def to(self, device: torch.device | str) -> "ImagePacked":
        moved = super().to(device)
        positions = None if self.image_positions is None else self.image_positions.to(device)
        return ImagePacked(moved.input_ids, moved.position_ids, moved.allowed, moved.end_rows, moved.end_cols,
                           moved.index, moved.n_tokens, self.row_images, positions)


def pack_image_groups(
    groups: list[ScoreGroup],
    images: Sequence[Sequence[EncodedImage]] | None,
    pad_id: int,
    image_token_id: int | None,
    *,
    share_prompt: bool = True,
    max_segment: int | None = None,
) -> PackedGroups:
    """``pack_groups`` where group ``g``'s prompt holds ``images[g]`` (their image tokens, in order).

    Image positions are tagged with the image's identity while packing, so prompts are shared only when their
    tokens AND images are the same; each row then gets its segments' images in token order. Text-only groups
    (no images anywhere) give plain ``PackedGroups``.
    """
    if images is None or not any(len(row) for row in images):
        return pack_groups(groups, pad_id, share_prompt=share_prompt, max_segment=max_segment)
    if len(images) != len(groups) or image_token_id is None:
        raise ModelError(f"got images for {len(images)} groups but {len(groups)} groups (or no image token id)")
    number: dict[int, int] = {}
    objects: list[EncodedImage] = []
    tagged = []
    for group, row in zip(groups, images):
        tags = []
        for image in row:
            if id(image) not in number:
                number[id(image)] = len(objects)
                objects.append(image)
            tags += [-1 - number[id(image)]] * image.n_features
        prompt = list(group.prompt_ids)
        slots = [i for i, token in enumerate(prompt) if token == image_token_id]
        if len(slots) != len(tags):
            raise ModelError(f"a prompt has {len(slots)} image-token positions for {len(tags)} image features")
        for i, tag in zip(slots, tags):
            prompt[i] = tag
        tagged.append(ScoreGroup(prompt, group.completions))
    packed = pack_groups(tagged, pad_id, share_prompt=share_prompt, max_segment=max_segment)
    positions = packed.input_ids < 0
    row_images = []
    for row in packed.input_ids.tolist():
        found: list[EncodedImage] = []
        left = 0  # feature positions of the current image still to pass
        for token in row:
            if token < 0:
                if left == 0:
                    found.append(objects[-1 - token])
                    left = found[-1].n_features
                left -= 1
        row_images.append(tuple(found))
    return ImagePacked(packed.input_ids.masked_fill(positions, image_token_id), packed.position_ids, packed.allowed,
                       packed.end_rows, packed.end_cols, packed.index, packed.n_tokens, row_images, positions)


def score_groups(model: nn.Module, packed: PackedGroups) -> torch.Tensor:
    """``score_packed`` that also passes an ``ImagePacked`` batch's images: ``[U, num_outputs]``."""
    if not isinstance(packed, ImagePacked):
        return score_packed(model, packed)
    mask = attention_mask_for(getattr(model, "module", model), packed.allowed)
    values = model(packed.input_ids, attention_mask=mask, position_ids=packed.position_ids,
                   images=packed.row_images, image_positions=packed.image_positions)
    return values[packed.end_rows, packed.end_cols]
