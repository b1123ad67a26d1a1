"""Every stage's saved model loads with plain transformers / peft and gives the model the stage trained (issue 21).

Each stage starts from a LoRA SFT run folder on the word-level toy model (tests/conftest.py). A LoRA trained on top
of it is saved as ONE adapter on the original model (models/compose.py), never stacked on the SFT folder: plain
``AutoPeftModelForCausalLM`` (or ``PeftModel.from_pretrained`` on the original model) then gives the trained model's
logits, as does alignloop's own loader, within 1e-5 in fp32.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from peft import PeftModel
from transformers import AutoModelForCausalLM

from alignloop.config import SFTConfig, load_config
from alignloop.models import ScalarHeadModel, load_causal_lm
from alignloop.stages.bon import BoNConfig, BoNStage
from alignloop.stages.dpo.stage import DPOConfig, DPOStage
from alignloop.stages.evaluate.sampling import checkpoint_steps, load_checkpoint_policy
from alignloop.stages.rl.grpo import GRPOConfig, GRPOStage
from alignloop.stages.rl.ppo import PPOConfig, PPOStage
from alignloop.stages.rm.stage import RMConfig, RMStage
from alignloop.stages.sft import SFTStage
from alignloop.train.loop import train
from alignloop.train.run_dir import RunDir
from tests.conftest import WORDS, plain_logits, plain_scalar_values, write_prompts

TOL = 1e-5
IDS = torch.tensor([[5, 6, 7, 3, 4, 8, 9, 3, 10], [11, 12, 3, 3, 13, 14, 15, 4, 5]])
FP32 = ["train.precision=fp32", "train.save_every=0", "train.warmup_steps=0"]
LORA = ["lora.r=4", "lora.alpha=8"]
STACKED = ["lora.r=2", "lora.alpha=8", "lora.target_modules=[q_proj, v_proj, down_proj]"]  # other rank, targets


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("anywhere_data")
    colours = WORDS[5:8]
    sft = [{"messages": [{"role": "user", "content": f"{colours[i % 3]} {WORDS[8 + i % 8]}"},
                         {"role": "assistant", "content": "yes " * (1 + i % 3)}]} for i in range(16)]
    pairs = [{"prompt": f"{colours[i % 3]} {WORDS[8 + i % 8]}", "chosen": "yes yes", "rejected": "no no"}
             for i in range(16)]
    paths = {"sft": root / "sft.jsonl", "pairs": root / "pairs.jsonl"}
    for key, rows in (("sft", sft), ("pairs", pairs)):
        paths[key].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {**{k: str(v) for k, v in paths.items()}, "prompts": write_prompts(root / "prompts.jsonl", 16)}


def sft_config(model, data, *overrides: str) -> SFTConfig:
    base = [f"model={model}", f"data.train={data['sft']}", "data.eval=null", "data.max_length=32",
            "train.max_steps=3", "train.batch_size=4", "train.lr=3e-2", *FP32]
    return load_config(SFTConfig, None, base + list(overrides))


@pytest.fixture(scope="module")
def sft_lora(tmp_path_factory, word_model_dir, data) -> Path:
    """A LoRA SFT run folder on the word model: the starting point of every stage below."""
    out = tmp_path_factory.mktemp("anywhere") / "sft"
    torch.manual_seed(0)
    stage = SFTStage(sft_config(word_model_dir, data, *LORA))
    train(stage, out)
    assert_loads_anywhere(out, stage.unwrap("policy"), word_model_dir)
    return out


def logits(model) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=IDS).logits.float()


def close(model, want: torch.Tensor, what: str) -> None:
    diff = (logits(model) - want).abs().max().item()
    assert diff <= TOL, f"{what}: logits differ by {diff:.3g}"


def assert_loads_anywhere(out: Path, trained, base: str, lineage: list[Path] = ()) -> dict:
    """``out/model`` loads with plain transformers (full) or peft (adapter) and with alignloop, each giving the
    ``trained`` model's logits; the adapter, its model card and alignloop_model.json name the original ``base``."""
    folder, base = out / "model", str(Path(base).resolve())
    note = json.loads((folder / "alignloop_model.json").read_text())
    want = logits(trained)
    close(load_causal_lm(out, trainable=False), want, "alignloop's loader")
    diff = (plain_logits(folder, IDS) - want).abs().max().item()
    assert diff <= TOL, f"{note['format']}: plain AutoModelForCausalLM / AutoPeftModelForCausalLM differ by {diff:.3g}"
    assert note["base_model"] == base and note.get("lineage", []) == [str(p.resolve() / "model") for p in lineage]
    if note["format"] == "lora":
        config = json.loads((folder / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == base  # stacked saves named the SFT adapter folder here
        assert ModelCard.load(folder / "README.md").data.base_model == base
        # the adapter on the original model by hand: a second adapter saved stacked on the SFT one fails here
        close(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), folder), want, "PeftModel")
    return note


