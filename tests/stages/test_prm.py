"""Process reward models: step boundaries → tokens, dense reward placement, aggregation, the PRM stage."""

from __future__ import annotations

import json

import pytest
import torch

from alignloop.config import load_config
from alignloop.rewards.process import (
    ProcessRewardSource,
    aggregate_steps,
    place_step_rewards,
    response_step_ends,
    split_steps,
    step_end_tokens,
    tokenize_solution,
)
from alignloop.stages.prm import PRMConfig, PRMStage, step_targets
from alignloop.train.loop import train


def test_split_steps_char_spans():
    text = "1 + 2 = 3\n\n  3 * 2 = 6 \n#### 6"
    # "1 + 2 = 3" = [0, 9); blank line skipped; "3 * 2 = 6" starts at 11 + 2 spaces = 13, ends 22; "#### 6" = [24, 30)
    assert split_steps(text) == [(0, 9), (13, 22), (24, 30)]
    assert split_steps("a ; b", separator=";") == [(0, 1), (4, 5)]


def test_step_end_tokens_on_hand_made_spans():
    # tokens: "12" "+" "3" "\n" "4" "" (a zero-width special token) "5"
    offsets = [(0, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 6), (6, 7)]
    # step 1 ends at char 4 -> last token starting before 4 is token 2 ("3");
    # step 2 ends at char 6 -> token 5 starts at 6 and is zero-width, so token 4;
    # step 3 ends at char 7 -> token 6
    assert step_end_tokens(offsets, [4, 6, 7]) == [2, 4, 6]
    # a token that straddles the step end ("3\n" = chars 3..5) is the end token of a step ending at 4
    assert step_end_tokens([(0, 2), (2, 3), (3, 5), (5, 6)], [4]) == [2]
    assert step_end_tokens([(0, 0)], [3]) == [-1]  # nothing before the end: no token


def test_tokenize_solution_step_ends_line_up(tokenizer):
    steps = ["18 - 12 = 6", "6 + 7 = 13", "#### 13"]
    ex = tokenize_solution(tokenizer, "Start with 18. Subtract 12, then add 7.", steps)
    assert len(ex.step_ends) == 3
    for step, end in zip(steps, ex.step_ends):
        assert tokenizer.decode(ex.input_ids[: end + 1]).endswith(step)
        assert step not in tokenizer.decode(ex.input_ids[:end])[-len(step):]  # one token earlier is too early
    assert ex.step_ends[-1] == len(ex.input_ids) - 1


def test_response_step_ends_match_generated_tokens(tokenizer):
    text = "3 + 4 = 7\n7 * 2 = 14\n#### 14"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    steps, ends = response_step_ends(tokenizer, ids)
    assert steps == ["3 + 4 = 7", "7 * 2 = 14", "#### 14"]
    for step, end in zip(steps, ends):
        assert tokenizer.decode(ids[: end + 1]).endswith(step)
    assert ends[-1] == len(ids) - 2  # the last digit, not the EOS token after it


def test_place_step_rewards_by_hand():
    rewards = place_step_rewards([torch.tensor([0.9, 0.2]), torch.tensor([0.5])], [[1, 3], [2]], width=5)
    expected = torch.tensor([[0, 0.9, 0, 0.2, 0], [0, 0, 0.5, 0, 0]])
    assert torch.allclose(rewards, expected)
    # a step with no token (-1) is dropped; two steps on one token add up
    assert torch.allclose(place_step_rewards([torch.tensor([1.0, 2.0, 3.0])], [[-1, 1, 1]], 2), torch.tensor([[0.0, 5.0]]))


def test_aggregate_steps_by_hand():
    probs = torch.tensor([0.9, 0.5, 0.8])
    assert aggregate_steps(probs, "min") == pytest.approx(0.5)
    assert aggregate_steps(probs, "product") == pytest.approx(0.36)  # 0.9 · 0.5 · 0.8
    assert aggregate_steps(probs, "last") == pytest.approx(0.8)
    assert aggregate_steps(torch.tensor([]), "min") == 0.0


