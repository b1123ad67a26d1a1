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
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLProcessor,
)
from transformers.models.idefics3 import Idefics3ImageProcessorPil
from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil
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
# Qwen2-VL's: an image is written <|vision_start|><|image_pad|><|vision_end|>.
QWEN2_VL_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]

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
    except (OSError, ValueError, KeyError, ImportError) as err:
        if "video" in str(err).lower() and _processor_class(folder).startswith("Qwen2VL"):
            # a Qwen2-VL checkpoint lists a video processor, which needs torchvision; images need none of it
            return _ImageOnlyQwen2VLProcessor.from_pretrained(folder, local_files_only=True)
        raise ModelError(f"cannot load an image processor from '{folder}': {str(err).splitlines()[0]}") from err


def _processor_class(folder: str | Path) -> str:
    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        path = Path(folder) / name
        if path.is_file():
            try:
                found = json.loads(path.read_text()).get("processor_class")
            except (OSError, ValueError):
                continue
            if found:
                return str(found)
    return ""


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


def _tiny_vision_settings(image_size: int = 32, patch_size: int = 8) -> dict[str, Any]:
    return dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                image_size=image_size, patch_size=patch_size)


def _tiny_text_settings(vocab_size: int) -> dict[str, Any]:
    return dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=True)


def build_tiny_vlm(tokenizer, family: str = "idefics3", seed: int = 0) -> tuple[nn.Module, Any]:
    """A random VLM with a 2-layer, 64-wide language model over ``tokenizer`` (extended with image tokens).

    ``family`` is ``idefics3`` (SmolVLM layout, 32×32 images, 4 image tokens), ``llava`` (16 image tokens) or
    ``qwen2_vl`` (8-pixel patches merged 2×2, images resized to 32²…64² pixels: a 32×32 image gives 4 image
    tokens, a 64×32 one 8; M-RoPE positions). Returns ``(model, processor)``; same seed, same weights.
    """
    if family == "idefics3":
        processor = make_idefics3_processor(tokenizer, image_size=32, image_seq_len=4)
        config = Idefics3Config(
            text_config=_tiny_text_settings(len(tokenizer)),
            vision_config=_tiny_vision_settings(),
            scale_factor=2,
            image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
            tie_word_embeddings=True,
        )
        model_class = Idefics3ForConditionalGeneration
    elif family == "llava":
        processor = _tiny_llava_processor(tokenizer)
        config = LlavaConfig(
            text_config=LlamaConfig(**_tiny_text_settings(len(tokenizer))),
            vision_config={"model_type": "siglip_vision_model", **_tiny_vision_settings()},
            image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
            vision_feature_select_strategy="full",
            vision_feature_layer=-1,
            projector_hidden_act="gelu",
            tie_word_embeddings=True,
        )
        model_class = LlavaForConditionalGeneration
    elif family == "qwen2_vl":
        processor = _tiny_qwen2_vl_processor(tokenizer)
        ids = dict(zip(("vision_start_token_id", "vision_end_token_id", "image_token_id", "video_token_id"),
                       tokenizer.convert_tokens_to_ids(QWEN2_VL_TOKENS)))
        # head_dim 16: M-RoPE splits its 8 frequencies 2 (time) + 3 (height) + 3 (width)
        rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
        config = Qwen2VLConfig(
            text_config={**_tiny_text_settings(len(tokenizer)), "rope_parameters": rope},
            vision_config=dict(depth=1, embed_dim=32, hidden_size=64, mlp_ratio=2, num_heads=2, patch_size=8,
                               spatial_merge_size=2, temporal_patch_size=2),
            tie_word_embeddings=True,
            **ids,
        )
        model_class = Qwen2VLForConditionalGeneration
    else:
        raise ModelError(f"build_tiny_vlm: unknown family '{family}' (idefics3, llava, qwen2_vl)")
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


class _ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    """Qwen2-VL's processor without its video processor (that one needs torchvision)."""

    @classmethod
    def get_attributes(cls):
        return ["image_processor", "tokenizer"]


def _tiny_qwen2_vl_processor(tokenizer) -> Qwen2VLProcessor:
    tokenizer.add_special_tokens({"additional_special_tokens": QWEN2_VL_TOKENS})
    images = Qwen2VLImageProcessorPil(size={"shortest_edge": 32 * 32, "longest_edge": 64 * 64}, patch_size=8,
                                      temporal_patch_size=2, merge_size=2)
    return _ImageOnlyQwen2VLProcessor(images, tokenizer, chat_template=tokenizer.chat_template)
