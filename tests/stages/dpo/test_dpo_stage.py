"""The DPO stage on tiny-llama: learning a hidden preference, one forward per step, the reference cache, LoRA."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from alignloop.config import load_config
from alignloop.errors import ConfigError, DataError
from alignloop.stages.dpo.batch import pair_logps
from alignloop.stages.dpo.reference import CACHE_PREFIX, reference_view
from alignloop.stages.dpo.stage import DPOConfig, DPOStage
from alignloop.train.loop import Run, train
from tests.conftest import ROOT

# The hidden rule: a chosen answer names fruits, a rejected one names animals.
FRUITS = ["apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "plum"]
ANIMALS = ["tiger", "horse", "camel", "zebra", "otter", "snake", "eagle", "shark"]


def synthetic_pairs(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = lambda pool: " ".join(rng.choice(pool) for _ in range(rng.randint(2, 4)))  # noqa: E731
        rows.append({"prompt": f"Say a few words ({rng.randint(0, 999)}).", "chosen": words(FRUITS), "rejected": words(ANIMALS)})
    return rows


@pytest.fixture
def data(tmp_path):
    paths = {}
    for name, n, seed in (("train", 32, 0), ("eval", 16, 1)):  # held-out pairs: new prompts and word sequences
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in synthetic_pairs(n, seed)))
        paths[name] = str(path)
    return paths


def config(data, *overrides: str) -> DPOConfig:
    base = [
        "model=tiny-llama", f"data.train={data['train']}", f"data.eval={data['eval']}",
        "train.max_steps=2", "train.batch_size=8", "train.precision=fp32", "train.save_every=0",
    ]
    return load_config(DPOConfig, None, base + list(overrides))


def set_up(cfg: DPOConfig, out) -> DPOStage:
    stage = DPOStage(cfg)
    stage.run = Run(cfg, out)
    stage.setup(stage.run)
    return stage


def metrics(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_dpo_learns_a_hidden_preference_on_held_out_pairs(data, tmp_path):
    torch.manual_seed(0)
    out = tmp_path / "run"
    summary = train(DPOStage(config(data, "train.max_steps=6", "train.lr=2e-3", "train.eval_every=2")), out)
    evals = [m for m in metrics(out) if "eval/rewards/accuracies" in m]
    # after 2 steps the policy is still close to the reference; by the end it prefers fruits on unseen pairs
    assert evals[-1]["eval/rewards/accuracies"] >= 0.9
    assert evals[-1]["eval/rewards/margins"] > evals[0]["eval/rewards/margins"] > 0
    assert summary["reference"] == "computed" and summary["pairs"] == 32 and summary["eval_pairs"] == 16
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen", "logps/rejected"):
        assert key in summary
    assert (out / "model" / "config.json").is_file()


class CountingStage(DPOStage):
    """Counts the policy's forward calls inside each training step."""

    def setup(self, run):
        super().setup(run)
        self.calls = 0
        self.per_step: list[int] = []
        self.models["policy"].register_forward_pre_hook(lambda *_: setattr(self, "calls", self.calls + 1))
        if self.reference is not None and self.reference.model is not None:
            self.reference.model.register_forward_pre_hook(lambda *_: setattr(self, "calls", self.calls + 1))

    def step(self, batch):
        before = self.calls
        out = super().step(batch)
        self.per_step.append(self.calls - before)
        return out


@pytest.mark.parametrize("precompute, forwards", [(True, 1), (False, 2)])
def test_forwards_per_step(data, tmp_path, precompute, forwards):
    stage = CountingStage(config(data, "train.max_steps=3", f"dpo.precompute_ref={precompute}"))
    summary = train(stage, tmp_path / "run")
    # chosen and rejected share one policy forward; the cached reference needs none, on the fly it needs one
    assert stage.per_step == [forwards] * 3
    assert summary["reference"] == ("computed" if precompute else "on-the-fly")


