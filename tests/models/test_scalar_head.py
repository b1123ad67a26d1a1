"""Scalar-head (reward / value) models: pooling, padding invariance, LoRA and save/load."""

from __future__ import annotations

import json

import pytest
import torch

from alignloop.errors import ModelError
from alignloop.models import (
    TINY_MODEL,
    ScalarHeadModel,
    last_token_index,
    load_causal_lm,
    load_tokenizer,
    position_ids_from_mask,
    save_model,
)

PAD = 2
SEQUENCES = [[1, 28120, 905, 30, 2], [1, 504, 2], [1, 77, 88, 2]]


def _batch(sequences: list[list[int]], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids, mask = [], []
    for seq in sequences:
        pad = [PAD] * (width - len(seq))
        ones, zeros = [1] * len(seq), [0] * len(pad)
        ids.append(seq + pad if side == "right" else pad + seq)
        mask.append(ones + zeros if side == "right" else zeros + ones)
    return torch.tensor(ids), torch.tensor(mask)


def _scores(model: ScalarHeadModel, side: str = "right") -> torch.Tensor:
    with torch.no_grad():
        return model.score(*_batch(SEQUENCES, side))


def _train_one_step(model: ScalarHeadModel) -> None:
    """Push the first sequence's scores up: one SGD step, so adapter and head both change."""
    model.train()
    ids, mask = _batch(SEQUENCES, "right")
    (-model.score(ids, mask)[0].sum()).backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p -= 0.5 * p.grad
                p.grad = None
    model.eval()


def test_last_token_index_and_positions_by_hand():
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0]])
    # last 1 at index 1 (right padded), 3 (left padded), 3 (no padding); empty row falls back to 0
    assert last_token_index(mask).tolist() == [1, 3, 3, 0]
    assert position_ids_from_mask(mask).tolist() == [[0, 1, 1, 1], [0, 0, 0, 1], [0, 1, 2, 3], [0, 0, 0, 0]]


def test_left_and_right_padding_score_the_same():
    torch.manual_seed(0)
    model = ScalarHeadModel.from_causal_lm(TINY_MODEL, num_outputs=2).eval()
    assert not hasattr(model.backbone, "lm_head")  # only the transformer body: no vocabulary logits
    assert model.output_names == ["score_0", "score_1"]
    assert torch.count_nonzero(model.head.bias) == 0
    right, left = _scores(model, "right"), _scores(model, "left")
    assert right.shape == (3, 2)
    assert torch.allclose(right, left, atol=1e-5)
    with torch.no_grad():
        alone = torch.cat([model.score(torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long)) for s in SEQUENCES])
    assert torch.allclose(right, alone, atol=1e-5)
    ids, mask = _batch(SEQUENCES, "left")
    with torch.no_grad():
        values = model(ids, mask)
    assert values.shape == (3, 5, 2) and not values.isnan().any()
    assert torch.allclose(values[:, -1], left)  # left padding: every sequence ends at the last column


def test_full_save_round_trip(tmp_path, tokenizer):
    from transformers import AutoModel

    torch.manual_seed(0)
    model = ScalarHeadModel.from_causal_lm(TINY_MODEL, output_names=["helpful"])
    _train_one_step(model)
    expected = _scores(model)
    model.save_pretrained(tmp_path / "rm" / "model", tokenizer=tokenizer)
    folder = tmp_path / "rm" / "model"
    meta = json.loads((folder / "alignloop_head.json").read_text())
    assert meta == {
        "format": "full",
        "num_outputs": 1,
        "output_names": ["helpful"],
        "base_model": "tiny-llama",
        "hidden_size": 64,
        "pooling": "last_non_pad_token",
    }
    reloaded = ScalarHeadModel.from_pretrained(tmp_path / "rm", trainable=False)  # stage folder works
    assert torch.equal(_scores(reloaded), expected)
    assert reloaded.base_model_name == "tiny-llama" and reloaded.output_names == ["helpful"]
    assert not any(p.requires_grad for p in reloaded.parameters())
    # Without alignloop: the backbone is a plain HF folder and the head a plain safetensors file.
    from safetensors.torch import load_file

    backbone = AutoModel.from_pretrained(folder, local_files_only=True)
    head = load_file(str(folder / "head.safetensors"))
    ids, mask = _batch(SEQUENCES, "right")
    with torch.no_grad():
        hidden = backbone(input_ids=ids, attention_mask=mask).last_hidden_state
    last = mask.sum(-1) - 1  # right padding: last real token is at length - 1
    plain = hidden[torch.arange(3), last] @ head["weight"].T + head["bias"]
    assert torch.allclose(plain, expected, atol=1e-5)
    assert load_tokenizer(folder).pad_token_id == PAD


def test_lora_save_round_trip(tmp_path, tokenizer):
    from peft import PeftModel

    # The SFT model is itself a LoRA adapter: the reward model is built on its merged weights.
    sft = load_causal_lm(TINY_MODEL, lora={"r": 4})
    ids, mask = _batch(SEQUENCES, "right")
    (-sft(input_ids=ids, attention_mask=mask).logits.mean()).backward()
    with torch.no_grad():
        for p in sft.parameters():
            if p.requires_grad:
                p -= 0.5 * p.grad
    save_model(sft, tokenizer, tmp_path / "sft")
    torch.manual_seed(0)
    model = ScalarHeadModel.from_causal_lm(tmp_path / "sft", lora={"r": 4, "alpha": 8})
    # the base is the original model; the SFT adapter is folded into the RM's saved adapter (models/compose.py)
    assert model.is_lora and model.base_model_name == TINY_MODEL
    sft_hidden = sft.eval()(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
    with torch.no_grad():
        rm_hidden = model.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.allclose(rm_hidden, sft_hidden, atol=1e-5)  # fresh RM adapter (B=0) = SFT body
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"head.weight", "head.bias"} <= trainable
    assert all(n.startswith("head.") or "lora_" in n for n in trainable)
    _train_one_step(model)
    expected = _scores(model)
    model.save_pretrained(tmp_path / "rm", tokenizer=tokenizer)
    assert not (tmp_path / "rm" / "model.safetensors").exists()  # adapter + head only
    meta = json.loads((tmp_path / "rm" / "alignloop_head.json").read_text())
    assert meta["base_model"] == TINY_MODEL and meta["lineage"] == [str((tmp_path / "sft").resolve())]

    reloaded = ScalarHeadModel.from_pretrained(tmp_path / "rm")
    assert isinstance(reloaded.backbone, PeftModel)
    assert torch.allclose(_scores(reloaded), expected, atol=1e-6)
    assert {n for n, p in reloaded.named_parameters() if p.requires_grad} == trainable


def test_wrong_folders_are_model_errors(tmp_path):
    model = ScalarHeadModel.from_causal_lm(TINY_MODEL)
    model.save_pretrained(tmp_path / "rm")
    with pytest.raises(ModelError, match="is a scalar-head \\(reward/value\\) model; load it with"):
        load_causal_lm(tmp_path / "rm")
    save_model(load_causal_lm(TINY_MODEL), None, tmp_path / "lm")
    with pytest.raises(ModelError, match="is not a scalar-head model folder"):
        ScalarHeadModel.from_pretrained(tmp_path / "lm")
    with pytest.raises(ModelError, match="2 output names given for 1 outputs"):
        ScalarHeadModel.from_causal_lm(TINY_MODEL, output_names=["a", "b"])
