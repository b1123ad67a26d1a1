"""Shared-prompt RL forwards (stages/rl/shared_prompt.py): layout by hand, equal log-probs and gradients, whole groups."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from alignloop.config import load_config
from alignloop.models import load_causal_lm
from alignloop.rollout import forward_logprobs
from alignloop.stages.rl.experience import minibatch_schedule
from alignloop.stages.rl.grpo import GRPOConfig, GRPOStage
from alignloop.stages.rl.ppo import PPOConfig, PPOStage
from alignloop.stages.rl.shared_prompt import (
    shared_prompt_batch,
    shared_prompt_logprobs,
)
from alignloop.train.loop import train
from tests.conftest import write_prompts

PAD = 0


def _rows():
    """Rows 0 and 2 share prompt [5, 6, 7]; row 1 has prompt [3] (left padded). response_start = 3."""
    ids = torch.tensor([
        [5, 6, 7, 8, 9, PAD],
        [PAD, PAD, 3, 4, 11, 12],
        [5, 6, 7, 10, PAD, PAD],
    ])
    mask = torch.tensor([
        [1, 1, 1, 1, 1, 0],
        [0, 0, 1, 1, 1, 1],
        [1, 1, 1, 1, 0, 0],
    ])
    return ids, mask


def test_layout_by_hand():
    ids, mask = _rows()
    batch = shared_prompt_batch(ids, mask, response_start=3, pad_id=PAD)
    # row 0: prefix [5, 6] | branch 1 [7, 8, 9] | branch 2 [7, 10]; row 1 (left padded): prefix [] | [3, 4, 11, 12]
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 9, 7, 10], [PAD, PAD, PAD, 3, 4, 11, 12]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 4, 2, 3], [0, 0, 0, 0, 1, 2, 3]]
    assert batch.segments.tolist() == [[0, 0, 1, 1, 1, 2, 2], [-1, -1, -1, 1, 1, 1, 1]]
    # keep = the most branch tokens in a row (5 in row 0, 4 in row 1); a position predicts its branch's next token
    assert batch.labels.tolist() == [[8, 9, -100, 10, -100], [-100, 4, 11, 12, -100]]
    grid = torch.zeros(3 * 3, dtype=torch.long)
    grid[batch.target] = batch.labels.flatten()[batch.source]
    assert grid.view(3, 3).tolist() == [[8, 9, 0], [4, 11, 12], [10, 0, 0]]  # the [N, R] responses, 0 = padding


def test_small_groups_share_a_row_and_cannot_see_each_other():
    """Groups C (size 9), A (5) and B (2): first-fit decreasing in capacity 9 puts A and B in one row."""
    ids = torch.tensor([
        [20, 21, 22, 23, 24, 25, 26],
        [PAD, 5, 6, 7, PAD, PAD, PAD],
        [PAD, PAD, 3, 4, PAD, PAD, PAD],
        [20, 21, 22, 27, PAD, PAD, PAD],
        [PAD, 5, 6, 8, PAD, PAD, PAD],
    ])
    mask = (ids != PAD).long()
    batch = shared_prompt_batch(ids, mask, response_start=3, pad_id=PAD)
    # row 1: prefixes of A [5] and B [] first, then branches A1 [6, 7], A2 [6, 8], B1 [3, 4]
    assert batch.input_ids.tolist() == [[20, 21, 22, 23, 24, 25, 26, 22, 27], [PAD, PAD, 5, 6, 7, 6, 8, 3, 4]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 4, 5, 6, 2, 3], [0, 0, 0, 1, 2, 1, 2, 0, 1]]
    assert batch.segments.tolist() == [[0, 0, 1, 1, 1, 1, 1, 2, 2], [-1, -1, 0, 1, 1, 2, 2, 3, 3]]
    assert batch.owner.tolist() == [[0] * 9, [-1, -1, 1, 1, 1, 1, 1, 2, 2]]  # groups in order of first row: C, A, B
    assert batch.labels.tolist() == [[23, 24, 25, 26, -100, 27, -100], [-100, 7, -100, 8, -100, 4, -100]]
    grid = torch.zeros(5 * 4, dtype=torch.long)
    grid[batch.target] = batch.labels.flatten()[batch.source]
    assert grid.view(5, 4).tolist() == [[23, 24, 25, 26], [7, 0, 0, 0], [4, 0, 0, 0], [27, 0, 0, 0], [8, 0, 0, 0]]
    from alignloop.stages.dpo.batch import branch_attention_mask

    allowed = branch_attention_mask(batch.segments, batch.owner)[1, 0]
    assert allowed[3, 2] and allowed[4, 3]  # A's first branch sees A's prefix and itself
    assert not allowed[5, 4] and allowed[5, 2]  # A's second branch: not the first branch, but the prefix
    assert not allowed[7, 2] and not allowed[7, 6]  # B never sees A


def test_rows_without_a_prompt_token_are_rejected():
    with pytest.raises(ValueError, match="row 0 has no prompt token"):
        shared_prompt_batch(torch.tensor([[PAD, 4]]), torch.tensor([[0, 1]]), response_start=1)


def _grouped_rollout(generator):
    """4 prompts × 3 responses of random lengths, left-padded prompts of different lengths.

    The first group is long and the others short, so short groups share packed rows.
    """
    prompts = [[11, 12, 13, 14, 15], [21, 22], [31, 32, 33], [41]]
    rows, masks = [], []
    for g, prompt in enumerate(prompts):
        for _ in range(3):
            length = 6 if g == 0 else int(torch.randint(1, 4, (1,), generator=generator))
            response = torch.randint(40, 900, (length,), generator=generator).tolist()
            rows.append([PAD] * (5 - len(prompt)) + prompt + response + [PAD] * (6 - length))
            masks.append([0] * (5 - len(prompt)) + [1] * (len(prompt) + length) + [0] * (6 - length))
    return torch.tensor(rows), torch.tensor(masks)


def test_log_probs_and_gradients_equal_plain_rows():
    torch.manual_seed(0)
    model = load_causal_lm("tiny-llama", lora={"r": 4, "alpha": 8})
    model.train()  # dropout-free tiny model: train mode must not change the numbers
    ids, mask = _grouped_rollout(torch.Generator().manual_seed(3))
    response_mask = mask[:, 5:].float()
    assert shared_prompt_batch(ids, mask, 5).rows < 4  # some groups share a row
    weights = torch.randn(response_mask.shape, generator=torch.Generator().manual_seed(4))
    results = []
    for fn in (forward_logprobs, shared_prompt_logprobs):
        model.zero_grad()
        logp = fn(model, ids, mask, 5, 0.7) * response_mask
        (logp * weights).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results.append((logp.detach(), grads))
    (plain, plain_grads), (shared, shared_grads) = results
    torch.testing.assert_close(shared, plain, rtol=1e-5, atol=1e-5)
    assert (shared[response_mask == 0] == 0).all()
    assert plain_grads.keys() == shared_grads.keys()
    for key in plain_grads:
        torch.testing.assert_close(shared_grads[key], plain_grads[key], rtol=1e-4, atol=1e-6, msg=key)


def test_group_schedule_keeps_minibatches_and_orders_their_rows_by_group():
    plain = minibatch_schedule(12, 6, 3, epochs=2, seed=1, rollout_index=0)
    grouped = minibatch_schedule(12, 6, 3, epochs=2, seed=1, rollout_index=0, group_size=3)
    g = torch.Generator().manual_seed(1 * 1_000_003 + 0 * 101 + 0)
    order = torch.randperm(12, generator=g).tolist()
    assert plain[:4] == [order[i : i + 3] for i in range(0, 12, 3)]  # group_size 1: the row shuffle as it was
    assert len(grouped) == 8
    for step in range(4):  # each optimizer step (2 micro-batches) holds the same rows as without groups ...
        rows = grouped[2 * step] + grouped[2 * step + 1]
        assert sorted(rows) == sorted(plain[2 * step] + plain[2 * step + 1])
        assert rows == sorted(rows, key=lambda i: (i // 3, i))  # ... ordered by group (prompt)
    assert grouped != plain


def _train_with_and_without_shared_prompts(tmp_path, model, config_cls, stage_cls, section, *extra):
    """The same run with ``share_prompt`` false then true: (shared_prompt_logprobs calls, saved adapters) each."""
    import alignloop.stages.rl.stage as rl_stage

    prompts = write_prompts(tmp_path / "prompts.jsonl")
    adapters, calls = [], []
    for flag in ("false", "true"):
        cfg = load_config(config_cls, None, [
            f"model={model}", f"data.train={prompts}", "data.eval=null", f"{section}.eval_prompts=0",
            f"{section}.reward=tests.conftest:target_fraction", f"{section}.rollouts=3",
            f"{section}.prompts_per_rollout=4", f"{section}.num_generations=3", f"{section}.max_new_tokens=6",
            "train.batch_size=12", "train.micro_batch_size=6", "train.precision=fp32", "train.save_every=0",
            "train.lr=1e-2", "lora.r=4", "lora.alpha=8", f"{section}.share_prompt={flag}", *extra,
        ])
        torch.manual_seed(0)
        stage = stage_cls(cfg)
        original = rl_stage.shared_prompt_logprobs
        counted = []
        rl_stage.shared_prompt_logprobs = lambda *a, **k: counted.append(1) or original(*a, **k)
        try:
            train(stage, tmp_path / flag)
        finally:
            rl_stage.shared_prompt_logprobs = original
        calls.append(len(counted))
        adapters.append(load_file(str(tmp_path / flag / "model" / "adapter_model.safetensors")))
    assert adapters[0].keys() == adapters[1].keys()
    moved = max(float(v.abs().max()) for k, v in adapters[0].items() if "lora_B" in k)
    assert moved > 1e-4  # the adapters did train, so comparing them means something
    return calls, adapters


def test_grpo_trains_the_same_with_and_without_shared_prompts(tmp_path, word_model_dir):
    """One optimizer step per rollout on every row: the shared-prompt forwards give the same adapters."""
    calls, adapters = _train_with_and_without_shared_prompts(tmp_path, word_model_dir, GRPOConfig, GRPOStage, "grpo")
    # shared: per rollout one reference forward + 2 micro-batches of policy forwards, 3 rollouts
    assert calls == [0, 3 * (1 + 2)]
    for key in adapters[0]:
        torch.testing.assert_close(adapters[1][key], adapters[0][key], rtol=1e-3, atol=1e-5, msg=key)


def test_ppo_with_several_answers_per_prompt_shares_prompts_too(tmp_path, word_model_dir):
    """PPO with G = 3: the policy's old and training forwards and the reference's share the prompt (the critic
    keeps plain rows), and training ends at the same adapters."""
    calls, adapters = _train_with_and_without_shared_prompts(tmp_path, word_model_dir, PPOConfig, PPOStage, "ppo",
                                                             "ppo.reuse_sampler_logprobs=false")
    # shared: per rollout the old-policy forward, the reference forward and 2 training micro-batches
    assert calls == [0, 3 * (1 + 1 + 2)]
    for key in adapters[0]:
        torch.testing.assert_close(adapters[1][key], adapters[0][key], rtol=1e-3, atol=1e-5, msg=key)
