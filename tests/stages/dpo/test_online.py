"""Online DPO on the word-level toy model (tests/conftest.py): per-step pairing by a rule reward, ties, the frozen
reference, every loss type, resume after a kill, and the errors for pair data and a missing reward."""

from __future__ import annotations

import json
import logging
import os
import signal

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from alignloop.config import load_config
from alignloop.errors import ConfigError
from alignloop.pipeline.launch import run_stage
from alignloop.rewards import build_reward
from alignloop.rewards.judge import LLMJudge, PairJudgement
from alignloop.rollout import Rollout
from alignloop.stages.dpo.online import DPOCommand, OnlineDPOStage
from alignloop.stages.dpo.online_pairs import (
    PairRollout,
    PairRolloutSource,
    build_pair_reward,
    label_pairs,
    pair_examples,
    score_samples,
)
from alignloop.stages.dpo.stage import DPOConfig, DPOStage
from alignloop.stages.registry import stage_classes
from alignloop.train.batches import EpochBatchSource
from alignloop.train.loop import Interrupted, train
from tests.conftest import TARGET, WORDS, target_fraction, write_prompts


def zero_reward(prompts, completions, **fields):
    """Every sample scores the same: every pair is a tie."""
    return [0.0] * len(completions)


@pytest.fixture(scope="module")
def toy(tmp_path_factory, word_model_dir):
    root = tmp_path_factory.mktemp("online_dpo")
    return {"model": word_model_dir, "prompts": write_prompts(root / "prompts.jsonl"), "root": root}


def config(toy, *overrides: str) -> DPOConfig:
    base = [
        f"model={toy['model']}", f"data.train={toy['prompts']}", "data.eval_fraction=0", "dpo.online=true",
        "dpo.reward=tests.conftest:target_fraction", "dpo.max_new_tokens=6", "dpo.eval_prompts=0",
        "train.batch_size=8", "train.micro_batch_size=4", "train.max_steps=3", "train.precision=fp32",
        "train.save_every=0", "train.lr=1e-2", "train.lr_schedule=constant",
    ]
    return load_config(DPOConfig, None, base + list(overrides))


def rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --- pairing --------------------------------------------------------------------------------------------------


