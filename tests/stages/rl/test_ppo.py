"""The PPO stage on a word-level toy model: metrics, critic warm-up, KL placement and controllers, truncation,
approx-KL early stop, exact resume, and (slow) reward going up with KL held by β."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from alignloop.config import load_config
from alignloop.errors import ConfigError
from alignloop.stages.rl.ppo import PPO, PPOConfig, PPOStage
from alignloop.train.loop import train
from tests.conftest import write_prompts


class FakeEnsemble:
    """A reward 'ensemble' whose std alternates 1, 3, 1, 3, ... over the batch."""

    name = "fake_ensemble"

    def score(self, prompts, completions, **fields):
        return torch.tensor([float(len(c.split())) for c in completions])

    def uncertainty(self, prompts, completions, **fields):
        return torch.tensor([1.0 if i % 2 == 0 else 3.0 for i in range(len(completions))])

    __call__ = score  # build_reward('module:obj') asks for a callable, then uses a protocol object as is


ENSEMBLE = FakeEnsemble()


@pytest.fixture(scope="module")
def toy(tmp_path_factory, word_model_dir):
    root = tmp_path_factory.mktemp("toy")
    return {"model": word_model_dir, "prompts": write_prompts(root / "prompts.jsonl")}


def config(toy, *overrides: str) -> PPOConfig:
    base = [
        f"model={toy['model']}", f"data.train={toy['prompts']}", "data.eval=null",
        "ppo.reward=tests.conftest:target_fraction", "ppo.rollouts=2", "ppo.prompts_per_rollout=4",
        "ppo.max_new_tokens=6", "ppo.eval_prompts=0", "ppo.samples_count=4",
        "train.batch_size=4", "train.precision=fp32", "train.save_every=0", "train.lr=5e-3",
    ]
    return load_config(PPOConfig, None, base + list(overrides))


def metrics(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def experiences(monkeypatch) -> list:
    """Record what the PPO algorithm's ``experience`` returns."""
    seen = []
    real = PPO.experience

    def spy(self, data, kl):
        exp, stats = real(self, data, kl)
        seen.append((data, exp))
        return exp, stats

    monkeypatch.setattr(PPO, "experience", spy)
    return seen


def test_config_errors(tmp_path, toy):
    with pytest.raises(ConfigError, match="ppo.advantage: unknown 'nope'"):
        config(toy, "ppo.advantage=nope")
    stage = PPOStage(config(toy, "ppo.kl_controller=uncertainty"))
    with pytest.raises(ConfigError, match="'uncertainty' needs a reward source with an uncertainty"):
        train(stage, tmp_path)


def test_ppo_logs_the_ecosystem_metrics_and_saves_policy_and_critic(tmp_path, toy):
    torch.manual_seed(0)
    summary = train(PPOStage(config(toy)), tmp_path)
    assert summary["steps"] == 2 and summary["rollouts"] == 2
    last = metrics(tmp_path)[-1]
    for key in ("objective/kl", "objective/entropy", "objective/scores", "objective/rlhf_reward", "policy/clipfrac_avg",
                "policy/approxkl_avg", "loss/policy_avg", "loss/value_avg", "val/clipfrac_avg", "objective/kl_coef",
                "completions/mean_length", "completions/clipped_ratio", "monitor/reward_length_corr", "tokens_per_second"):
        assert key in last, key
    assert (tmp_path / "model" / "config.json").exists()
    assert (tmp_path / "value_model" / "alignloop_head.json").exists()
    assert len((tmp_path / "samples.jsonl").read_text().splitlines()) == 8  # 4 per rollout


def test_critic_warmup_moves_only_the_critic(tmp_path, toy):
    from alignloop.models import load_causal_lm

    train(PPOStage(config(toy, "ppo.critic_warmup_steps=2")), tmp_path)
    ckpt = tmp_path / "checkpoints" / "step-0000002"
    initial = {k: p.detach() for k, p in load_causal_lm(toy["model"]).named_parameters()}
    policy = load_file(str(ckpt / "policy.safetensors"))
    assert all(torch.equal(policy[k], initial[k]) for k in policy)
    # the critic's backbone starts as the same weights (critic_init: policy) and must have moved
    critic = load_file(str(ckpt / "critic.safetensors"))
    moved = [k for k in critic if k.startswith("backbone.") and not torch.equal(critic[k], initial["model." + k.removeprefix("backbone.")])]
    assert moved


