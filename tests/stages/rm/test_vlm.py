"""The RM stage on a tiny random VLM and the bundled shapes pairs: it learns the train pairs, every packed row
scores with its own images (prompts with the same text and different images are never merged), the saved model
(full or LoRA, from a LoRA SFT run) reloads through ``RewardModel.load`` with its processor and gives the same
scores, and a LoRA ensemble of VLM reward models scores with images."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoProcessor

from alignloop.config import SFTConfig, load_config
from alignloop.eval.report import read_metrics
from alignloop.models.loading import is_vision_language_model, load_vision_processor
from alignloop.models.scalar_head import ImagePacked, ScalarHeadModel, pack_image_groups, score_groups
from alignloop.models.shared_prompt import ScoreGroup
from alignloop.models.vision_tokenizer import VisionTokenizer
from alignloop.pipeline.launch import run_stage
from alignloop.rewards.model import RewardModel
from alignloop.stages.rm.stage import RMConfig, RMStage
from alignloop.stages.sft import SFTStage
from alignloop.train.loop import train

N_PAIRS = 16


def write_pairs(tmp_path, shapes_data, n: int = N_PAIRS):
    """The first ``n`` bundled pairs in ``tmp_path`` (their relative image paths resolve through a symlink)."""
    records = (shapes_data / "pairs.jsonl").read_text().splitlines()[:n]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(records) + "\n")
    if not (tmp_path / "images").exists():
        (tmp_path / "images").symlink_to(shapes_data / "images")
    return path, [json.loads(line) for line in records]


@pytest.fixture(scope="module")
def trained(tiny_vlm_dir, shapes_data, tmp_path_factory):
    """16 pairs, 24 full fine-tuning steps in fp32, evaluated on the same pairs."""
    folder = tmp_path_factory.mktemp("vlm_rm")
    path, records = write_pairs(folder, shapes_data)
    overrides = [
        f"model={tiny_vlm_dir}", f"data.train={path}", f"data.eval={path}", "data.max_length=96",
        "train.max_steps=24", "train.batch_size=8", "train.lr=3e-3", "train.precision=fp32", "train.save_every=0",
        "train.warmup_steps=0", "train.eval_every=0", "rm.eval_each_epoch=false",
    ]
    stage = RMStage(load_config(RMConfig, None, overrides))
    torch.manual_seed(0)
    summary = train(stage, folder / "run")
    return stage, summary, folder / "run", records


def test_vlm_reward_model_learns_the_train_pairs(trained):
    stage, summary, run, _ = trained
    rows = [r for r in read_metrics(run / "metrics.jsonl") if "accuracy" in r]
    assert stage.vision is not None and stage.unwrap("rm").is_vision
    assert all(ex.images and len(ex.images) == 1 for ex in stage.train_examples)
    # measured: first-step loss 0.692 (accuracy 0.375); after 24 steps, on the 16 train pairs, eval loss 0.327
    # and accuracy 0.875 (chance 0.5)
    first_loss = rows[0]["loss"]
    assert summary["eval/loss"] < first_loss - 0.2, (first_loss, summary["eval/loss"])
    assert summary["eval_accuracy"] >= 0.75


def in_memory_and_reloaded(stage: RMStage, run, records: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of the first 4 pairs (chosen, rejected, ...) by the trained model on a training-time batch (RM stage
    tokenisation and packing), and by ``RewardModel.load`` from the raw records with absolute image paths (what
    reward functions get)."""
    batch = stage._collate(stage.eval_examples[:4])
    assert isinstance(batch.packed, ImagePacked)
    model = stage.unwrap("rm").eval()
    with torch.no_grad():
        packed_scores = score_groups(model, batch.packed)[:, 0]
    in_memory = torch.tensor([float(packed_scores[index[k]]) for index in batch.packed.index for k in (0, 1)])
    loaded = RewardModel.load(run, device="cpu")
    assert loaded.vision is not None
    prompts, completions, images = [], [], []
    for record in records[:4]:
        for side in ("chosen", "rejected"):
            prompts.append(record["prompt"])
            completions.append(record[side])
            images.append([str(run.parent / entry) for entry in record["images"]])
    return in_memory, loaded.score(prompts, completions, images=images)


def test_saved_vlm_reward_model_reloads_with_its_processor_and_scores_the_same(trained):
    stage, _, run, records = trained
    model_dir = run / "model"
    assert is_vision_language_model(model_dir)
    assert AutoProcessor.from_pretrained(model_dir).image_seq_len == 4  # the processor was saved with the model
    assert type(ScalarHeadModel.from_pretrained(model_dir).backbone).__name__ == "Idefics3Model"
    in_memory, reloaded = in_memory_and_reloaded(stage, run, records)
    assert torch.allclose(reloaded, in_memory, atol=1e-5), (reloaded, in_memory)
    assert len(set(in_memory.tolist())) == len(in_memory)  # real, distinct scores: a constant would not test anything


