"""Shared-prompt packing: one forward pass, each completion encoded once, same scores as encoding alone."""

from __future__ import annotations

import pytest
import torch

from alignloop.models import TINY_MODEL, ScalarHeadModel
from alignloop.models.shared_prompt import (
    ScoreGroup,
    attention_mask_for,
    pack_groups,
    score_packed,
)
from alignloop.stages.rm.data import PreferenceExample, collate_preferences

PAD = 2
PROMPT = [1, 5, 6, 7]
GROUPS = [
    ScoreGroup(PROMPT, [[8, 9], [10, 11, 12], [8, 9]]),  # a duplicate completion
    ScoreGroup([1, 5], [[13], []]),  # an empty completion scores at the prompt's last token
    ScoreGroup(PROMPT, [[14, 15, 16, 17, 18]]),  # same prompt as group 0: merged with it
]


@pytest.fixture(scope="module")
def model() -> ScalarHeadModel:
    torch.manual_seed(0)
    return ScalarHeadModel.from_causal_lm(TINY_MODEL, num_outputs=2).eval()


def _alone(model: ScalarHeadModel, prompt: list[int], completion: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model.score(torch.tensor([prompt + completion]))[0]


def test_layout_by_hand():
    packed = pack_groups(GROUPS, PAD)
    # unique completions in first-seen order: [8,9]=0, [10,11,12]=1, [13]=2, []=3, [14..18]=4
    assert packed.index == [[0, 1, 0], [2, 3], [4]]
    # the merged PROMPT segment (4 + 2 + 3 + 5 = 14 tokens) fills row 0; [1,5] + [13] goes to row 1
    assert packed.input_ids.tolist()[0] == PROMPT + [8, 9, 10, 11, 12, 14, 15, 16, 17, 18]
    assert packed.input_ids.tolist()[1] == [1, 5, 13] + [PAD] * 11
    assert packed.position_ids.tolist()[0] == [0, 1, 2, 3, 4, 5, 4, 5, 6, 4, 5, 6, 7, 8]
    assert packed.n_tokens == 14 + 3  # each prompt once, each unique completion once, no padding counted
    assert packed.end_cols.tolist() == [5, 8, 2, 1, 13] and packed.end_rows.tolist() == [0, 0, 1, 1, 0]
    allowed = packed.allowed[0]
    assert allowed[7, :4].all() and allowed[7, 6] and not allowed[7, 4:6].any()  # completion 2 sees the prompt only
    assert not allowed[3, 4]  # no look-ahead


def test_packed_scores_equal_scoring_each_sequence_alone(model):
    packed = pack_groups(GROUPS, PAD)
    with torch.no_grad():
        scores = score_packed(model, packed)
    for group, row in zip(GROUPS, packed.index):
        for completion, unique in zip(group.completions, row):
            assert torch.allclose(scores[unique], _alone(model, group.prompt_ids, completion), atol=1e-5)


@pytest.mark.parametrize("side", ["left", "right"])
def test_packed_scores_equal_a_padded_batch(model, side):
    sequences = [PROMPT + [8, 9], PROMPT + [10, 11, 12], [1, 5, 13]]
    width = max(map(len, sequences))
    ids = torch.full((3, width), PAD)
    mask = torch.zeros((3, width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        cols = slice(0, len(seq)) if side == "right" else slice(width - len(seq), width)
        ids[row, cols], mask[row, cols] = torch.tensor(seq), 1
    packed = pack_groups([ScoreGroup(PROMPT, [[8, 9], [10, 11, 12]]), ScoreGroup([1, 5], [[13]])], PAD)
    with torch.no_grad():
        assert torch.allclose(score_packed(model, packed), model.score(ids, mask), atol=1e-5)


@pytest.mark.parametrize("options", [{"share_prompt": False}, {"max_segment": 8}])
def test_unshared_and_split_segments_give_the_same_scores(model, options):
    with torch.no_grad():
        reference = score_packed(model, pack_groups(GROUPS, PAD))
        packed = pack_groups(GROUPS, PAD, **options)
        assert torch.allclose(score_packed(model, packed), reference, atol=1e-5)
    assert packed.n_tokens > 17  # the prompt is repeated now


def test_eager_attention_takes_an_additive_mask(model):
    packed = pack_groups(GROUPS, PAD)
    with torch.no_grad():
        reference = score_packed(model, packed)
        model.config._attn_implementation = "eager"
        try:
            mask = attention_mask_for(model, packed.allowed)
            assert mask.dtype == torch.float32 and mask.shape == (2, 1, 14, 14)
            assert torch.allclose(score_packed(model, packed), reference, atol=1e-5)
        finally:
            model.config._attn_implementation = "sdpa"


def test_a_ranking_of_k_completions_is_encoded_once_in_one_forward_pass(model):
    completions = [[20, 21], [22, 23, 24], [25], [26, 27, 28, 29]]
    example = PreferenceExample(PROMPT, completions, [[2], [0], [3], [1]], is_pair=False)
    batch = collate_preferences([example], PAD)
    calls = []
    hook = model.backbone.register_forward_hook(lambda module, args, output: calls.append(args))
    try:
        with torch.no_grad():
            scores = score_packed(model, batch.packed)
    finally:
        hook.remove()
    assert len(calls) == 1  # one forward pass for the whole ranking
    assert batch.packed.input_ids.numel() == len(PROMPT) + 2 + 3 + 1 + 4  # one row, no prompt copies, no padding
    assert batch.packed.n_unique == 4 and batch.packed.index == [[0, 1, 2, 3]]
    for k, completion in enumerate(completions):
        assert torch.allclose(scores[k], _alone(model, PROMPT, completion), atol=1e-5)


def test_empty_prompt_and_completion_is_rejected():
    with pytest.raises(ValueError, match="empty prompt with an empty completion"):
        pack_groups([ScoreGroup([], [[]])], PAD)
