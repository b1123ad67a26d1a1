"""Padding, packing and the packed collator; packed losses must equal unpacked ones exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from alignloop.data import (
    IGNORE_INDEX,
    TokenizedExample,
    block_causal_mask,
    collate_packed,
    pack_examples,
    pad_batch,
    sequence_ids,
)
from tests.conftest import tiny_llama


def test_pad_batch_right_and_left():
    examples = [TokenizedExample([11, 12, 13], [0, 1, 1]), {"input_ids": [21, 22], "loss_mask": [1, 1]}]
    right = pad_batch(examples, pad_id=0)
    assert right["input_ids"].tolist() == [[11, 12, 13], [21, 22, 0]]
    assert right["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert right["labels"].tolist() == [[-100, 12, 13], [21, 22, -100]]
    left = pad_batch(examples, pad_id=0, side="left")
    assert left["input_ids"].tolist() == [[11, 12, 13], [0, 21, 22]]
    assert left["attention_mask"].tolist() == [[1, 1, 1], [0, 1, 1]]
    assert left["labels"].tolist() == [[-100, 12, 13], [-100, 21, 22]]


def test_pad_batch_without_loss_mask_trains_every_token():
    batch = pad_batch([{"input_ids": [5, 6]}, {"input_ids": [7]}], pad_id=2)
    assert batch["labels"].tolist() == [[5, 6], [7, -100]]


def test_pad_batch_rejects_unknown_side():
    with pytest.raises(ValueError, match="side must be 'right' or 'left'"):
        pad_batch([{"input_ids": [1]}], pad_id=0, side="middle")


def test_pack_examples_first_fit_decreasing():
    # Lengths 7, 5, 9, 3 into rows of 12, longest first: 9 opens row 0; 7 does not fit (16) and opens row 1;
    # 5 fits row 1 (7 + 5 = 12); 3 fits row 0 (9 + 3 = 12).
    examples = [TokenizedExample(list(range(100, 100 + n)), [1] * n) for n in (7, 5, 9, 3)]
    rows = pack_examples(examples, max_length=12)
    assert [row.indices for row in rows] == [[2, 3], [0, 1]]
    assert [row.lengths for row in rows] == [[9, 3], [7, 5]]
    assert rows[0].position_ids == list(range(9)) + list(range(3))
    assert rows[0].input_ids == list(range(100, 109)) + list(range(100, 103))
    # The first token of each example carries no loss.
    assert rows[1].loss_mask == [0] + [1] * 6 + [0] + [1] * 4


def test_pack_examples_truncates_long_and_drops_empty():
    examples = [TokenizedExample([1, 2, 3, 4, 5], [1, 1, 1, 1, 1]), TokenizedExample([], [])]
    rows = pack_examples(examples, max_length=4)
    assert [(row.input_ids, row.indices) for row in rows] == [([1, 2, 3, 4], [0])]


def test_sequence_ids_and_block_causal_mask():
    position_ids = torch.tensor([[0, 1, 0, 1, 2]])
    assert sequence_ids(position_ids).tolist() == [[0, 0, 1, 1, 1]]
    allowed = block_causal_mask(position_ids)[0, 0] == 0
    # Example A = tokens 0-1, example B = tokens 2-4; causal inside each, nothing across.
    expected = [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 1, 1, 1],
    ]
    assert allowed.int().tolist() == expected


def test_collate_packed_pads_with_own_positions():
    examples = [TokenizedExample([1, 2, 3], [0, 1, 1]), TokenizedExample([4, 5], [1, 1])]
    rows = pack_examples(examples, max_length=3)  # 3 + 2 > 3: one row each
    batch = collate_packed(rows, pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 5, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 1, 0]]
    assert batch["labels"].tolist() == [[-100, 2, 3], [-100, 5, -100]]
    assert batch["attention_mask"].shape == (2, 1, 3, 3)
    assert "attention_mask" not in collate_packed(rows, pad_id=0, block_mask=False)


def _per_token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of token t+1 given tokens <= t; -100 labels give 0 (the same shift transformers uses)."""
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), reduction="none"
    ).view(labels.shape[0], -1)


def _random_examples() -> list[TokenizedExample]:
    generator = torch.Generator().manual_seed(1)
    examples = []
    for length, prompt_len in ((7, 3), (5, 0), (9, 4), (3, 1), (6, 2)):
        ids = torch.randint(0, 49152, (length,), generator=generator).tolist()
        examples.append(TokenizedExample(ids, [0] * prompt_len + [1] * (length - prompt_len)))
    return examples


@pytest.mark.parametrize("block_mask", [True, False])
def test_packed_losses_equal_unpacked(block_mask):
    model = tiny_llama(seed=0)
    examples = _random_examples()
    unpacked = []  # (sum of token losses, number of trained tokens) per example, each run on its own
    with torch.no_grad():
        for example in examples:
            batch = pad_batch([example], pad_id=0)
            logits = model(input_ids=batch["input_ids"], use_cache=False).logits
            losses = _per_token_losses(logits, batch["labels"])
            unpacked.append((losses.sum(), (batch["labels"][:, 1:] != IGNORE_INDEX).sum()))

        rows = pack_examples(examples, max_length=12)
        assert len(rows) < len(examples)  # something was really packed
        batch = collate_packed(rows, pad_id=0, block_mask=block_mask)
        # With the 4D mask the default forward (which creates a KV cache) is fine; without it, transformers
        # only derives the block mask from position_ids when there is no cache.
        kwargs = {} if block_mask else {"use_cache": False}
        output = model(**batch, **kwargs)
        losses = _per_token_losses(output.logits, batch["labels"])

    for r, row in enumerate(rows):
        start = 0
        for index, length in zip(row.indices, row.lengths):
            # Loss at shifted position t predicts token t+1: an example spanning [start, start+length) owns
            # shifted positions start .. start+length-2 (its first token is never predicted).
            packed_sum = losses[r, start : start + length - 1].sum()
            torch.testing.assert_close(packed_sum, unpacked[index][0], atol=1e-5, rtol=0)
            start += length

    # transformers' own loss is the mean over all trained tokens of the batch: the same mean as unpacked.
    total = sum(s for s, _ in unpacked) / sum(n for _, n in unpacked)
    torch.testing.assert_close(output.loss, total, atol=1e-5, rtol=0)