@pytest.mark.parametrize("overrides", [STACKED, [], [*STACKED, "lora.save_merged=true"]],
                         ids=["lora-on-lora", "no-lora-section", "lora-saved-merged"])
def test_sft_on_a_lora_sft_run(tmp_path, sft_lora, word_model_dir, data, overrides):
    torch.manual_seed(1)
    stage = SFTStage(sft_config(sft_lora, data, *overrides))
    train(stage, tmp_path / "sft2")
    note = assert_loads_anywhere(tmp_path / "sft2", stage.unwrap("policy"), word_model_dir,
                                 [sft_lora] if overrides else [])
    assert note["format"] == ("full" if "lora.save_merged=true" in overrides else "lora")
    if overrides == STACKED:  # rank 4 + 2 on every layer either adapter touched; scaling 8 / 2 = 24 / 6
        config = json.loads((tmp_path / "sft2" / "model" / "adapter_config.json").read_text())
        assert (config["r"], config["lora_alpha"], note["composed"]) == (6, 24, {"inherited_rank": 4, "rank": 6})
        assert len(config["target_modules"]) == 2 * 7 and not config["rank_pattern"]


def test_full_sft_saves_full_weights(tmp_path, word_model_dir, data):
    stage = SFTStage(sft_config(word_model_dir, data))
    train(stage, tmp_path / "sft")
    assert assert_loads_anywhere(tmp_path / "sft", stage.unwrap("policy"), word_model_dir)["format"] == "full"


@pytest.mark.parametrize("overrides", [STACKED, []], ids=["lora", "no-lora-section"])
def test_dpo_on_a_lora_sft_run(tmp_path, sft_lora, word_model_dir, data, overrides):
    cfg = load_config(DPOConfig, None, [
        f"model={sft_lora}", f"data.train={data['pairs']}", "data.eval=null", "train.max_steps=3",
        "train.batch_size=4", "train.lr=3e-2", *FP32, *overrides,
    ])
    torch.manual_seed(2)
    stage = DPOStage(cfg)
    train(stage, tmp_path / "dpo")
    assert_loads_anywhere(tmp_path / "dpo", stage.unwrap("policy"), word_model_dir, [sft_lora] if overrides else [])


def rl_overrides(kind: str, model: Path, data) -> list[str]:
    return [
        f"model={model}", f"data.train={data['prompts']}", "data.eval=null",
        f"{kind}.reward=tests.conftest:target_fraction", f"{kind}.rollouts=2", f"{kind}.prompts_per_rollout=4",
        f"{kind}.max_new_tokens=6", f"{kind}.eval_prompts=0", "train.batch_size=4", "train.lr=3e-2", *FP32, *STACKED,
    ]


def test_grpo_on_a_lora_sft_run_and_its_checkpoints(tmp_path, sft_lora, word_model_dir, data):
    cfg = load_config(GRPOConfig, None, [*rl_overrides("grpo", sft_lora, data), "grpo.num_generations=2",
                                         "train.save_every=2", "train.keep_checkpoints=4"])
    torch.manual_seed(3)
    stage = GRPOStage(cfg)
    train(stage, tmp_path / "grpo")
    policy = stage.unwrap("policy")
    assert_loads_anywhere(tmp_path / "grpo", policy, word_model_dir, [sft_lora])
    # a checkpoint holds the trained (rank-2) adapter; it drops into the composed one's trained rows
    steps = checkpoint_steps(tmp_path / "grpo")
    assert [s for s, _ in steps] == [2, 4]
    close(load_checkpoint_policy(tmp_path / "grpo", steps[-1][1]), logits(policy), "last checkpoint")


