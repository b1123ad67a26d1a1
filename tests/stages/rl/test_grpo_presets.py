"""``grpo.loss`` presets, the new ``grpo.advantage`` values and DAPO's switches on the word-level toy model
(tests/conftest.py): what each preset fills, that an explicit key wins, and one short run per preset."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from alignloop.config import load_config
from alignloop.errors import ConfigError
from alignloop.stages.rl.grpo import LOSS_PRESETS, GRPOConfig, GRPOStage
from alignloop.stages.rl.sampling import pick_groups
from alignloop.train.loop import train
from tests.conftest import write_prompts


@pytest.fixture(scope="module")
def toy(tmp_path_factory, word_model_dir):
    root = tmp_path_factory.mktemp("toy")
    return {"model": word_model_dir, "prompts": write_prompts(root / "prompts.jsonl")}


def config(toy, *overrides: str) -> GRPOConfig:
    base = [
        f"model={toy['model']}", f"data.train={toy['prompts']}", "data.eval=null",
        "grpo.reward=tests.conftest:target_fraction", "grpo.rollouts=2", "grpo.prompts_per_rollout=4",
        "grpo.num_generations=2", "grpo.max_new_tokens=6", "grpo.eval_prompts=0", "grpo.samples_every=0",
        "grpo.epochs=2", "train.batch_size=4", "train.precision=fp32", "train.save_every=0", "train.lr=1e-2",
    ]
    return load_config(GRPOConfig, None, base + list(overrides))


def metrics(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- what a preset sets

def test_each_preset_sets_its_loss_aggregation_and_advantage():
    opts = {name: load_config(GRPOConfig, None, [f"grpo.loss={name}"]).grpo for name in LOSS_PRESETS}
    got = {name: (o.policy_loss, o.loss_agg, o.advantage, o.clip_eps, o.clip_eps_high) for name, o in opts.items()}
    assert got == {
        "grpo": ("ppo_clip", "seq_mean_token_mean", "group_norm", 0.2, None),
        "dr_grpo": ("ppo_clip", "seq_mean_token_sum", "dr_grpo", 0.2, None),
        "dapo": ("ppo_clip", "token_mean", "group_norm", 0.2, 0.28),
        "gspo": ("gspo", "seq_mean_token_mean", "group_norm", 3e-4, 4e-4),
        "cispo": ("cispo", "token_mean", "group_norm", 1.0, 3.0),
    }
    # DAPO's other two switches: dynamic sampling, and an overlong buffer of a fifth of the limit (64 // 5)
    assert opts["dapo"].dynamic_sampling and opts["dapo"].overlong_buffer == 12
    assert not any(o.dynamic_sampling or o.overlong_buffer for n, o in opts.items() if n != "dapo")
    # no preset: the fields' own defaults, as before presets existed
    plain = GRPOConfig().grpo
    assert (plain.loss, plain.policy_loss, plain.loss_agg, plain.advantage) == (None, "ppo_clip", "token_mean",
                                                                                "group_norm")


def test_keys_the_config_sets_win_over_the_preset(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("grpo:\n  loss: gspo\n  clip_eps: 0.1\n  loss_agg: token_mean\n  max_new_tokens: 20\n")
    opts = load_config(GRPOConfig, cfg, ["grpo.loss=dapo", "grpo.overlong_buffer=null"]).grpo
    # dapo fills clip_eps_high, dynamic_sampling, advantage; the file's clip_eps / loss_agg and the null stay
    assert (opts.policy_loss, opts.clip_eps, opts.clip_eps_high, opts.loss_agg) == ("ppo_clip", 0.1, 0.28, "token_mean")
    assert opts.dynamic_sampling and opts.overlong_buffer is None
    assert opts.preset_overrides() == {"clip_eps": (0.1, 0.2), "overlong_buffer": (None, 4)}  # 20 // 5 = 4
    # the dumped (resolved) config loads back to the same options
    assert GRPOConfig.model_validate(yaml.safe_load(yaml.safe_dump(GRPOConfig(grpo=opts).model_dump(mode="json")))
                                     ).grpo == opts


def test_reinforce_pp_puts_a_k1_kl_in_the_reward_unless_told_otherwise():
    opts = load_config(GRPOConfig, None, ["grpo.advantage=reinforce_pp"]).grpo
    assert (opts.kl_placement, opts.kl_estimator) == ("reward", "k1")
    opts = load_config(GRPOConfig, None, ["grpo.advantage=reinforce_pp", "grpo.kl_placement=loss"]).grpo
    assert (opts.kl_placement, opts.kl_estimator) == ("loss", "k1")
    assert load_config(GRPOConfig, None, ["grpo.advantage=reinforce_pp_baseline"]).grpo.kl_placement == "loss"


def test_bad_values_name_the_key():
    with pytest.raises(ConfigError, match=r"grpo.loss: Input should be 'grpo', 'dr_grpo', 'dapo', 'gspo' or 'cispo'"):
        load_config(GRPOConfig, None, ["grpo.loss=ppo"])
    with pytest.raises(ConfigError, match=r"grpo.overlong_buffer \(80\) must be at most grpo.max_new_tokens \(64\)"):
        load_config(GRPOConfig, None, ["grpo.overlong_buffer=80"])


def test_pick_groups_fills_with_informative_groups_first():
    # round 0: groups [yes, no, yes]; round 1: [no, yes]; need 3 → round 0 groups 0, 2 and round 1 group 1
    flags = [torch.tensor([True, False, True]), torch.tensor([False, True])]
    assert pick_groups(flags, 3) == ([[0, 2], [1]], 0)
    # need 4 of only 3 informative: topped up with the first all-equal group (round 0, group 1)
    assert pick_groups(flags, 4) == ([[0, 1, 2], [1]], 1)
    assert pick_groups([torch.tensor([True, True, True])], 2) == ([[0, 1]], 0)


# ---------------------------------------------------------------- one short run per preset

PRESET_METRICS = {
    "grpo": (), "dr_grpo": (), "gspo": ("policy/ratio_avg",), "cispo": ("policy/ratio_avg",),
    "dapo": ("dynamic_sampling/dropped_groups", "dynamic_sampling/rounds", "rewards/overlong/mean"),
}


@pytest.mark.parametrize("preset", sorted(LOSS_PRESETS))
def test_each_preset_trains_and_logs_its_metrics(tmp_path, toy, preset):
    torch.manual_seed(0)
    summary = train(GRPOStage(config(toy, f"grpo.loss={preset}")), tmp_path)
    rows = metrics(tmp_path)
    # 2 rollouts × 2 epochs × (4 prompts × 2 samples / batch 4) = 8 optimizer steps, dynamic sampling or not
    assert summary["steps"] == 8 and summary["rollouts"] == 2
    for key in ("reward", "kl", "loss/policy_avg", "policy/clipfrac_avg", "frac_reward_zero_std",
                *PRESET_METRICS[preset]):
        assert all(key in r for r in rows), key
    assert all(torch.isfinite(torch.tensor(r["loss/policy_avg"])) for r in rows)
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())["grpo"]
    assert all(saved[k] == v for k, v in LOSS_PRESETS[preset].items() if k != "overlong_buffer")


def test_dynamic_sampling_keeps_only_informative_groups(tmp_path, toy):
    torch.manual_seed(0)
    summary = train(GRPOStage(config(toy, "grpo.dynamic_sampling=true", "grpo.rollouts=3")), tmp_path)
    rows = metrics(tmp_path)
    assert summary["steps"] == 12  # the rollout shape never changes: 3 rollouts × 4 steps
    assert sum(r["dynamic_sampling/dropped_groups"] for r in rows) > 0  # most toy groups score 0 twice
    for r in rows:
        assert r["dynamic_sampling/rounds"] <= 1 + 3
        # every group of the rollout is informative unless it had to be topped up
        assert r["frac_reward_zero_std"] == pytest.approx(r["dynamic_sampling/topped_up_groups"] / 4)
    assert "dynamic_sampling/rounds" not in metrics_of_plain_run(tmp_path / "plain", toy)[-1]


def test_dynamic_sampling_resumes_to_the_same_weights(tmp_path, toy):
    # the extra prompts a rollout draws move the prompt cursor, which the checkpoint holds
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    dapo = ("grpo.loss=dapo", "grpo.epochs=1")
    train(GRPOStage(config(toy, *dapo, "grpo.rollouts=2")), straight)
    train(GRPOStage(config(toy, *dapo, "grpo.rollouts=1")), resumed)
    train(GRPOStage(config(toy, *dapo, "grpo.rollouts=2")), resumed)
    a = load_file(str(straight / "checkpoints" / "step-0000004" / "policy.safetensors"))
    b = load_file(str(resumed / "checkpoints" / "step-0000004" / "policy.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def metrics_of_plain_run(out, toy) -> list[dict]:
    train(GRPOStage(config(toy, "grpo.rollouts=1")), out)
    return metrics(out)


def test_reinforce_pp_runs_with_the_kl_in_the_reward(tmp_path, toy):
    torch.manual_seed(0)
    stage = GRPOStage(config(toy, "grpo.advantage=reinforce_pp", "grpo.rollouts=1"))
    train(stage, tmp_path)
    rows = metrics(tmp_path)
    assert stage.kl.in_reward and stage.reference is not None
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # k1 under the sampler = the reference at first
    assert all("loss/policy_avg" in r for r in rows)
