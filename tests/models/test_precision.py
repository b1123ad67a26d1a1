"""train.frozen_bf16: frozen linear weights stored in bf16 give exactly the bf16-autocast results, in less memory."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from alignloop.config import load_config
from alignloop.models import ScalarHeadModel, load_causal_lm
from alignloop.models.precision import cast_frozen_linears, native_bf16
from alignloop.stages.rl.grpo import GRPOConfig, GRPOStage
from alignloop.train.loop import train
from tests.conftest import write_prompts

needs_bf16 = pytest.mark.skipif(not native_bf16(torch.device("cpu")), reason="this CPU has no native bf16 matmul")


def _lora_model():
    torch.manual_seed(0)
    return load_causal_lm("tiny-llama", lora={"r": 4, "alpha": 8})


def test_cast_gives_identical_logits_and_lora_gradients():
    ids = torch.randint(0, 1000, (2, 16), generator=torch.Generator().manual_seed(1))
    results = []
    for cast in (False, True):
        model = _lora_model()
        if cast:
            assert cast_frozen_linears([model]) > 0
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(input_ids=ids).logits.float()
        logits.logsumexp(-1).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results.append((logits.detach(), grads))
    (logits_a, grads_a), (logits_b, grads_b) = results
    assert torch.equal(logits_a, logits_b)
    assert grads_a.keys() == grads_b.keys() and all(torch.equal(grads_a[k], grads_b[k]) for k in grads_a)


def test_only_frozen_inner_linears_are_cast():
    model = _lora_model()
    saved = cast_frozen_linears([model])
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    base = [n for n in dtypes if n.endswith("q_proj.base_layer.weight")]
    assert base and all(dtypes[n] == torch.bfloat16 for n in base)
    assert all(dtypes[n] == torch.float32 for n in dtypes if "lora_" in n)  # trainable adapters keep fp32
    assert all(dtypes[n] == torch.float32 for n in dtypes if "embed_tokens" in n or "norm" in n)
    frozen_linear_params = sum(p.numel() for n, p in model.named_parameters() if p.dtype == torch.bfloat16)
    assert saved == 2 * frozen_linear_params  # 4 -> 2 bytes each
    assert cast_frozen_linears([model]) == 0  # idempotent

    critic = ScalarHeadModel.from_causal_lm("tiny-llama").requires_grad_(False)
    cast_frozen_linears([critic])
    assert critic.head.weight.dtype == torch.float32  # heads are never cast
    full = load_causal_lm("tiny-llama")  # trainable full model: nothing to cast
    assert cast_frozen_linears([full]) == 0


def test_run_autocast_keeps_no_weight_cast_cache(tmp_path):
    from alignloop.stages.sft import SFTConfig
    from alignloop.train.loop import Run

    for precision, active in (("bf16", True), ("fp32", False)):
        run = Run(load_config(SFTConfig, None, [f"train.precision={precision}", "train.device=cpu"]), tmp_path)
        with run.autocast():
            assert torch.is_autocast_enabled("cpu") is active
            if active:
                assert torch.get_autocast_dtype("cpu") == torch.bfloat16
                assert not torch.is_autocast_cache_enabled()


def test_forward_outside_autocast_fails_loudly():
    model = _lora_model()
    cast_frozen_linears([model])
    with pytest.raises(RuntimeError):
        model(input_ids=torch.tensor([[1, 2, 3]]))


@needs_bf16
def test_grpo_trains_identically_with_and_without_frozen_bf16(tmp_path, word_model_dir):
    """Same rollouts, same updates: the stored-bf16 base is numerically the autocast cast."""
    model = word_model_dir
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    adapters = []
    for flag in ("false", "true"):
        cfg = load_config(GRPOConfig, None, [
            f"model={model}", f"data.train={prompts}", f"data.eval={prompts}", "grpo.eval_prompts=4",
            "grpo.reward=tests.conftest:target_fraction", "grpo.rollouts=2", "grpo.prompts_per_rollout=4",
            "grpo.num_generations=2", "grpo.max_new_tokens=6", "train.batch_size=4", "train.precision=bf16",
            "train.save_every=0", "train.lr=1e-3", "lora.r=4", "lora.alpha=8", f"train.frozen_bf16={flag}",
        ])
        torch.manual_seed(0)
        stage = GRPOStage(cfg)
        train(stage, tmp_path / flag)
        base_dtypes = {p.dtype for n, p in stage.unwrap("policy").named_parameters() if "base_layer" in n}
        assert base_dtypes == ({torch.bfloat16} if flag == "true" else {torch.float32})
        adapters.append(load_file(str(tmp_path / flag / "model" / "adapter_model.safetensors")))
    assert adapters[0].keys() == adapters[1].keys()
    for key in adapters[0]:
        torch.testing.assert_close(adapters[0][key], adapters[1][key], rtol=0, atol=0)


@needs_bf16
def test_ppo_critic_sharing_and_frozen_bf16_change_nothing_but_memory(tmp_path, word_model_dir):
    """A LoRA policy, a LoRA critic on the same base and a reward-model dir: sharing the critic's frozen base with
    the policy and storing frozen weights in bf16 give bit-identical trained adapters and value head."""
    from alignloop.models import load_tokenizer
    from alignloop.stages.rl.ppo import PPOConfig, PPOStage

    model = word_model_dir
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    torch.manual_seed(3)
    ScalarHeadModel.from_causal_lm(model).save_pretrained(tmp_path / "rm", tokenizer=load_tokenizer(model))
    outputs = []
    for flag in ("false", "true"):
        cfg = load_config(PPOConfig, None, [
            f"model={model}", f"data.train={prompts}", f"data.eval={prompts}", "ppo.eval_prompts=4",
            f"ppo.reward={tmp_path / 'rm'}", "ppo.rollouts=2", "ppo.prompts_per_rollout=4", "ppo.max_new_tokens=6",
            "train.batch_size=4", "train.precision=bf16", "train.save_every=0", "train.lr=5e-3",
            "lora.r=4", "lora.alpha=8", f"train.frozen_bf16={flag}", f"ppo.critic_share_frozen={flag}",
        ])
        torch.manual_seed(0)
        stage = PPOStage(cfg)
        train(stage, tmp_path / flag)
        policy = dict(stage.unwrap("policy").named_parameters())
        critic = dict(stage.unwrap("critic").named_parameters())
        base = "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"
        shared = policy[base] is critic["backbone.base_model.model.layers.0.self_attn.q_proj.base_layer.weight"]
        assert shared == (flag == "true")
        rm_dtypes = {p.dtype for m in stage.frozen_modules() for n, p in m.named_parameters() if n.endswith("q_proj.weight")}
        assert rm_dtypes == ({torch.bfloat16} if flag == "true" else {torch.float32})
        outputs.append({
            "policy": load_file(str(tmp_path / flag / "model" / "adapter_model.safetensors")),
            "critic": load_file(str(tmp_path / flag / "value_model" / "adapter_model.safetensors")),
            "head": load_file(str(tmp_path / flag / "value_model" / "head.safetensors")),
        })
    for part in ("policy", "critic", "head"):
        a, b = outputs[0][part], outputs[1][part]
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=f"{part}: {key}")