def test_ppo_on_a_lora_sft_run_saves_policy_and_critic(tmp_path, sft_lora, word_model_dir, data):
    cfg = load_config(PPOConfig, None, rl_overrides("ppo", sft_lora, data))
    torch.manual_seed(4)
    stage = PPOStage(cfg)
    train(stage, tmp_path / "ppo")
    assert_loads_anywhere(tmp_path / "ppo", stage.unwrap("policy"), word_model_dir, [sft_lora])
    assert_scalar_head_loads_anywhere(tmp_path / "ppo" / "value_model", stage.unwrap("critic"), word_model_dir)


def assert_scalar_head_loads_anywhere(folder: Path, trained, base: str) -> None:
    """A reward/value model: the backbone (full, or an adapter on the original model) + ``head.safetensors``."""
    base = str(Path(base).resolve())
    meta = json.loads((folder / "alignloop_head.json").read_text())
    want = values(trained)
    close_values(ScalarHeadModel.from_pretrained(folder, trainable=False), want, "ScalarHeadModel.from_pretrained")
    if meta["format"] == "lora":
        assert meta["base_model"] == base
        assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == base
    diff = (plain_scalar_values(folder, IDS) - want).abs().max().item()
    assert diff <= TOL, f"plain backbone + head: values differ by {diff:.3g}"


def values(model) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(IDS)


def close_values(model, want: torch.Tensor, what: str) -> None:
    diff = (values(model) - want).abs().max().item()
    assert diff <= TOL, f"{what}: values differ by {diff:.3g}"


@pytest.mark.parametrize("overrides", [STACKED, []], ids=["lora", "full"])
def test_reward_model_on_a_lora_sft_run(tmp_path, sft_lora, word_model_dir, data, overrides):
    cfg = load_config(RMConfig, None, [
        f"model={sft_lora}", f"data.train={data['pairs']}", "data.eval=null", "train.max_steps=3",
        "train.batch_size=4", "train.lr=3e-2", *FP32, *overrides,
    ])
    torch.manual_seed(5)
    stage = RMStage(cfg)
    train(stage, tmp_path / "rm")
    assert_scalar_head_loads_anywhere(tmp_path / "rm" / "model", stage.unwrap("rm"), word_model_dir)
    meta = json.loads((tmp_path / "rm" / "model" / "alignloop_head.json").read_text())
    assert meta["lineage"] == [str(sft_lora.resolve() / "model")]


def test_best_of_n_saves_no_model_and_its_rsft_round_loads_anywhere(tmp_path, sft_lora, word_model_dir, data):
    cfg = load_config(BoNConfig, None, [
        f"model={sft_lora}", f"data.train={data['prompts']}", "reward=tests.conftest:target_fraction",
        "bon.n=[1, 2]", "bon.max_prompts=4", "bon.max_new_tokens=4", "train.precision=fp32",
    ])
    torch.manual_seed(6)
    BoNStage.run(cfg, RunDir(tmp_path / "bon"))
    assert not (tmp_path / "bon" / "model").exists()  # best-of-N writes samples and records, no weights
    rsft = SFTStage(sft_config(sft_lora, {"sft": str(tmp_path / "bon" / "sft_records.jsonl")}, *STACKED))
    train(rsft, tmp_path / "rsft")
    assert_loads_anywhere(tmp_path / "rsft", rsft.unwrap("policy"), word_model_dir, [sft_lora])


@pytest.mark.parametrize("kind", ["grpo", "ppo"])
def test_full_fine_tuned_rl_policy_saves_full_weights(tmp_path, word_model_dir, data, kind):
    overrides = [o for o in rl_overrides(kind, word_model_dir, data) if o not in STACKED]  # no lora: full weights
    cfg = load_config(GRPOConfig if kind == "grpo" else PPOConfig, None,
                      [*overrides, *(["grpo.num_generations=2"] if kind == "grpo" else [])])
    torch.manual_seed(7)
    stage = GRPOStage(cfg) if kind == "grpo" else PPOStage(cfg)
    train(stage, tmp_path / kind)
    assert assert_loads_anywhere(tmp_path / kind, stage.unwrap("policy"), word_model_dir)["format"] == "full"
