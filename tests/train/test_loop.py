"""The one training loop: accumulation scaling, exact resume (incl. epoch boundaries), NaN skipping."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alignloop.config import StageConfig, TrainConfig
from alignloop.errors import AlignloopError
from alignloop.train.loop import Interrupted, train
from tests.conftest import ROOT, ToyStage


def cfg(**train) -> StageConfig:
    base = dict(max_steps=6, batch_size=4, lr=0.05, precision="fp32", save_every=0, warmup_steps=1, lr_schedule="cosine")
    base.update(train)
    return StageConfig(model="toy", train=TrainConfig(**base))


def weights(out: Path) -> torch.Tensor:
    sd = torch.load(out / "toy.pt")
    return torch.cat([sd["weight"].flatten(), sd["bias"].flatten()])


def test_accumulation_gives_the_same_gradient_as_one_big_batch(tmp_path):
    # micro-batches hold different token counts; the loss is the mean over ALL tokens of the step,
    # so 4 x 2 must equal 1 x 8 (a mean of micro-batch means would not)
    big = ToyStage(cfg(max_steps=1, batch_size=8))
    train(big, tmp_path / "big")
    acc = ToyStage(cfg(max_steps=1, batch_size=8, micro_batch_size=2))
    train(acc, tmp_path / "acc")
    assert torch.allclose(big.grads[0], acc.grads[0], atol=1e-6)
    # and the naive mean of micro means is measurably different, so the test can fail
    data = acc.data
    stage = ToyStage(cfg())
    stage.setup(None)
    order = torch.randperm(16, generator=torch.Generator().manual_seed(0)).tolist()[:8]
    m = stage.models["model"]
    losses = []
    for i in range(0, 8, 2):
        items = [data[j] for j in order[i:i + 2]]
        x = torch.cat([it["x"] for it in items]); y = torch.cat([it["y"] for it in items])
        losses.append(((m(x).squeeze(-1) - y) ** 2).mean())
    torch.stack(losses).mean().backward()
    naive = torch.cat([m.weight.grad.flatten(), m.bias.grad.flatten()])
    assert not torch.allclose(naive, acc.grads[0], atol=1e-3)


@pytest.mark.parametrize("stop_at", [2, 3, 4])  # 16 examples / batch 4 = 4 steps per epoch: 4 is an epoch boundary
def test_interrupt_and_resume_matches_uninterrupted(tmp_path, stop_at):
    c = cfg(max_steps=8, batch_size=4, micro_batch_size=2)
    train(ToyStage(c), tmp_path / "straight")
    with pytest.raises(Interrupted):
        train(ToyStage(c, interrupt_at=stop_at), tmp_path / "resumed")
    assert not (tmp_path / "resumed" / "summary.json").exists()
    resumed = ToyStage(c)
    train(resumed, tmp_path / "resumed")
    assert resumed.extra["counter"] == 8  # stage state came back from the checkpoint
    assert torch.equal(weights(tmp_path / "straight"), weights(tmp_path / "resumed"))
    rows = [json.loads(l) for l in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == list(range(1, 9))
    for key in ("tokens_per_second", "step_time", "lr", "grad_norm"):
        assert key in rows[0]


def test_epoch_order_changes_between_epochs_and_nothing_is_skipped():
    from alignloop.train.batches import EpochBatchSource

    src = EpochBatchSource(list(range(10)), 3, lambda xs: xs, seed=5)
    first = [x for _ in range(4) for x in src.next_batch()]
    second = [x for _ in range(4) for x in src.next_batch()]
    assert sorted(first) == list(range(10)) and sorted(second) == list(range(10))
    assert first != second
    state = src.state_dict()
    third = src.next_batch()
    again = EpochBatchSource(list(range(10)), 3, lambda xs: xs, seed=5)
    again.load_state_dict(state)
    assert again.next_batch() == third


def test_full_batches_complete_an_epochs_last_batch_from_the_next_epoch():
    from alignloop.train.batches import EpochBatchSource

    src = EpochBatchSource(list(range(10)), 4, lambda xs: xs, seed=5, full_batches=True)
    batches = [src.next_batch() for _ in range(5)]  # 20 items: exactly two epochs
    assert [len(b) for b in batches] == [4, 4, 4, 4, 4]
    flat = [x for b in batches for x in b]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert flat[:10] != flat[10:]  # the second epoch is a new order
    resumed = EpochBatchSource(list(range(10)), 4, lambda xs: xs, seed=5, full_batches=True)
    partial = EpochBatchSource(list(range(10)), 4, lambda xs: xs, seed=5, full_batches=True)
    partial.next_batch(), partial.next_batch()
    resumed.load_state_dict(partial.state_dict())
    assert resumed.next_batch() == batches[2]  # the batch that crosses the epoch boundary, after a resume
    plain = EpochBatchSource(list(range(10)), 4, lambda xs: xs, seed=5)
    assert [len(plain.next_batch()) for _ in range(3)] == [4, 4, 2]  # other stages keep a short last batch


def test_killed_process_resumes_from_last_checkpoint(tmp_path):
    script = f"""
