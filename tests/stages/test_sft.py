"""SFT stage end to end on tiny-llama: loss goes down, outputs are HF-loadable, resume is exact, LoRA works."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from alignloop.config import SFTConfig, load_config
from alignloop.stages.sft import SFTStage
from alignloop.train.loop import train


def make_cfg(tmp_path, *overrides: str) -> SFTConfig:
    rows = [
        {"messages": [{"role": "user", "content": f"Say the magic word {i % 5}."},
                      {"role": "assistant", "content": f"The magic word is banana {i % 5}."}]}
        for i in range(24)
    ]
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = [
        "model=tiny-llama", f"data.train={path}", f"data.eval={path}", "data.max_length=128",
        "train.max_steps=12", "train.batch_size=4", "train.micro_batch_size=2", "train.lr=3e-3",
        "train.precision=fp32", "train.save_every=0", "train.warmup_steps=0",
    ]
    return load_config(SFTConfig, None, base + list(overrides))


def test_sft_lowers_eval_loss_and_saves_hf_model(tmp_path):
    cfg = make_cfg(tmp_path)
    summary = train(SFTStage(cfg), tmp_path / "run")
    rows = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first = rows[0]["loss"]
    assert summary["eval/loss"] < first - 1.0, (first, summary["eval/loss"])
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model")  # plain transformers
    assert model.config.model_type == "llama"
    assert (tmp_path / "run" / "model" / "tokenizer.json").exists()


@pytest.mark.parametrize("packing", ["true", "false"])
def test_sft_resume_is_exact(tmp_path, packing):
    from alignloop.train.loop import Interrupted
    from tests.conftest import ToyStage  # noqa: F401  (same package import path as the loop tests)

    class Stop(SFTStage):
        def on_step_end(self, step, metrics):
            if step == 5:
                import os
                import signal
                os.kill(os.getpid(), signal.SIGINT)

    cfg = make_cfg(tmp_path, f"sft.packing={packing}", "train.max_steps=8")
    train(SFTStage(cfg), tmp_path / "a")
    with pytest.raises(Interrupted):
        train(Stop(cfg), tmp_path / "b")
    train(SFTStage(cfg), tmp_path / "b")
    wa = AutoModelForCausalLM.from_pretrained(tmp_path / "a" / "model").state_dict()
    wb = AutoModelForCausalLM.from_pretrained(tmp_path / "b" / "model").state_dict()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_sft_with_lora_saves_adapter(tmp_path):
    cfg = make_cfg(tmp_path, "lora.r=4", "lora.alpha=8", "train.max_steps=3", "train.lr=1e-2")
    summary = train(SFTStage(cfg), tmp_path / "lora")
    assert (tmp_path / "lora" / "model" / "adapter_config.json").exists()
    assert summary["steps"] == 3


def test_cli_bad_config_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lrr: 1\n")
    r = subprocess.run([sys.executable, "-m", "alignloop", "sft", str(bad)], capture_output=True, text=True)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert f"{bad}:2: train.lrr: unknown key (did you mean 'train.lr'?)" in " ".join(r.stderr.split())


def test_cli_bad_data_names_file_line_field(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}]}\n')
    r = subprocess.run(
        [sys.executable, "-m", "alignloop", "sft", "--set", "model=tiny-llama", "--set", f"data.train={data}",
         "--out", str(tmp_path / "o")],
        capture_output=True, text=True,
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"{data}:1: messages[1].role" in " ".join(r.stderr.split())
