"""HFSampler, Rollout and the rollout log-prob functions, on tiny random Llamas.

Independent references: a per-row forward pass of the model over the UNPADDED sequence with a
float64 log_softmax, and ``model.generate`` for greedy decoding.
"""

from __future__ import annotations

import math

import pytest
import torch

from alignloop.errors import ConfigError, DataError
from alignloop.rollout import (
    HFSampler,
    Rollout,
    Sampler,
    forward_logprobs,
    logprobs_from_logits,
)
from alignloop.rollout.hf import plan_batches
from alignloop.rollout.prompts import encode_prompts
from tests.rollout.conftest import EOS, tiny_llama

PROMPTS = ["hi", "tell me a long story about dragons and bread", "what is two plus two?"]


def fp32_sampler(model, tokenizer, **kwargs) -> HFSampler:
    return HFSampler(model, tokenizer, dtype="fp32", **kwargs)


def reference_logprobs(model, rollout: Rollout, temperature: float = 1.0) -> list[torch.Tensor]:
    """Per row: log softmax(logits / T) of the response tokens, from the unpadded sequence alone, in float64."""
    rows = []
    with torch.no_grad():
        for i in range(len(rollout)):
            prompt = rollout.prompt_ids[i][rollout.prompt_mask[i].bool()]
            response = rollout.response_ids[i][rollout.response_mask[i].bool()]
            ids = torch.cat([prompt, response]).unsqueeze(0)
            logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].double() / temperature
            rows.append(torch.log_softmax(logits, dim=-1).gather(-1, response.unsqueeze(-1)).squeeze(-1))
    return rows


def assert_logprobs_match(rollout: Rollout, reference: list[torch.Tensor], atol: float) -> None:
    for i, expected in enumerate(reference):
        got = rollout.logprobs[i][rollout.response_mask[i].bool()].double()
        torch.testing.assert_close(got, expected, atol=atol, rtol=0)


def test_shapes_and_masks_with_variable_length_prompts(model, tokenizer):
    encoded, _ = encode_prompts(tokenizer, PROMPTS)
    rollout = fp32_sampler(model, tokenizer, batch_size=4).generate(PROMPTS, max_new_tokens=6, seed=0)
    width = max(len(ids) for ids in encoded)
    assert rollout.prompt_ids.shape == (3, width) and rollout.response_ids.shape == (3, 6)
    for i, ids in enumerate(encoded):
        pad = width - len(ids)
        # left padding: pad ids then the prompt, mask 0...0 1...1
        assert rollout.prompt_ids[i, pad:].tolist() == ids and rollout.prompt_ids[i, :pad].tolist() == [EOS] * pad
        assert rollout.prompt_mask[i].tolist() == [0] * pad + [1] * len(ids)
        assert rollout.position_ids()[i, pad:].tolist() == list(range(len(ids) + 6))
    assert rollout.response_mask.tolist() == [[1] * 6] * 3  # the random model never picked EOS here
    assert not rollout.ended_with_eos.any() and not rollout.finished.any()
    assert rollout.input_ids().shape == rollout.attention_mask().shape == (3, width + 6)
    assert rollout.response_start == width
    assert rollout.logprobs.dtype == torch.float32 and (rollout.logprobs < 0).all()
    assert rollout.group_index.tolist() == [0, 1, 2] and rollout.prompts == PROMPTS
    assert rollout.responses == tokenizer.batch_decode(rollout.response_ids.tolist(), skip_special_tokens=True)
    assert isinstance(HFSampler(model, tokenizer), Sampler)


def test_eos_stops_rows_masks_the_rest_and_ends_early(eos_model, tokenizer):
    rollout = fp32_sampler(eos_model, tokenizer).generate(PROMPTS[:2], n=2, max_new_tokens=200, seed=2)
    lengths = rollout.response_lengths()
    assert rollout.ended_with_eos.all()  # every row met EOS, so decoding stopped before 200 steps
    assert rollout.response_ids.shape[1] == int(lengths.max()) < 200
    assert len(set(lengths.tolist())) > 1  # rows end at different steps
    for i, length in enumerate(lengths.tolist()):
        assert rollout.response_ids[i, length - 1] == EOS and EOS not in rollout.response_ids[i, : length - 1].tolist()
        assert rollout.response_mask[i].tolist() == [1] * length + [0] * (rollout.response_ids.shape[1] - length)
        assert (rollout.response_ids[i, length:] == EOS).all() and (rollout.logprobs[i, length:] == 0).all()
        assert "<|im_end|>" not in rollout.responses[i]
    assert_logprobs_match(rollout, reference_logprobs(eos_model, rollout), atol=1e-4)


