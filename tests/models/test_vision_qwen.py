"""Qwen2-VL: spliced image features plus our M-RoPE positions give the model's own forward (left padding, packed
sequences, KV-cache decoding after a 2D position), image order matters, and each distinct image is encoded once."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from alignloop.models import TINY_MODEL, load_tokenizer
from alignloop.models.images import ImageEncoder, multimodal_inputs, rope_index_owner
from alignloop.models.vision import build_tiny_vlm
from alignloop.models.vision_tokenizer import VisionTokenizer
from alignloop.rollout import HFSampler, TokenizedPrompt
from alignloop.rollout.logprobs import forward_logprobs


@pytest.fixture(scope="module")
def qwen():
    model, processor = build_tiny_vlm(load_tokenizer(TINY_MODEL), "qwen2_vl")
    processor.tokenizer.padding_side = "left"
    encoder = ImageEncoder(processor)
    # wide: a 4×8 patch grid, 8 image tokens (2 rows of 4 after the 2×2 merge); square: 4 tokens
    pictures = {"wide": Image.new("RGB", (64, 32), (255, 0, 0)), "green": Image.new("RGB", (32, 32), (0, 200, 0)),
                "blue": Image.new("RGB", (40, 30), (0, 0, 255))}
    encoded = {name: encoder.encode(picture) for name, picture in pictures.items()}
    return model, processor, encoder, pictures, encoded


def prompt(encoder, question: str, n_images: int) -> str:
    images = " and ".join([encoder.placeholder_text] * n_images)
    return f"<|im_start|>user\n{images} {question}<|im_end|>\n<|im_start|>assistant\n"


def native_and_ours(qwen, rows, texts, with_positions=False):
    model, processor, _, pictures, encoded = qwen
    native = processor(text=texts, images=[[pictures[n] for n in row] for row in rows], return_tensors="pt",
                       padding=True)
    inputs = {"input_ids": native["input_ids"], "attention_mask": native["attention_mask"],
              "images": [tuple(encoded[n] for n in row) for row in rows]}
    if with_positions:
        inputs["position_ids"] = (native["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    spliced = multimodal_inputs(model, inputs)
    rope = model.model.get_rope_index(native["input_ids"], native["mm_token_type_ids"], native["image_grid_thw"],
                                      attention_mask=native["attention_mask"])[0]
    real = native["attention_mask"].bool()
    assert torch.equal(spliced["position_ids"][:, real], rope[:, real])
    with torch.no_grad():
        expected = model(**native).logits
        ours = model(**spliced).logits
    return native, expected, ours


def test_the_tiny_model_and_its_encoder(qwen):
    model, _, encoder, _, encoded = qwen
    assert encoder.placeholder_text == "<|vision_start|><|image_pad|><|vision_end|>"
    assert [encoded[n].n_features for n in ("wide", "green", "blue")] == [8, 4, 4]
    assert set(encoded["wide"].tensors) == {"pixel_values", "image_grid_thw"}  # no mm_token_type_ids
    assert encoded["wide"].tensors["image_grid_thw"].tolist() == [[1, 4, 8]]
    assert rope_index_owner(model) is model.model


@pytest.mark.parametrize("padded", [False, True])
def test_spliced_features_and_positions_give_the_native_forward(qwen, padded):
    encoder = qwen[2]
    if padded:  # the second row is shorter: left padding
        rows, texts = [("wide", "green"), ("blue", "green")], [prompt(encoder, "What colours?", 2),
                                                               prompt(encoder, "Hm?", 2)]
    else:
        rows, texts = [("wide", "green"), ("blue", "wide")], [prompt(encoder, "What colours?", 2)] * 2
    native, expected, ours = native_and_ours(qwen, rows, texts)
    real = native["attention_mask"].bool()
    assert bool((~real).any()) == padded
    assert torch.allclose(ours[real], expected[real], atol=1e-5)
    _, _, with_positions = native_and_ours(qwen, rows, texts, with_positions=True)  # caller's 2D positions
    assert torch.allclose(with_positions[real], expected[real], atol=1e-5)


def test_swapping_the_images_changes_the_logits(qwen):
    model, _, encoder, _, encoded = qwen
    native, expected, _ = native_and_ours(qwen, [("green", "blue")], [prompt(encoder, "Which first?", 2)])
    swapped = {"input_ids": native["input_ids"], "images": [(encoded["blue"], encoded["green"])]}
    with torch.no_grad():
        assert not torch.allclose(model(**multimodal_inputs(model, swapped)).logits, expected, atol=1e-4)


def test_each_distinct_image_is_encoded_once(qwen):
    model, processor, encoder, _, encoded = qwen
    wide, green = encoded["wide"], encoded["green"]
    ids = processor(text=[prompt(encoder, "Hi", 2)], images=[[qwen[3]["wide"], qwen[3]["green"]]],
                    return_tensors="pt")["input_ids"]
    seen = []
    hook = model.model.visual.register_forward_hook(lambda m, args, kwargs, out: seen.append(kwargs["grid_thw"]),
                                                    with_kwargs=True)
    with torch.no_grad():
        model(**multimodal_inputs(model, {"input_ids": ids.repeat(3, 1), "images": [(wide, green)] * 3}))
    hook.remove()
    assert len(seen) == 1 and seen[0].tolist() == [[1, 4, 8], [1, 4, 4]]


def test_a_row_packing_two_sequences_gives_each_its_own_forward(qwen):
    """Positions restart at 0 where a sequence starts: the second one is not moved on by the first one's images."""
    model, processor, encoder, pictures, encoded = qwen
    parts = [processor(text=[prompt(encoder, q, len(names))], images=[[pictures[n] for n in names]],
                       return_tensors="pt") for q, names in (("One?", ("wide", "green")), ("Two?", ("blue",)))]
    ids = torch.cat([p["input_ids"] for p in parts], dim=1)
    lengths = [p["input_ids"].shape[1] for p in parts]
    positions = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)
    same = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])
    mask = (same[:, None] == same[None, :]) & torch.ones(sum(lengths), sum(lengths), dtype=torch.bool).tril()
    inputs = {"input_ids": ids, "position_ids": positions, "attention_mask": mask[None, None],
              "images": [(encoded["wide"], encoded["green"], encoded["blue"])]}
    spliced = multimodal_inputs(model, inputs)
    # RoPE would hide a constant offset in the logits: check the positions themselves too
    native_positions = [model.model.get_rope_index(p["input_ids"], p["mm_token_type_ids"], p["image_grid_thw"])[0]
                        for p in parts]
    assert torch.equal(spliced["position_ids"], torch.cat(native_positions, dim=2))
    with torch.no_grad():
        packed = model(**spliced).logits[0]
        expected = torch.cat([model(**p).logits[0] for p in parts])
    assert torch.allclose(packed, expected, atol=1e-5)


