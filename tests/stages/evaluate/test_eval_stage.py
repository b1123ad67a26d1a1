"""The evaluation stage: per-policy summaries (hand-checked), best-of-N picking, checkpoint loading,
and a tiny end-to-end run that writes the report.json contract and resumes from its parts."""

from __future__ import annotations

import json
import math

import pytest
import torch

from alignloop.eval.eval_summary import (
    best_of_n_kl,
    best_of_n_pick,
    overoptimisation_curve,
    summarize_policy,
)
from alignloop.pipeline.runner import config_from_dict
from alignloop.stages.evaluate.stage import EvalConfig, _pool_groups, evaluate


def _rec(pi, gold, text, logp=None, ref=None, eos=True, length=None, proxy=None, si=0):
    return {"prompt_index": pi, "sample_index": si, "prompt": f"p{pi}", "completion": text, "gold": gold,
            "proxy": proxy, "logp": logp, "ref_logp": ref, "eos": eos, "length": length}


def test_best_of_n_kl_matches_formula():
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(4) == pytest.approx(math.log(4) - 0.75)  # 1.386294 - 0.75 = 0.636294
    assert best_of_n_kl(16) == pytest.approx(1.835089, abs=1e-6)  # 2.772589 - 0.9375
    with pytest.raises(ValueError):
        best_of_n_kl(0)


def test_summarize_policy_hand_computed():
    texts = ["a b", "a c", "a b", "d"]
    policy = [_rec(0, 0.5, texts[0], -1, -2, length=2), _rec(1, -0.5, texts[1], -2, -2.5, eos=False, length=2),
              _rec(2, 1.0, texts[2], -3, -3, length=2), _rec(3, 0.0, texts[3], -4, -6, length=1)]
    ref = [_rec(0, 0.0, "x"), _rec(1, 0.0, "x"), _rec(2, 1.0, "x"), _rec(3, 0.5, "x")]
    s = summarize_policy(policy, ref, {"method": "monte_carlo"}, n_boot=200)
    assert s["gold_reward_mean"] == pytest.approx(0.25)
    # win 1, loss 0, tie 0.5, loss 0 -> 1.5 / 4
    assert s["win_rate_vs_ref"] == pytest.approx(0.375)
    # gold differences [0.5, -0.5, 0, -0.5]: 1 win, 2 losses, 1 tie; sign p = 2 * (1 + 3) / 8 = 1; Wilcoxon on
    # three tied |d| (rank 2 each): W+ = 2, mean 3, variance 3.5 - 24/48 = 3, z = -1/sqrt(3)
    paired = s["paired_vs_ref"]
    assert (paired["wins"], paired["losses"], paired["ties"]) == (1, 2, 1)
    assert paired["gain_mean"] == pytest.approx(-0.125) and paired["sign_p"] == 1.0
    assert paired["wilcoxon_p"] == pytest.approx(math.erfc(1 / math.sqrt(6)))
    # log-ratio terms [1, 0.5, 0, 2]: mean 0.875, sample std sqrt(2.1875/3) = 0.853913, / sqrt(4)
    assert s["kl_to_ref"] == pytest.approx(0.875)
    assert s["kl_stderr"] == pytest.approx(0.426956, abs=1e-6)
    # unigrams a b a c a b d: 4 unique of 7; bigrams (a b) (a c) (a b): 2 of 3
    assert s["distinct_1"] == pytest.approx(4 / 7)
    assert s["distinct_2"] == pytest.approx(2 / 3)
    assert s["no_eos_fraction"] == 0.25
    assert s["mean_length"] == 1.75
    assert s["n_samples"] == 4
    lo, hi = s["gold_reward_ci95"]
    assert -0.5 <= lo <= 0.25 <= hi <= 1.0
    assert s["proxy_reward_mean"] is None and s["proxy_reward_ci95"] is None


