"""PPO and GRPO on a local Ray cluster: two HF rollout actors, a reward actor and a learner actor.

The Ray run must behave like the single-process run of the same config: the same number of rollouts,
optimizer steps and sampled rows, rewards computed for every row, and the policy weights updated on the
learner and, after every sync, bit-identical on both rollout workers (SHA-256 of the trainable tensors).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray", reason="Ray is an optional dependency: pip install 'alignloop[ray]'")

from alignloop.distributed.ray_roles import RolloutWorker  # noqa: E402
from alignloop.distributed.ray_stage import run_with_ray  # noqa: E402
from alignloop.distributed.rollouts import concat_rollouts, split_evenly  # noqa: E402
from alignloop.distributed.weights import weights_checksum  # noqa: E402
from alignloop.models import build_tiny_llama  # noqa: E402
from alignloop.pipeline.launch import run_stage  # noqa: E402

ROLLOUTS, PROMPTS, GENERATIONS = 2, 4, 2


def distinct_chars(prompts, completions, **_):
    """A reward that differs between samples of a random model, so advantages (and updates) are non-zero."""
    return [len(set(c)) / 10.0 for c in completions]


def overrides(stage: str) -> list[str]:
    return [
        "model=tiny-llama", "train.precision=fp32", "train.save_every=0", "train.batch_size=4", "train.lr=1e-3",
        f"{stage}.reward={Path(__file__).resolve()}:distinct_chars", f"{stage}.rollouts={ROLLOUTS}",
        f"{stage}.prompts_per_rollout={PROMPTS}", f"{stage}.num_generations={GENERATIONS}",
        f"{stage}.max_new_tokens=8", f"{stage}.eval_prompts=0", f"{stage}.samples_every=1",
    ]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def rows(out: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (out / name).read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["ppo", "grpo"])
def test_ray_run_matches_single_process_behaviour(tmp_path, local_ray, stage):
    summary = run_with_ray(stage, None, overrides(stage), tmp_path / "ray", rollout_workers=2, remote_reward=True)
    single = run_stage(stage, None, overrides(stage), tmp_path / "single")

    # 2 rollouts x 4 prompts x 2 samples = 16 rows in all; each worker sampled half (2 prompts x 2 x 2)
    assert summary["rollout_rows"] == ROLLOUTS * PROMPTS * GENERATIONS == 16
    assert [w["rows_generated"] for w in summary["worker_stats"]] == [8, 8]
    assert summary["rollouts"] == single["rollouts"] == ROLLOUTS
    assert summary["steps"] == single["steps"] == ROLLOUTS * (PROMPTS * GENERATIONS // 4)  # 2 steps per rollout
    assert summary["reward_calls"] == ROLLOUTS  # every rollout scored once, on the reward actor

    # rewards computed on every step, like the single-process run (same metric names)
    ray_steps = [r for r in rows(tmp_path / "ray", "metrics.jsonl") if "objective/scores" in r]
    one_steps = [r for r in rows(tmp_path / "single", "metrics.jsonl") if "objective/scores" in r]
    assert len(ray_steps) == len(one_steps) == summary["steps"]
    assert all(math.isfinite(r["objective/scores"]) and r["objective/scores"] > 0 for r in ray_steps)
    assert set(one_steps[-1]) - set(ray_steps[-1]) == set()

    # weights moved, and both workers hold exactly the learner's final weights
    initial = weights_checksum(build_tiny_llama())
    assert summary["learner_checksum"] != initial
    assert summary["worker_checksums"] == [summary["learner_checksum"]] * 2
    # one sync at start, one after each rollout's last update
    assert summary["weight_syncs"] == 1 + ROLLOUTS
    assert [w["version"] for w in summary["worker_stats"]] == [1 + ROLLOUTS] * 2
    assert (tmp_path / "ray" / "model").is_dir() and (tmp_path / "ray" / "summary.json").exists()


@pytest.mark.slow
def test_rollout_section_runs_ppo_on_ray_with_a_reference_actor(tmp_path, local_ray):
    # `alignloop ppo --set rollout.workers=2` takes the Ray path through the stage registry
    extra = ["rollout.workers=2", "rollout.remote_reference=true", "ppo.kl_coef=0.1"]
    summary = run_stage("ppo", None, overrides("ppo") + extra, tmp_path / "ray")
    assert summary["rollout_rows"] == ROLLOUTS * PROMPTS * GENERATIONS
    assert summary["reference_calls"] == ROLLOUTS  # reference log-probs came from the actor, once per rollout
    first = next(r for r in rows(tmp_path / "ray", "metrics.jsonl") if "objective/kl" in r)
    # before the first update the policy IS the reference: the actor's log-probs match the sampler's
    assert abs(first["objective/kl"]) < 1e-3
    later = [r["objective/kl"] for r in rows(tmp_path / "ray", "metrics.jsonl") if "objective/kl" in r]
    assert any(abs(k) > 1e-3 for k in later[1:])  # and after updates they differ (the actor is not the policy)


def test_vllm_backend_needs_ray_workers_and_says_so():
    from alignloop.errors import ConfigError

    with pytest.raises(ConfigError, match="rollout.workers"):
        run_stage("ppo", None, overrides("ppo") + ["rollout.backend=vllm"], None)

def test_split_and_concat_rebuild_one_samplers_rollout():
    # 5 prompts over 2 workers: chunks of 2 and 3, order kept
    assert split_evenly(list("abcde"), 2) == [["a", "b"], ["c", "d", "e"]]
    assert split_evenly(list("a"), 3) == [["a"]]
    worker = RolloutWorker("tiny-llama", dtype="fp32", threads=None)
    prompts = ["Hi there", "A much longer prompt than the first one", "Third"]
    parts = [worker.generate(chunk, dict(n=2, max_new_tokens=5, temperature=1.0, seed=3))
             for chunk in split_evenly(prompts, 2)]
    joined = concat_rollouts(parts, pad_id=worker.sampler.pad_id)
    assert len(joined) == 6
    # group 0 = prompt 0 (2 rows), then prompts 1 and 2 from the second worker shifted by 1
    assert joined.group_index.tolist() == [0, 0, 1, 1, 2, 2]
    assert joined.prompts == [prompts[0]] * 2 + [prompts[1]] * 2 + [prompts[2]] * 2
    # the short first chunk was left padded: its real prompt tokens end at the last prompt column
    assert joined.prompt_mask[:, -1].tolist() == [1] * 6
    assert torch.equal(joined.prompt_mask.sum(1)[:2], parts[0].prompt_mask.sum(1))
    assert torch.equal(joined.response_ids[2:, : parts[1].response_ids.shape[1]], parts[1].response_ids)
    assert joined.responses == parts[0].responses + parts[1].responses


def test_weight_sync_gives_identical_checksums():
    worker = RolloutWorker("tiny-llama", dtype="fp32", threads=None)
    learner = build_tiny_llama()
    with torch.no_grad():
        learner.model.norm.weight.add_(0.5)
    assert worker.checksum() != weights_checksum(learner)
    from alignloop.distributed.weights import trainable_tensors

    assert worker.load_weights(trainable_tensors(learner), version=1) == weights_checksum(learner)
    assert worker.stats()["version"] == 1


def test_rollout_worker_reports_the_log_probs_the_rollout_section_asks_for():
    # same seed, same tokens; under top-k the sampled log-prob is the full one minus log(kept mass) >= 0
    kwargs = dict(n=2, max_new_tokens=6, temperature=1.0, top_k=3, seed=5)
    plain = RolloutWorker("tiny-llama", dtype="fp32", threads=None)
    full = plain.generate(["Hi there"], kwargs)
    sampled = RolloutWorker("tiny-llama", dtype="fp32", threads=None,
                            sampler_options={"logprobs": "sampled"}).generate(["Hi there"], kwargs)
    assert torch.equal(full.response_ids, sampled.response_ids)
    mask = full.response_mask.bool()
    gap = (sampled.logprobs - full.logprobs)[mask]
    # the 3 most likely of V tokens keep a mass in [3 / V, 1): the gap -log(mass) is in (0, log(V / 3)]
    vocab = plain.sampler.sampler.model.config.vocab_size
    assert (gap > 0).all() and (gap <= math.log(vocab / 3) + 1e-4).all()


@pytest.mark.slow
def test_tis_on_ray_workers_sees_the_top_k_cut(tmp_path, local_ray):
    # hf workers now report sampled log-probs (rollout.sampler_logprobs: auto with tis): the TIS ratio is the kept
    # mass of the top-k candidates, below 1 on every token, where full-vocabulary log-probs would give ratios ~1
    extra = ["rollout.workers=2", "grpo.tis=2.0", "grpo.top_k=3"]
    run_stage("grpo", None, overrides("grpo") + extra, tmp_path / "ray")
    steps = [r for r in rows(tmp_path / "ray", "metrics.jsonl") if "rollout/tis_ratio_mean" in r]
    assert steps and all(r["rollout/tis_ratio_mean"] < 0.9 for r in steps), steps
    assert all(r["rollout/tis_ratio_max"] <= 1.0 + 1e-3 for r in steps)
