"""The shared-prompt pair layout: same log-probs and gradients as plain prompt+completion rows, in one forward."""

from __future__ import annotations

import json

import pytest
import torch

from alignloop.errors import DataError
from alignloop.models import build_tiny_llama
from alignloop.stages.dpo.batch import (
    LengthGroupedBatchSource,
    PairExample,
    PromptGroupedBatchSource,
    branch_attention_mask,
    collate_pairs,
    pair_logps,
)
from alignloop.stages.dpo.data import detect_format, load_pairs
from alignloop.train.batches import EpochBatchSource

PAD = 2


def pairs() -> list[PairExample]:
    g = torch.Generator().manual_seed(0)

    def ids(n: int) -> list[int]:
        return torch.randint(3, 5000, (n,), generator=g).tolist()

    # layout lengths (prompt + chosen + rejected + 1): 20, 8, 7, 5. The first pair fills a row of 20 alone; the
    # other three (8 + 7 + 5 = 20) share the second row. A 1-token prompt has no shared prefix.
    return [
        PairExample(ids(9), ids(6), ids(4), index=0),
        PairExample(ids(3), ids(2), ids(2), index=1),
        PairExample(ids(2), ids(3), ids(1), index=2),
        PairExample(ids(1), ids(1), ids(2), index=3),
    ]


def plain_logp(model, prompt: list[int], completion: list[int]) -> torch.Tensor:
    """Independent reference: one unpadded forward of prompt + completion, full fp64 log-softmax."""
    ids = torch.tensor([prompt + completion])
    logits = model(input_ids=ids, use_cache=False).logits[0, :-1].double()
    logps = torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None]).squeeze(-1)
    return logps[len(prompt) - 1 :].sum()


def test_mask_lets_branches_see_the_prefix_but_not_each_other():
    # row: [pad, s0 (pair 0), t0 (pair 1), c0, c1, r0 (pair 0), c0 (pair 1)]
    segments = torch.tensor([[-1, 0, 0, 1, 1, 2, 1]])
    pair = torch.tensor([[-1, 0, 1, 0, 0, 0, 1]])
    allowed = branch_attention_mask(segments, pair)[0, 0].int().tolist()
    assert allowed == [
        [1, 0, 0, 0, 0, 0, 0],  # padding sees only itself
        [0, 1, 0, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0, 0],  # pair 1's prefix does not see pair 0's
        [0, 1, 0, 1, 0, 0, 0],
        [0, 1, 0, 1, 1, 0, 0],
        [0, 1, 0, 0, 0, 1, 0],  # the rejected branch skips the chosen tokens
        [0, 0, 1, 0, 0, 0, 1],  # pair 1's branch sees its own prefix only
    ]
    additive = branch_attention_mask(segments, pair, torch.float32)[0, 0]
    assert (additive == 0).int().tolist() == allowed
    assert additive.min() == torch.finfo(torch.float32).min


def test_collate_layout_positions_and_labels():
    batch = collate_pairs([PairExample([10, 11, 12], [20, 21], [30], index=7)], pad_id=PAD)
    # prompt[:-1] | prompt[-1] chosen | prompt[-1] rejected  = 10 11 | 12 20 21 | 12 30
    assert batch["input_ids"].tolist() == [[10, 11, 12, 20, 21, 12, 30]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 2, 3]]
    # each branch token predicts the next token of its branch; prefix and branch ends predict nothing
    assert batch["labels"].tolist() == [[-100, -100, 20, 21, -100, 30, -100]]
    assert batch["keep"] == 2 + 1 + 2 and batch["index"].tolist() == [7]
    assert batch["pair"].tolist() == [[0] * 7]


