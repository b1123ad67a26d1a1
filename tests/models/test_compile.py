"""``train.compile: blocks`` (models/compile.py): compiled training matches eager within a stated tolerance."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from alignloop.errors import AlignloopError
from alignloop.models import enable_gradient_checkpointing
from alignloop.models.compile import compile_blocks
from alignloop.stages.sft import token_nll_sum
from tests.conftest import tiny_llama

# fp32 on both sides; inductor fuses elementwise chains (RMSNorm, SiLU·up, rotary), which reorders float sums
LOSS_RTOL = 1e-5
GRAD_ATOL = 1e-4  # relative to the largest gradient entry of each tensor


def test_compile_blocks_compiles_every_attention_mlp_and_norm_once():
    model = tiny_llama(0, num_hidden_layers=2)
    assert compile_blocks(model, "cpu") == 2 * (1 + 1 + 2) + 1  # per layer: attention, MLP, 2 norms; final norm
    for layer in model.model.layers:
        assert layer.self_attn._compiled_call_impl is not None and layer.mlp._compiled_call_impl is not None
    assert layer._compiled_call_impl is None  # whole layers stay eager (their checkpoint wrapper breaks dynamo)
    assert compile_blocks(model, "cpu") == 0  # idempotent
    assert set(model.state_dict()) == set(tiny_llama(0, num_hidden_layers=2).state_dict())  # keys unchanged


def test_without_a_cpp_compiler_the_error_says_what_to_do(monkeypatch):
    monkeypatch.setattr("alignloop.models.compile.shutil.which", lambda name: None)
    with pytest.raises(AlignloopError, match="train.compile: blocks needs a C\\+\\+ compiler"):
        compile_blocks(tiny_llama(0, num_hidden_layers=1), "cpu")


def _loss_and_grads(model, input_ids):
    model.zero_grad(set_to_none=True)
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": input_ids}
    loss, _ = token_nll_sum(model, batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.slow
def test_compiled_loss_and_gradients_match_eager_under_checkpointing_and_changing_shapes():
    eager = tiny_llama(0, num_hidden_layers=2)
    compiled = copy.deepcopy(eager)
    for model in (eager, compiled):
        enable_gradient_checkpointing(model)
        model.train()
    compile_blocks(compiled, "cpu")
    generator = torch.Generator().manual_seed(0)
    for shape in ((2, 16), (3, 24), (2, 40)):  # a new length each step, as in DPO and RL batches
        ids = torch.randint(3, 1000, shape, generator=generator)
        loss_e, grads_e = _loss_and_grads(eager, ids)
        loss_c, grads_c = _loss_and_grads(compiled, ids)
        assert torch.allclose(loss_c, loss_e, rtol=LOSS_RTOL), (shape, loss_c, loss_e)
        assert grads_e.keys() == grads_c.keys() and len(grads_e) > 0
        for name, g in grads_e.items():
            scale = g.abs().max().clamp_min(1e-12)
            assert (grads_c[name] - g).abs().max() / scale < GRAD_ATOL, (shape, name)


@pytest.mark.slow
def test_sft_stage_trains_with_compile_on(tmp_path):
    from alignloop.config import SFTConfig, load_config
    from alignloop.stages.sft import SFTStage
    from alignloop.train.loop import train

    rows = [{"messages": [{"role": "user", "content": f"Say {i}."}, {"role": "assistant", "content": f"{i}."}]}
            for i in range(8)]
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def run(name: str, compile_mode: str) -> list[float]:
        cfg = load_config(SFTConfig, None, [
            "model=tiny-llama", f"data.train={path}", "data.max_length=64", "train.max_steps=3",
            "train.batch_size=4", "train.precision=fp32", "train.save_every=0", f"train.compile={compile_mode}"])
        train(SFTStage(cfg), tmp_path / name)
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return [row["loss"] for row in rows if "loss" in row]

    eager, compiled = run("eager", "off"), run("compiled", "blocks")
    assert len(compiled) == 3
    assert compiled == pytest.approx(eager, rel=1e-4)


def test_compile_under_fsdp_or_deepspeed_is_refused_with_a_clear_error(tmp_path, monkeypatch):
    from alignloop.config import SFTConfig, load_config
    from alignloop.stages.sft import SFTStage
    from alignloop.train.loop import train

    path = tmp_path / "sft.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi."},
                                             {"role": "assistant", "content": "Hello."}]}) + "\n")
    monkeypatch.setattr("alignloop.train.loop.shards_model", lambda run: True)
    cfg = load_config(SFTConfig, None, ["model=tiny-llama", f"data.train={path}", "train.max_steps=1",
                                        "train.compile=blocks"])
    with pytest.raises(AlignloopError, match="not supported with FSDP or DeepSpeed"):
        train(SFTStage(cfg), tmp_path / "run")


def test_yaml_off_and_on_read_as_the_modes():
    from alignloop.config import TrainConfig

    assert TrainConfig(compile=False).compile == "off"  # YAML 1.1 reads a bare `off` as false
    assert TrainConfig(compile=True).compile == "blocks"
    with pytest.raises(ValueError):
        TrainConfig(compile="everything")