def word_rollout(prompt: str, responses: list[str]) -> Rollout:
    """Two samples per prompt, prompt-major, as the sampler returns them (prompts left-padded, responses right)."""
    ids = {w: i for i, w in enumerate(WORDS)}
    prompt_ids = [ids[w] for w in prompt.split()]
    tokens = [[ids[w] for w in r.split()] for r in responses]
    width = max(len(t) for t in tokens)
    n = len(responses)
    return Rollout(
        prompt_ids=torch.tensor([prompt_ids] * n), prompt_mask=torch.ones(n, len(prompt_ids), dtype=torch.long),
        response_ids=torch.tensor([t + [0] * (width - len(t)) for t in tokens]),
        response_mask=torch.tensor([[1] * len(t) + [0] * (width - len(t)) for t in tokens]),
        logprobs=torch.zeros(n, width), ended_with_eos=torch.zeros(n, dtype=torch.bool),
        ended_with_stop=torch.zeros(n, dtype=torch.bool), prompts=[prompt] * n, responses=list(responses),
        group_index=torch.arange(n // 2).repeat_interleave(2),
    )


def test_the_higher_scored_sample_is_chosen_and_ties_are_skipped():
    rollout = word_rollout("red cat", ["yes yes", "no", "no", "yes no", "cat", "dog", "yes", "yes"])
    scores, _ = score_samples(build_reward("tests.conftest:target_fraction"), rollout, [{"prompt": "red cat"}] * 4)
    # target_fraction by hand: share of words that are "yes"
    assert scores.tolist() == [1.0, 0.0, 0.0, 0.5, 0.0, 0.0, 1.0, 1.0]
    labels = label_pairs(rollout, scores)
    assert labels.first_wins.tolist() == [True, False, False, False]
    assert labels.tie.tolist() == [False, False, True, True]  # equal scores; identical samples
    examples = pair_examples(rollout, labels)
    yes, no = WORDS.index("yes"), WORDS.index("no")
    assert [(e.chosen_ids, e.rejected_ids) for e in examples] == [([yes, yes], [no]), ([yes, no], [no])]
    assert all(e.prompt_ids == [WORDS.index("red"), WORDS.index("cat")] for e in examples)
    # a margin turns a small score difference into a tie
    assert label_pairs(rollout, scores, tie_margin=0.5).tie.tolist() == [False, True, True, True]


def test_a_pairwise_judge_compares_the_two_samples(monkeypatch):
    judge = LLMJudge.__new__(LLMJudge)
    judge.mode, judge.name = "pairwise", "judge"
    seen = {}

    def compare(prompts, a, b, criteria=None):
        seen["pairs"] = list(zip(a, b))
        return PairJudgement(p_ab=torch.tensor([0.9, 0.2]), p_ba=torch.tensor([0.3, 0.6]), choice_mass=torch.ones(2))

    monkeypatch.setattr(judge, "compare", compare)
    rollout = word_rollout("red", ["yes", "no", "cat", "dog"])
    scores, _ = score_samples(judge, rollout, [{"prompt": "red"}] * 2)
    assert seen["pairs"] == [("yes", "no"), ("cat", "dog")]
    # P(first better) = (p_ab + 1 − p_ba) / 2: 0.8 and 0.3
    assert scores.tolist() == pytest.approx([0.8, 0.2, 0.3, 0.7])
    assert label_pairs(rollout, scores).first_wins.tolist() == [True, False]


def test_a_judge_reward_is_pairwise_unless_told(monkeypatch):
    made = []
    record = classmethod(lambda cls, model, **options: made.append((model, options)))
    monkeypatch.setattr(LLMJudge, "from_model", record)
    build_pair_reward({"judge": {"model": "some-judge"}})
    build_pair_reward({"judge": {"model": "some-judge", "mode": "pointwise"}})
    assert [(m, o["mode"]) for m, o in made] == [("some-judge", "pairwise"), ("some-judge", "pointwise")]


def test_each_step_trains_on_its_own_samples_labelled_by_the_rule(tmp_path, toy):
    torch.manual_seed(0)
    summary = train(OnlineDPOStage(config(toy, "dpo.samples_count=64")), tmp_path)
    samples = rows(tmp_path / "samples.jsonl")
    assert len(samples) == 3 * 16  # 3 steps × 8 prompts × 2 samples
    ties = 0
    for first, second in zip(samples[0::2], samples[1::2]):
        assert first["prompt"] == second["prompt"] and first["step"] == second["step"]
        for s in (first, second):  # the stored score is the rule's score of the response
            assert s["score"] == pytest.approx(target_fraction([], [s["response"]])[0])
        if first["label"] == "tie":
            ties += 1
            assert second["label"] == "tie" and (first["score"] == second["score"]
                                                  or first["response"] == second["response"])
        else:
            chosen, rejected = (first, second) if first["label"] == "chosen" else (second, first)
            assert rejected["label"] == "rejected" and chosen["score"] > rejected["score"]
    assert summary["ties"] == ties and summary["pairs_trained"] == 24 - ties
    metrics = rows(tmp_path / "metrics.jsonl")
    assert sum(m["objective/tie_fraction"] for m in metrics) * 8 == pytest.approx(ties)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
                "objective/scores", "objective/scores_margin", "objective/kl", "val/contain_eos_token",
                "completions/mean_length", "tokens_per_second"):
        assert key in metrics[-1], key
    # the first step's policy is the reference: log-ratios, margins and KL are 0, the sigmoid loss is log 2
    assert metrics[0]["objective/kl"] == pytest.approx(0.0, abs=1e-5)
    assert metrics[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    assert metrics[0]["loss"] == pytest.approx(0.693147, abs=1e-4)
    assert metrics[-1]["objective/kl"] != pytest.approx(0.0, abs=1e-5)
    assert summary["reference"] == "per-step" and not list(tmp_path.glob("ref_logps-*"))


def test_online_dpo_raises_the_rule_reward(tmp_path, toy):
    torch.manual_seed(0)
    cfg = config(toy, "train.batch_size=16", "train.micro_batch_size=8", "train.max_steps=12", "dpo.max_new_tokens=8",
                 "data.eval_fraction=0.25", "dpo.eval_prompts=8", "dpo.samples_every=0")
    summary = train(OnlineDPOStage(cfg), tmp_path)
    scores = [m["objective/scores"] for m in rows(tmp_path / "metrics.jsonl") if "objective/scores" in m]
    # measured: the sampled "yes" share 0.08 → 0.77 in 12 steps, greedy eval reward 0 → 1
    assert sum(scores[-3:]) / 3 > sum(scores[:3]) / 3 + 0.3, scores
    assert summary["eval/reward"] > summary["eval_before/reward"] + 0.3


def test_all_ties_make_no_pairs_and_leave_the_weights(tmp_path, toy):
    stage = OnlineDPOStage(config(toy, "dpo.reward=tests.stages.dpo.test_online:zero_reward", "train.max_steps=2"))
    summary = train(stage, tmp_path)
    assert summary["ties"] == 16 and summary["pairs_trained"] == 0 and summary["tie_fraction"] == 1.0
    metrics = rows(tmp_path / "metrics.jsonl")
    assert all(m["objective/tie_fraction"] == 1.0 and m["objective/pairs"] == 0 for m in metrics)
    fresh = AutoModelForCausalLM.from_pretrained(toy["model"])
    trained = stage.unwrap("policy").state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in fresh.state_dict().items())  # zero gradients, Adam's update 0


