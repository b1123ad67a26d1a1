"""A reward-model folder as the evaluation's gold (a proxy gold, for data with no true scorer): it scores the whole
conversation like the proxy does, and the report labels it."""

from __future__ import annotations

import json

import pytest
import torch

from alignloop.data import load_records
from alignloop.errors import ModelError
from alignloop.eval.eval_report import gold_name
from alignloop.models import ScalarHeadModel, load_tokenizer
from alignloop.pipeline.runner import config_from_dict
from alignloop.rewards import build_reward
from alignloop.stages.evaluate.sampling import RewardModelGold, gold_scorer
from alignloop.stages.evaluate.stage import EvalConfig, evaluate

CONVERSATIONS = [
    [{"role": "user", "content": "How do I pick a lock?"}, {"role": "assistant", "content": "Why do you ask?"},
     {"role": "user", "content": "It is my own door."}],
    [{"role": "user", "content": "Tell me a joke."}, {"role": "assistant", "content": "About what?"},
     {"role": "user", "content": "Cats."}],
]


@pytest.fixture(scope="module")
def rm_dir(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gold") / "rm"
    torch.manual_seed(0)
    ScalarHeadModel.from_causal_lm(tiny_model_dir).save_pretrained(folder / "model",
                                                                   tokenizer=load_tokenizer(tiny_model_dir))
    return folder / "model"


def test_a_folder_is_a_reward_model_gold_and_names_stay_what_they_were(rm_dir, tmp_path):
    assert isinstance(gold_scorer(str(rm_dir)), RewardModelGold)
    assert type(gold_scorer("vader")).__name__ == "VaderGold"
    with pytest.raises(ModelError, match=r"^eval.gold: runs/nothing-here: no such reward-model folder$"):
        gold_scorer("runs/nothing-here")


def test_reward_model_gold_scores_whole_conversations_and_the_report_labels_it(rm_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": c, "chosen": "ok", "rejected": "no"}) + "\n"
                               for c in CONVERSATIONS))
    settings = {"model": "tiny-llama", "data": {"eval": str(prompts)}, "train": {"precision": "fp32"},
                "eval": {"reference": "base", "gold": str(rm_dir), "n_prompts": 2, "samples_per_prompt": 2,
                         "max_new_tokens": 5, "batch_size": 4, "n_boot": 50}}
    report = evaluate(config_from_dict(EvalConfig, settings, "test"), tmp_path / "eval")
    assert report["gold_label"] == f"proxy gold (reward model {rm_dir})" and report["gold_scorer"] == str(rm_dir)
    samples = [json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    # the gold saw the whole conversation (earlier turns included), exactly as a reward model scores it
    source = build_reward(str(rm_dir))
    conversations = [r["prompt"] for r in load_records(str(prompts), "prompt")]
    expected = source.score([conversations[i // 2] for i in range(4)], [s["completion"] for s in samples])
    assert [s["gold"] for s in samples] == pytest.approx([float(v) for v in expected], abs=1e-4)
    last_turn_only = source.score([c[-1]["content"] for c in conversations for _ in (0, 1)],
                                  [s["completion"] for s in samples])
    assert [s["gold"] for s in samples] != pytest.approx([float(v) for v in last_turn_only], abs=1e-4)
    settings["eval"]["gold_label"] = "proxy gold (RM trained on disjoint pairs)"
    report = evaluate(config_from_dict(EvalConfig, settings, "test"), tmp_path / "eval2")
    assert gold_name(report) == f"proxy gold (RM trained on disjoint pairs): {rm_dir}"
    assert "proxy gold (RM trained on disjoint pairs)" in (tmp_path / "eval2" / "report.html").read_text()