def test_step_targets_mask_ungraded_steps():
    assert step_targets([1, 1, -1, 0], "process") == ([1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0])
    assert step_targets([1, -1, 0], "outcome") == ([0.0, 0.0, 0.0], [0.0, 0.0, 1.0])
    assert step_targets([1, 1], "outcome") == ([0.0, 1.0], [0.0, 1.0])


def _records(path):
    rows = [
        {"prompt": "Start with 5. Add 3, then multiply by 2.", "steps": ["5 + 3 = 8", "8 * 2 = 16", "#### 16"], "labels": [1, 1, 1]},
        {"prompt": "Start with 4. Add 6, then multiply by 3.", "steps": ["4 + 6 = 11", "11 * 3 = 33", "#### 33"], "labels": [-1, 0, 0]},
        {"prompt": "Start with 9. Subtract 2, then add 5.", "steps": ["9 - 2 = 7", "7 + 5 = 13", "#### 13"], "labels": [1, -1, 0]},
        {"prompt": "Start with 7. Add 1, then add 2.", "steps": ["7 + 1 = 8", "8 + 2 = 10", "#### 10"], "labels": [1, 1, 1]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.slow
def test_prm_stage_learns_and_scores_steps(tmp_path, tokenizer):
    data = _records(tmp_path / "steps.jsonl")
    overrides = ["model=tiny-llama", f"data.train={data}", f"data.eval={data}", "train.max_steps=8", "train.batch_size=4",
                 "train.lr=3e-3", "train.lr_schedule=constant", "train.precision=fp32", "train.save_every=0"]
    torch.manual_seed(0)
    summary = train(PRMStage(load_config(PRMConfig, None, overrides)), tmp_path / "run")
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert losses[-1] < losses[0]
    assert summary["eval/accuracy"] >= 0.5

    source = ProcessRewardSource.from_pretrained(tmp_path / "run")
    assert source.aggregate == "min"
    prompts = ["Start with 5. Add 3, then multiply by 2."]
    step_scores = source.score_steps(prompts, ["5 + 3 = 8\n8 * 2 = 16\n#### 16"])
    assert step_scores[0].shape == (3,) and ((step_scores[0] > 0) & (step_scores[0] < 1)).all()
    as_list = source.score_steps(prompts, [["5 + 3 = 8", "8 * 2 = 16", "#### 16"]])
    assert torch.allclose(as_list[0], step_scores[0])
    assert float(source.score(prompts, ["5 + 3 = 8\n8 * 2 = 16\n#### 16"])) == pytest.approx(float(step_scores[0].min()))

    # dense rewards: each step's probability at the policy token that ends it
    ids = tokenizer("5 + 3 = 8\n8 * 2 = 16\n#### 16", add_special_tokens=False)["input_ids"]
    response = torch.tensor([ids + [tokenizer.eos_token_id, tokenizer.pad_token_id]])
    mask = torch.tensor([[1] * (len(ids) + 1) + [0]])
    dense = source.dense_rewards(prompts, response, mask, tokenizer)
    _, ends = response_step_ends(tokenizer, ids)
    assert dense.shape == response.shape
    assert torch.allclose(dense[0, ends], step_scores[0], atol=1e-5)
    assert float(dense.sum()) == pytest.approx(float(step_scores[0].sum()), abs=1e-5)


@pytest.mark.slow
def test_outcome_stage_saves_last_aggregate(tmp_path):
    data = _records(tmp_path / "steps.jsonl")
    overrides = ["model=tiny-llama", f"data.train={data}", "train.max_steps=1", "train.batch_size=4", "prm.supervision=outcome",
                 "train.precision=fp32", "train.save_every=0"]
    train(PRMStage(load_config(PRMConfig, None, overrides)), tmp_path / "orm")
    meta = json.loads((tmp_path / "orm" / "model" / "alignloop_prm.json").read_text())
    assert meta == {"kind": "process_reward_model", "supervision": "outcome", "aggregate": "last", "separator": "\n"}
