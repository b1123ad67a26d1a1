"""The shared-prompt pair layout: same log-probs and gradients as plain prompt+completion rows, in one forward."""

from __future__ import annotations

import json

import pytest
import torch

from alignloop.errors import DataError
from alignloop.models import build_tiny_llama
from alignloop.train.batches import EpochBatchSource
from alignloop.train.dpo_batch import (
    LengthGroupedBatchSource,
    PairExample,
    branch_attention_mask,
    collate_pairs,
    pair_logps,
)
from alignloop.train.dpo_data import detect_format, load_pairs

PAD = 2


def pairs() -> list[PairExample]:
    g = torch.Generator().manual_seed(0)

    def ids(n: int) -> list[int]:
        return torch.randint(3, 5000, (n,), generator=g).tolist()

    # different prompt and completion lengths so rows are padded differently; a 1-token prompt has no shared prefix
    return [
        PairExample(ids(6), ids(4), ids(2), index=0),
        PairExample(ids(1), ids(3), ids(5), index=1),
        PairExample(ids(9), ids(1), ids(1), index=2),
    ]


def plain_logp(model, prompt: list[int], completion: list[int]) -> torch.Tensor:
    """Independent reference: one unpadded forward of prompt + completion, full fp64 log-softmax."""
    ids = torch.tensor([prompt + completion])
    logits = model(input_ids=ids, use_cache=False).logits[0, :-1].double()
    logps = torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None]).squeeze(-1)
    return logps[len(prompt) - 1 :].sum()


def test_mask_lets_branches_see_the_prefix_but_not_each_other():
    # row: [pad, s0, c0, c1, r0]  (segments -1, 0, 1, 1, 2)
    segments = torch.tensor([[-1, 0, 1, 1, 2]])
    allowed = branch_attention_mask(segments)[0, 0].int().tolist()
    assert allowed == [
        [1, 0, 0, 0, 0],  # padding sees only itself
        [0, 1, 0, 0, 0],
        [0, 1, 1, 0, 0],
        [0, 1, 1, 1, 0],
        [0, 1, 0, 0, 1],  # the rejected branch skips the chosen tokens
    ]
    additive = branch_attention_mask(segments, torch.float32)[0, 0]
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
    assert out.chosen_tokens.tolist() == [4, 3, 1] and out.rejected_tokens.tolist() == [2, 5, 1]


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