def test_short_pairs_share_a_row_with_prefixes_first():
    long = PairExample([1, 2, 3, 4, 5], [6, 7], [8], index=0)  # 5 + 2 + 1 + 1 = 9 tokens: the row width
    short_a = PairExample([10, 11], [12], [13], index=1)  # 5 tokens
    short_b = PairExample([20], [21], [22], index=2)  # 4 tokens: 5 + 4 fit in 9, so they share a row
    batch = collate_pairs([long, short_a, short_b], pad_id=PAD)
    assert batch["input_ids"].tolist() == [
        [1, 2, 3, 4, 5, 6, 7, 5, 8],
        # prefixes first (short_b has none), then branches: [11 12 | 11 13] and [20 21 | 20 22]
        [10, 11, 12, 11, 13, 20, 21, 20, 22],
    ]
    assert batch["position_ids"].tolist()[1] == [0, 1, 2, 1, 2, 0, 1, 0, 1]
    assert batch["pair"].tolist()[1] == [1, 1, 1, 1, 1, 2, 2, 2, 2]
    assert batch["labels"].tolist()[1] == [-100, 12, -100, 13, -100, 21, -100, 22, -100]
    assert batch["keep"] == 8  # row 2 ends with 8 branch tokens
    assert batch["index"].tolist() == [0, 1, 2]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_pair_logps_equal_separate_forwards(attention):
    model = build_tiny_llama()
    model.config._attn_implementation = attention
    examples = pairs()
    mask_dtype = None if attention == "sdpa" else torch.float32
    out = pair_logps(model, collate_pairs(examples, PAD, mask_dtype))
    for i, e in enumerate(examples):
        assert out.chosen[i].item() == pytest.approx(plain_logp(model, e.prompt_ids, e.chosen_ids).item(), abs=1e-4)
        assert out.rejected[i].item() == pytest.approx(plain_logp(model, e.prompt_ids, e.rejected_ids).item(), abs=1e-4)
    assert out.chosen_tokens.tolist() == [6, 2, 3, 1] and out.rejected_tokens.tolist() == [4, 2, 1, 2]
    assert collate_pairs(examples, PAD)["input_ids"].shape[0] == 2  # three pairs share the second row


def test_pair_gradients_equal_separate_forwards():
    examples = pairs()
    shared = build_tiny_llama()
    out = pair_logps(shared, collate_pairs(examples, PAD))
    (out.chosen - 2 * out.rejected).sum().backward()
    plain = build_tiny_llama()
    total = sum(plain_logp(plain, e.prompt_ids, e.chosen_ids) - 2 * plain_logp(plain, e.prompt_ids, e.rejected_ids) for e in examples)
    total.backward()
    for (name, a), (_, b) in zip(shared.named_parameters(), plain.named_parameters()):
        assert torch.allclose(a.grad, b.grad.float(), atol=1e-4, rtol=1e-3), name


def all_pairs_of_samples() -> list[PairExample]:
    """Two prompts with 4 samples each, labelled in all 6 pairs (as the collect stage writes them), plus a pair
    whose prompt is shared with nothing."""
    g = torch.Generator().manual_seed(1)

    def ids(n: int) -> list[int]:
        return torch.randint(3, 5000, (n,), generator=g).tolist()

    out = []
    for prompt_len, lengths in ((5, (4, 2, 6, 3)), (2, (1, 5, 2, 2))):
        prompt, samples = ids(prompt_len), [ids(n) for n in lengths]
        for a in range(4):
            for b in range(a + 1, 4):
                first, second = (a, b) if (a + b) % 2 else (b, a)  # chosen on either side
                out.append(PairExample(prompt, samples[first], samples[second], index=len(out)))
    out.append(PairExample(ids(3), ids(2), ids(3), index=len(out)))
    return out


def test_shared_prompt_layout_by_hand():
    examples = [PairExample([10, 11, 12], [20, 21], [30], index=0), PairExample([10, 11, 12], [40], [20, 21], index=1)]
    batch = collate_pairs(examples, pad_id=PAD, share_prompts=True)
    # one group: prompt[:-1] | 12 A | 12 B | 12 C, each completion once
    assert batch["input_ids"].tolist() == [[10, 11, 12, 20, 21, 12, 30, 12, 40]]
    assert batch["segments"].tolist() == [[0, 0, 1, 1, 1, 2, 2, 3, 3]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 2, 3, 2, 3]]
    assert batch["labels"].tolist() == [[-100, -100, 20, 21, -100, 30, -100, 40, -100]]
    assert batch["branches"].tolist() == [[0, 1, 2], [0, 3, 1]]  # (group, chosen branch, rejected branch)
    assert batch["index"].tolist() == [0, 1]
    unshared = collate_pairs(examples, pad_id=PAD)
    assert unshared["branches"].tolist() == [[0, 1, 2], [1, 1, 2]] and unshared["input_ids"].shape == (2, 7)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_shared_prompt_logps_equal_separate_forwards(attention):
    model = build_tiny_llama()
    model.config._attn_implementation = attention
    examples = all_pairs_of_samples()
    batch = collate_pairs(examples, PAD, None if attention == "sdpa" else torch.float32, share_prompts=True)
    out = pair_logps(model, batch)
    for i, e in enumerate(examples):
        assert out.chosen[i].item() == pytest.approx(plain_logp(model, e.prompt_ids, e.chosen_ids).item(), abs=1e-4)
        assert out.rejected[i].item() == pytest.approx(plain_logp(model, e.prompt_ids, e.rejected_ids).item(), abs=1e-4)
        assert (out.chosen_tokens[i], out.rejected_tokens[i]) == (len(e.chosen_ids), len(e.rejected_ids))
    # each prompt's prefix once and each sample once (+1: the prompt's last token opens every branch) ...
    shared_tokens = int((batch["segments"] >= 0).sum())
    assert shared_tokens == (4 + 5 + 3 + 7 + 4) + (1 + 2 + 6 + 3 + 3) + (2 + 3 + 4)
    # ... where one pair per layout repeats the prefix 6 times and every sample 3 times
    plain_tokens = int((collate_pairs(examples, PAD)["segments"] >= 0).sum())
    assert plain_tokens == (6 * 4 + 3 * 19) + (6 * 1 + 3 * 14) + 9


