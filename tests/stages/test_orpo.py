"""The ORPO stage on tiny-llama: learning a hidden preference with no reference model, the loss by hand on real
log-probs, one forward per step, exact resume, and bad records."""

from __future__ import annotations

import json
import math
import os
import random
import signal

import pytest
import torch
from safetensors.torch import load_file

from alignloop.config import load_config
from alignloop.errors import DataError
from alignloop.stages.dpo.batch import pair_logps
from alignloop.stages.dpo.reference import CACHE_PREFIX
from alignloop.stages.orpo import ORPOConfig, ORPOStage
from alignloop.train.loop import Interrupted, Run, train
from tests.conftest import ROOT

# The hidden rule: a chosen answer names fruits, a rejected one names animals.
FRUITS = ["apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "plum"]
ANIMALS = ["tiger", "horse", "camel", "zebra", "otter", "snake", "eagle", "shark"]


def pairs(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    words = lambda pool: " ".join(rng.choice(pool) for _ in range(rng.randint(2, 4)))  # noqa: E731
    return [{"prompt": f"Say a few words ({rng.randint(0, 999)}).", "chosen": words(FRUITS),
             "rejected": words(ANIMALS)} for _ in range(n)]


@pytest.fixture
def data(tmp_path):
    paths = {}
    for name, n, seed in (("train", 32, 0), ("eval", 16, 1)):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in pairs(n, seed)))
        paths[name] = str(path)
    return paths


def config(data, *overrides: str) -> ORPOConfig:
    base = [
        "model=tiny-llama", f"data.train={data['train']}", f"data.eval={data['eval']}",
        "train.max_steps=2", "train.batch_size=8", "train.precision=fp32", "train.save_every=0",
    ]
    return load_config(ORPOConfig, None, base + list(overrides))


def set_up(cfg: ORPOConfig, out) -> ORPOStage:
    stage = ORPOStage(cfg)
    stage.run = Run(cfg, out)
    stage.setup(stage.run)
    return stage


def metrics(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_orpo_learns_a_hidden_preference_on_held_out_pairs(data, tmp_path):
    torch.manual_seed(0)
    out = tmp_path / "run"
    cfg = config(data, "train.max_steps=6", "train.lr=2e-3", "train.eval_every=3", "orpo.eval_before=true",
                 "orpo.beta=1.0")
    summary = train(ORPOStage(cfg), out)
    # the random model ranks the pairs by chance; after training it prefers fruits on unseen pairs
    assert summary["eval/rewards/accuracies"] >= 0.9 > summary["eval_before/rewards/accuracies"]
    assert summary["eval/log_odds_ratio"] > summary["eval_before/log_odds_ratio"]
    assert summary["eval/nll_loss"] < summary["eval_before/nll_loss"]  # the SFT part raised the chosen answers
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
                "logps/rejected", "nll_loss", "log_odds_ratio", "log_odds_chosen"):
        assert key in summary, key
    assert summary["pairs"] == 32 and summary["eval_pairs"] == 16 and "reference" not in summary
    assert not list(out.glob(f"{CACHE_PREFIX}*"))  # no reference log-probs anywhere
    assert (out / "model" / "config.json").is_file()


def test_loss_matches_the_formula_on_the_model_log_probs(data, tmp_path):
    stage = set_up(config(data, "orpo.beta=0.25"), tmp_path / "run")
    assert stage.reference is None and stage.ref_logps is None
    batch = stage.collate(stage.train_examples[:4])
    with torch.no_grad():
        loss, m = stage._loss(batch, "train")
        logps = pair_logps(stage.models["policy"], batch)
    # written out in float64 from an independent forward: P = exp(mean token log-prob),
    # L = −log P_w − β log σ(log(P_w/(1−P_w)) − log(P_l/(1−P_l)))
    expected = nll = ratio = 0.0
    for i in range(4):
        lw = float(logps.chosen[i]) / int(logps.chosen_tokens[i])
        ll = float(logps.rejected[i]) / int(logps.rejected_tokens[i])
        pw, pl = math.exp(lw), math.exp(ll)
        log_odds = math.log(pw / (1 - pw)) - math.log(pl / (1 - pl))
        log_sigmoid = -math.log1p(math.exp(-log_odds))
        expected += -lw - 0.25 * log_sigmoid
        nll, ratio = nll - lw, ratio + log_sigmoid
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert m["nll_loss"] == pytest.approx(nll, rel=1e-5) and m["log_odds_ratio"] == pytest.approx(ratio, rel=1e-5)


class CountingStage(ORPOStage):
    """Counts the policy's forward calls inside each training step."""

    def setup(self, run):
        super().setup(run)
        self.calls, self.per_step = 0, []
        self.models["policy"].register_forward_pre_hook(lambda *_: setattr(self, "calls", self.calls + 1))

    def step(self, batch):
        before = self.calls
        out = super().step(batch)
        self.per_step.append(self.calls - before)
        return out


def test_one_policy_forward_per_step_and_no_reference(data, tmp_path):
    stage = CountingStage(config(data, "train.max_steps=3"))
    train(stage, tmp_path / "run")
    assert stage.per_step == [1, 1, 1] and stage.frozen_modules() == []


class StopAt(ORPOStage):
    def on_step_end(self, step, metrics):
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)


def test_resume_is_exact(data, tmp_path):
    cfg = config(data, "train.max_steps=4", "train.lr=1e-3")
    train(ORPOStage(cfg), tmp_path / "a")
    with pytest.raises(Interrupted):
        train(StopAt(cfg), tmp_path / "b")
    assert train(ORPOStage(cfg), tmp_path / "b")["steps"] == 4
    wa, wb = (load_file(str(tmp_path / d / "model" / "model.safetensors")) for d in ("a", "b"))
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_bad_pairs_are_reported_with_their_lines(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "Hi", "chosen": "Hello", "rejected": "Go away"}\n'
                    '{"prompt": "Hi", "chosen": "Hello"}\n'
                    '{"prompt": "Hi", "chosen": "Same", "rejected": "Same"}\n')
    with pytest.raises(DataError) as err:
        set_up(config({"train": str(path), "eval": str(path)}), tmp_path / "run")
    assert err.value.problems == [f"{path}:2: rejected: missing", f"{path}:3: rejected: is identical to chosen"]


def test_missing_training_data_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match=r"^data.train: no training data given \(pair or ranking records\)$"):
        set_up(load_config(ORPOConfig, None, ["model=tiny-llama"]), tmp_path / "run")


def test_example_config_is_valid():
    cfg = load_config(ORPOConfig, ROOT / "examples" / "orpo.yaml")
    assert cfg.data.train == "bundled:hh-harmless-train.jsonl" and cfg.lora is not None and cfg.orpo.eval_before
    assert cfg.model == "smollm2-135m-instruct"