def test_rows_without_eos_run_to_the_limit(eos_model, tokenizer):
    rollout = fp32_sampler(eos_model, tokenizer).generate(PROMPTS[:2], n=4, max_new_tokens=12, seed=1)
    lengths = rollout.response_lengths()
    assert (~rollout.ended_with_eos).any() and rollout.ended_with_eos.any()
    assert (lengths[~rollout.ended_with_eos] == 12).all()


def test_stop_string_cuts_text_and_tokens(model, tokenizer):
    sampler = fp32_sampler(model, tokenizer)
    free = sampler.generate(["hi"], max_new_tokens=10, seed=3)
    tokens = free.response_ids[0].tolist()
    stop = tokenizer.decode(tokens[3:5])
    full_text = free.responses[0]
    assert stop.strip() and full_text.find(stop) == len(tokenizer.decode(tokens[:3]))
    # Independent: the first prefix of tokens whose decoded text contains the stop string.
    stop_len = next(j for j in range(1, 11) if stop in tokenizer.decode(tokens[:j]))

    stopped = sampler.generate(["hi"], max_new_tokens=10, seed=3, stop=["never appears \u2603", stop])
    assert stopped.ended_with_stop.tolist() == [True] and stopped.ended_with_eos.tolist() == [False]
    assert stopped.response_ids[0].tolist() == tokens[:stop_len]
    assert stopped.response_lengths().tolist() == [stop_len]
    assert stopped.responses == [full_text[: full_text.find(stop)]]
    torch.testing.assert_close(stopped.logprobs[0], free.logprobs[0, :stop_len])

    unmatched = sampler.generate(["hi"], max_new_tokens=10, seed=3, stop="never appears \u2603")
    assert torch.equal(unmatched.response_ids, free.response_ids) and not unmatched.ended_with_stop.any()


def test_same_seed_same_rollout_other_seed_differs(model, tokenizer):
    sampler = fp32_sampler(model, tokenizer, batch_size=2)
    first = sampler.generate(PROMPTS, n=2, max_new_tokens=8, seed=123)
    again = sampler.generate(PROMPTS, n=2, max_new_tokens=8, seed=123)
    other = sampler.generate(PROMPTS, n=2, max_new_tokens=8, seed=124)
    assert torch.equal(first.response_ids, again.response_ids) and torch.equal(first.logprobs, again.logprobs)
    assert first.responses == again.responses
    assert not torch.equal(first.response_ids, other.response_ids)
    # Without a seed, torch's global seed decides, and the global RNG is the only one consumed.
    torch.manual_seed(7)
    unseeded = sampler.generate(PROMPTS, max_new_tokens=8)
    torch.manual_seed(7)
    assert torch.equal(sampler.generate(PROMPTS, max_new_tokens=8).response_ids, unseeded.response_ids)


def test_logprobs_equal_fresh_forward_pass_fp32(model, tokenizer):
    rollout = fp32_sampler(model, tokenizer, batch_size=4).generate(PROMPTS, n=2, max_new_tokens=8, seed=1)
    assert_logprobs_match(rollout, reference_logprobs(model, rollout), atol=1e-4)
    with torch.no_grad():
        recomputed = forward_logprobs(model, rollout, chunk_size=5)
    mask = rollout.response_mask.bool()
    torch.testing.assert_close(recomputed[mask], rollout.logprobs[mask], atol=1e-4, rtol=0)