def test_summarize_reference_and_best_of_n_kl_methods():
    ref = [_rec(0, 0.2, "same text here", proxy=1.0), _rec(1, 0.4, "other text there", proxy=3.0)]
    s = summarize_policy(ref, ref, {"method": "zero"}, n_boot=100)
    assert (s["kl_to_ref"], s["kl_stderr"], s["win_rate_vs_ref"], s["paired_vs_ref"]) == (0.0, None, 0.5, None)
    assert s["proxy_reward_mean"] == 2.0
    b = summarize_policy(ref, ref, {"method": "analytic_best_of_n", "n": 4}, n_boot=100)
    assert b["kl_to_ref"] == pytest.approx(best_of_n_kl(4)) and b["kl_method"] == "analytic_best_of_n"


def test_best_of_n_pick_takes_proxy_best_of_first_n_earliest_on_ties():
    group = [{"proxy": p, "id": i} for i, p in enumerate([0.1, 0.9, 0.9, 0.2])]
    assert [best_of_n_pick([group], n)[0]["id"] for n in (1, 2, 4)] == [0, 1, 1]
    with pytest.raises(ValueError, match="best-of-5 needs 5 candidates"):
        best_of_n_pick([group], 5)


def test_pool_groups_slots_and_curve_order():
    pool = [{"prompt_index": p, "sample_index": s, "proxy": float(s)} for p in range(2) for s in range(4)]
    groups = _pool_groups(pool, 2)
    # prompt 0: slot 0 = samples 0,1; slot 1 = samples 2,3; the slot becomes the pairing sample_index
    assert [[g["proxy"] for g in grp] for grp in groups] == [[0.0, 1.0], [2.0, 3.0], [0.0, 1.0], [2.0, 3.0]]
    assert [grp[0]["sample_index"] for grp in groups] == [0, 1, 0, 1]
    curve = overoptimisation_curve([{"label": "b", "kl": 4.0, "proxy": 1, "gold": 2},
                                    {"label": "a", "kl": 1.0, "proxy": 0, "gold": 1}])
    assert curve["label"] == ["a", "b"] and curve["sqrt_kl"] == [1.0, 2.0]


def _lora_stage_dir(tmp_path, tokenizer):
    """A fake LoRA training stage folder: final adapter in model/, one checkpoint with different weights."""
    from safetensors.torch import save_file

    from alignloop.models import apply_lora, build_tiny_llama, save_model
    from alignloop.train.checkpoint import trainable_state

    stage = tmp_path / "policy_stage"
    model = apply_lora(build_tiny_llama(), {"r": 4, "alpha": 8})
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    ckpt = stage / "checkpoints" / "step-0000003"
    ckpt.mkdir(parents=True)
    save_file(trainable_state(model), str(ckpt / "policy.safetensors"))
    (ckpt / "state.json").write_text(json.dumps({"step": 3}))
    checkpoint_model = model
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(2.0)  # the final model differs from the checkpoint
    save_model(model, tokenizer, stage / "model")
    return stage, checkpoint_model


def test_checkpoint_policy_restores_checkpoint_weights(tmp_path, tiny_tokenizer):
    from alignloop.stages.evaluate.sampling import (
        checkpoint_steps,
        load_checkpoint_policy,
        load_policy,
    )

    stage, model = _lora_stage_dir(tmp_path, tiny_tokenizer)
    ids = torch.tensor([[1, 5, 9, 13]])
    with torch.no_grad():
        model.merge_adapter()  # in place; the weights are the *final* (doubled) ones now
        final_logits = model(ids).logits
        model.unmerge_adapter()
    (step, path), = checkpoint_steps(stage)
    assert step == 3
    restored = load_checkpoint_policy(stage, path)
    final = load_policy(stage)
    with torch.no_grad():
        assert torch.allclose(final(ids).logits, final_logits, atol=1e-4)
        assert not torch.allclose(restored(ids).logits, final_logits, atol=1e-3)


