"""Images as model inputs: prepared once per image, encoded once per forward, spliced into the embeddings.

A sample's images travel beside its token ids as a tuple of ``EncodedImage`` (the processor's tensors for
that one image), never stacked into a batch tensor, so splitting, repeating, shuffling or packing rows keeps
every sample with its own images. At forward time ``multimodal_inputs`` encodes each *distinct* image object
once (a GRPO group or a DPO pair holds the same object several times), then writes the features over the
image-token positions of the token embeddings and calls the model with ``inputs_embeds``. Models with 3D
rotary positions (Qwen2-VL's M-RoPE) cannot derive them from embeddings, so their ``position_ids`` are computed
here too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from alignloop.errors import ModelError
from alignloop.models.vision import IMAGE_PLACEHOLDER, image_token_id, innermost_model

__all__ = ["EncodedImage", "ImageEncoder", "image_features", "multimodal_inputs", "rope_index_owner", "rows_images"]

# Processor outputs that describe the placeholder text, not the image (Qwen2-VL adds ``mm_token_type_ids``).
_PER_TOKEN = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")
# Qwen-VL tokenizers name no vision markers; their chat templates write these around ``<|image_pad|>``.
_QWEN_IMAGE_TOKEN, _QWEN_MARKERS = "<|image_pad|>", ("<|vision_start|>", "<|vision_end|>")


@dataclass(eq=False)  # identity is what matters: equal pixels in two objects are encoded twice, which is fine
class EncodedImage:
    """One image as the processor prepares it, and what its placeholder expands to in the token ids."""

    tensors: dict[str, torch.Tensor]  # this image alone, e.g. pixel_values [1, 1, 3, H, W]
    token_ids: tuple[int, ...]  # the expansion of one placeholder (image tokens plus any markers around them)
    n_features: int  # how many image-token positions its features fill
    source: str = ""


def _token_id(tokenizer: Any, token: str) -> int | None:
    found = tokenizer.convert_tokens_to_ids(token)
    if found is None or (found == tokenizer.unk_token_id and token != tokenizer.unk_token):
        return None
    return int(found)


def _vision_markers(processor: Any, image_token: str) -> tuple[str, str] | None:
    """The tokens written before and after an image's token (Qwen-VL), or None."""
    for owner in (processor, processor.tokenizer):
        start, end = getattr(owner, "vision_start_token", None), getattr(owner, "vision_end_token", None)
        if start and end:
            return str(start), str(end)
    if image_token == _QWEN_IMAGE_TOKEN and all(_token_id(processor.tokenizer, t) is not None for t in _QWEN_MARKERS):
        return _QWEN_MARKERS
    return None


class ImageEncoder:
    """Turns PIL images into ``EncodedImage`` with a model's processor; also says how a placeholder is written."""

    def __init__(self, processor: Any):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        token = getattr(processor, "image_token", None) or IMAGE_PLACEHOLDER
        self.image_token = str(token)
        self.image_token_id = _token_id(self.tokenizer, self.image_token)
        if self.image_token_id is None:
            raise ModelError(f"the processor's image token '{self.image_token}' is not in its tokenizer")
        # Qwen2-VL wraps its image token in vision markers; the others use it alone.
        markers = _vision_markers(processor, self.image_token)
        self.placeholder_text = f"{markers[0]}{self.image_token}{markers[1]}" if markers else self.image_token
        bare = self.tokenizer(self.image_token, add_special_tokens=True)["input_ids"]
        at = bare.index(self.image_token_id)
        self._prefix, self._suffix = len(bare[:at]), len(bare[at + 1 :])

    def encode(self, image: Any, source: str = "") -> EncodedImage:
        out = self.processor(text=[self.image_token], images=[[image]], return_tensors="pt")
        ids = out["input_ids"][0].tolist()
        ids = ids[self._prefix : len(ids) - self._suffix]
        tensors = {k: v for k, v in out.items() if k not in _PER_TOKEN and torch.is_tensor(v)}
        return EncodedImage(tensors, tuple(ids), sum(1 for t in ids if t == self.image_token_id), source)


def rows_images(images: Sequence[Sequence[EncodedImage]] | None, n_rows: int) -> list[tuple[EncodedImage, ...]]:
    if images is None:
        return [()] * n_rows
    if len(images) != n_rows:
        raise ModelError(f"got images for {len(images)} rows but the batch has {n_rows}")
    return [tuple(row) for row in images]


def _features_per_image(output: Any, images: list[EncodedImage]) -> list[torch.Tensor]:
    pooled = getattr(output, "pooler_output", None)
    pooled = output if pooled is None else pooled
    if isinstance(pooled, torch.Tensor):
        if pooled.dim() == 3 and pooled.shape[0] == len(images):
            pooled = list(pooled.unbind(0))
        else:
            pooled = list(pooled.reshape(-1, pooled.shape[-1]).split([im.n_features for im in images]))
    pieces = [p.reshape(-1, p.shape[-1]) for p in pooled]
    if len(pieces) != len(images):
        raise ModelError(f"the vision encoder returned {len(pieces)} feature blocks for {len(images)} images")
    return pieces


