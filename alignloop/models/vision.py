"""Vision-language models: telling them apart, their parts, processors, and tiny random ones for tests.

A VLM folder is any Hugging Face checkpoint whose config has a ``vision_config``; it loads with
``AutoModelForImageTextToText`` and ``AutoProcessor``. The families checked by tests are Idefics3/SmolVLM,
LLaVA and Qwen2-VL; their language model, connector and vision tower are found by attribute name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from torch import nn
from transformers import (
    AutoProcessor,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3Processor,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)
from transformers.models.idefics3 import Idefics3ImageProcessorPil
from transformers.models.siglip import SiglipImageProcessorPil

from alignloop.errors import ModelError

__all__ = [
    "IMAGE_PLACEHOLDER",
    "build_tiny_vlm",
    "connector_names",
    "image_token_id",
    "is_vision_config",
    "is_vision_folder",
    "is_vision_model",
    "language_model_lora_targets",
    "load_processor",
    "make_idefics3_processor",
    "vision_tower_names",
]

# What users write in message content where an image goes (one per entry of the record's ``images``).
IMAGE_PLACEHOLDER = "<image>"
# Tokens the Idefics3 processor needs that a text tokenizer lacks.
IDEFICS3_TOKENS = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"]

_CONNECTORS = ("connector", "multi_modal_projector", "merger")
_VISION_TOWERS = ("vision_model", "vision_tower", "visual")
_LANGUAGE_MODELS = ("text_model", "language_model")
_LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def is_vision_config(config: Any) -> bool:
    return getattr(config, "vision_config", None) is not None


def is_vision_folder(folder: str | Path) -> bool:
    """True for a saved VLM checkpoint (its ``config.json`` has a ``vision_config``)."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return False
    try:
        return "vision_config" in json.loads(path.read_text())
    except (OSError, ValueError):
        return False


def innermost_model(model: nn.Module) -> nn.Module:
    """The model under DDP-style and peft wrappers."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model.get_base_model() if isinstance(model, PeftModel) else model


def is_vision_model(model: nn.Module) -> bool:
    return is_vision_config(getattr(innermost_model(model), "config", None))


def image_token_id(model: nn.Module) -> int:
    config = innermost_model(model).config
    for key in ("image_token_id", "image_token_index"):
        value = getattr(config, key, None)
        if value is not None:
            return int(value)
    raise ModelError(f"{type(innermost_model(model)).__name__}: the config names no image token id")


def _module_names(model: nn.Module, leaf_names: tuple[str, ...]) -> list[str]:
    """Full names of the first-level submodules called one of ``leaf_names`` (outermost match only)."""
    found: list[str] = []
    for name, _ in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in leaf_names and not any(name.startswith(prefix + ".") for prefix in found):
            found.append(name)
    return found


def connector_names(model: nn.Module) -> list[str]:
    """The modules that map vision features into the language model's embedding space."""
    inner = innermost_model(model)
    towers = vision_tower_names(inner)
    # Qwen2-VL's merger lives inside its vision tower; LLaVA's and Idefics3's connectors beside it.
    return [name for name in _module_names(inner, _CONNECTORS) if name.rsplit(".", 1)[-1] != "merger" or towers]


def vision_tower_names(model: nn.Module) -> list[str]:
    return _module_names(innermost_model(model), _VISION_TOWERS)


def language_model_lora_targets(model: nn.Module) -> str:
    """A peft ``target_modules`` regex: the language model's attention and MLP projections only.

    "all-linear" would also adapt the vision tower (SigLIP has ``q_proj`` too) and the connector.
    """
    inner = innermost_model(model)
    prefixes = _module_names(inner, _LANGUAGE_MODELS)
    if not prefixes:
        raise ModelError(f"{type(inner).__name__}: cannot find its language model ({', '.join(_LANGUAGE_MODELS)})")
    roots = "|".join(p.replace(".", r"\.") for p in prefixes)
    return rf"^(?:{roots})\..*\.(?:{'|'.join(_LINEAR_NAMES)})$"


def load_processor(folder: str | Path):
    try:
        return AutoProcessor.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        raise ModelError(f"cannot load an image processor from '{folder}': {str(err).splitlines()[0]}") from err


def make_idefics3_processor(tokenizer, image_size: int, image_seq_len: int) -> Idefics3Processor:
    """A SmolVLM processor over a text tokenizer: no image splitting, one ``image_size`` square per image."""
    tokenizer.add_special_tokens({"additional_special_tokens": IDEFICS3_TOKENS})
    images = Idefics3ImageProcessorPil(
        do_resize=True,
        size={"longest_edge": image_size},
        do_image_splitting=False,
        max_image_size={"longest_edge": image_size},
    )
    return Idefics3Processor(images, tokenizer, image_seq_len=image_seq_len, chat_template=tokenizer.chat_template)


def tiny_vision_settings(image_size: int = 32, patch_size: int = 8) -> dict[str, Any]:
    return dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                image_size=image_size, patch_size=patch_size)


def _tiny_text_settings(vocab_size: int) -> dict[str, Any]:
    return dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=True)


def build_tiny_vlm(tokenizer, family: str = "idefics3", seed: int = 0) -> tuple[nn.Module, Any]:
    """A random VLM with a 2-layer, 64-wide language model over ``tokenizer`` (extended with image tokens).

    ``family`` is ``idefics3`` (SmolVLM layout, 32×32 images, 4 image tokens) or ``llava`` (16 image tokens).
    Returns ``(model, processor)``; same seed, same weights.
    """
    if family == "idefics3":
        processor = make_idefics3_processor(tokenizer, image_size=32, image_seq_len=4)
        config = Idefics3Config(
            text_config=_tiny_text_settings(len(tokenizer)),
            vision_config=tiny_vision_settings(),
            scale_factor=2,
            image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
            tie_word_embeddings=True,
        )
        model_class = Idefics3ForConditionalGeneration
    elif family == "llava":
        processor = _tiny_llava_processor(tokenizer)
        config = LlavaConfig(
            text_config=LlamaConfig(**_tiny_text_settings(len(tokenizer))),
            vision_config={"model_type": "siglip_vision_model", **tiny_vision_settings()},
            image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
            vision_feature_select_strategy="full",
            vision_feature_layer=-1,
            projector_hidden_act="gelu",
            tie_word_embeddings=True,
        )
        model_class = LlavaForConditionalGeneration
    else:
        raise ModelError(f"build_tiny_vlm: unknown family '{family}' (idefics3, llava)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)
    model.eval()
    return model, processor


def _tiny_llava_processor(tokenizer):
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    images = SiglipImageProcessorPil(size={"height": 32, "width": 32})
    return LlavaProcessor(images, tokenizer, patch_size=8, vision_feature_select_strategy="full",
                          num_additional_image_tokens=0, chat_template=tokenizer.chat_template)
