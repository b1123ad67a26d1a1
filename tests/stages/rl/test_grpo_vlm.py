"""GRPO on a tiny random VLM with image prompts: a group's samples share one image encoding, packing and
reordering keep each row with its own image, sampler log-probs equal a fresh forward, the run saves a model
that transformers and peft load."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForImageTextToText

from alignloop.config import load_config
from alignloop.errors import ConfigError
from alignloop.models import load_causal_lm
from alignloop.models.loading import load_vision_processor
from alignloop.models.vision_tokenizer import VisionTokenizer
from alignloop.pipeline.launch import run_stage
from alignloop.rollout import HFSampler, TokenizedPrompt
from alignloop.rollout.logprobs import forward_logprobs
from alignloop.stages.rl.grpo import GRPOConfig, GRPOStage
from alignloop.stages.rl.ppo import PPOConfig, PPOStage
from alignloop.stages.rl.shared_prompt import shared_prompt_logprobs
from alignloop.train.loop import train

QUESTION = "What colour is the shape? Answer with one word."


@pytest.fixture
def prompts_file(tmp_path, shapes_data):
    lines = (shapes_data / "prompts.jsonl").read_text().splitlines()[:8]
    path = tmp_path / "prompts.jsonl"
    path.write_text("\n".join(lines) + "\n")
    (tmp_path / "images").symlink_to(shapes_data / "images")
    return path


def config(model, prompts, *overrides):
    base = [
        f"model={model}", f"data.train={prompts}", f"data.eval={prompts}", "data.max_length=128",
        "grpo.reward=rule:exact_match", "grpo.rollouts=2", "grpo.prompts_per_rollout=2", "grpo.num_generations=4",
        "grpo.max_new_tokens=4", "grpo.eval_prompts=2", "train.batch_size=8", "train.micro_batch_size=4",
        "train.precision=fp32", "train.save_every=0", "train.lr=1e-3",
    ]
    return load_config(GRPOConfig, None, base + list(overrides))


def encoded_prompts(model_dir, entries, question=QUESTION):
    vision = VisionTokenizer(load_vision_processor(model_dir))
    out = []
    for entry in entries:
        ids, images = vision.prompt([{"role": "user", "content": "<image>" + question}], [entry], 128)
        out.append(TokenizedPrompt(ids, images, shown=entry))
    return vision, out


def images_of(shapes_data, n):
    return [str(shapes_data / "images" / f"train-{i:05d}.png") for i in range(n)]


def test_grpo_vlm_runs_and_saves_a_loadable_adapter(tmp_path, tiny_vlm_dir, prompts_file):
    summary = train(GRPOStage(config(tiny_vlm_dir, prompts_file, "lora.r=4", "lora.alpha=8")), tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert summary["rollouts"] == 2 and "eval_before/reward" in summary and "eval/reward" in summary
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # reference = adapter (and connector copy) off
    base = AutoModelForImageTextToText.from_pretrained(tiny_vlm_dir)
    model = PeftModel.from_pretrained(base, tmp_path / "run" / "model")  # plain peft, no alignloop
    assert any("connector" in name for name, _ in model.named_parameters())


def test_a_group_encodes_its_image_once_and_every_member_gets_the_same_features(tiny_vlm_dir, shapes_data):
    model = load_causal_lm(tiny_vlm_dir)
    _, prompts = encoded_prompts(tiny_vlm_dir, images_of(shapes_data, 3))
    rollout = HFSampler(model, load_vision_processor(tiny_vlm_dir).tokenizer, dtype="fp32").generate(
        prompts, n=4, max_new_tokens=3, seed=0)
    assert all(rollout.images[i] is prompts[i // 4].images for i in range(12))
    encoded = []
    hook = model.model.vision_model.register_forward_hook(lambda m, args, out: encoded.append(out[0].shape[0]))
    with torch.no_grad():
        forward_logprobs(model, rollout)
    hook.remove()
    assert sum(encoded) == 3  # 12 rows, 3 distinct images: each encoded once
    captured = []
    hook = model.model.connector.register_forward_hook(lambda m, args, out: captured.append(out.detach()))
    with torch.no_grad():
        forward_logprobs(model, rollout.select([0]))
        forward_logprobs(model, rollout.select([3]))
    hook.remove()
    assert torch.equal(captured[0], captured[1])  # the group's first and last member: same image features


def test_sampler_logprobs_match_a_fresh_forward_on_image_prompts(tiny_vlm_dir, shapes_data):
    model = load_causal_lm(tiny_vlm_dir)
    _, prompts = encoded_prompts(tiny_vlm_dir, images_of(shapes_data, 3))
    sampler = HFSampler(model, load_vision_processor(tiny_vlm_dir).tokenizer, batch_size=5, dtype="fp32")
    rollout = sampler.generate(prompts, n=3, max_new_tokens=6, seed=1)
    with torch.no_grad():
        fresh = forward_logprobs(model, rollout)
    mask = rollout.response_mask.bool()
    assert torch.allclose(fresh[mask], rollout.logprobs[mask], atol=1e-4)


def test_packing_and_reordering_keep_each_row_with_its_own_image(tiny_vlm_dir, shapes_data):
    """Same question, different images: identical prompt tokens that must not share a packed prefix."""
    model = load_causal_lm(tiny_vlm_dir)
    _, prompts = encoded_prompts(tiny_vlm_dir, images_of(shapes_data, 3))
    assert prompts[0].token_ids == prompts[1].token_ids  # only the image tells them apart
    rollout = HFSampler(model, load_vision_processor(tiny_vlm_dir).tokenizer, dtype="fp32").generate(
        prompts, n=2, max_new_tokens=5, seed=2)
    args = (rollout.input_ids(), rollout.attention_mask(), rollout.response_start)
    with torch.no_grad():
        plain = forward_logprobs(model, *args, images=rollout.images)
        packed = shared_prompt_logprobs(model, *args, pad_id=2, images=rollout.images)
        order = [5, 2, 0, 3, 1, 4]
        shuffled = rollout.select(order)
        reordered = forward_logprobs(model, shuffled)
        one_by_one = torch.cat([forward_logprobs(model, rollout.select([i]))[:, :plain.shape[1]] for i in range(6)])
    mask = rollout.response_mask.bool()
    assert torch.allclose(packed[mask], plain[mask], atol=1e-4)
    assert torch.allclose(reordered[:, :plain.shape[1]], plain[order], atol=1e-4)
    assert torch.allclose(one_by_one[mask], plain[mask], atol=1e-4)
    swapped = forward_logprobs(model, *args, images=[rollout.images[(i + 2) % 6] for i in range(6)])
    assert not torch.allclose(swapped[mask], plain[mask], atol=1e-4)  # the image matters


def test_ppo_refuses_a_vlm_clearly(tmp_path, tiny_vlm_dir, prompts_file):
    cfg = load_config(PPOConfig, None, [f"model={tiny_vlm_dir}", f"data.train={prompts_file}", "data.eval=null",
                                        "ppo.reward=rule:exact_match", "train.precision=fp32"])
    with pytest.raises(ConfigError, match="use `alignloop grpo`"):
        train(PPOStage(cfg), tmp_path / "run")


def test_ray_rollout_workers_refuse_a_vlm_before_starting_ray(tmp_path, tiny_vlm_dir, prompts_file):
    with pytest.raises(ConfigError, match="rollout.workers: the Ray rollout roles take text prompts only"):
        run_stage("grpo", None, [f"model={tiny_vlm_dir}", f"data.train={prompts_file}", "grpo.reward=rule:exact_match",
                                 "rollout.workers=1"], tmp_path / "run")
