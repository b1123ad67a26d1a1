"""Loading causal LMs and tokenizers: full models, LoRA adapters and tiny-llama (saving: ``saving.py``).

An adapter folder names its base in ``alignloop_model.json`` (portable: a bundled name stays a name), which is
what ``load_causal_lm`` follows. Saved adapters name the original model; a folder saved by older versions may
name an earlier adapter folder instead (adapters stacked), which is merged first, as it was in training.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from safetensors import SafetensorError
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
)

from alignloop.errors import ModelError
from alignloop.models.bundled import BUNDLED_MODELS, ensure_bundled_tokenizer
from alignloop.models.compose import record_merge
from alignloop.models.files import (
    HEAD_META,
    adapter_base,
    adapter_lineage,
    is_adapter_dir,
    is_scalar_head_dir,
    read_json,
)
from alignloop.models.lora import apply_lora
from alignloop.models.origin import ORIGIN_ATTR, model_lineage, model_origin, quiet_peft, set_lineage, set_origin
from alignloop.models.vision import is_vision_folder, load_processor
from alignloop.models.registry import (
    TINY_MODEL,
    TINY_TOKENIZER_SOURCE,
    origin_name,
    resolve_model,
)

__all__ = [
    "build_tiny_llama",
    "enable_gradient_checkpointing",
    "load_causal_lm",
    "load_tokenizer",
    "load_trainable_lm",
    "load_vision_processor",
    "is_vision_language_model",
    "model_origin",
    "quiet_peft",
    "set_origin",
]


def build_tiny_llama(seed: int = 0, **config_overrides: Any):
    """A ~3.2M-parameter random Llama over the bundled 49152-token vocabulary; same seed, same weights.

    ``config_overrides`` replace ``LlamaConfig`` settings (tests vary tying, positions, dropout)."""
    settings = dict(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,  # the bundled model's context, so the tokenizer limits agree
        tie_word_embeddings=True,
        # Special-token ids of the bundled tokenizer: <|im_start|>=1, <|im_end|>=2 (also pad).
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    config = LlamaConfig(**{**settings, **config_overrides})
    # A private RNG stream: building the model must not shift the caller's random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.config._name_or_path = TINY_MODEL
    model.eval()  # same mode as from_pretrained gives
    setattr(model, ORIGIN_ATTR, TINY_MODEL)
    return model


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute each block's activations in backward. Non-reentrant checkpointing: gradients reach LoRA
    adapters even though the frozen embeddings' outputs do not require grad."""
    # transformers >= 5.2x renamed the method; the old name still works there but warns
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def load_trainable_lm(model: str, lora, gradient_checkpointing: bool, device) -> nn.Module:
    """A stage's trainable causal LM: loaded (LoRA applied), checkpointing set, on ``device``."""
    policy = load_causal_lm(model, lora=lora)
    if gradient_checkpointing:
        enable_gradient_checkpointing(policy)
    return policy.to(device)


def _check_config_json(folder: Path) -> None:
    """A broken config.json otherwise surfaces as a misleading tokenizer or weights error."""
    path = folder / "config.json"
    if path.is_file():
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise ModelError(f"{path}: not UTF-8 text") from None
        except json.JSONDecodeError as err:
            raise ModelError(f"{path}:{err.lineno}: invalid JSON: {err.msg} (column {err.colno})") from None


def _base_of(folder: Path) -> str:
    """An adapter's base model, checked to exist (the error names the adapter, not only the base)."""
    base = adapter_base(folder)
    try:
        resolve_model(base)
    except ModelError as err:
        raise ModelError(f"{folder}: the adapter's base model: {err}") from None
    return base


def _tokenizer_folder(name_or_path: str | Path) -> Path:
    name = str(name_or_path)
    if name in BUNDLED_MODELS:
        return ensure_bundled_tokenizer(name)
    if name == TINY_MODEL:
        return ensure_bundled_tokenizer(TINY_TOKENIZER_SOURCE)
    folder = Path(resolve_model(name))  # a built model (smolvlm-tiny) is built here once
    _check_config_json(folder)
    if (folder / "tokenizer_config.json").is_file() or (folder / "tokenizer.json").is_file():
        return folder
    # An adapter or head saved without a tokenizer uses its base model's.
    if is_adapter_dir(folder):
        return _tokenizer_folder(_base_of(folder))
    if is_scalar_head_dir(folder):
        base = read_json(folder / HEAD_META).get("base_model")
        if base and base != str(folder):
            return _tokenizer_folder(base)
    return folder


