"""A LoRA trained on top of a merged LoRA run is saved as ONE adapter on the original model (models/compose.py):
old stacked folders still load and re-save composed, a VLM's fully trained connector is carried over, a lineage
that is not plain LoRA is saved merged, and checkpoint factors slot into the composed adapter."""

from __future__ import annotations

import copy
import json
import logging

import pytest
import torch
from peft import AutoPeftModelForCausalLM, LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

from alignloop.models import load_causal_lm, save_model
from alignloop.models.compose import place_checkpoint_tensor
from alignloop.models.files import write_json
from alignloop.models.origin import set_origin

IDS = torch.tensor([[1, 28120, 905, 30, 2], [1, 504, 3458, 314, 2]])
TOL = 1e-5


def logits(model) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=IDS).logits


def bump(model, seed: int) -> None:
    """Move every trainable tensor (as training would), so each adapter really changes the model."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=g) * 0.05)


def note(folder) -> dict:
    return json.loads((folder / "alignloop_model.json").read_text())


def test_an_old_stacked_folder_loads_as_before_and_resaves_as_one_adapter(tmp_path, tokenizer, tiny_model_dir):
    sft = load_causal_lm(tiny_model_dir, lora={"r": 4, "alpha": 8})
    bump(sft, 0)
    save_model(sft, tokenizer, tmp_path / "sft")
    stacked = load_causal_lm(tmp_path / "sft", lora={"r": 2, "alpha": 4, "target_modules": ["q_proj", "o_proj"]})
    bump(stacked, 1)
    want = logits(stacked)
    # what earlier versions saved: the new adapter alone, naming the SFT adapter folder as its base
    stacked.peft_config["default"].base_model_name_or_path = str(tmp_path / "sft")
    stacked.save_pretrained(tmp_path / "old", save_embedding_layers=False)
    write_json(tmp_path / "old" / "alignloop_model.json", {"format": "lora", "base_model": str(tmp_path / "sft")})

    assert (logits(load_causal_lm(tmp_path / "old", trainable=False)) - want).abs().max() <= TOL
    save_model(load_causal_lm(tmp_path / "old"), tokenizer, tmp_path / "new")
    saved = note(tmp_path / "new")
    assert saved["base_model"] == str(tiny_model_dir.resolve())
    assert saved["lineage"] == [str((tmp_path / "sft").resolve())]
    assert (logits(AutoPeftModelForCausalLM.from_pretrained(tmp_path / "new")) - want).abs().max() <= TOL
    assert (logits(load_causal_lm(tmp_path / "new", trainable=False)) - want).abs().max() <= TOL


def merged_weights(model) -> dict[str, torch.Tensor]:
    model = copy.deepcopy(model)
    if isinstance(model, PeftModel):
        model = model.merge_and_unload()
    return model.state_dict()


@pytest.mark.parametrize("vision", ["frozen", "connector"])
def test_a_vlm_connector_trained_beside_either_adapter_is_carried_over(tmp_path, tiny_vlm_dir, vision):
    sft = load_causal_lm(tiny_vlm_dir, lora={"r": 2, "alpha": 4})  # the connector trains in full (modules_to_save)
    bump(sft, 0)
    save_model(sft, None, tmp_path / "sft")
    stacked = load_causal_lm(tmp_path / "sft", lora={"r": 2, "alpha": 8, "vision": vision})
    bump(stacked, 1)
    save_model(stacked, None, tmp_path / "dpo")
    config = json.loads((tmp_path / "dpo" / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["model.connector"]
    base = AutoModelForImageTextToText.from_pretrained(tiny_vlm_dir)
    plain = merged_weights(PeftModel.from_pretrained(base, tmp_path / "dpo"))
    want = merged_weights(stacked)
    assert plain.keys() == want.keys()
    for key, value in want.items():
        assert (plain[key] - value).abs().max() <= 1e-6, key
    original = AutoModelForImageTextToText.from_pretrained(tiny_vlm_dir).state_dict()
    connector = [key for key in want if "connector" in key]
    assert connector and not any(torch.equal(want[key], original[key]) for key in connector)  # it did change


def test_a_lineage_that_is_not_plain_lora_is_saved_merged(tmp_path, tokenizer, tiny_model_dir, caplog):
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    dora = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], use_dora=True,
                                           task_type="CAUSAL_LM"))
    set_origin(base, str(tiny_model_dir.resolve()))
    bump(dora, 0)
    save_model(dora, tokenizer, tmp_path / "dora")
    stacked = load_causal_lm(tmp_path / "dora", lora={"r": 2})
    bump(stacked, 1)
    with caplog.at_level(logging.WARNING, logger="alignloop"):
        save_model(stacked, tokenizer, tmp_path / "next")
    assert "cannot be saved as one LoRA adapter" in caplog.text
    saved = note(tmp_path / "next")
    assert saved["format"] == "full" and saved["merged_adapter"]
    assert saved["base_model"] == str(tiny_model_dir.resolve())
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "next")
    assert (logits(plain) - logits(stacked)).abs().max() <= TOL


def test_checkpoint_factors_go_to_the_trained_rows():
    A, B = torch.zeros(6, 3), torch.zeros(5, 6)
    place_checkpoint_tensor(A, "x.lora_A.default.weight", torch.ones(2, 3), inherited_rank=4)
    place_checkpoint_tensor(B, "x.lora_B.default.weight", torch.ones(5, 2), inherited_rank=4)
    assert A[4:].eq(1).all() and A[:4].eq(0).all() and B[:, 4:].eq(1).all() and B[:, :4].eq(0).all()
    whole = torch.zeros(2, 2)
    place_checkpoint_tensor(whole, "connector.modules_to_save.default.weight", torch.ones(2, 2), inherited_rank=4)
    assert whole.eq(1).all()
    with pytest.raises(ValueError, match="does not fit"):
        place_checkpoint_tensor(whole, "y.weight", torch.ones(3, 2), inherited_rank=0)
