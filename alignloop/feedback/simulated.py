"""A simulated annotator: noisy Bradley–Terry preferences on a gold scorer.

For two completions a and b of one prompt, with gold scores g(a) and g(b),

    P(a ≻ b) = σ((g(a) − g(b)) / temperature)

and, after sampling the label, it is flipped with probability ``flip_prob`` (annotator mistakes
that do not depend on how different a and b are). ``temperature = 0`` always prefers the higher
gold score (a fair coin on exact ties). Rankings of K completions are sampled from the
Plackett–Luce model with the same scores and temperature, whose pairwise marginals are again
Bradley–Terry.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from alignloop.errors import ConfigError
from alignloop.eval.gold import GoldScorer, get_gold_scorer


def preference_probability(gold_a: Any, gold_b: Any, temperature: float, flip_prob: float = 0.0) -> np.ndarray:
    """P(a is labelled preferred) = (1 − f)·σ(Δ/T) + f·(1 − σ(Δ/T)) with Δ = g(a) − g(b)."""
    delta = np.asarray(gold_a, dtype=np.float64) - np.asarray(gold_b, dtype=np.float64)
    if temperature == 0:
        p_clean = np.where(delta > 0, 1.0, np.where(delta < 0, 0.0, 0.5))
    else:
        # σ(x) = (1 + tanh(x/2)) / 2 does not overflow for large |x|
        p_clean = 0.5 * (1.0 + np.tanh(delta / (2.0 * temperature)))
    return (1.0 - flip_prob) * p_clean + flip_prob * (1.0 - p_clean)


class SimulatedAnnotator:
    """Labels pairs (and optionally rankings) of completions by noisy Bradley–Terry on a gold scorer."""

    def __init__(
        self, gold: GoldScorer | str = "vader", temperature: float = 0.1, flip_prob: float = 0.0, seed: int = 0
    ):
        if temperature < 0:
            raise ConfigError(f"simulated annotator: temperature must be >= 0, got {temperature}")
        if not 0.0 <= flip_prob <= 1.0:
            raise ConfigError(f"simulated annotator: flip_prob must be in [0, 1], got {flip_prob}")
        self.gold = get_gold_scorer(gold)
        self.temperature = float(temperature)
        self.flip_prob = float(flip_prob)
        self.rng = np.random.default_rng(seed)

    @property
    def source(self) -> str:
        return f"simulated:{self.gold.name}"

    def label_pairs(
        self, prompts: Sequence[Any], completions_a: Sequence[str], completions_b: Sequence[str]
    ) -> list[dict]:
        """Preference-pair records ``{"prompt", "chosen", "rejected", "source"}``, one per pair.

        Pairs whose two texts are identical carry no preference and are skipped, so the result can
        be shorter than the input. Each label draws from the annotator's seeded generator.
        """
        if not len(prompts) == len(completions_a) == len(completions_b):
            raise ConfigError(
                f"label_pairs: got {len(prompts)} prompts, {len(completions_a)} and {len(completions_b)} completions"
            )
        keep = [i for i in range(len(prompts)) if completions_a[i] != completions_b[i]]
        if not keep:
            return []
        kept_prompts = [prompts[i] for i in keep]
        gold_a = self.gold.score(kept_prompts, [completions_a[i] for i in keep])
        gold_b = self.gold.score(kept_prompts, [completions_b[i] for i in keep])
        p_a = preference_probability(gold_a, gold_b, self.temperature, self.flip_prob)
        a_wins = self.rng.random(len(keep)) < p_a
        records = []
        for row, index in enumerate(keep):
            a, b = completions_a[index], completions_b[index]
            chosen, rejected = (a, b) if a_wins[row] else (b, a)
            records.append({"prompt": prompts[index], "chosen": chosen, "rejected": rejected, "source": self.source})
        return records

    def label_groups(self, prompt: Any, completions: Sequence[str]) -> dict:
        """A ranking record ``{"prompt", "completions", "ranking", "source"}`` sampled by Plackett–Luce.

        Identical texts share a gold score and are reported as a tie (a nested list of their indices).
        ``flip_prob`` applies to pairs only; a ranking's noise comes from the temperature.
        """
        if len(completions) < 2:
            raise ConfigError(f"label_groups: need at least 2 completions, got {len(completions)}")
        groups: dict[str, list[int]] = {}
        for index, text in enumerate(completions):
            groups.setdefault(text, []).append(index)
        texts = list(groups)
        scores = np.asarray(self.gold.score([prompt] * len(texts), texts), dtype=np.float64)
        # Gumbel-max: sorting (s/T + Gumbel noise) draws a Plackett–Luce ranking with weights exp(s/T).
        if self.temperature > 0:
            order = np.argsort(-(scores / self.temperature + self.rng.gumbel(size=len(texts))), kind="stable")
        else:  # best first; a random key breaks exact ties
            order = np.lexsort((self.rng.random(len(texts)), -scores))
        ranking: list[int | list[int]] = []
        for position in order:
            members = groups[texts[position]]
            ranking.append(members[0] if len(members) == 1 else list(members))
        return {"prompt": prompt, "completions": list(completions), "ranking": ranking, "source": self.source}
