"""The bundled quickstart pipeline: it validates as shipped (both variants), and — acceptance, three seeds — it
runs and meets the bar: on each seed PPO and DPO beat the SFT reference on gold reward with non-overlapping 95%
intervals on at least 96 held-out prompts, each wins ≥ 75% against it, PPO's no-EOS rate stays within 0.15 of the
reference's, every policy reports a KL, and the stages take at most 15 minutes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from alignloop.pipeline.commands import bundled_pipeline
from alignloop.pipeline.runner import resolved_configs
from alignloop.pipeline.spec import load_pipeline


# The estimates are measured stage times on a 2-core CPU; the screen promises what was measured, and the
# quickstart issue's budgets are 15 minutes (default) and 4 minutes (--fast).
@pytest.mark.parametrize("variant, budget", [(None, 15 * 60), ("fast", 4 * 60)])
def test_bundled_quickstart_validates(tmp_path, variant, budget):
    pipe = load_pipeline(bundled_pipeline(), out=tmp_path / "q", variant=variant)
    configs = {entry.name: (entry, cfg) for entry, cfg in resolved_configs(pipe)}
    assert [e.stage for e, _ in configs.values()] == ["sft", "collect", "rm", "ppo", "dpo", "eval"]
    assert configs["sft"][1].model == "smollm2-135m-instruct"
    assert all(configs[name][1].lora is not None for name in ("sft", "rm", "ppo", "dpo"))
    _, ev = configs["eval"]
    assert ev.model == str(tmp_path / "q" / "sft") and ev.reward == str(tmp_path / "q" / "rm")
    assert set(ev.eval.policies) == {"ppo", "dpo"} and 4 in ev.eval.best_of_n
    assert configs["ppo"][1].ppo.reward == str(tmp_path / "q" / "rm")
    assert sum(e.estimate_seconds for e, _ in configs.values()) <= budget  # what the screen promises


def quickstart_command(out: Path, fast: bool, seed: int | None = None) -> list[str]:
    return ([sys.executable, "-m", "alignloop", "quickstart", "--out", str(out)] + (["--fast"] if fast else [])
            + (["--seed", str(seed)] if seed is not None else []))


def run_quickstart(out: Path, fast: bool, seed: int | None = None) -> dict:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(quickstart_command(out, fast, seed), env=env, capture_output=True, text=True,
                          timeout=3 * 3600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "policies on held-out prompts" in done.stdout and "stages" in done.stdout
    return json.loads((out / "report.json").read_text())


# The --fast run (~4 min) runs in CI. The default run (~14.5 min on an idle 2-core CPU) does not fit next to the
# rest of the suite in CI's 30 minutes: it carries the `acceptance` marker, which `make test` deselects; run it
# with `pytest -m acceptance tests/test_quickstart.py`. Every stage it chains is covered by its own tests.
@pytest.mark.slow
def test_quickstart_fast_completes_with_a_full_report(tmp_path):
    report = run_quickstart(tmp_path / "q", fast=True)
    assert {"sft", "ppo", "dpo", "bon4"} <= set(report["policies"]) and report["reference"] == "sft"
    for entry in report["policies"].values():
        assert entry["kl_to_ref"] is not None and entry["n_samples"] > 0
    assert set(report["stages"]) == {"sft", "prefs", "rm", "ppo", "dpo", "eval"}
    assert (tmp_path / "q" / "report.html").stat().st_size > 50_000
    assert_models_load_anywhere(tmp_path / "q")


def assert_models_load_anywhere(out: Path) -> None:
    """Every model the quickstart saved loads with plain transformers / peft (the LoRA policies and value model
    as one adapter on SmolLM2, the SFT adapter folded in) and gives alignloop's logits in fp32 (issue 21)."""
    import torch

    from alignloop.models import ScalarHeadModel, load_causal_lm, load_tokenizer
    from tests.conftest import plain_logits, plain_scalar_values

    ids = load_tokenizer(out / "sft")(["Write a happy sentence about the sea."], return_tensors="pt").input_ids
    for stage in ("sft", "ppo", "dpo"):
        note = json.loads((out / stage / "model" / "alignloop_model.json").read_text())
        assert note["format"] == "lora" and note["base_model"] == "smollm2-135m-instruct", (stage, note)
        with torch.no_grad():
            ours = load_causal_lm(out / stage, trainable=False)(input_ids=ids).logits
        assert (plain_logits(out / stage / "model", ids) - ours).abs().max() <= 1e-5, stage
    for folder in (out / "rm" / "model", out / "ppo" / "value_model"):
        with torch.no_grad():
            ours = ScalarHeadModel.from_pretrained(folder, trainable=False)(ids)
        assert (plain_scalar_values(folder, ids) - ours).abs().max() <= 1e-5, folder


# Three seeds, ~15 min each: `pytest -m acceptance tests/test_quickstart.py`.
@pytest.mark.slow
@pytest.mark.acceptance
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quickstart_default_meets_the_acceptance_bar(tmp_path, seed):
    report = run_quickstart(tmp_path / "q", fast=False, seed=seed)
    assert report["n_prompts"] >= 96
    policies = report["policies"]
    ref = policies["sft"]
    for name in ("ppo", "dpo"):
        assert policies[name]["gold_reward_ci95"][0] > ref["gold_reward_ci95"][1], (seed, name, policies[name], ref)
        assert policies[name]["win_rate_vs_ref"] >= 0.75, (seed, name, policies[name])
    assert abs(policies["ppo"]["no_eos_fraction"] - ref["no_eos_fraction"]) <= 0.15, (seed, policies["ppo"], ref)
    assert all(isinstance(p["kl_to_ref"], float) for p in policies.values())
    # the time budget, on an idle 2-core CPU (stage times as the pipeline measured them)
    assert sum(s["seconds"] for s in report["stages"].values()) <= 15 * 60, report["stages"]
