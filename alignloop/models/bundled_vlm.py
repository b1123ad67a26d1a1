"""``smolvlm-tiny``: a SmolVLM (Idefics3) whose language model is the bundled SmolLM2-135M-Instruct.

No VLM weights can be downloaded, so it is built offline once into ``alignloop_home()/models/smolvlm-tiny``:
the real SmolLM2 weights and tokenizer, a small random vision tower (2-layer SigLIP, 128×128 images, 16×16
patches) and connector (pixel shuffle ×2 then a linear map: 16 image tokens per image), and a processor
(no image splitting) built from transformers' classes with SmolLM2's chat template. Training the connector
(and LoRA on the language model) is what teaches it to see; docs/vlm.md shows it does.
"""

from __future__ import annotations

from pathlib import Path

import torch
from rich.console import Console
from transformers import AutoModelForCausalLM, AutoTokenizer, Idefics3Config, Idefics3ForConditionalGeneration

from alignloop.models.bundled import bundled_model_dir, convert_atomically, ensure_bundled_model
from alignloop.models.vision import make_idefics3_processor

__all__ = ["BUILT_MODELS", "SMOLVLM_TINY", "ensure_built_model"]

SMOLVLM_TINY = "smolvlm-tiny"
BUILT_MODELS = {
    SMOLVLM_TINY: "SmolVLM layout: SmolLM2-135M-Instruct + 2-layer SigLIP (128 px, 16 image tokens), built offline",
}
IMAGE_SIZE, PATCH_SIZE, SCALE_FACTOR = 128, 16, 2
_DONE = "model.safetensors"


def _vision_settings() -> dict:
    return dict(hidden_size=192, intermediate_size=768, num_hidden_layers=2, num_attention_heads=3,
                image_size=IMAGE_SIZE, patch_size=PATCH_SIZE)


def _write_smolvlm_tiny(tmp: Path) -> None:
    source = ensure_bundled_model("smollm2-135m-instruct")
    target = bundled_model_dir(SMOLVLM_TINY)
    Console(stderr=True).print(f"[bold]Building {SMOLVLM_TINY} (one time, ~10 s)[/bold] -> {target}")
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    image_seq_len = (IMAGE_SIZE // PATCH_SIZE) ** 2 // SCALE_FACTOR**2
    processor = make_idefics3_processor(tokenizer, image_size=IMAGE_SIZE, image_seq_len=image_seq_len)
    language_model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, local_files_only=True)
    config = Idefics3Config(
        text_config=language_model.config.to_dict(),
        vision_config=_vision_settings(),
        scale_factor=SCALE_FACTOR,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Idefics3ForConditionalGeneration(config)
        model.model.text_model.load_state_dict(language_model.model.state_dict())
        # the new image/marker tokens start at the mean embedding (rows are shared with the tied LM head)
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        embeddings = model.get_input_embeddings().weight
        with torch.no_grad():
            embeddings[language_model.config.vocab_size :] = embeddings[: language_model.config.vocab_size].mean(0)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.config._name_or_path = SMOLVLM_TINY
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)


def ensure_built_model(name: str) -> Path:
    """Build a model of ``BUILT_MODELS`` once (atomically, under a lock) and return its folder."""
    if name != SMOLVLM_TINY:
        raise KeyError(name)
    return convert_atomically(bundled_model_dir(name), _DONE, _write_smolvlm_tiny)
