"""Gold scorers: VADER, the registry and user 'module:function' scorers."""

from __future__ import annotations

import pytest
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from alignloop.errors import AlignloopError, ConfigError
from alignloop.eval.gold import (
    GOLD_SCORERS,
    FunctionGold,
    GoldScorer,
    VaderGold,
    get_gold_scorer,
)


def test_vader_gold_is_the_compound_score_of_the_completion():
    gold = get_gold_scorer("vader")
    assert isinstance(gold, VaderGold) and isinstance(gold, GoldScorer) and gold.name == "vader"
    texts = ["I love this, it is wonderful!", "This is terrible and I hate it.", "The box is on the table."]
    scores = gold.score(["a terrible prompt"] * 3, texts)
    analyzer = SentimentIntensityAnalyzer()  # the package itself, as the independent reference
    assert scores == [analyzer.polarity_scores(text)["compound"] for text in texts]
    assert scores[0] > 0.5 and scores[1] < -0.5 and scores[2] == 0.0
    assert gold.score([], []) == []


def test_registry_and_pass_through():
    assert "vader" in GOLD_SCORERS
    gold = VaderGold()
    assert get_gold_scorer(gold) is gold


def test_user_function_gold(tmp_path):
    path = tmp_path / "golds.py"
    path.write_text("def length(prompts, completions):\n    return [len(c) for c in completions]\n")
    gold = get_gold_scorer(f"{path}:length")
    assert isinstance(gold, FunctionGold) and gold.name == f"{path}:length"
    assert gold.score(["p", "p"], ["ab", "abcd"]) == [2.0, 4.0]


def test_gold_errors(tmp_path):
    with pytest.raises(ConfigError) as err:
        get_gold_scorer("sentiment")
    assert str(err.value) == "gold scorer 'sentiment': unknown; use one of vader or 'module:function'"
    with pytest.raises(ConfigError) as err:
        get_gold_scorer("not_a_module_xyz:f")
    assert str(err.value) == "gold scorer 'not_a_module_xyz:f': module 'not_a_module_xyz' not found"
    short = FunctionGold(lambda prompts, completions: [1.0], name="short")
    with pytest.raises(AlignloopError) as err:
        short.score(["p", "p"], ["a", "b"])
    assert str(err.value) == "gold scorer 'short' returned 1 scores for 2 completions"
    wordy = FunctionGold(lambda prompts, completions: ["good"], name="wordy")
    with pytest.raises(AlignloopError, match="gold scorer 'wordy' returned a non-number"):
        wordy.score(["p"], ["a"])