def test_cached_reference_gives_the_same_losses_as_on_the_fly(data, tmp_path):
    torch.manual_seed(0)
    train(DPOStage(config(data, "dpo.precompute_ref=true")), tmp_path / "cached")
    torch.manual_seed(0)
    train(DPOStage(config(data, "dpo.precompute_ref=false")), tmp_path / "live")
    steps = lambda out: [m for m in metrics(out) if "loss" in m]  # noqa: E731
    for a, b in zip(steps(tmp_path / "cached"), steps(tmp_path / "live"), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["rewards/margins"] == pytest.approx(b["rewards/margins"], abs=1e-5)


def test_reference_cache_is_reused_on_resume(data, tmp_path):
    out = tmp_path / "run"
    train(DPOStage(config(data, "train.max_steps=1")), out)
    files = sorted(out.glob(f"{CACHE_PREFIX}*.safetensors"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    summary = train(DPOStage(config(data, "train.max_steps=2")), out)  # resumes from step 1
    assert summary["reference"] == "cached" and summary["steps"] == 2
    assert sorted(out.glob(f"{CACHE_PREFIX}*.safetensors")) == files and files[0].stat().st_mtime_ns == stamp


def test_first_step_losses_match_hand_values(data, tmp_path):
    # Before any update the policy IS the reference, so every log-ratio is 0 and h = 0:
    #   sigmoid: −log σ(0) = log 2;  robust (ε=0.1): (0.9·log 2 − 0.1·log 2)/0.8 = log 2
    #   ipo (β=0.1): (0 − 1/(2·0.1))² = 25;  hinge: max(0, 1 − 0) = 1
    stage = set_up(config(data), tmp_path / "run")
    batch = stage.collate(stage.train_examples[:4])
    expected = {"sigmoid": math.log(2), "robust": math.log(2), "ipo": 25.0, "hinge": 1.0}
    with torch.no_grad():
        for loss_type, value in expected.items():
            stage.config.dpo.loss_type = loss_type
            stage.config.dpo.label_smoothing = 0.1 if loss_type == "robust" else 0.0
            loss, m = stage._loss(batch, "train")
            assert loss.item() / 4 == pytest.approx(value, abs=1e-4), loss_type
            assert abs(m["rewards/margins"]) < 1e-4
        # simpo ignores the reference: −log σ(β(avg_c − avg_r) − γ) with the averages from an independent forward
        stage.config.dpo.loss_type = "simpo"
        loss, _ = stage._loss(batch, "train")
        logps = pair_logps(stage.models["policy"], batch)
        h = logps.chosen / logps.chosen_tokens - logps.rejected / logps.rejected_tokens
        assert loss.item() == pytest.approx(float(-torch.nn.functional.logsigmoid(0.1 * h - 0.5).sum()), rel=1e-5)
        # the SFT term adds sft_weight × the mean token NLL of each chosen answer
        stage.config.dpo.loss_type = "sigmoid"
        stage.config.dpo.sft_weight = 0.5
        loss, m = stage._loss(batch, "train")
        nll = float(-(logps.chosen / logps.chosen_tokens).sum())
        assert m["loss/sft"] == pytest.approx(nll, rel=1e-5)
        assert loss.item() == pytest.approx(m["loss/dpo"] + 0.5 * nll, rel=1e-5)


@pytest.fixture
def sample_pairs(tmp_path):
    """6 prompts × 4 sampled answers labelled in all 6 pairs, the collect stage's layout (fruits beat animals)."""
    rng = random.Random(5)
    rows = []
    for p in range(6):
        answers = [(" ".join(rng.choice(FRUITS if k < 2 else ANIMALS) for _ in range(rng.randint(2, 4))), k)
                   for k in range(4)]
        for a in range(4):
            for b in range(a + 1, 4):
                (good, _), (bad, _) = sorted((answers[a], answers[b]), key=lambda x: x[1])
                rows.append({"prompt": f"Say a few words ({p}).", "chosen": good, "rejected": bad})
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"train": str(path), "eval": str(path)}


def test_group_by_prompt_gives_the_same_log_probs_with_fewer_tokens(sample_pairs, tmp_path):
    shared = CountingStage(config(sample_pairs, "dpo.group_by_prompt=true", "train.batch_size=12", "train.max_steps=2"))
    summary = train(shared, tmp_path / "shared")
    assert shared.per_step == [1, 1] and summary["pairs"] == 36
    plain = set_up(config(sample_pairs, "train.batch_size=12"), tmp_path / "plain")
    for split in ("train_chosen", "train_rejected", "eval_chosen", "eval_rejected"):  # reference caches agree
        assert torch.allclose(shared.ref_logps[split], plain.ref_logps[split], atol=1e-4), split
    # a batch of 12 is two prompts' pairs: 2 prompts + 8 answers instead of 12 prompts + 24 answers
    batch = shared.batches().next_batch()
    assert len({tuple(shared.train_examples[i].prompt_ids) for i in batch["index"].tolist()}) == 2
    plain_batch = plain.collate([plain.train_examples[i] for i in batch["index"].tolist()])
    assert int((plain_batch["segments"] >= 0).sum()) > 2.5 * int((batch["segments"] >= 0).sum())
    with torch.no_grad():
        fresh = set_up(config(sample_pairs, "dpo.group_by_prompt=true"), tmp_path / "fresh")
        a, b = pair_logps(fresh.models["policy"], batch), pair_logps(fresh.models["policy"], plain_batch)
    assert torch.allclose(a.chosen, b.chosen, atol=1e-4) and torch.allclose(a.rejected, b.rejected, atol=1e-4)


def test_group_by_prompt_and_by_length_together_is_a_clear_error(sample_pairs, tmp_path):
    with pytest.raises(ConfigError, match="group_by_prompt and group_by_length"):
        set_up(config(sample_pairs, "dpo.group_by_prompt=true", "dpo.group_by_length=true"), tmp_path / "run")


def test_lora_reference_is_the_adapter_disabled_base(data, tmp_path):
    torch.manual_seed(0)
    cfg = config(data, "train.max_steps=3", "train.lr=1e-2", "dpo.precompute_ref=false", "lora.r=4")
    stage = DPOStage(cfg)
    train(stage, tmp_path / "run")
    policy = stage.unwrap("policy")
    batch = stage.collate(stage.eval_examples[:4])
    with torch.no_grad():
        with reference_view(policy) as base:
            ref = pair_logps(base, batch)
        trained = pair_logps(policy, batch)
        untouched = pair_logps(set_up(config(data), tmp_path / "fresh").models["policy"], batch)
    assert torch.allclose(ref.chosen, untouched.chosen, atol=1e-4)  # adapter off = the original model
    assert not torch.allclose(trained.chosen, untouched.chosen, atol=1e-2)  # the adapter did learn
    assert (tmp_path / "run" / "model" / "adapter_config.json").is_file()


def test_missing_training_data_is_a_clear_error(tmp_path):
    cfg = load_config(DPOConfig, None, ["model=tiny-llama"])
    with pytest.raises(DataError, match=r"^data.train: no training data given \(pair or ranking records\)$"):
        set_up(cfg, tmp_path / "run")


def test_example_configs_are_valid():
    cfg = load_config(DPOConfig, ROOT / "examples" / "dpo.yaml")  # real preferences, measured on held-out pairs
    assert cfg.data.train == "bundled:hh-harmless-train.jsonl" and cfg.data.eval == "bundled:hh-harmless-heldout.jsonl"
    assert cfg.dpo.loss_type == "sigmoid" and cfg.dpo.precompute_ref
    cfg = load_config(DPOConfig, ROOT / "examples" / "dpo-bon.yaml")
    assert cfg.dpo.loss_type == "sigmoid" and cfg.dpo.precompute_ref and cfg.data.train == "runs/bon-pairs/pairs.jsonl"