def test_kl_in_loss_and_uncertainty_controller_give_per_sample_beta(tmp_path, toy, monkeypatch):
    seen = experiences(monkeypatch)
    cfg = config(toy, "ppo.reward=tests.stages.rl.test_ppo:ENSEMBLE", "ppo.kl_controller=uncertainty", "ppo.kl_placement=loss",
                 "ppo.kl_coef=0.2", "ppo.rollouts=1")
    train(PPOStage(cfg), tmp_path)
    data, exp = seen[0]
    # std alternates 1, 3 → mean 2 → β_i = 0.2·(1 + std_i/2) = 0.3, 0.5, 0.3, 0.5
    assert torch.allclose(exp.kl_coef, torch.tensor([0.3, 0.5, 0.3, 0.5]))
    assert exp.ref_logprobs is not None
    assert "kl" in metrics(tmp_path)[-1]  # the KL loss term's token mean is logged


def test_truncated_responses_can_be_excluded(tmp_path, toy, monkeypatch):
    seen = experiences(monkeypatch)
    train(PPOStage(config(toy, "ppo.truncation=exclude", "ppo.max_new_tokens=2", "ppo.rollouts=1")), tmp_path)
    data, exp = seen[0]
    truncated = ~data.rollout.finished.cpu()
    assert truncated.any()
    assert torch.all(exp.loss_mask[truncated] == 0)
    assert torch.equal(exp.loss_mask[~truncated], data.response_mask[~truncated])


def test_penalty_gap_takes_the_running_score_gap_off_cut_answers(tmp_path, toy, monkeypatch):
    seen = experiences(monkeypatch)
    cfg = config(toy, "ppo.truncation=penalty_gap", "ppo.truncation_value=1.0", "ppo.max_new_tokens=2",
                 "ppo.prompts_per_rollout=8", "train.batch_size=8")
    train(PPOStage(cfg), tmp_path)
    cut_all, done_all = [], []
    logged = [m["objective/truncation_penalty"] for m in metrics(tmp_path) if "objective/truncation_penalty" in m]
    for k, (data, _) in enumerate(seen):
        raw, cut = data.raw_scores, ~data.rollout.finished.cpu()
        cut_all += raw[cut].tolist()
        done_all += raw[~cut].tolist()
        gap = max(0.0, sum(cut_all) / len(cut_all) - sum(done_all) / len(done_all)) if cut_all and done_all else 0.0
        assert torch.allclose(data.scores[cut], raw[cut] - gap) and torch.equal(data.scores[~cut], raw[~cut]), k
        assert gap in [pytest.approx(v) for v in logged]
    assert len(seen) == 2 and cut_all and done_all and max(logged) > 0  # both kinds occurred, a real penalty


def test_approx_kl_early_stop_skips_the_rest_of_the_rollout(tmp_path, toy):
    # 2 epochs × 2 mini-batches = 4 planned updates; the first has approx-KL ≈ 0, the second exceeds 1e-12
    cfg = config(toy, "ppo.epochs=2", "ppo.target_kl=1e-12", "ppo.rollouts=1", "train.batch_size=2")
    summary = train(PPOStage(cfg), tmp_path)
    assert summary["steps"] == 2 and summary["early_stops"] == 1
    assert metrics(tmp_path)[-1]["policy/early_stopped"] == 2.0  # two updates dropped