def image_features(model: nn.Module, images: Sequence[EncodedImage]) -> dict[int, torch.Tensor]:
    """Features ``[n_features, D]`` for each distinct image (keyed by ``id``), one encoder call per tensor shape."""
    inner = innermost_model(model)
    device = next(inner.parameters()).device
    unique = list({id(im): im for im in images}.values())
    groups: dict[tuple, list[EncodedImage]] = {}
    for im in unique:
        key = tuple((name, tuple(t.shape[1:])) for name, t in sorted(im.tensors.items()))
        groups.setdefault(key, []).append(im)
    found: dict[int, torch.Tensor] = {}
    for members in groups.values():
        names = members[0].tensors
        batch = {name: torch.cat([m.tensors[name] for m in members]).to(device) for name in names}
        output = inner.get_image_features(**batch)
        for im, feats in zip(members, _features_per_image(output, members)):
            if feats.shape[0] != im.n_features:
                raise ModelError(f"image {im.source or '?'}: {feats.shape[0]} features for {im.n_features} tokens")
            found[id(im)] = feats
    return found


def multimodal_inputs(model: nn.Module, inputs: dict) -> dict:
    """``inputs`` with ``input_ids`` + ``images`` replaced by ``inputs_embeds`` carrying the image features.

    ``inputs["images"]`` holds one tuple of ``EncodedImage`` per row, in the order their tokens appear; rows
    without images (or a batch without the key) pass through unchanged. Text-only models never see the key.
    """
    images = inputs.get("images")
    out = {k: v for k, v in inputs.items() if k != "images"}
    if images is None or not any(len(row) for row in images):
        return out
    input_ids = out.pop("input_ids")
    rows = rows_images(images, input_ids.shape[0])
    flat = [im for row in rows for im in row]
    features = image_features(model, flat)
    embeds = innermost_model(model).get_input_embeddings()(input_ids)
    # Each row's first k image tokens take its k feature rows; an image token the policy sampled later in
    # the row stays an ordinary token.
    is_image = input_ids == image_token_id(model)
    per_row = torch.tensor([sum(im.n_features for im in row) for row in rows], device=input_ids.device)
    mask = is_image & (is_image.long().cumsum(dim=1) <= per_row.unsqueeze(1))
    short = (mask.sum(dim=1) < per_row).nonzero().flatten().tolist()
    if short:
        raise ModelError(f"row {short[0]} has fewer image-token positions than its images have features "
                         "(a truncated image, or images attached to the wrong row)")
    stacked = torch.cat([features[id(im)] for im in flat]).to(embeds.dtype)
    out["inputs_embeds"] = embeds.masked_scatter(mask.unsqueeze(-1), stacked)
    owner = rope_index_owner(model)
    given = out.get("position_ids")
    if owner is not None and (given is None or given.dim() == 2):
        base = _text_positions(out, input_ids)
        out["position_ids"] = _mrope_position_ids(owner, rows, mask, base, image_token_id(model))
    return out


def rope_index_owner(model: nn.Module) -> nn.Module | None:
    """The module whose ``get_rope_index`` gives 3D (M-RoPE) positions (the Qwen2-VL family), or None."""
    inner = innermost_model(model)
    for candidate in (getattr(inner, "model", None), inner):
        if isinstance(candidate, nn.Module) and callable(getattr(candidate, "get_rope_index", None)):
            return candidate
    return None


def _text_positions(inputs: dict, input_ids: torch.Tensor) -> torch.Tensor:
    given, mask = inputs.get("position_ids"), inputs.get("attention_mask")
    if given is not None:
        return given.to(input_ids.device).long()
    if torch.is_tensor(mask) and mask.dim() == 2:
        return (mask.to(input_ids.device).long().cumsum(-1) - 1).clamp(min=0)
    return torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)


def _image_rope_block(owner: nn.Module, image: EncodedImage, token_id: int, device) -> tuple[torch.Tensor, int]:
    """One image's 3D positions ``[3, n]`` counted from 0, and how many positions it takes beyond its n tokens."""
    grid = image.tensors.get("image_grid_thw")
    if grid is None:
        raise ModelError(f"image {image.source or '?'}: an M-RoPE model needs the processor's image_grid_thw")
    ids = torch.full((1, image.n_features), token_id, dtype=torch.long, device=device)
    positions, delta = owner.get_rope_index(ids, mm_token_type_ids=torch.ones_like(ids),
                                            image_grid_thw=grid.to(device))
    return positions[:, 0], int(delta.flatten()[0])


def _mrope_position_ids(owner: nn.Module, rows: list[tuple[EncodedImage, ...]], image_mask: torch.Tensor,
                        base: torch.Tensor, token_id: int) -> torch.Tensor:
    """``[3, B, L]`` M-RoPE positions from 1D positions ``base`` ``[B, L]`` (what ``get_rope_index`` gives).

    An image's tokens take its own 3D block, offset by its first token's position; a later token of the same
    sequence moves on by what the image takes beyond its token count. A sequence starts where ``base`` is 0, so
    left padding and rows packing several sequences (a shared prompt's branches continue it) come out right.
    """
    out = base.unsqueeze(0).repeat(3, 1, 1)
    columns = torch.arange(base.shape[1], device=base.device)
    blocks: dict[int, tuple[torch.Tensor, int]] = {}
    for r, row in enumerate(rows):
        if not row:
            continue
        sequence = (base[r] == 0).long().cumsum(0)
        placed = list(zip(image_mask[r].nonzero().flatten().split([im.n_features for im in row]), row))
        shift = torch.zeros_like(base[r])
        for cols, image in placed:
            if id(image) not in blocks:
                blocks[id(image)] = _image_rope_block(owner, image, token_id, base.device)
            later = (columns > cols[-1]) & (sequence == sequence[cols[0]])
            shift += blocks[id(image)][1] * later.long()
        out[:, r] += shift
        for cols, image in placed:
            out[:, r, cols] = base[r, cols[0]] + shift[cols[0]] + blocks[id(image)][0]
    return out
