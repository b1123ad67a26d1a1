"""benchmarks/dpo_accuracy.py: held-out implicit-reward accuracy and the weight average ("soup") it can score."""

from __future__ import annotations

import json

import pytest
import torch

from alignloop.models import build_tiny_llama, load_tokenizer, save_model, TINY_MODEL
from tests.benchmarks.test_common import _load

dpo_accuracy = _load("dpo_accuracy")


def _pairs(path):
    rows = [{"prompt": f"Question {i}: what is {i} plus {i}?", "chosen": f"It is {2 * i}.",
             "rejected": f"I will not say{'!' * i}"} for i in range(1, 6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_a_policy_equal_to_its_reference_wins_no_pair(tiny_model_dir, tmp_path):
    # one pair per batch: policy and reference run the same computation, so every margin is exactly zero and a
    # pair counts only when the chosen reward is strictly higher
    out = dpo_accuracy.main(["--policy", str(tiny_model_dir), "--reference", str(tiny_model_dir),
                             "--data", _pairs(tmp_path / "pairs.jsonl"), "--batch-size", "1",
                             "--precision", "fp32"])
    assert out["pairs"] == 5 and out["correct"] == 0 and out["accuracy"] == 0.0
    assert out["ci95"][0] == 0.0 and 0 < out["ci95"][1] < 0.6


def test_the_average_is_the_mean_of_the_weights(tiny_model_dir, tmp_path):
    other = tmp_path / "other"
    save_model(build_tiny_llama(seed=1), load_tokenizer(TINY_MODEL), other)
    a = dpo_accuracy.averaged_policy([str(tiny_model_dir)]).state_dict()
    b = dpo_accuracy.averaged_policy([str(other)]).state_dict()
    soup = dpo_accuracy.averaged_policy([str(tiny_model_dir), str(other)]).state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)
    for k in a:
        assert torch.allclose(soup[k], (a[k] + b[k]) / 2, rtol=0, atol=1e-7), k
    same = dpo_accuracy.averaged_policy([str(tiny_model_dir), str(tiny_model_dir)]).state_dict()
    assert all(torch.equal(same[k], a[k]) for k in a)


def test_folders_of_different_shapes_are_refused(tiny_model_dir, tmp_path):
    wider = tmp_path / "wider"
    save_model(build_tiny_llama(seed=0, intermediate_size=96), load_tokenizer(TINY_MODEL), wider)
    with pytest.raises(SystemExit, match="wider.*do not match"):
        dpo_accuracy.averaged_policy([str(tiny_model_dir), str(wider)])