def straight_and_resumed(tmp_path, toy, *common: str) -> tuple[PPOStage, PPOStage, object, object]:
    """3 rollouts straight, and 2 then resumed to 3 in another folder; asserts both sampled the same answers."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    a = PPOStage(config(toy, "ppo.rollouts=3", *common))
    train(a, straight)
    train(PPOStage(config(toy, "ppo.rollouts=2", *common)), resumed)
    b = PPOStage(config(toy, "ppo.rollouts=3", *common))
    train(b, resumed)
    samples = lambda out: [json.loads(x)["response"] for x in (out / "samples.jsonl").read_text().splitlines()]  # noqa: E731
    assert samples(straight) == samples(resumed)
    return a, b, straight, resumed


def test_resume_at_rollout_boundary_restores_policy_critic_and_adaptive_beta(tmp_path, toy):
    common = ("ppo.kl_controller=adaptive", "ppo.kl_coef=0.1", "ppo.kl_target=0.01", "ppo.kl_horizon=10", "ppo.reward_norm=running")
    a, b, straight, resumed = straight_and_resumed(tmp_path, toy, *common)
    assert a.kl_ctl.value == b.kl_ctl.value != 0.1
    assert a.running.state_dict() == b.running.state_dict()
    for name in ("policy", "critic"):
        x = load_file(str(straight / "checkpoints" / "step-0000003" / f"{name}.safetensors"))
        y = load_file(str(resumed / "checkpoints" / "step-0000003" / f"{name}.safetensors"))
        assert all(torch.equal(x[k], y[k]) for k in x), name


def _run(tmp_path, toy, beta: float) -> list[dict]:
    torch.manual_seed(0)
    cfg = config(toy, "ppo.rollouts=15", "ppo.prompts_per_rollout=16", "ppo.max_new_tokens=8", "ppo.epochs=2",
                 "train.batch_size=8", f"ppo.kl_coef={beta}")
    train(PPOStage(cfg), tmp_path)
    return metrics(tmp_path)


@pytest.mark.slow
def test_ppo_raises_the_target_word_and_beta_holds_kl(tmp_path, toy):
    with_kl = _run(tmp_path / "beta", toy, 0.1)
    no_kl = _run(tmp_path / "zero", toy, 0.0)
    mean = lambda rows, key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
    start, end = mean(with_kl[:8], "objective/scores"), mean(with_kl[-8:], "objective/scores")
    assert end > start + 0.1, (start, end)
    assert max(r["objective/kl"] for r in with_kl) < 5.0
    assert mean(no_kl[-8:], "objective/kl") > mean(with_kl[-8:], "objective/kl")


class AutocastProbe(FakeEnsemble):
    """Records whether each scoring call ran under bf16 autocast."""

    name = "autocast_probe"

    def __init__(self):
        self.seen: list[bool] = []

    def score(self, prompts, completions, **fields):
        self.seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        return super().score(prompts, completions, **fields)

    __call__ = score


PROBE = AutocastProbe()


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_reward_model_scores_in_the_runs_precision(tmp_path, toy, precision):
    PROBE.seen.clear()
    train(PPOStage(config(toy, "ppo.reward=tests.stages.rl.test_ppo:PROBE", "ppo.rollouts=1", f"train.precision={precision}")),
          tmp_path)
    assert PROBE.seen == [precision == "bf16"]


@pytest.mark.parametrize(("batch", "micro", "expected"), [(8, None, 4), (6, None, 3), (4, None, 4), (8, 8, 8)])
def test_ppo_micro_batch_defaults_to_at_most_four_responses(tmp_path, toy, batch, micro, expected):
    overrides = [f"train.batch_size={batch}", f"ppo.prompts_per_rollout={batch}", "ppo.rollouts=1"]
    if micro is not None:
        overrides.append(f"train.micro_batch_size={micro}")
    stage = PPOStage(config(toy, *overrides))
    train(stage, tmp_path)
    assert stage.config.train.micro_batch_size == expected


def test_resume_at_rollout_boundary_restores_the_adaptive_truncation_controller(tmp_path, toy):
    # 6-token answers to a word-level toy are often cut, so the controller has a rate to act on
    common = ("ppo.truncation=adaptive", "ppo.truncation_value=0.5", "ppo.truncation_gain=2.0")
    a, b, _, _ = straight_and_resumed(tmp_path, toy, *common)
    state_a, state_b = a.truncation.state_dict(), b.truncation.state_dict()
    assert state_a["controller"]["target"] is not None  # set by the first rollout, so a restart would differ
    assert state_a == state_b  # the running score scale counts all three rollouts' scores on both paths


# ---- PPO-ptx: demonstrations' next-token loss added to the policy loss --------------------------------------


def write_demos(path, n: int = 8) -> str:
    """Demonstrations answering every prompt with "down up down up" (words the toy's reward ignores)."""
    rows = [{"messages": [{"role": "user", "content": " ".join(["red", "cat", "two"][: 1 + i % 3])},
                          {"role": "assistant", "content": "down up down up"}]} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_ptx_term_is_coef_times_the_mean_nll_of_the_assistant_tokens(tmp_path, toy):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignloop.data import load_records, tokenize_conversation
    from alignloop.stages.rl.ptx import PtxTerm

    tokenizer = AutoTokenizer.from_pretrained(toy["model"])
    model = AutoModelForCausalLM.from_pretrained(toy["model"]).eval()
    records = list(load_records(write_demos(tmp_path / "demos.jsonl", n=3), "sft"))
    rows = [tokenize_conversation(tokenizer, r["messages"]) for r in records]
    term = PtxTerm(rows, coef=0.5, batch_size=3, pad_id=tokenizer.pad_token_id)  # one batch: all three rows
    loss, nll = term.loss(model, "cpu")
    # independently: cross-entropy of every assistant token given the tokens before it, one row at a time
    total, count = 0.0, 0
    for row in rows:
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([row.input_ids])).logits[0, :-1].float(), dim=-1)
        for t in range(1, len(row.input_ids)):
            if row.loss_mask[t]:  # the SFT stage's targets: the answer's words (and here the toy's last prompt word)
                total -= float(logp[t - 1, row.input_ids[t]])
                count += 1
    assert count >= 12  # at least "down up down up" in each of the three rows
    assert nll == pytest.approx(total / count, rel=1e-5)
    assert float(loss) == pytest.approx(0.5 * total / count, rel=1e-5)