def test_tempered_and_truncated_logprobs_use_full_tempered_softmax(model, tokenizer):
    sampler = fp32_sampler(model, tokenizer)
    rollout = sampler.generate(PROMPTS, max_new_tokens=6, temperature=0.7, top_k=20, seed=2)
    assert_logprobs_match(rollout, reference_logprobs(model, rollout, temperature=0.7), atol=1e-4)
    with torch.no_grad():
        logits = model(
            input_ids=rollout.input_ids(), attention_mask=rollout.attention_mask(), position_ids=rollout.position_ids()
        ).logits[:, rollout.response_start - 1 : -1]
    # Every sampled token is among the 20 largest logits at its step.
    top20 = logits.topk(20, dim=-1).indices
    assert (top20 == rollout.response_ids.unsqueeze(-1)).any(-1).all()
    torch.testing.assert_close(
        forward_logprobs(model, rollout, temperature=0.7).detach(), rollout.logprobs, atol=1e-4, rtol=0
    )

    nucleus = sampler.generate(PROMPTS, max_new_tokens=6, temperature=1.3, top_p=0.5, seed=2)
    with torch.no_grad():
        logits = model(
            input_ids=nucleus.input_ids(), attention_mask=nucleus.attention_mask(), position_ids=nucleus.position_ids()
        ).logits[:, nucleus.response_start - 1 : -1].double()
    probs = torch.softmax(logits / 1.3, dim=-1)
    chosen = probs.gather(-1, nucleus.response_ids.unsqueeze(-1))
    # Inside the nucleus: the mass of strictly more likely tokens is below top_p.
    assert (probs.where(probs > chosen, 0.0).sum(-1) < 0.5).all()
    assert_logprobs_match(nucleus, reference_logprobs(model, nucleus, temperature=1.3), atol=1e-4)


def test_top_k_1_is_greedy_and_greedy_matches_hf_generate(model, tokenizer):
    sampler = fp32_sampler(model, tokenizer)
    top1 = sampler.generate(PROMPTS, max_new_tokens=8, top_k=1, seed=5)
    greedy = sampler.generate(PROMPTS, max_new_tokens=8, temperature=0)
    assert torch.equal(top1.response_ids, greedy.response_ids)
    # Greedy log-probs are reported at T = 1 (the same numbers as the top_k=1 run at T = 1).
    torch.testing.assert_close(greedy.logprobs, top1.logprobs)
    encoded, _ = encode_prompts(tokenizer, PROMPTS)
    for i, ids in enumerate(encoded):
        expected = model.generate(
            torch.tensor([ids]), do_sample=False, max_new_tokens=8, min_new_tokens=8, pad_token_id=EOS
        )[0, len(ids) :]
        assert greedy.response_ids[i].tolist() == expected.tolist()


def test_left_padding_does_not_change_a_prompts_result(model, tokenizer):
    sampler = fp32_sampler(model, tokenizer)
    alone = sampler.generate(["hi"], max_new_tokens=8, temperature=0)
    batched = sampler.generate(["hi", PROMPTS[1], PROMPTS[1] + " " + PROMPTS[2]], max_new_tokens=8, temperature=0)
    assert batched.prompt_mask[0].sum() < batched.prompt_ids.shape[1]  # "hi" really is left padded
    assert torch.equal(batched.response_ids[0], alone.response_ids[0])
    torch.testing.assert_close(batched.logprobs[0], alone.logprobs[0], atol=1e-4, rtol=0)