def test_shared_prompt_gradients_equal_unshared():
    examples = all_pairs_of_samples()
    grads = []
    for share in (True, False):
        model = build_tiny_llama()
        out = pair_logps(model, collate_pairs(examples, PAD, share_prompts=share))
        (out.chosen - 2 * out.rejected).sum().backward()
        grads.append({name: p.grad.clone() for name, p in model.named_parameters()})
    for name, grad in grads[0].items():
        assert torch.allclose(grad, grads[1][name], atol=1e-4, rtol=1e-3), name


def test_prompt_grouped_batches_keep_a_prompts_pairs_together():
    prompts = [(i // 6,) for i in range(30)]  # 5 prompts × 6 pairs
    source = PromptGroupedBatchSource(list(range(30)), 6, lambda xs: xs, prompts, seed=3)
    epoch = [source.next_batch() for _ in range(5)]
    assert all(len({prompts[i] for i in batch}) == 1 for batch in epoch)  # a batch of 6 is one prompt's pairs
    assert sorted(i for batch in epoch for i in batch) == list(range(30))
    assert [b[0] // 6 for b in epoch] != list(range(5))  # prompts are shuffled ...
    again = PromptGroupedBatchSource(list(range(30)), 6, lambda xs: xs, prompts, seed=3)
    assert [again.next_batch() for _ in range(5)] == epoch  # ... by (seed, epoch) only
    ranks = [PromptGroupedBatchSource(list(range(30)), 6, lambda xs: xs, prompts, seed=3, rank=r, world_size=2)
             for r in (0, 1)]
    shares = [ranks[r]._epoch_order(0) for r in (0, 1)]
    assert sorted(shares[0] + shares[1]) == list(range(30)) and len(shares[0]) == len(shares[1]) == 15


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_rankings_are_detected_and_expanded(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [{"prompt": "Q?", "completions": ["a", "b", "c"], "ranking": [2, [0, 1]]}])
    assert detect_format(path) == "ranking"
    pairs_ = load_pairs(path)
    # c beats a and b; a and b are tied, so they give no pair
    assert [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs_] == [("c", "a"), ("c", "b")]
    pair_path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Q?", "chosen": "a", "rejected": "b"}])
    assert detect_format(pair_path) == "pair"


def test_all_tied_rankings_are_a_data_error(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", [{"prompt": "Q?", "completions": ["a", "b"], "ranking": [[0, 1]]}])
    with pytest.raises(DataError, match="every completion is tied"):
        load_pairs(path)


def test_length_grouped_batches_cover_the_epoch_with_less_padding():
    lengths = [(i * 37) % 101 + 1 for i in range(40)]  # lengths 1..101, scattered
    data = list(range(40))

    def source(cls, **kw):
        return cls(data, 4, lambda items: items, seed=3, **kw)

    grouped = source(LengthGroupedBatchSource, lengths=lengths, group=5)
    plain = source(EpochBatchSource)
    epoch = [grouped.next_batch() for _ in range(10)]
    assert sorted(i for b in epoch for i in b) == data  # every example exactly once per epoch
    padding = lambda batches: sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)  # noqa: E731
    assert padding(epoch) < padding([plain.next_batch() for _ in range(10)]) / 2
    # the order is a function of (seed, epoch): a fresh source resumed at position 12 continues identically
    again = source(LengthGroupedBatchSource, lengths=lengths, group=5)
    again.load_state_dict({"epoch": 0, "global_pos": 12, "seed": 3, "n": 40})
    assert again.next_batch() == epoch[3]