# --- the reference ----------------------------------------------------------------------------------------------


class CountingReference(OnlineDPOStage):
    """Records, for every reference forward, how many rollouts (steps) the source had made by then."""

    def setup(self, run):
        super().setup(run)
        self.ref_calls: list[int] = []

    def _reference_logps(self, batch, split):
        self.ref_calls.append(self.source.rollouts_done)
        return super()._reference_logps(batch, split)


@pytest.mark.parametrize("lora", [False, True])
def test_the_reference_stays_frozen_while_the_policy_moves(tmp_path, toy, lora):
    extra = ["lora.r=4", "lora.alpha=8"] if lora else []
    stage = CountingReference(config(toy, *extra))
    fresh = AutoModelForCausalLM.from_pretrained(toy["model"]).eval()
    train(stage, tmp_path)
    # reference log-probs are computed inside every step, on that step's pairs: none precomputed
    assert sorted(set(stage.ref_calls)) == [1, 2, 3] and not list(tmp_path.glob("ref_logps-*"))
    policy = stage.unwrap("policy").eval()
    batch = torch.tensor([[WORDS.index(w) for w in "red cat yes no sun".split()]])
    with torch.no_grad():
        with stage.reference.use() as ref:
            assert torch.allclose(ref(batch).logits, fresh(batch).logits, atol=1e-6)
        assert not torch.allclose(policy(batch).logits, fresh(batch).logits, atol=1e-3)
    if lora:
        assert stage.reference.model is None  # the adapter switched off: no copy of the weights
    else:
        assert all(not p.requires_grad for p in stage.reference.model.parameters())


@pytest.mark.parametrize("loss", ["sigmoid", "robust", "ipo", "hinge", "simpo", "reference_free"])
def test_every_offline_loss_type_runs_online(tmp_path, toy, loss):
    extra = ["dpo.reference_free=true"] if loss == "reference_free" else [f"dpo.loss_type={loss}"]
    if loss == "robust":
        extra.append("dpo.label_smoothing=0.1")
    stage = OnlineDPOStage(config(toy, "train.max_steps=2", *extra))
    summary = train(stage, tmp_path)
    assert summary["steps"] == 2 and torch.isfinite(torch.tensor(summary["loss"]))
    assert (stage.reference is None) == (loss in ("simpo", "reference_free"))


# --- resume -----------------------------------------------------------------------------------------------------


class KilledAt(OnlineDPOStage):
    def __init__(self, config, at: int):
        super().__init__(config)
        self.at = at

    def on_step_end(self, step, metrics):
        super().on_step_end(step, metrics)
        if step == self.at:
            os.kill(os.getpid(), signal.SIGINT)


