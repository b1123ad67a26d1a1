"""Asynchronous rollouts with Ray rollout workers (``grpo.async_rollouts`` + ``rollout.workers``): the learner's
sampling thread drives the workers while the learner trains, broadcasting each rollout's pinned weight snapshot
first (``RemoteSampler.sync_tensors``). Same local Ray cluster and tiny model as tests/distributed/test_ray_rl.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is an optional dependency: pip install 'alignloop[ray]'")

from alignloop.distributed.ray_stage import run_with_ray  # noqa: E402


def distinct_chars(prompts, completions, **_):
    return [len(set(c)) / 10.0 for c in completions]


def overrides(*extra: str) -> list[str]:
    return [
        "model=tiny-llama", "train.precision=fp32", "train.save_every=0", "train.batch_size=4", "train.lr=1e-2",
        f"grpo.reward={Path(__file__).resolve()}:distinct_chars", "grpo.rollouts=3", "grpo.prompts_per_rollout=4",
        "grpo.num_generations=2", "grpo.max_new_tokens=8", "grpo.eval_prompts=0", "grpo.samples_every=1",
        "grpo.samples_count=8", *extra,
    ]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def rows(out: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (out / name).read_text().splitlines()]


@pytest.mark.slow
def test_async_rollouts_on_ray_workers(tmp_path, local_ray):
    sync = run_with_ray("grpo", None, overrides("grpo.tis=2.0"), tmp_path / "sync", rollout_workers=2)
    ahead = run_with_ray("grpo", None, overrides("grpo.async_rollouts=true"), tmp_path / "ahead", rollout_workers=2)
    assert ahead["steps"] == sync["steps"] == 6 and ahead["rollout_rows"] == sync["rollout_rows"] == 24
    steps = rows(tmp_path / "ahead", "metrics.jsonl")
    assert [r["rollout/staleness"] for r in steps] == [0, 0, 1, 1, 1, 1]
    # the setup sync, then one broadcast per pinned version: v0 (rollouts 0 and 1), v1 (rollout 2);
    # the synchronous run: setup + one after each rollout
    assert ahead["weight_syncs"] == 3 and sync["weight_syncs"] == 4
    # both workers hold the last snapshot broadcast (v1, which sampled rollout 2), checked against its checksum
    assert ahead["worker_checksums"] == [ahead["learner_checksum"]] * 2
    assert ahead["learner_checksum"] != sync["learner_checksum"]  # the sync run's last broadcast: the final weights
    samples = {name: rows(tmp_path / name, "samples.jsonl") for name in ("sync", "ahead")}
    first = {name: [r["response"] for r in s if r["rollout"] == 0] for name, s in samples.items()}
    assert first["ahead"] == first["sync"]  # rollout 0: the same weights and seeds on the same workers