def load_tokenizer(name_or_path: str | Path, *, padding_side: str | None = None):
    """The tokenizer of a model, always with a pad token (eos when the model has none)."""
    folder = _tokenizer_folder(name_or_path)
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        raise ModelError(f"'{folder}' has no tokenizer (tokenizer.json or tokenizer_config.json): save the tokenizer "
                         "with the model (tokenizer.save_pretrained)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ModelError(f"cannot load a tokenizer from '{folder}': {_first_line(err)}") from err
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError(f"tokenizer in '{folder}' has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    if padding_side is not None:
        if padding_side not in ("left", "right"):
            raise ModelError(f"padding_side must be 'left' or 'right', not '{padding_side}'")
        tokenizer.padding_side = padding_side
    return tokenizer


def is_vision_language_model(name_or_path: str | Path) -> bool:
    """True when the model (or an adapter's base) is a vision-language model; builds/converts nothing new."""
    name = str(name_or_path)
    if name in BUNDLED_MODELS or name == TINY_MODEL:
        return False
    folder = Path(resolve_model(name))
    if is_adapter_dir(folder):  # a LoRA run: its base says (the adapter folder holds no config.json)
        return is_vision_language_model(adapter_base(folder))
    if is_scalar_head_dir(folder):
        return is_vision_folder(_tokenizer_folder(name))
    return is_vision_folder(folder)


def load_vision_processor(name_or_path: str | Path):
    """The processor (image preprocessing + tokenizer + chat template) of a vision-language model."""
    processor = load_processor(_tokenizer_folder(name_or_path))
    tokenizer = processor.tokenizer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return processor


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def load_causal_lm(
    name_or_path: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    lora: Any = None,
    trainable: bool = True,
    merge: bool = False,
) -> nn.Module:
    """Load a causal LM by name or folder; ``lora`` adds a fresh trainable adapter.

    An adapter folder loads its base and then the adapter.  The adapter is merged into the weights
    when ``merge`` is set or when a new ``lora`` is requested (so the new adapter's reference, the
    adapter-disabled model, is the loaded model itself).  ``trainable=False`` freezes everything
    and switches to eval mode.
    """
    source = resolve_model(name_or_path)
    if source == TINY_MODEL:
        model = build_tiny_llama().to(dtype)
    else:
        folder = Path(source)
        if is_scalar_head_dir(folder):
            raise ModelError(
                f"'{folder}' is a scalar-head (reward/value) model; load it with ScalarHeadModel.from_pretrained"
            )
        if is_adapter_dir(folder):
            model = _load_adapter(folder, dtype, trainable=trainable and lora is None, merge=merge or lora is not None)
        else:
            model = _load_full(folder, dtype)
            set_origin(model, origin_name(name_or_path, folder))
    if lora is not None:
        model = apply_lora(model, lora)
    if not trainable:
        model.eval()
        model.requires_grad_(False)
    return model


def _load_full(folder: Path, dtype: torch.dtype) -> nn.Module:
    _check_config_json(folder)
    auto = AutoModelForImageTextToText if is_vision_folder(folder) else AutoModelForCausalLM
    try:
        return auto.from_pretrained(folder, dtype=dtype, local_files_only=True)
    except SafetensorError as err:
        raise ModelError(f"cannot load a causal LM from '{folder}': a weights file is corrupt ({err})") from err
    except (OSError, ValueError, KeyError) as err:
        raise ModelError(f"cannot load a causal LM from '{folder}': {_first_line(err)}") from err


def _load_adapter(folder: Path, dtype: torch.dtype, *, trainable: bool, merge: bool) -> nn.Module:
    # A base that is itself an adapter (stacked LoRA runs saved by older versions) is merged first.
    base = load_causal_lm(_base_of(folder), dtype=dtype, merge=True)
    try:
        with quiet_peft():
            model = PeftModel.from_pretrained(base, folder, is_trainable=trainable and not merge)
    except (OSError, ValueError, KeyError) as err:
        raise ModelError(f"cannot load the LoRA adapter in '{folder}': {_first_line(err)}") from err
    # the LoRA runs these weights descend from: merged into the base, composed into this adapter, this one
    lineage = [*model_lineage(base), *adapter_lineage(folder)]
    if merge:
        record_merge(model)  # the adapter's factors stay beside the merged layers: saves compose them
        model = model.merge_and_unload()
        lineage.append(str(folder.resolve()))
    # The origin stays the original model: the base any later adapter is saved for.
    set_lineage(model.get_base_model() if isinstance(model, PeftModel) else model, lineage)
    return model
