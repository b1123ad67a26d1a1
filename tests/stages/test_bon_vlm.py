"""Best-of-N on image prompts with a tiny random VLM: every prompt is sampled with its own image, the reward sees
the record fields (images included), the best sample is kept with its images, and the kept records train SFT
again (one round of rejection-sampling fine-tuning on images)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from alignloop.config import SFTConfig, load_config
from alignloop.data import load_records
from alignloop.errors import ConfigError
from alignloop.models import load_causal_lm
from alignloop.models.loading import load_vision_processor
from alignloop.models.vision_tokenizer import VisionTokenizer
from alignloop.rollout import HFSampler, TokenizedPrompt
from alignloop.stages.bon import BoNConfig, BoNStage
from alignloop.stages.sft import SFTStage
from alignloop.train.loop import train
from alignloop.train.run_dir import RunDir

QUESTION = "<image>What colour is the shape? Answer with one word."
N, PROMPTS, NEW_TOKENS = 4, 3, 6


def chars_if_images_line_up(prompts, completions, images, answer):
    """Test reward: the completion's length in characters. Each record's answer is its image's file name, so a
    row whose ``images`` are not its own record's fails here."""
    for entries, name in zip(images, answer):
        assert [Path(e).name for e in entries] == [name], (entries, name)
    return [float(len(c)) for c in completions]


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def bon_run(tmp_path_factory, tiny_vlm_dir, shapes_data):
    """Best-of-4 on 3 image prompts (same question, different images); returns (run folder, loaded records)."""
    root = tmp_path_factory.mktemp("bon_vlm")
    (root / "images").symlink_to(shapes_data / "images")
    lines = [{"prompt": [{"role": "user", "content": QUESTION}], "images": [f"images/train-{i:05d}.png"],
              "answer": f"train-{i:05d}.png"} for i in range(PROMPTS)]
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(line) + "\n" for line in lines))
    cfg = load_config(BoNConfig, None, [
        f"model={tiny_vlm_dir}", f"data.train={prompts}", "data.max_length=128",
        "reward=tests.stages.test_bon_vlm:chars_if_images_line_up", f"bon.n=[1, {N}]",
        f"bon.max_new_tokens={NEW_TOKENS}", "bon.batch_size=16", "train.precision=fp32",
    ])
    BoNStage.run(cfg, RunDir(root / "bon"))
    return root / "bon", list(load_records(prompts, "prompt"))


def sample_like_bon(model_dir, records, images):
    """The stage's one generate call (all prompts fit one chunk, seed 0), rebuilt by hand with ``images``."""
    vision = VisionTokenizer(load_vision_processor(model_dir))
    prompts = [TokenizedPrompt(*vision.prompt(r["prompt"], entries, 128), shown=r["prompt"])
               for r, entries in zip(records, images)]
    sampler = HFSampler(load_causal_lm(model_dir, trainable=False), vision.tokenizer, batch_size=16, dtype="fp32")
    return sampler.generate(prompts, n=N, max_new_tokens=NEW_TOKENS, temperature=1.0, seed=0).responses


def test_bon_samples_each_image_prompt_with_its_own_image(bon_run, tiny_vlm_dir):
    out, records = bon_run
    samples = read(out / "samples.jsonl")
    assert len(samples) == PROMPTS * N
    assert [s["images"] for s in samples] == [records[s["prompt_index"]]["images"] for s in samples]
    own = [r["images"] for r in records]
    assert [s["completion"] for s in samples] == sample_like_bon(tiny_vlm_dir, records, own)
    rotated = own[1:] + own[:1]  # same question, other images: the image changes what is sampled
    assert [s["completion"] for s in samples] != sample_like_bon(tiny_vlm_dir, records, rotated)


def test_bon_keeps_the_best_sample_with_its_images(bon_run):
    out, records = bon_run
    samples = read(out / "samples.jsonl")
    by_prompt = [[s for s in samples if s["prompt_index"] == p] for p in range(PROMPTS)]
    best = [max(group, key=lambda s: (s["reward"], -s["sample"])) for group in by_prompt]  # first best on ties
    assert any(b["sample"] != 0 for b in best)  # the pick is not simply the first sample
    assert all(b["reward"] > min(s["reward"] for s in group) for b, group in zip(best, by_prompt))
    sft = list(load_records(out / "sft_records.jsonl", "sft"))  # the loader checks images against placeholders
    assert [r["messages"][-1]["content"] for r in sft] == [b["completion"] for b in best]
    assert [r["images"] for r in sft] == [r["images"] for r in records]
    assert [r["reward"] for r in sft] == [b["reward"] for b in best]
    assert [r["messages"][:-1] for r in sft] == [r["prompt"] for r in records]
    pairs = list(load_records(out / "pairs.jsonl", "pair"))
    assert len(pairs) == PROMPTS
    assert [p["images"] for p in pairs] == [r["images"] for r in records]
    assert [p["chosen"][-1]["content"] for p in pairs] == [b["completion"] for b in best]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["by_n"][str(N)]["mean_best_reward"] == pytest.approx(sum(b["reward"] for b in best) / PROMPTS)


def test_rejection_sampling_fine_tuning_trains_on_the_kept_images(bon_run, tiny_vlm_dir, tmp_path):
    out, _ = bon_run
    cfg = load_config(SFTConfig, None, [
        f"model={tiny_vlm_dir}", f"data.train={out / 'sft_records.jsonl'}", "data.eval=null", "data.max_length=128",
        "train.max_steps=1", "train.batch_size=3", "train.precision=fp32", "train.save_every=0", "sft.packing=false",
    ])
    stage = SFTStage(cfg)
    result = train(stage, tmp_path / "sft")
    assert result["steps"] == 1 and (tmp_path / "sft" / "model" / "config.json").is_file()
    assert [len(row.images) for row in stage.train_rows] == [1] * PROMPTS  # each demonstration with its image
    assert torch.isfinite(torch.tensor(read(tmp_path / "sft" / "metrics.jsonl")[0]["loss"]))


def test_image_prompts_with_a_text_model_are_a_clear_error(bon_run, tmp_path):
    out, _ = bon_run
    cfg = load_config(BoNConfig, None, [
        "model=tiny-llama", f"data.train={out.parent / 'prompts.jsonl'}", "reward=rule:length_penalty",
    ])
    with pytest.raises(ConfigError, match="prompt records hold images but model 'tiny-llama' is not a vision"):
        BoNStage.run(cfg, RunDir(tmp_path / "bon"))


def test_selection_keeps_images_on_pairs_and_drops_image_placeholders():
    prompt = [{"role": "user", "content": "<image>Q"}]
    records = [{"prompt": prompt, "images": ["/a.png"], "answer": "1"}, {"prompt": prompt, "images": ["/b.png"]}]
    texts = ["a", "bbb", "<image>cc", "d"]  # prompt 1's best answer holds a placeholder: unusable as data
    samples = [{"completion": t, "reward": float(len(t))} for t in texts]
    sft, pairs = BoNStage._select(records, samples, torch.tensor([[1.0, 3.0], [9.0, 1.0]]), None, "len")
    assert sft == [{"messages": prompt + [{"role": "assistant", "content": "bbb"}], "images": ["/a.png"],
                    "answer": "1", "reward": 3.0}]
    assert [(p["chosen"], p["rejected"], p["images"]) for p in pairs] == [("bbb", "a", ["/a.png"])]
