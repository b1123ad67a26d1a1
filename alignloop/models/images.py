"""Images as model inputs: prepared once per image, encoded once per forward, spliced into the embeddings.

A sample's images travel beside its token ids as a tuple of ``EncodedImage`` (the processor's tensors for
that one image), never stacked into a batch tensor, so splitting, repeating, shuffling or packing rows keeps
every sample with its own images. At forward time ``multimodal_inputs`` encodes each *distinct* image object
once (a GRPO group or a DPO pair holds the same object several times), then writes the features over the
image-token positions of the token embeddings and calls the model with ``inputs_embeds``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from alignloop.errors import ModelError
from alignloop.models.vision import IMAGE_PLACEHOLDER, image_token_id, innermost_model

__all__ = ["EncodedImage", "ImageEncoder", "image_features", "multimodal_inputs", "rows_images"]


@dataclass(eq=False)  # identity is what matters: equal pixels in two objects are encoded twice, which is fine
class EncodedImage:
    """One image as the processor prepares it, and what its placeholder expands to in the token ids."""

    tensors: dict[str, torch.Tensor]  # this image alone, e.g. pixel_values [1, 1, 3, H, W]
    token_ids: tuple[int, ...]  # the expansion of one placeholder (image tokens plus any markers around them)
    n_features: int  # how many image-token positions its features fill
    source: str = ""

    def to(self, device: torch.device | str) -> EncodedImage:
        if all(t.device == torch.device(device) for t in self.tensors.values()):
            return self
        return EncodedImage({k: v.to(device) for k, v in self.tensors.items()}, self.token_ids, self.n_features,
                            self.source)


class ImageEncoder:
    """Turns PIL images into ``EncodedImage`` with a model's processor; also says how a placeholder is written."""

    def __init__(self, processor: Any):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        token = getattr(processor, "image_token", None) or IMAGE_PLACEHOLDER
        self.image_token = str(token)
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(self.image_token)
        if self.image_token_id is None or self.image_token_id == self.tokenizer.unk_token_id:
            raise ModelError(f"the processor's image token '{self.image_token}' is not in its tokenizer")
        # Qwen2-VL wraps its image token in vision markers; the others use it alone.
        start, end = getattr(processor, "vision_start_token", None), getattr(processor, "vision_end_token", None)
        self.placeholder_text = f"{start}{self.image_token}{end}" if start and end else self.image_token
        bare = self.tokenizer(self.image_token, add_special_tokens=True)["input_ids"]
        at = bare.index(self.image_token_id)
        self._prefix, self._suffix = len(bare[:at]), len(bare[at + 1 :])

    def encode(self, image: Any, source: str = "") -> EncodedImage:
        out = self.processor(text=[self.image_token], images=[[image]], return_tensors="pt")
        ids = out["input_ids"][0].tolist()
        ids = ids[self._prefix : len(ids) - self._suffix]
        tensors = {k: v for k, v in out.items() if k not in ("input_ids", "attention_mask") and torch.is_tensor(v)}
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
    return out