def demo_nll(folder, demos: str) -> float:
    from transformers import AutoTokenizer

    from alignloop.data import load_records, tokenize_conversation
    from alignloop.models import load_trainable_lm
    from alignloop.stages.rl.ptx import PtxTerm

    tokenizer = AutoTokenizer.from_pretrained(folder)
    rows = [tokenize_conversation(tokenizer, r["messages"]) for r in load_records(demos, "sft")]
    model = load_trainable_lm(str(folder), None, False, "cpu").eval()
    with torch.no_grad():
        return PtxTerm(rows, 1.0, len(rows), tokenizer.pad_token_id).loss(model, "cpu")[1]


def test_ppo_ptx_trains_the_policy_on_the_demonstrations(tmp_path, toy):
    with pytest.raises(ConfigError, match="ppo.ptx_data: ppo.ptx_coef > 0 needs demonstrations"):
        config(toy, "ppo.ptx_coef=1.0")
    demos = write_demos(tmp_path / "demos.jsonl")
    runs = {}
    for coef in (0.0, 2.0):
        torch.manual_seed(0)
        out = tmp_path / f"ptx{coef}"
        train(PPOStage(config(toy, "ppo.rollouts=3", f"ppo.ptx_coef={coef}", f"ppo.ptx_data={demos}")), out)
        runs[coef] = (metrics(out), demo_nll(out / "model", demos))
    assert all("policy/ptx_loss" in row for row in runs[2.0][0]) and "policy/ptx_loss" not in runs[0.0][0][0]
    start = demo_nll(toy["model"], demos)
    # PPO alone leaves the demonstrations about as likely as before; with ptx their loss falls well below
    assert runs[2.0][1] < start - 0.3 and runs[2.0][1] < runs[0.0][1] - 0.3, (start, runs[0.0][1], runs[2.0][1])


def test_resume_restores_the_ptx_demonstration_order(tmp_path, toy):
    demos = write_demos(tmp_path / "demos.jsonl", n=3)  # batches of 2, 1, then the second epoch
    common = ("ppo.ptx_coef=1.0", f"ppo.ptx_data={demos}", "ppo.ptx_batch_size=2")
    a, b, straight, resumed = straight_and_resumed(tmp_path, toy, *common)
    assert a.ptx.state_dict() == b.ptx.state_dict() and a.ptx.state_dict()["epoch"] > 0
    for name in ("policy", "critic"):
        x = load_file(str(straight / "checkpoints" / "step-0000003" / f"{name}.safetensors"))
        y = load_file(str(resumed / "checkpoints" / "step-0000003" / f"{name}.safetensors"))
        assert all(torch.equal(x[k], y[k]) for k in x), name
