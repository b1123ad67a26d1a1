"""SFT on a tiny random VLM and the bundled shapes task: loss falls, images never in the loss, the saved model
(full or LoRA) loads with plain transformers / peft, packing keeps every sample with its own images."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForImageTextToText, AutoProcessor

from alignloop.config import SFTConfig, load_config
from alignloop.errors import DataError
from alignloop.stages.sft import SFTStage
from alignloop.train.loop import train


def make_cfg(tmp_path, model_dir, shapes_data, *overrides: str) -> SFTConfig:
    records = (shapes_data / "sft.jsonl").read_text().splitlines()[:24]
    train_file = tmp_path / "sft.jsonl"
    train_file.write_text("\n".join(records) + "\n")
    (tmp_path / "images").symlink_to(shapes_data / "images")
    base = [
        f"model={model_dir}", f"data.train={train_file}", f"data.eval={train_file}", "data.max_length=96",
        "train.max_steps=10", "train.batch_size=4", "train.micro_batch_size=4", "train.lr=3e-3",
        "train.precision=fp32", "train.save_every=0", "train.warmup_steps=0",
    ]
    return load_config(SFTConfig, None, base + list(overrides))


@pytest.mark.parametrize("packing", ["true", "false"])
def test_vlm_sft_lowers_loss_and_saves_a_transformers_model(tmp_path, tiny_vlm_dir, shapes_data, packing):
    cfg = make_cfg(tmp_path, tiny_vlm_dir, shapes_data, f"sft.packing={packing}")
    stage = SFTStage(cfg)
    summary = train(stage, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert summary["eval/loss"] < rows[0]["loss"] - 0.5, (rows[0]["loss"], summary["eval/loss"])
    image_id = stage.vision.encoder.image_token_id
    for row in stage.train_rows:
        ids, mask = row.input_ids, row.loss_mask
        assert not any(m for t, m in zip(ids, mask) if t == image_id)  # image positions never carry a loss
        assert sum(t == image_id for t in ids) == sum(im.n_features for im in row.images)
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "run" / "model")  # no alignloop involved
    processor = AutoProcessor.from_pretrained(tmp_path / "run" / "model")
    assert model.config.model_type == "idefics3" and processor.image_seq_len == 4


def test_vlm_sft_lora_trains_connector_and_reloads_with_peft(tmp_path, tiny_vlm_dir, shapes_data):
    cfg = make_cfg(tmp_path, tiny_vlm_dir, shapes_data, "lora.r=4", "lora.alpha=8", "train.max_steps=3")
    train(SFTStage(cfg), tmp_path / "run")
    base = dict(AutoModelForImageTextToText.from_pretrained(tiny_vlm_dir).named_parameters())
    reloaded = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(tiny_vlm_dir),
                                         tmp_path / "run" / "model")
    params = dict(reloaded.named_parameters())
    trained_connector = [p for n, p in params.items() if "connector.modules_to_save.default" in n]
    initial = base["model.connector.modality_projection.proj.weight"]
    assert trained_connector and not torch.equal(trained_connector[0], initial)
    assert any(p.abs().sum() > 0 for n, p in params.items() if "lora_B" in n)
    assert not any(".lora_" in n and "vision_model" in n for n in params)  # no adapter on the vision tower
    for name, param in params.items():  # lora.vision=connector leaves the vision tower as it was
        if "vision_model" in name:
            assert torch.equal(param, base[name.replace("base_model.model.", "", 1)]), name


def test_truncating_an_image_is_a_clear_error(tmp_path, tiny_vlm_dir, shapes_data):
    cfg = make_cfg(tmp_path, tiny_vlm_dir, shapes_data, "data.max_length=10")
    with pytest.raises(DataError, match="image tokens are never truncated"):
        train(SFTStage(cfg), tmp_path / "run")
