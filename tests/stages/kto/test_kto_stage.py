"""The KTO stage on tiny-llama: learning a hidden preference from unpaired labels, pairs split in two, the first
step's loss by hand, exact resume with the cached reference, and bad records."""

from __future__ import annotations

import json
import os
import random
import signal

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from alignloop.cli import app
from alignloop.config import load_config
from alignloop.errors import DataError
from alignloop.stages.dpo.reference import CACHE_PREFIX
from alignloop.stages.kto.stage import KTOConfig, KTOStage
from alignloop.train.loop import Interrupted, Run, train
from tests.conftest import ROOT

# The hidden rule: a desirable answer names fruits, an undesirable one names animals.
FRUITS = ["apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "plum"]
ANIMALS = ["tiger", "horse", "camel", "zebra", "otter", "snake", "eagle", "shark"]


def _words(rng: random.Random, pool: list[str]) -> str:
    return " ".join(rng.choice(pool) for _ in range(rng.randint(2, 4)))


def pairs(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"prompt": f"Say a few words ({rng.randint(0, 999)}).", "chosen": _words(rng, FRUITS),
             "rejected": _words(rng, ANIMALS)} for _ in range(n)]


def unpaired(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        good = i % 2 == 0
        rows.append({"prompt": f"Say a few words ({rng.randint(0, 999)}).",
                     "completion": _words(rng, FRUITS if good else ANIMALS), "label": good})
    return rows


def write(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def data(tmp_path):
    # unpaired training records; held-out PAIRS, so the eval reports pair accuracy (new prompts and word sequences)
    return {"train": write(tmp_path / "train.jsonl", unpaired(32, 0)),
            "eval": write(tmp_path / "eval.jsonl", pairs(8, 1))}


def config(data, *overrides: str) -> KTOConfig:
    base = [
        "model=tiny-llama", f"data.train={data['train']}", f"data.eval={data['eval']}",
        "train.max_steps=2", "train.batch_size=8", "train.precision=fp32", "train.save_every=0",
    ]
    return load_config(KTOConfig, None, base + list(overrides))


def set_up(cfg: KTOConfig, out) -> KTOStage:
    stage = KTOStage(cfg)
    stage.run = Run(cfg, out)
    stage.setup(stage.run)
    return stage


def metrics(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_kto_learns_a_hidden_preference_from_unpaired_labels(data, tmp_path):
    torch.manual_seed(0)
    out = tmp_path / "run"
    summary = train(KTOStage(config(data, "train.max_steps=6", "train.lr=2e-3", "train.eval_every=2")), out)
    rows = metrics(out)
    evals = [m for m in rows if "eval/rewards/accuracies" in m]
    # held-out pairs the model never saw: the fruit answer gets the higher implied reward
    assert evals[-1]["eval/rewards/accuracies"] >= 0.9
    assert evals[-1]["eval/rewards/margins"] > evals[0]["eval/rewards/margins"] > 0
    assert evals[-1]["eval/rewards/chosen"] > 0 > evals[-1]["eval/rewards/rejected"]
    steps = [m for m in rows if "loss" in m]
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected", "kl",
                "loss/kto"):
        assert key in steps[-1] and key in summary, key
    assert not any(k.endswith("_sum") or k.startswith("count/") for m in rows for k in m)  # internal sums resolved
    assert all(m["kl"] >= 0 for m in steps)
    assert steps[-1]["rewards/margins"] == pytest.approx(steps[-1]["rewards/chosen"] - steps[-1]["rewards/rejected"])
    assert summary["reference"] == "computed"
    counts = (summary["examples"], summary["desirable"], summary["undesirable"], summary["eval_examples"])
    assert counts == (32, 16, 16, 16)
    assert (out / "model" / "config.json").is_file()


def test_pairs_are_split_into_one_desirable_and_one_undesirable_example(tmp_path):
    paths = {"train": write(tmp_path / "pairs.jsonl", pairs(12, 0)),
             "eval": write(tmp_path / "eval.jsonl", pairs(4, 1))}
    stage = set_up(config(paths), tmp_path / "run")
    train_set = stage.sets["train"]
    assert (len(train_set.examples), train_set.desirable, train_set.undesirable) == (24, 12, 12)
    assert len(train_set.pairs) == 12
    assert all(train_set.labels[c] and not train_set.labels[r] for c, r in train_set.pairs)
    # each example's second branch is a completion written for another prompt: never its own, never its pair's
    for chosen, rejected in train_set.pairs:
        for i in (chosen, rejected):
            example = train_set.examples[i]
            assert example.rejected_ids not in (train_set.examples[chosen].chosen_ids,
                                                train_set.examples[rejected].chosen_ids)


def test_first_step_losses_match_hand_values(data, tmp_path):
    # Before any update the policy IS the reference: r = 0 for every example and z0 = max(0, mean(0)) = 0, so
    #   desirable:   λ_D(1 − σ(0)) = 1.5 · 0.5 = 0.75;   undesirable: λ_U(1 − σ(0)) = 0.5 · 0.5 = 0.25
    # (the cached reference comes from differently packed batches: equal to ~1e-5 in fp32)
    stage = set_up(config(data, "kto.desirable_weight=1.5", "kto.undesirable_weight=0.5"), tmp_path / "run")
    examples = stage.train_examples[:8]
    labels = stage.sets["train"].labels[:8]
    batch = stage.collate(examples)
    with torch.no_grad():
        loss, m = stage._loss(batch, "train")
    n_good = int(labels.sum())
    assert loss.item() == pytest.approx(0.75 * n_good + 0.25 * (8 - n_good), abs=1e-4)
    assert abs(m["kl"]) < 1e-4 and abs(m["rewards/chosen_sum"]) < 1e-4
    assert m["count/chosen"] == n_good and m["count/rejected"] == 8 - n_good


class StopAt(KTOStage):
    def on_step_end(self, step, metrics):
        super().on_step_end(step, metrics)
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)


def test_resume_is_exact_and_reuses_the_reference_cache(data, tmp_path):
    cfg = config(data, "train.max_steps=4", "train.lr=1e-3")
    train(KTOStage(cfg), tmp_path / "a")
    with pytest.raises(Interrupted):
        train(StopAt(cfg), tmp_path / "b")
    cache = sorted((tmp_path / "b").glob(f"{CACHE_PREFIX}*.safetensors"))
    stamp = cache[0].stat().st_mtime_ns
    summary = train(KTOStage(cfg), tmp_path / "b")
    assert summary["reference"] == "cached" and summary["steps"] == 4
    assert cache[0].stat().st_mtime_ns == stamp
    wa, wb = (load_file(str(tmp_path / d / "model" / "model.safetensors")) for d in ("a", "b"))
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    last = lambda d: [m for m in metrics(tmp_path / d) if "loss" in m][-1]  # noqa: E731
    assert last("a")["loss"] == pytest.approx(last("b")["loss"], abs=1e-6)


def test_on_the_fly_reference_gives_the_same_losses(data, tmp_path):
    torch.manual_seed(0)
    train(KTOStage(config(data)), tmp_path / "cached")
    torch.manual_seed(0)
    summary = train(KTOStage(config(data, "kto.precompute_ref=false")), tmp_path / "live")
    assert summary["reference"] == "on-the-fly"
    steps = lambda out: [m for m in metrics(out) if "loss" in m]  # noqa: E731
    for a, b in zip(steps(tmp_path / "cached"), steps(tmp_path / "live"), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["kl"] == pytest.approx(b["kl"], abs=1e-5)


def test_bad_unpaired_records_are_reported_with_their_lines(tmp_path):
    rows = [json.dumps(r) for r in unpaired(2, 0)]
    rows += ['{"prompt": "Hi", "completion": "Hello", "label": "yes"}', '{"prompt": "Hi", "completion": "Hello"}',
             '{"prompt": "Hi", "completion": "", "label": false}']
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError) as err:
        set_up(config({"train": str(path), "eval": str(path)}), tmp_path / "run")
    assert err.value.problems == [
        f"{path}:3: label: must be true or false (got 'yes')",
        f"{path}:4: label: missing (true for a desirable completion, false for an undesirable one)",
        f"{path}:5: completion: must be a non-empty string or a list of messages",
    ]


def test_missing_training_data_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match=r"^data.train: no training data given \(unpaired, pair or ranking records\)$"):
        set_up(load_config(KTOConfig, None, ["model=tiny-llama"]), tmp_path / "run")


def test_cli_prints_one_line_for_a_bad_record(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "Hi", "completion": "Hello", "label": 1}\n')
    result = CliRunner().invoke(app, ["kto", "--set", "model=tiny-llama", "--set", f"data.train={path}",
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 1
    assert f"error: {path}:1: label: must be true or false (got 1)" in " ".join(result.output.split())


def test_example_config_is_valid():
    cfg = load_config(KTOConfig, ROOT / "examples" / "kto.yaml")
    assert cfg.data.train == "bundled:hh-harmless-train.jsonl" and cfg.lora is not None
    assert cfg.model == "smollm2-135m-instruct"