def test_n_samples_are_prompt_major_with_group_index(model, tokenizer):
    sampler = fp32_sampler(model, tokenizer, batch_size=2)  # groups of 3 get split across batches
    rollout = sampler.generate(PROMPTS, n=3, max_new_tokens=6, seed=4)
    encoded, _ = encode_prompts(tokenizer, PROMPTS)
    assert rollout.group_index.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert rollout.prompts == [p for p in PROMPTS for _ in range(3)]
    for i in range(9):
        assert rollout.prompt_ids[i][rollout.prompt_mask[i].bool()].tolist() == encoded[i // 3]
    for group in range(3):
        samples = {tuple(row) for row in rollout.response_ids[3 * group : 3 * group + 3].tolist()}
        assert len(samples) == 3  # independent samples, not copies
    assert_logprobs_match(rollout, reference_logprobs(model, rollout), atol=1e-4)

    greedy = sampler.generate(PROMPTS, n=2, max_new_tokens=6, temperature=0)
    assert torch.equal(greedy.response_ids[0::2], greedy.response_ids[1::2])
    picked = rollout.select([4, 0])
    assert picked.group_index.tolist() == [1, 0] and picked.responses == [rollout.responses[4], rollout.responses[0]]
    assert torch.equal(picked.response_ids, rollout.response_ids[[4, 0]]) and picked.to("cpu").prompts == picked.prompts


def test_plan_batches_sorts_by_length_and_keeps_groups_together():
    # lengths 3, 9, 5 with n=2, batch_size 4 -> longest first: prompt 1, 2, then 0
    assert [[(p.prompt, p.first, p.count) for p in batch] for batch in plan_batches([3, 9, 5], 2, 4)] == [
        [(1, 0, 2), (2, 0, 2)],
        [(0, 0, 2)],
    ]
    # n=3 with batch_size 2 splits a group: samples 0-1 then 2
    assert [[(p.prompt, p.first, p.count) for p in batch] for batch in plan_batches([4], 3, 2)] == [
        [(0, 0, 2)],
        [(0, 2, 1)],
    ]


def test_eval_mode_during_generation_and_flags_restored(tokenizer):
    model = tiny_llama(attention_dropout=0.5)  # dropout would make train-mode log-probs random
    model.train()
    model.model.layers[0].eval()  # a mixed state must come back exactly
    rollout = fp32_sampler(model, tokenizer).generate(PROMPTS[:2], max_new_tokens=5, seed=0)
    assert model.training and not model.model.layers[0].training and model.model.layers[1].training
    model.eval()
    assert_logprobs_match(rollout, reference_logprobs(model, rollout), atol=1e-4)
    # Plain tensors, not inference tensors: usable in a loss with autograd.
    assert not rollout.logprobs.is_inference()
    weight = torch.ones((), requires_grad=True)
    (rollout.logprobs * weight).sum().backward()
    assert weight.grad is not None


def test_peft_lora_model(tokenizer):
    from peft import LoraConfig, get_peft_model

    base = tiny_llama()
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.5, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    lora = get_peft_model(base, config)
    lora.train()  # LoRA dropout would randomise train-mode log-probs
    trainable = {name for name, p in lora.named_parameters() if p.requires_grad}
    rollouts = {}
    for dtype in ("fp32", "bf16"):
        rollouts[dtype] = HFSampler(lora, tokenizer, dtype=dtype).generate(PROMPTS, n=2, max_new_tokens=6, seed=0)
        assert lora.training
        assert {name for name, p in lora.named_parameters() if p.requires_grad} == trainable
    lora.eval()
    fp32 = rollouts["fp32"]
    assert_logprobs_match(fp32, reference_logprobs(lora, fp32), atol=1e-4)
    with torch.no_grad():
        bf16_gap = (forward_logprobs(lora, rollouts["bf16"]) - rollouts["bf16"].logprobs).abs()
    assert bf16_gap[rollouts["bf16"].response_mask.bool()].max() < 0.5
    with lora.disable_adapter(), torch.no_grad():  # the adapter really changes the distribution
        assert not torch.allclose(forward_logprobs(lora, fp32), fp32.logprobs, atol=1e-3)


def test_bf16_autocast_logprobs_stay_close(model, tokenizer):
    sampler = HFSampler(model, tokenizer, dtype="bf16")
    assert sampler.autocast_dtype == torch.bfloat16
    rollout = sampler.generate(PROMPTS, n=2, max_new_tokens=8, seed=0)
    assert rollout.logprobs.dtype == torch.float32
    with torch.no_grad():
        exact = forward_logprobs(model, rollout)
    gap = (exact - rollout.logprobs)[rollout.response_mask.bool()].abs()
    # Stated tolerance for bf16 sampling (docs/rollout.md): mean < 0.05, max < 0.5 nats per token.
    assert gap.mean() < 0.05 and gap.max() < 0.5
    assert gap.max() > 0  # bf16 really was used

    # The caller's own autocast is honoured too (and requires_grad flags come back).
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outer = HFSampler(model, tokenizer, dtype="fp32").generate(PROMPTS, n=2, max_new_tokens=8, seed=0)
    assert torch.equal(outer.response_ids, rollout.response_ids)
    torch.testing.assert_close(outer.logprobs, rollout.logprobs)
    assert all(p.requires_grad for p in model.parameters())


def test_inverse_cdf_sampling_follows_the_weights():
    from alignloop.rollout.sampling import _inverse_cdf_sample

    weights = torch.tensor([[1.0, 0.0, 3.0]]).expand(4000, 3)
    picks = _inverse_cdf_sample(weights, torch.Generator().manual_seed(0))
    counts = torch.bincount(picks, minlength=3).double() / 4000
    # expected [1/4, 0, 3/4]; binomial std sqrt(.25 * .75 / 4000) = 0.0068, so 0.03 is 4.4 std
    assert counts[1] == 0
    torch.testing.assert_close(counts, torch.tensor([0.25, 0.0, 0.75], dtype=torch.float64), atol=0.03, rtol=0)


def test_logprobs_from_logits_hand_values():
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])
    tokens = torch.tensor([1, 0])
    # softmax([0, ln 3]) = [1/4, 3/4]
    expected = torch.tensor([math.log(0.75), math.log(0.25)])
    torch.testing.assert_close(logprobs_from_logits(logits, tokens), expected)
    torch.testing.assert_close(logprobs_from_logits(logits, tokens, temperature=0), expected)  # greedy: T = 1
    # T = 2: softmax([0, ln(3)/2]) = [1, sqrt 3] / (1 + sqrt 3)
    s3 = math.sqrt(3.0)
    tempered = torch.tensor([math.log(s3 / (1 + s3)), -math.log(1 + s3)])
    torch.testing.assert_close(logprobs_from_logits(logits, tokens, temperature=2.0), tempered)
    torch.testing.assert_close(logprobs_from_logits(logits.bfloat16(), tokens, 2.0, chunk_size=1), tempered, atol=2e-2, rtol=0)