import sys, os, signal
sys.path.insert(0, {str(ROOT)!r})
from tests.conftest import ToyStage
from tests.train.test_loop import cfg
from alignloop.train.loop import train
class Killer(ToyStage):
    def on_step_end(self, step, metrics):
        super().on_step_end(step, metrics)
        if step == 5 and os.environ.get("KILL"):
            os.kill(os.getpid(), signal.SIGKILL)
train(Killer(cfg(max_steps=8, save_every=2)), sys.argv[1])
"""
    import os
    env = dict(os.environ, KILL="1")
    r = subprocess.run([sys.executable, "-c", script, str(tmp_path / "k")], env=env, capture_output=True)
    assert r.returncode == -9
    assert (tmp_path / "k" / "checkpoints" / "latest").read_text().strip() == "step-0000004"
    env.pop("KILL")
    r = subprocess.run([sys.executable, "-c", script, str(tmp_path / "k")], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    train(ToyStage(cfg(max_steps=8, save_every=2)), tmp_path / "straight")
    assert torch.equal(weights(tmp_path / "straight"), weights(tmp_path / "k"))


def test_nan_steps_are_skipped_then_the_run_stops(tmp_path):
    stage = ToyStage(cfg(max_steps=4), nan_at={2})
    summary = train(stage, tmp_path / "one")
    rows = [json.loads(l) for l in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert rows[1].get("skipped") == 1.0 and summary["steps"] == 4
    with pytest.raises(AlignloopError, match="3 consecutive steps had NaN/inf"):
        train(ToyStage(cfg(max_steps=6, max_bad_steps=3), nan_at={2, 3, 4}), tmp_path / "two")


def test_outputs_written(tmp_path):
    summary = train(ToyStage(cfg(max_steps=2)), tmp_path / "o")
    for f in ("config.yaml", "metrics.jsonl", "summary.json", "toy.pt"):
        assert (tmp_path / "o" / f).exists(), f
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["steps"] == 2 and s["wall_seconds"] > 0 and s["peak_rss_mb"] > 0
    assert summary["loss"] == s["loss"]


def test_prompt_grouped_batches_keep_a_prompts_examples_together_and_cover_the_epoch():
    from alignloop.train.batches import PromptGroupedBatchSource

    keys = ["a"] * 3 + ["b"] * 3 + ["c"] * 3 + ["d"] * 3  # 4 prompts × 3 pairs
    source = PromptGroupedBatchSource(list(range(12)), 3, list, keys=keys, seed=1)
    batches = [source.next_batch() for _ in range(source.batches_per_epoch)]
    assert sorted(i for b in batches for i in b) == list(range(12))
    assert all(len({keys[i] for i in b}) == 1 for b in batches)  # each batch is one prompt's pairs
    assert [keys[b[0]] for b in batches] != ["a", "b", "c", "d"] or source.seed != 1  # shuffled groups
    # two ranks: disjoint halves, same number of batches
    ranks = [PromptGroupedBatchSource(list(range(12)), 3, list, keys=keys, seed=1, rank=r, world_size=2) for r in (0, 1)]
    seen = [[i for _ in range(s.batches_per_epoch) for i in s.next_batch()] for s in ranks]
    assert ranks[0].batches_per_epoch == ranks[1].batches_per_epoch == 2
    assert sorted(seen[0] + seen[1]) == list(range(12))


def test_checkpoint_state_copies_only_parameters_that_share_storage_unless_a_snapshot(tmp_path):
    from safetensors.torch import load_file, save_file

    from alignloop.train.checkpoint import trainable_state

    model = torch.nn.Module()
    model.own = torch.nn.Parameter(torch.arange(6.0).view(2, 3))
    flat = torch.arange(10.0, 20.0)  # two parameters viewing one buffer, as flat-parameter wrappers do
    model.a = torch.nn.Parameter(flat[:4].view(2, 2))
    model.b = torch.nn.Parameter(flat[4:])
    model.frozen = torch.nn.Parameter(torch.zeros(2), requires_grad=False)
    snapshot = trainable_state(model)
    assert all(snapshot[n].data_ptr() != getattr(model, n).data_ptr() for n in snapshot)
    state = trainable_state(model, snapshot=False)
    assert set(state) == set(snapshot) == {"own", "a", "b"}
    assert state["own"].data_ptr() == model.own.data_ptr()  # no copy of a parameter that is its whole storage
    assert state["a"].data_ptr() != model.a.data_ptr() and state["b"].data_ptr() != model.b.data_ptr()
    save_file(state, str(tmp_path / "m.safetensors"))  # raises on shared storage
    loaded = load_file(str(tmp_path / "m.safetensors"))
    for name in state:
        assert torch.equal(loaded[name], getattr(model, name).detach())


def test_failed_checkpoint_write_is_one_clear_error_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    import alignloop.train.checkpoint as ckpt

    out = tmp_path / "run"
    train(ToyStage(cfg(max_steps=2, save_every=1)), out)
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-0000002"

    def full_disk(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 640801088 vs 640800976")

    monkeypatch.setattr(ckpt.torch, "save", full_disk)
    with pytest.raises(AlignloopError, match=r"could not write checkpoint .*step-0000003 .*GB free.*unexpected pos"):
        train(ToyStage(cfg(max_steps=3, save_every=1)), out)
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-0000002"
    assert not list((out / "checkpoints").glob(".step-*"))  # the partial write is gone
