"""Gold scorers: the ground truth the simulated annotator labels with and evaluation reports.

The default gold is VADER (the ``vaderSentiment`` PyPI package, a rule-based sentiment lexicon
that nobody in this project wrote): its compound score of the completion, in [-1, 1]. The trained
reward model only ever sees pairs labelled *through* this scorer, never the scorer itself, so gold
reward measured on a policy shows how much of the proxy reward's gain is real.

Choose a gold scorer by name: a key of ``GOLD_SCORERS`` or ``"module:function"`` /
``"path/to/file.py:function"`` naming ``f(prompts, completions) -> list[float]``.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, runtime_checkable

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from alignloop.errors import AlignloopError, ConfigError
from alignloop.utils.callables import load_callable


@runtime_checkable
class GoldScorer(Protocol):
    """Scores completions with a fixed, known-true preference; higher is better."""

    name: str

    def score(self, prompts: list[str], completions: list[str]) -> list[float]: ...


class VaderGold:
    """VADER compound sentiment of the completion alone (the prompt is ignored), in [-1, 1]."""

    name = "vader"

    def __init__(self) -> None:
        self._analyzer = SentimentIntensityAnalyzer()

    def score(self, prompts: list[str], completions: list[str]) -> list[float]:
        return [float(self._analyzer.polarity_scores(text)["compound"]) for text in completions]


class FunctionGold:
    """A user function ``f(prompts, completions) -> list[float]`` as a gold scorer."""

    def __init__(self, fn: Callable[..., Any], name: str):
        self.fn = fn
        self.name = name

    def score(self, prompts: list[str], completions: list[str]) -> list[float]:
        values = list(self.fn(list(prompts), list(completions)))
        if len(values) != len(completions):
            raise AlignloopError(
                f"gold scorer {self.name!r} returned {len(values)} scores for {len(completions)} completions"
            )
        try:
            return [float(value) for value in values]
        except (TypeError, ValueError) as err:
            raise AlignloopError(f"gold scorer {self.name!r} returned a non-number: {err}") from None


GOLD_SCORERS: dict[str, Callable[[], GoldScorer]] = {"vader": VaderGold}


def get_gold_scorer(name: str | GoldScorer) -> GoldScorer:
    """The gold scorer called ``name`` (a ``GOLD_SCORERS`` key or ``module:function``); scorers pass through."""
    if not isinstance(name, str):
        if isinstance(name, GoldScorer):
            return name
        raise ConfigError(f"gold scorer: expected a name or an object with 'name' and 'score', got {name!r}")
    if name in GOLD_SCORERS:
        return GOLD_SCORERS[name]()
    if ":" in name:
        fn = load_callable(name, what="gold scorer")
        if isinstance(fn, GoldScorer):
            return fn
        if not callable(fn):
            raise ConfigError(f"gold scorer {name!r}: {type(fn).__name__} object is not callable")
        return FunctionGold(fn, name)
    known = ", ".join(sorted(GOLD_SCORERS))
    raise ConfigError(f"gold scorer {name!r}: unknown; use one of {known} or 'module:function'")