def test_forward_logprobs_entropy_and_gradients(model, tokenizer):
    rollout = fp32_sampler(model, tokenizer).generate(PROMPTS, max_new_tokens=4, seed=0)
    logprobs, entropy = forward_logprobs(model, rollout, temperature=0.5, return_entropy=True, chunk_size=3)
    with torch.no_grad():
        ids, mask = rollout.input_ids(), rollout.attention_mask()
        logits = model(input_ids=ids, attention_mask=mask, position_ids=rollout.position_ids()).logits
    log_p = torch.log_softmax(logits[:, rollout.response_start - 1 : -1].double() / 0.5, dim=-1)
    torch.testing.assert_close(entropy.double(), -(log_p.exp() * log_p).sum(-1), atol=1e-4, rtol=0)
    torch.testing.assert_close(
        logprobs.double(), log_p.gather(-1, rollout.response_ids.unsqueeze(-1)).squeeze(-1), atol=1e-4, rtol=0
    )
    logprobs.sum().backward()
    assert model.lm_head.weight.grad is not None
    model.zero_grad(set_to_none=True)


def test_prompt_forms(model, tokenizer):
    text_ids, _ = encode_prompts(tokenizer, ["hello"])
    chat_ids, _ = encode_prompts(tokenizer, [[{"role": "user", "content": "hello"}]])
    assert text_ids == chat_ids
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "hello"}], add_generation_prompt=True, tokenize=False)
    assert tokenizer.decode(text_ids[0]) == rendered and rendered.endswith("<|im_start|>assistant\n")
    ids, shown = encode_prompts(tokenizer, [[1, 9690, 198]])
    assert ids == [[1, 9690, 198]] and shown == [tokenizer.decode([1, 9690, 198])]
    rollout = fp32_sampler(model, tokenizer).generate([[1, 9690, 198]], max_new_tokens=2, seed=0)
    assert rollout.prompt_ids.tolist() == [[1, 9690, 198]]

    with pytest.raises(DataError) as err:
        encode_prompts(tokenizer, ["ok", 3.5, []])
    assert err.value.problems == [
        "prompts[1]: expected a string, a list of {role, content} messages or token ids",
        "prompts[2]: empty after tokenisation",
    ]
    with pytest.raises(DataError, match="got a single prompt"):
        encode_prompts(tokenizer, "hello")


def test_invalid_settings_raise_config_errors(model, tokenizer):
    sampler = fp32_sampler(model, tokenizer)
    with pytest.raises(ConfigError, match=r"top_p: must be in \(0, 1\], got 0"):
        sampler.generate(["hi"], top_p=0)
    with pytest.raises(ConfigError, match="temperature: must be >= 0"):
        sampler.generate(["hi"], temperature=-1)
    with pytest.raises(ConfigError, match="max_new_tokens: must be >= 1, got 0"):
        sampler.generate(["hi"], max_new_tokens=0)
    with pytest.raises(ConfigError, match="dtype: expected one of auto"):
        HFSampler(model, tokenizer, dtype="int8")
