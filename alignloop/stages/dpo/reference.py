"""Reference log-probs computed once, before training, and cached in the run directory.

The cache file ``ref_logps-<key>.safetensors`` is keyed by a hash of the reference weights, of the tokenised
train and eval pairs, and of the numeric settings (precision, device type); a resumed or repeated run with the
same key loads it instead of running the reference again. It is written atomically (temp file + rename), so a
killed run never leaves a half-written cache behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from torch import nn

from alignloop.models import adapter_disabled
from alignloop.models.images import EncodedImage
from alignloop.stages.dpo.batch import PairExample, batch_to, pair_logps

CACHE_PREFIX = "ref_logps-"


def model_fingerprint(model: nn.Module) -> str:
    """A hash of the weights the reference uses: every parameter and buffer except LoRA adapter tensors."""
    digest = hashlib.blake2b(digest_size=16)
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    for name, tensor in sorted(tensors, key=lambda item: item[0]):
        if ".lora_" in name:
            continue  # with LoRA the reference is the adapter-disabled base
        _hash_tensor(digest, name, tensor)
    return digest.hexdigest()


def _hash_tensor(digest, name: str, tensor: torch.Tensor) -> None:
    data = tensor.detach().to("cpu").contiguous()
    digest.update(f"{name}:{data.dtype}:{tuple(data.shape)};".encode())
    digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")


def _image_fingerprint(image: EncodedImage) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(image.tensors.items()):
        _hash_tensor(digest, name, tensor)
    return digest.hexdigest()


def examples_fingerprint(examples: Sequence[PairExample]) -> str:
    """A hash of the pairs' tokens and of their images' pixels (each distinct image hashed once)."""
    digest = hashlib.blake2b(digest_size=16)
    images: dict[int, str] = {}
    for e in examples:
        digest.update(repr((e.prompt_ids, e.chosen_ids, e.rejected_ids)).encode())
        for image in e.images:
            if id(image) not in images:
                images[id(image)] = _image_fingerprint(image)
            digest.update(images[id(image)].encode())
    return digest.hexdigest()


def cache_key(*parts: str) -> str:
    return hashlib.blake2b("|".join(parts).encode(), digest_size=8).hexdigest()


def cache_path(out_dir: str | Path, key: str) -> Path:
    return Path(out_dir) / f"{CACHE_PREFIX}{key}.safetensors"


@contextlib.contextmanager
def reference_view(policy: nn.Module) -> Iterator[nn.Module]:
    """The reference as the policy is now: adapter off for a LoRA policy, else the policy itself in eval mode.

    Only valid before training changes the weights (full fine-tuning) — which is when the cache is built.
    """
    if isinstance(policy, PeftModel):
        with adapter_disabled(policy) as base:
            yield base
        return
    modes = [(module, module.training) for module in policy.modules()]
    policy.eval()
    try:
        with torch.no_grad():
            yield policy
    finally:
        for module, training in modes:
            module.training = training


def compute_logps(
    model: nn.Module,
    examples: Sequence[PairExample],
    collate: Callable[[list[PairExample]], dict],
    batch_size: int,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager],
    by_prompt: bool = False,
    sort: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed chosen / rejected log-probs ``[len(examples)]`` (fp32, CPU), in the examples' order.

    Batches are formed from length-sorted examples, which keeps padding (and time) low; ``by_prompt`` sorts by
    prompt first, so a collate that shares prompts finds a prompt's pairs in one batch. ``sort=False`` batches
    the examples in their own order (as the stage's evaluation does, whose bf16 sums depend on the batch).
    """
    chosen = torch.zeros(len(examples), dtype=torch.float32)
    rejected = torch.zeros(len(examples), dtype=torch.float32)
    if not sort:
        order = list(range(len(examples)))
    elif by_prompt:
        order = sorted(range(len(examples)), key=lambda i: (len(examples[i].prompt_ids), examples[i].prompt_ids))
    else:
        order = sorted(range(len(examples)), key=lambda i: len(examples[i]))
    with torch.no_grad(), autocast():
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = batch_to(collate([examples[i] for i in rows]), device)
            out = pair_logps(model, batch)
            chosen[rows] = out.chosen.float().cpu()
            rejected[rows] = out.rejected.float().cpu()
    return chosen, rejected


def save_cache(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Atomic safetensors write: a temp file in the same folder, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_cache(path: Path, sizes: dict[str, int]) -> dict[str, torch.Tensor] | None:
    """The cached tensors, or None when the file is missing or does not match ``sizes`` (name -> length)."""
    if not path.is_file():
        return None
    try:
        tensors = load_file(str(path))
    except Exception:  # a corrupt file is recomputed, not fatal
        return None
    for name, size in sizes.items():
        if name not in tensors or tensors[name].shape != (size,):
            return None
    return tensors
