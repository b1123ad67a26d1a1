"""The word-level toy LM the RL behaviour tests train (tests/conftest.py), and the rule reward they optimise."""

from __future__ import annotations

from tests.conftest import target_fraction


def test_word_model_round_trips_text_and_scores(word_model_dir):
    from alignloop.models import load_causal_lm, load_tokenizer

    folder = word_model_dir
    tok = load_tokenizer(folder)
    ids = tok("yes no cat", add_special_tokens=False)["input_ids"]
    assert ids == [3, 4, 8] and tok.decode(ids) == "yes no cat"
    assert load_causal_lm(folder).config.vocab_size == 16
    # "yes no yes" → 2 of 3 words; empty response → 0
    assert target_fraction([], ["yes no yes", ""]) == [2 / 3, 0.0]
