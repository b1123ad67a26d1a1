"""Vision-language models: our image splicing equals each family's own forward, each distinct image is encoded
once, LoRA stays on the language model, and the bundled smolvlm-tiny carries SmolLM2's real weights."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

from alignloop.config import LoraSettings
from alignloop.models import TINY_MODEL, apply_lora, load_tokenizer
from alignloop.models.bundled import ensure_bundled_model
from alignloop.models.images import ImageEncoder, multimodal_inputs
from alignloop.models.registry import resolve_model
from alignloop.models.vision import build_tiny_vlm, connector_names

COLOURS = [(255, 0, 0), (0, 200, 0), (0, 0, 255)]


@pytest.mark.parametrize("family", ["idefics3", "llava", "qwen2_vl"])
def test_spliced_features_give_the_native_forward(family):
    model, processor = build_tiny_vlm(load_tokenizer(TINY_MODEL), family)
    encoder = ImageEncoder(processor)
    images = [Image.new("RGB", (40, 30), c) for c in COLOURS[:2]]
    text = f"<|im_start|>user\n{encoder.image_token}What?{encoder.image_token} and?<|im_end|>\n"
    native = processor(text=[text], images=[images], return_tensors="pt")
    encoded = tuple(encoder.encode(im) for im in images)
    with torch.no_grad():
        expected = model(**native).logits
        ours = model(**multimodal_inputs(model, {"input_ids": native["input_ids"], "images": [encoded]})).logits
    assert torch.allclose(ours, expected, atol=1e-6)
    swapped = {"input_ids": native["input_ids"], "images": [encoded[::-1]]}
    with torch.no_grad():
        assert not torch.allclose(model(**multimodal_inputs(model, swapped)).logits, expected, atol=1e-4)


def test_each_distinct_image_is_encoded_once_per_forward():
    model, processor = build_tiny_vlm(load_tokenizer(TINY_MODEL), "idefics3")
    encoder = ImageEncoder(processor)
    red, blue = (encoder.encode(Image.new("RGB", (32, 32), c)) for c in COLOURS[::2])
    ids = torch.tensor([[1, *red.token_ids, 5]] * 3 + [[1, *blue.token_ids, 5]])
    seen = []
    hook = model.model.vision_model.register_forward_hook(lambda m, a, out: seen.append(out[0].shape[0]))
    with torch.no_grad():
        model(**multimodal_inputs(model, {"input_ids": ids, "images": [(red,), (red,), (red,), (blue,)]}))
    hook.remove()
    assert sum(seen) == 2


def test_lora_adapts_the_language_model_and_trains_the_connector():
    model, _ = build_tiny_vlm(load_tokenizer(TINY_MODEL), "idefics3")
    peft_model = apply_lora(model, LoraSettings(r=2, alpha=4))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("text_model" in n or "connector" in n for n in trainable)
    assert any("connector.modules_to_save" in n for n in trainable)
    assert connector_names(model) == ["model.connector"]
    frozen = apply_lora(build_tiny_vlm(load_tokenizer(TINY_MODEL), "idefics3")[0], LoraSettings(r=2, vision="frozen"))
    assert not any("connector" in n for n, p in frozen.named_parameters() if p.requires_grad)


def test_smolvlm_tiny_is_smollm2_with_a_small_vision_tower():
    folder = resolve_model("smolvlm-tiny")
    model = AutoModelForImageTextToText.from_pretrained(folder)  # plain transformers
    processor = AutoProcessor.from_pretrained(folder)
    text = AutoModelForCausalLM.from_pretrained(ensure_bundled_model("smollm2-135m-instruct"))
    assert model.config.model_type == "idefics3" and processor.image_seq_len == 16
    assert model.config.vision_config.num_hidden_layers == 2 and model.config.vision_config.image_size == 128
    ours, theirs = model.model.text_model.state_dict(), text.model.state_dict()
    for name, tensor in theirs.items():
        if name == "embed_tokens.weight":
            assert torch.equal(ours[name][: tensor.shape[0]], tensor)  # image tokens appended after the vocabulary
        else:
            assert torch.equal(ours[name], tensor), name
    out = processor(text=["<|im_start|>user\n<image>Hi<|im_end|>\n"], images=[[Image.new("RGB", (128, 128))]],
                    return_tensors="pt")
    assert int((out["input_ids"] == model.config.image_token_id).sum()) == 16
