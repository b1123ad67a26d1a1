"""Models: bundled and local causal LMs, tiny test models, LoRA and references, scalar-head models."""

from alignloop.models.bundled import BUNDLED_MODELS, alignloop_home
from alignloop.models.loading import (
    build_tiny_llama,
    enable_gradient_checkpointing,
    load_causal_lm,
    load_tokenizer,
    load_trainable_lm,
    model_origin,
)
from alignloop.models.lora import (
    Reference,
    adapter_disabled,
    apply_lora,
    frozen_copy,
    make_reference,
)
from alignloop.models.registry import TINY_MODEL, list_models, resolve_model
from alignloop.models.saving import save_model
from alignloop.models.scalar_head import ScalarHeadModel, last_token_index, position_ids_from_mask

__all__ = [
    "enable_gradient_checkpointing",
    "load_trainable_lm",
    "BUNDLED_MODELS",
    "TINY_MODEL",
    "Reference",
    "ScalarHeadModel",
    "adapter_disabled",
    "alignloop_home",
    "apply_lora",
    "build_tiny_llama",
    "frozen_copy",
    "last_token_index",
    "list_models",
    "load_causal_lm",
    "load_tokenizer",
    "make_reference",
    "model_origin",
    "position_ids_from_mask",
    "resolve_model",
    "save_model",
]