def test_evaluate_tiny_end_to_end_and_resume(tmp_path, tiny_tokenizer):
    from alignloop.models import build_tiny_llama, save_model

    save_model(build_tiny_llama(seed=1), tiny_tokenizer, tmp_path / "other")
    cfg = config_from_dict(EvalConfig, {
        "model": "tiny-llama",
        "reward": "rule:length_penalty",
        "eval": {"reference": "base", "policies": {"other": str(tmp_path / "other")}, "best_of_n": [2],
                 "n_prompts": 4, "samples_per_prompt": 2, "max_new_tokens": 6, "batch_size": 8, "n_boot": 100},
    }, "test")
    out = tmp_path / "eval"
    report = evaluate(cfg, out)
    assert list(report["policies"]) == ["base", "other", "bon2"]
    contract = {"gold_reward_mean", "gold_reward_ci95", "proxy_reward_mean", "kl_to_ref", "win_rate_vs_ref",
                "mean_length", "distinct_2", "no_eos_fraction", "n_samples"}
    for entry in report["policies"].values():
        assert contract <= set(entry) and entry["n_samples"] == 8
    assert report["reference"] == "base" and report["gold_scorer"] == "vader"
    assert report["policies"]["other"]["kl_to_ref"] > 0  # a different random model
    assert report["policies"]["bon2"]["kl_to_ref"] == pytest.approx(best_of_n_kl(2))
    assert report["overoptimisation"]["best_of_n"]["label"] == ["N=1", "N=2"]
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 24 and {"policy", "prompt", "completion", "gold", "proxy"} <= set(samples[0])
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["policies"]["other"]["gold_reward_mean"] == pytest.approx(report["policies"]["other"]["gold_reward_mean"])
    assert (out / "report.html").stat().st_size > 10_000 and (out / "summary.json").is_file()
    # A second run reuses every policy's samples from parts/ and gives the same numbers.
    (out / "summary.json").unlink()
    again = evaluate(cfg, out)
    assert again["policies"] == report["policies"]


def test_eval_config_errors(tmp_path):
    from alignloop.errors import ConfigError

    with pytest.raises(ConfigError, match=r"eval.policies.x: give exactly one of 'model' or 'best_of'"):
        config_from_dict(EvalConfig, {"eval": {"policies": {"x": {"checkpoints": False}}}}, "cfg.yaml")
    cfg = config_from_dict(EvalConfig, {"model": "tiny-llama", "eval": {"best_of_n": [4]}}, "cfg.yaml")
    with pytest.raises(ConfigError, match="best-of-N policies need a proxy reward"):
        evaluate(cfg, tmp_path / "eval")
    assert not (tmp_path / "eval").exists()  # nothing is written before the config is known to be usable


class _AutocastProbe:
    """A proxy reward that records whether it was called under bf16 autocast."""

    name = "probe"

    def __init__(self):
        self.autocast_seen: list[bool] = []

    def score(self, prompts, completions, **fields):
        self.autocast_seen.append(torch.is_autocast_enabled("cpu")
                                  and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        return torch.arange(len(completions), dtype=torch.float32)


@pytest.mark.parametrize("bf16", [True, False])
def test_proxy_scores_in_bf16_only_when_asked_and_kl_logprobs_stay_fp32(bf16, tiny_tokenizer):
    from alignloop.eval.gold import get_gold_scorer
    from alignloop.models import load_causal_lm
    from alignloop.stages.evaluate.sampling import sample_and_score

    model = load_causal_lm("tiny-llama", trainable=False)
    tokenizer = tiny_tokenizer
    probe = _AutocastProbe()
    records = sample_and_score(model, tokenizer, ["Hello there", "How are you?"], n=2, max_new_tokens=4,
                               temperature=1.0, top_p=1.0, batch_size=4, seed=0, gold=get_gold_scorer("vader"),
                               proxy=probe, reference=model, proxy_bf16=bf16)
    assert probe.autocast_seen == [bf16]
    assert [r["proxy"] for r in records] == [0.0, 1.0, 2.0, 3.0]
    # same model as policy and reference, same fp32 forward: the KL terms are exactly zero
    assert all(r["logp"] == r["ref_logp"] for r in records)