def test_a_killed_run_resumes_to_the_same_weights_and_samples(tmp_path, toy):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    cfg = config(toy, "train.max_steps=4", "dpo.samples_count=16")
    train(OnlineDPOStage(cfg), straight)
    with pytest.raises(Interrupted):
        train(KilledAt(cfg, at=2), resumed)
    summary = train(OnlineDPOStage(cfg), resumed)
    assert summary["steps"] == 4
    assert rows(straight / "samples.jsonl") == rows(resumed / "samples.jsonl")
    a = load_file(str(straight / "checkpoints" / "step-0000004" / "policy.safetensors"))
    b = load_file(str(resumed / "checkpoints" / "step-0000004" / "policy.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert summary["ties"] == json.loads((straight / "summary.json").read_text())["ties"]


def test_the_source_state_moves_only_when_a_step_is_committed():
    made = []

    def rollout_phase(records, index):
        made.append(index)
        return PairRollout(examples=[object()] * 3, collate=lambda ex: {"index": torch.arange(len(ex))})

    def source():
        prompts = EpochBatchSource(list(range(10)), 4, list, seed=0, full_batches=True)
        return PairRolloutSource(prompts, rollout_phase, minibatch_size=4, micro_batch_size=2, seed=0)

    first = source()
    start = first.state_dict()
    assert [len(first.next_batch()["index"]) for _ in range(2)] == [1, 2]  # 3 pairs over 2 micro-batches
    assert first.state_dict() == start  # consumed, but the step is not trained yet
    first.commit()
    after = first.state_dict()
    assert after["rollouts_done"] == 1 and after["prompts"]["global_pos"] == 4 and not after["mid_rollout"]
    again = source()
    again.load_state_dict(start)
    again.next_batch()
    assert made == [0, 0]  # a run stopped before the commit samples the same rollout again


class StoppedInside(OnlineDPOStage):
    """A second Ctrl-C in step ``at``: while its rollout is sampled, or in its first micro-batch's forward."""

    def __init__(self, config, at: int, where: str):
        super().__init__(config)
        self.at, self.where = at, where

    def rollout_phase(self, records, index):
        if self.where == "sampling" and index + 1 == self.at:
            raise KeyboardInterrupt
        return super().rollout_phase(records, index)

    def step(self, batch):
        if self.where == "training" and self.source.rollouts_done == self.at:
            raise KeyboardInterrupt
        return super().step(batch)


@pytest.mark.parametrize("where", ["sampling", "training"])
def test_a_run_stopped_inside_a_step_resumes_as_if_never_stopped(tmp_path, toy, where):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    cfg = config(toy, "train.max_steps=4", "dpo.samples_count=16")
    train(OnlineDPOStage(cfg), straight)
    with pytest.raises(Interrupted, match="interrupted at step 2/4"):
        train(StoppedInside(cfg, at=3, where=where), resumed)
    summary = train(OnlineDPOStage(cfg), resumed)
    assert rows(straight / "samples.jsonl") == rows(resumed / "samples.jsonl")
    a = load_file(str(straight / "checkpoints" / "step-0000004" / "policy.safetensors"))
    b = load_file(str(resumed / "checkpoints" / "step-0000004" / "policy.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert summary["ties"] == json.loads((straight / "summary.json").read_text())["ties"]


# --- entry point and errors ---------------------------------------------------------------------------------------


def test_alignloop_dpo_runs_the_online_stage_when_asked(tmp_path, toy):
    assert stage_classes("dpo")[1] is DPOCommand
    overrides = [f"model={toy['model']}", f"data.train={toy['prompts']}", "data.eval_fraction=0.25", "dpo.online=true",
                 "dpo.reward=tests.conftest:target_fraction", "dpo.max_new_tokens=4", "dpo.eval_prompts=4",
                 "train.batch_size=4", "train.max_steps=1", "train.precision=fp32"]
    summary = run_stage("dpo", None, overrides, tmp_path)
    assert summary["online"] is True and summary["prompts"] == 24 and summary["eval_records"] == 8
    assert "eval/reward" in summary and "eval_before/reward" in summary
    assert (tmp_path / "model" / "config.json").is_file() and (tmp_path / "samples.jsonl").is_file()


def test_pair_data_gives_its_distinct_prompts_with_a_warning(tmp_path, toy, caplog):
    pairs = tmp_path / "pairs.jsonl"
    lines = [{"prompt": "red", "chosen": TARGET, "rejected": "no", "source": "a"},
             {"prompt": "red", "chosen": "x", "rejected": "y"},
             {"prompt": [{"role": "user", "content": "blue"}], "chosen": "x", "rejected": "y"}]
    pairs.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with caplog.at_level(logging.WARNING, logger="alignloop"):
        stage = OnlineDPOStage(config(toy, f"data.train={pairs}", f"data.eval={toy['prompts']}", "train.batch_size=2",
                                      "train.micro_batch_size=2", "train.max_steps=1"))
        train(stage, tmp_path / "run")
    prompts = [r["prompt"] for r in stage.train_records]
    assert prompts == [[{"role": "user", "content": "red"}], [{"role": "user", "content": "blue"}]]
    assert all("chosen" not in r and "rejected" not in r for r in stage.train_records)
    assert stage.train_records[0]["source"] == "a"
    assert (f"{pairs} holds preference pairs (chosen/rejected): online DPO samples its own pairs, so it uses only "
            "their 2 distinct prompts (dpo.online: false trains on the pairs themselves)") in caplog.text


def test_a_missing_reward_is_a_config_error(toy):
    with pytest.raises(ConfigError) as err:
        config(toy, "dpo.reward=null")
    assert str(err.value) == (
        "--set dpo: online DPO (dpo.online: true) needs dpo.reward, the reward source that labels its samples: a "
        "reward-model run dir, 'module:function', 'rule:<name>' or {judge: ...}")
    with pytest.raises(ConfigError, match="dpo.reward is only used by online DPO: set dpo.online: true"):
        config(toy, "dpo.online=false")
    with pytest.raises(ConfigError, match=r"dpo.online: true runs OnlineDPOStage"):
        train(DPOStage(config(toy)), toy["root"] / "offline")