def test_decoding_goes_on_from_the_last_position_plus_one(qwen):
    """What a KV-cache sampler needs: prefill with our positions, then 2D ``last + 1`` positions per step."""
    model, processor, encoder, pictures, encoded = qwen
    texts = [prompt(encoder, "What colours?", 2), prompt(encoder, "Hm?", 1)]
    native = processor(text=texts, images=[[pictures["wide"], pictures["green"]], [pictures["blue"]]],
                       return_tensors="pt", padding=True)
    mask = native["attention_mask"]
    prefill = multimodal_inputs(model, {"input_ids": native["input_ids"], "attention_mask": mask,
                                        "images": [(encoded["wide"], encoded["green"]), (encoded["blue"],)]})
    step = torch.tensor([[11], [12]])
    full = {k: v for k, v in native.items()}
    full["input_ids"] = torch.cat([native["input_ids"], step], dim=1)
    full["attention_mask"] = torch.cat([mask, torch.ones_like(step)], dim=1)
    full["mm_token_type_ids"] = torch.cat([native["mm_token_type_ids"], torch.zeros_like(step)], dim=1)
    with torch.no_grad():
        out = model(**prefill, use_cache=True)
        nxt = model(input_ids=step, attention_mask=full["attention_mask"], cache=out.cache, use_cache=True,
                    position_ids=prefill["position_ids"][0, :, -1:] + 1).logits[:, -1]
        expected = model(**full).logits[:, -1]
    assert torch.allclose(nxt, expected, atol=1e-5)


def test_sampler_logprobs_match_a_fresh_forward_on_qwen_image_prompts(qwen):
    """The KV-cache sampler continues M-RoPE positions after the prompt (decode.py), left padding included."""
    model, processor = qwen[0], qwen[1]
    vision = VisionTokenizer(processor)
    prompts = []
    for size, colour in [((32, 32), (255, 0, 0)), ((64, 32), (0, 0, 255)), ((40, 30), (0, 200, 0))]:
        image = Image.new("RGB", size, colour)
        vision._images[str(size)] = vision.encoder.encode(image)  # a prepared image, as records give
        ids, images = vision.prompt([{"role": "user", "content": "<image>Which colour" + "?" * size[0]}],
                                    [str(size)], 256)
        prompts.append(TokenizedPrompt(ids, images, shown=str(size)))
    rollout = HFSampler(model, processor.tokenizer, batch_size=4, dtype="fp32").generate(
        prompts, n=2, max_new_tokens=6, seed=3)
    with torch.no_grad():
        fresh = forward_logprobs(model, rollout)
    mask = rollout.response_mask.bool()
    assert torch.allclose(fresh[mask], rollout.logprobs[mask], atol=1e-4)
