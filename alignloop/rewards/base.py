"""The one reward protocol, its optional abilities, plain-function rule rewards and weighted sums.

A reward source scores a batch: ``score(prompts, completions, **fields) -> Tensor[batch]``
(float32, CPU). Optional abilities are runtime-checkable protocols, tested with ``isinstance``:
  - ``HasUncertainty``: ``uncertainty(prompts, completions, **fields) -> Tensor[batch]`` (an ensemble's
    std); call ``has_uncertainty(source)`` rather than ``isinstance``, because a weighted sum only has a
    meaningful one when one of its parts does;
  - ``StepRewardSource``: ``score_steps(prompts, steps, **fields) -> list[Tensor[n_steps]]`` (process rewards);
  - ``HasDenseRewards``: ``dense_rewards(prompts, response_ids, response_mask, tokenizer) -> Tensor[N, R]``;
  - ``HasMetrics`` / ``HasOnlineState``: ``metrics()`` to log and ``state_dict()`` / ``load_state_dict(state)``
    to checkpoint online state (a constrained reward's Lagrange multipliers);
  - ``HasObjectiveHeads``: ``objective(name)``, one criterion head of a multi-objective reward model;
  - ``HoldsFrozenModules``: ``frozen_modules()``, the frozen torch modules a source holds (a reward model's
    members); ``reward_members(reward)`` collects them over a weighted sum's parts.

``build_reward(spec)`` (the config factory) lives in ``alignloop.rewards.build``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

import torch

from alignloop.errors import AlignloopError, ConfigError
from alignloop.utils.callables import load_callable

__all__ = [
    "HasDenseRewards",
    "HasMetrics",
    "HasObjectiveHeads",
    "HasOnlineState",
    "HasUncertainty",
    "HoldsFrozenModules",
    "RewardSource",
    "RuleReward",
    "StepRewardSource",
    "UncertaintySource",
    "WeightedSum",
    "as_score_tensor",
    "has_uncertainty",
    "load_callable",
    "load_reward_function",
    "reward_members",
    "reward_parts",
]


@runtime_checkable
class RewardSource(Protocol):
    """Anything with a ``name`` and a batched ``score`` is a reward source."""

    name: str

    def score(self, prompts: list[str], completions: list[str], **fields: Any) -> torch.Tensor: ...


@runtime_checkable
class HasUncertainty(Protocol):
    """Estimates the std of its score (an ensemble, a judge); see ``has_uncertainty``."""

    def uncertainty(self, prompts: list[str], completions: list[str], **fields: Any) -> torch.Tensor: ...


@runtime_checkable
class UncertaintySource(RewardSource, HasUncertainty, Protocol):
    """A reward source that also estimates the std of its score (an ensemble)."""


@runtime_checkable
class StepRewardSource(RewardSource, Protocol):
    """A reward source that also scores each step of a solution (a process reward model)."""

    def score_steps(self, prompts: list[str], steps: list[list[str]], **fields: Any) -> list[torch.Tensor]: ...


@runtime_checkable
class HasDenseRewards(Protocol):
    """Per-token rewards ``[N, R]`` for PPO (a process reward model: each step's reward at its last token).

    ``tokenizer`` is the policy's: it decodes ``response_ids``.
    """

    def dense_rewards(
        self, prompts: Sequence[Any], response_ids: torch.Tensor, response_mask: torch.Tensor, tokenizer: Any
    ) -> torch.Tensor: ...


@runtime_checkable
class HasMetrics(Protocol):
    """Numbers to log after each step (e.g. ``lagrange/<constraint>``)."""

    def metrics(self) -> dict[str, float]: ...


@runtime_checkable
class HasOnlineState(Protocol):
    """State that changes while training (Lagrange multipliers) and goes into checkpoints.

    A ``torch.nn.Module`` also has these methods; callers that want only online state, never
    weights, exclude modules themselves.
    """

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@runtime_checkable
class HasObjectiveHeads(Protocol):
    """A multi-objective reward model: ``objective(name)`` is a reward source for one criterion head."""

    def objective(self, name: str) -> Any: ...


@runtime_checkable
class HoldsFrozenModules(Protocol):
    """A source holding frozen torch modules (a reward model's members), e.g. for ``train.frozen_bf16``."""

    def frozen_modules(self) -> list[torch.nn.Module]: ...


def has_uncertainty(source: Any) -> bool:
    """Whether ``source.uncertainty(...)`` gives a meaningful std (not just an inherited method)."""
    return (
        isinstance(source, HasUncertainty)
        and callable(source.uncertainty)
        and bool(getattr(source, "supports_uncertainty", True))
    )


def reward_parts(reward: Any) -> list[Any]:
    """The sources a reward is made of: a weighted sum's parts, else the reward itself."""
    return list(reward.sources) if isinstance(reward, WeightedSum) else [reward]


def reward_members(reward: Any) -> list[torch.nn.Module]:
    """The frozen torch modules ``reward`` holds, over a weighted sum's parts (reward models' members)."""
    return [m for part in reward_parts(reward) if isinstance(part, HoldsFrozenModules) for m in part.frozen_modules()]


def as_score_tensor(values: Any, expected: int, who: str) -> torch.Tensor:
    """``values`` as a float32 CPU tensor of shape [expected]; a clear error naming ``who`` otherwise."""
    if isinstance(values, torch.Tensor):
        tensor = values.detach().to("cpu", torch.float32)
    else:
        if isinstance(values, (str, bytes)) or (not isinstance(values, Sequence) and not hasattr(values, "__len__")):
            raise AlignloopError(f"reward {who} must return a list of floats, got {type(values).__name__}")
        items = list(values)
        for index, item in enumerate(items):
            if isinstance(item, (str, bytes)) or item is None:
                raise AlignloopError(f"reward {who} returned {item!r} at index {index}; expected a number")
            try:
                float(item)
            except (TypeError, ValueError):
                raise AlignloopError(
                    f"reward {who} returned {type(item).__name__} at index {index}; expected a number"
                ) from None
        tensor = torch.tensor([float(item) for item in items], dtype=torch.float32)
    if tensor.dim() != 1 or tensor.shape[0] != expected:
        raise AlignloopError(
            f"reward {who} returned {tuple(tensor.shape)} values for {expected} completions; "
            "expected one per completion"
        )
    bad = (~torch.isfinite(tensor)).nonzero()
    if len(bad):
        index = int(bad[0])
        raise AlignloopError(f"reward {who} returned {float(tensor[index])} at index {index}; rewards must be finite")
    return tensor


class RuleReward:
    """Wraps ``fn(prompts, completions, **fields) -> list[float]`` as a reward source.

    A function without ``**fields`` receives only the fields it names, so ``f(prompts, completions)``
    works on prompt records that carry extra keys.
    """

    def __init__(self, fn: Callable[..., Any], name: str | None = None):
        if not callable(fn):
            raise ConfigError(f"RuleReward needs a callable, got {type(fn).__name__}")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", type(fn).__name__)
        self._accepted_fields = _keyword_names(fn)

    def score(self, prompts: list[str], completions: list[str], **fields: Any) -> torch.Tensor:
        if self._accepted_fields is not None:
            fields = {key: value for key, value in fields.items() if key in self._accepted_fields}
        try:
            values = self.fn(list(prompts), list(completions), **fields)
        except AlignloopError:  # already one clear line (the bundled rules raise these)
            raise
        except Exception as err:  # a user's function: report where and on what, not a traceback
            raise AlignloopError(self._failure(prompts, completions, fields, err)) from None
        return as_score_tensor(values, len(completions), f"function {self.name!r}")

    def _where(self) -> str:
        function = getattr(self.fn, "__name__", None)
        try:
            source = inspect.getsourcefile(self.fn)
        except TypeError:
            source = None
        return f"{Path(source).name}:{function}" if source and function else self.name

    def _failure(self, prompts: list, completions: list, fields: dict, err: Exception) -> str:
        """One line naming the function and the first record it fails on alone (re-run one at a time)."""
        n = len(completions)
        for i in range(n):
            one = {k: v[i : i + 1] if isinstance(v, (list, tuple)) and len(v) == n else v for k, v in fields.items()}
            try:
                self.fn([prompts[i]], [completions[i]], **one)
            except Exception as single:
                prompt = str(prompts[i]).replace("\n", " ")[:60]
                return (f"reward {self._where()} failed on record {i + 1} of {n} in this batch (prompt {prompt!r}): "
                        f"{type(single).__name__}: {single}")
        return f"reward {self._where()} failed on a batch of {n} records: {type(err).__name__}: {err}"

    def __repr__(self) -> str:
        return f"RuleReward({self.name!r})"


def _keyword_names(fn: Callable[..., Any]) -> set[str] | None:
    """The keyword names ``fn`` accepts, or None when it takes ``**kwargs`` (or cannot be inspected)."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name for p in parameters if p.kind in named}


class WeightedSum:
    """``sum_i weight_i * source_i.score(...)``; ``last_components`` keeps each part's last scores for logging."""

    def __init__(self, sources: Sequence[Any], weights: Sequence[float] | None = None, name: str = "weighted_sum"):
        if not sources:
            raise ConfigError("a weighted reward needs at least one source")
        weights = [1.0] * len(sources) if weights is None else [float(w) for w in weights]
        if len(weights) != len(sources):
            raise ConfigError(f"a weighted reward got {len(weights)} weights for {len(sources)} sources")
        for source in sources:
            if not isinstance(source, RewardSource):
                raise ConfigError(f"{source!r} is not a reward source (it needs a 'name' and a 'score' method)")
        self.sources = list(sources)
        self.weights = weights
        self.name = name
        self.component_names = _unique_names([source.name for source in sources])
        self.last_components: dict[str, torch.Tensor] = {}

    @property
    def supports_uncertainty(self) -> bool:
        return any(has_uncertainty(source) for source in self.sources)

    def score(self, prompts: list[str], completions: list[str], **fields: Any) -> torch.Tensor:
        total = torch.zeros(len(completions), dtype=torch.float32)
        components: dict[str, torch.Tensor] = {}
        for name, source, weight in zip(self.component_names, self.sources, self.weights):
            values = as_score_tensor(source.score(prompts, completions, **fields), len(completions), f"source {name!r}")
            components[name] = values
            total += weight * values
        self.last_components = components
        return total

    def uncertainty(self, prompts: list[str], completions: list[str], **fields: Any) -> torch.Tensor:
        """``sqrt(sum_i weight_i^2 std_i^2)`` over the parts that have a std (treated as independent)."""
        variance = torch.zeros(len(completions), dtype=torch.float32)
        for name, source, weight in zip(self.component_names, self.sources, self.weights):
            if has_uncertainty(source):
                std = source.uncertainty(prompts, completions, **fields)
                std = as_score_tensor(std, len(completions), f"source {name!r}")
                variance += (weight * std) ** 2
        return variance.sqrt()

    def __repr__(self) -> str:
        parts = ", ".join(f"{w:g}*{n}" for n, w in zip(self.component_names, self.weights))
        return f"WeightedSum({parts})"


def _unique_names(names: list[str]) -> list[str]:
    """Suffix repeated names with ``#2``, ``#3`` so logged components never overwrite each other."""
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return unique


def load_reward_function(spec: str) -> Callable[..., Any]:
    """The reward function named by ``"module:function"`` or ``"path/to/file.py:function"``."""
    obj = load_callable(spec)
    if not callable(obj):
        raise ConfigError(f"reward {spec!r}: {type(obj).__name__} object is not callable")
    return obj