def test_lora_reward_model_on_a_lora_vlm_sft_run(tmp_path, tiny_vlm_dir, shapes_data):
    """The usual chain: SFT with LoRA, then the RM from that run (an adapter folder) with a LoRA of its own."""
    sft_data = (shapes_data / "sft.jsonl").read_text().splitlines()[:8]
    (tmp_path / "sft.jsonl").write_text("\n".join(sft_data) + "\n")
    path, records = write_pairs(tmp_path, shapes_data, 8)
    common = ["data.max_length=96", "train.max_steps=2", "train.batch_size=4", "train.lr=1e-3",
              "train.precision=fp32", "train.save_every=0", "lora.r=4", "lora.alpha=8"]
    train(SFTStage(load_config(SFTConfig, None, [f"model={tiny_vlm_dir}", f"data.train={tmp_path / 'sft.jsonl'}",
                                                 *common])), tmp_path / "sft")
    stage = RMStage(load_config(RMConfig, None, [f"model={tmp_path / 'sft'}", f"data.train={path}",
                                                 f"data.eval={path}", *common]))
    train(stage, tmp_path / "rm")
    assert stage.vision is not None and stage.unwrap("rm").is_lora
    meta = json.loads((tmp_path / "rm" / "model" / "alignloop_head.json").read_text())
    assert meta["format"] == "lora" and (tmp_path / "rm" / "model" / "processor_config.json").is_file()
    in_memory, reloaded = in_memory_and_reloaded(stage, tmp_path / "rm", records)
    assert torch.allclose(reloaded, in_memory, atol=1e-5), (reloaded, in_memory)


@pytest.fixture(scope="module")
def random_rm(tiny_vlm_dir):
    torch.manual_seed(0)
    model = ScalarHeadModel.from_causal_lm(tiny_vlm_dir).eval()
    return model, VisionTokenizer(load_vision_processor(tiny_vlm_dir))


def test_packed_rows_keep_each_prompt_with_its_own_images(random_rm, shapes_data):
    """Same prompt text, different images; short segments share rows; a completion with an image token.

    Packed scores equal each (prompt, image, completion) scored alone: a row given another prompt's image, two
    prompts merged because their tokens match, or a completion's image token taking a feature would not."""
    model, vision = random_rm
    pictures = [str(shapes_data / "images" / f"train-{i:05d}.png") for i in (1, 4, 7)]
    prompt = [{"role": "user", "content": "<image>What colour is the shape? Answer with one word."}]
    # the first group's image token in a completion comes before the second group's image in their shared row
    answers = [["red", "green <image> green"], ["red", "blue"], ["red", "purple"], ["red", "yellow" + " and" * 80]]
    groups, images = [], []
    for picture, options in zip([pictures[0], pictures[1], pictures[0], pictures[2]], answers):
        ids = [vision.prompt_completion(prompt, [{"role": "assistant", "content": a}], [picture], 200)
               for a in options]
        groups.append(ScoreGroup(ids[0][0], [c for _, c, _ in ids]))
        images.append(ids[0][2])
    assert images[0][0] is images[2][0] and images[0][0] is not images[1][0]  # one object per image entry
    packed = pack_image_groups(groups, images, vision.tokenizer.pad_token_id, vision.encoder.image_token_id)
    assert max(len(row) for row in packed.row_images) >= 2  # some row holds two prompts (and their images)
    assert packed.n_unique == 7  # the groups with the same prompt and image share "red" (and their prompt)
    with torch.no_grad():
        scores = score_groups(model, packed)[:, 0]
        for group, row_images, index in zip(groups, images, packed.index):
            for completion, u in zip(group.completions, index):
                alone = model.score(torch.tensor([group.prompt_ids + completion]), images=[row_images])[0, 0]
                assert torch.allclose(scores[u], alone, atol=1e-5), (u, scores[u], alone)
    by_image = scores[[packed.index[g][0] for g in (0, 1, 3)]]
    assert len({round(float(s), 6) for s in by_image}) == 3  # the image changes the score


def test_lora_ensemble_of_vlm_reward_models_scores_with_images(tmp_path, tiny_vlm_dir, shapes_data):
    """k LoRA members share one VLM backbone at scoring time; the mean and std use each row's own image."""
    path, records = write_pairs(tmp_path, shapes_data, 8)
    overrides = [f"model={tiny_vlm_dir}", f"data.train={path}", f"data.eval={path}", "data.max_length=96",
                 "train.max_steps=2", "train.batch_size=4", "train.lr=1e-3", "train.precision=fp32",
                 "train.save_every=0", "lora.r=4", "rm.ensemble.size=2"]
    summary = run_stage("rm", None, overrides, tmp_path / "ensemble")
    assert summary["ensemble_size"] == 2 and summary["eval_records"] == 8
    ensemble = RewardModel.load(tmp_path / "ensemble", device="cpu")
    assert ensemble.adapters is not None and ensemble.vision is not None  # one shared backbone
    prompts = [r["prompt"] for r in records[:3]]
    answers = [r["chosen"] for r in records[:3]]
    images = [[str(tmp_path / entry) for entry in r["images"]] for r in records[:3]]
    members = torch.stack([RewardModel.load(tmp_path / "ensemble" / f"member-{i}", device="cpu")
                           .score(prompts, answers, images=images) for i in range(2)])
    assert torch.allclose(ensemble.score(prompts, answers, images=images), members.mean(0), atol=1e-5)
    assert torch.allclose(ensemble.uncertainty(prompts, answers, images=images), members.std(0), atol=1e-5)
