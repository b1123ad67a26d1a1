"""The one reward protocol, plain-function rule rewards, weighted sums, and ``build_reward(spec)``.

A reward source scores a batch: ``score(prompts, completions, **fields) -> Tensor[batch]``
(float32, CPU). Optional extras, looked up with ``hasattr``:
  - ``uncertainty(prompts, completions, **fields) -> Tensor[batch]`` (an ensemble's std); call
    ``has_uncertainty(source)`` rather than ``hasattr``, because a weighted sum only has one when
    one of its parts does;
  - ``score_steps(prompts, steps, **fields) -> list[Tensor[n_steps]]`` (process rewards).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

import torch

from alignloop.errors import AlignloopError, ConfigError


@runtime_checkable
class RewardSource(Protocol):
    """Anything with a ``name`` and a batched ``score`` is a reward source."""

    name: str

    def score(self, prompts: list[str], completions: list[str], **fields: Any) -> torch.Tensor: ...


@runtime_checkable
class UncertaintySource(RewardSource, Protocol):
    """A reward source that also estimates the std of its score (an ensemble)."""

    def uncertainty(self, prompts: list[str], completions: list[str], **fields: Any) -> torch.Tensor: ...


@runtime_checkable
class StepRewardSource(RewardSource, Protocol):
    """A reward source that also scores each step of a solution (a process reward model)."""

    def score_steps(self, prompts: list[str], steps: list[list[str]], **fields: Any) -> list[torch.Tensor]: ...


def has_uncertainty(source: Any) -> bool:
    """Whether ``source.uncertainty(...)`` gives a meaningful std (not just an inherited method)."""
    return callable(getattr(source, "uncertainty", None)) and bool(getattr(source, "supports_uncertainty", True))


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
            f"reward {who} returned {tuple(tensor.shape)} values for {expected} completions; expected one per completion"
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
        values = self.fn(list(prompts), list(completions), **fields)
        return as_score_tensor(values, len(completions), f"function {self.name!r}")

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
    return {p.name for p in parameters if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}


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
                std = as_score_tensor(source.uncertainty(prompts, completions, **fields), len(completions), f"source {name!r}")
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


def _import_module(module_name: str, spec: str, what: str) -> Any:
    # Console scripts do not put the working directory on sys.path; user reward modules usually live there.
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        missing = err.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise ConfigError(f"{what} {spec!r}: module {module_name!r} not found") from err
        raise ConfigError(f"{what} {spec!r}: importing {module_name!r} failed: {err}") from err


def _import_file(path_text: str, spec: str, what: str) -> Any:
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise ConfigError(f"{what} {spec!r}: file {path_text!r} not found")
    module_name = f"alignloop_user_{path.stem}_{abs(hash(str(path.resolve()))):x}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    import_spec = importlib.util.spec_from_file_location(module_name, path)
    if import_spec is None or import_spec.loader is None:
        raise ConfigError(f"{what} {spec!r}: cannot import {path_text!r} as Python")
    module = importlib.util.module_from_spec(import_spec)
    sys.modules[module_name] = module  # lets dataclasses and pickling inside the file find it
    try:
        import_spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[module_name]
        raise ConfigError(f"{what} {spec!r}: importing {path_text!r} failed: {type(err).__name__}: {err}") from err
    return module


def load_callable(spec: str, what: str = "reward") -> Any:
    """The object named by ``"package.module:attr"`` or ``"path/to/file.py:attr"`` (``attr`` may be dotted).

    ``what`` starts the error messages (``"reward 'm:f': module 'm' not found"``).
    """
    module_part, sep, attr_path = spec.rpartition(":")
    if not sep or not module_part or not attr_path:
        raise ConfigError(f"{what} {spec!r}: expected 'module:function' or 'path/to/file.py:function'")
    is_file = module_part.endswith(".py") or "/" in module_part or os.sep in module_part
    module = _import_file(module_part, spec, what) if is_file else _import_module(module_part, spec, what)
    obj: Any = module
    for attr in attr_path.split("."):
        if not hasattr(obj, attr):
            raise ConfigError(f"{what} {spec!r}: {module_part!r} has no function {attr_path!r}")
        obj = getattr(obj, attr)
    return obj


def load_reward_function(spec: str) -> Callable[..., Any]:
    """The reward function named by ``"module:function"`` or ``"path/to/file.py:function"``."""
    obj = load_callable(spec)
    if not callable(obj):
        raise ConfigError(f"reward {spec!r}: {type(obj).__name__} object is not callable")
    return obj


def _build_rule(spec: str, args: Mapping[str, Any]) -> RuleReward:
    from alignloop.rewards.rules import BUILTIN_RULES

    rule_name = spec.removeprefix("rule:")
    if rule_name not in BUILTIN_RULES:
        raise ConfigError(f"reward {spec!r}: unknown rule; known rules: {', '.join(sorted(BUILTIN_RULES))}")
    try:
        fn = BUILTIN_RULES[rule_name](**args)
    except TypeError as err:
        raise ConfigError(f"reward {spec!r}: bad args {dict(args)}: {err}") from err
    except AlignloopError as err:
        raise ConfigError(f"reward {spec!r}: {err}") from err
    return RuleReward(fn, name=rule_name)


def _build_reward_model(path: str) -> Any:
    try:
        from alignloop.rewards.model import load_reward_model_source
    except ModuleNotFoundError as err:
        if err.name in ("alignloop.rewards.model", "alignloop.rewards"):
            raise ConfigError(
                f"reward {path!r}: is a directory, but reward-model loading (alignloop.rewards.model) is not available"
            ) from err
        raise
    return load_reward_model_source(path)


def _build_one(spec: Any, args: Mapping[str, Any] | None = None) -> Any:
    if isinstance(spec, RewardSource):
        if args:
            raise ConfigError(f"reward {spec.name!r}: 'args' only apply to 'rule:<name>' sources")
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"reward: expected a string, a list of {{source, weight}} or a reward source, got {spec!r}")
    spec = spec.strip()
    if spec.startswith("rule:"):
        return _build_rule(spec, args or {})
    if args:
        raise ConfigError(f"reward {spec!r}: 'args' only apply to 'rule:<name>' sources")
    if Path(spec).expanduser().is_dir():
        return _build_reward_model(spec)
    if ":" in spec:
        obj = load_reward_function(spec)
        return obj if isinstance(obj, RewardSource) else RuleReward(obj, name=spec)
    raise ConfigError(
        f"reward {spec!r}: not a reward-model directory, a 'module:function' or a 'rule:<name>' "
        "(no such directory)"
    )


def build_reward(spec: Any) -> Any:
    """A reward source from a config ``reward:`` value.

    ``spec`` is a reward source; a string (``"module:function"``, ``"path/file.py:function"``,
    ``"rule:<name>"`` or a reward-model directory); or a list of ``{source, weight, args?}``
    mappings, which becomes a ``WeightedSum`` (``weight`` defaults to 1).
    """
    if isinstance(spec, Mapping) and "objective" in spec:  # constrained multi-objective (alignloop.rewards.multi)
        from alignloop.rewards.multi import build_constrained

        return build_constrained(spec)
    if isinstance(spec, Mapping):
        spec = [spec]
    if isinstance(spec, Sequence) and not isinstance(spec, str):
        sources, weights = [], []
        for index, entry in enumerate(spec):
            if not isinstance(entry, Mapping) or "source" not in entry:
                raise ConfigError(f"reward[{index}]: expected a mapping with 'source' (and 'weight'), got {entry!r}")
            unknown = set(entry) - {"source", "weight", "args"}
            if unknown:
                raise ConfigError(f"reward[{index}]: unknown keys {sorted(unknown)}; allowed: source, weight, args")
            weight = entry.get("weight", 1.0)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
                raise ConfigError(f"reward[{index}].weight: expected a finite number, got {weight!r}")
            sources.append(_build_one(entry["source"], entry.get("args")))
            weights.append(float(weight))
        return WeightedSum(sources, weights)
    return _build_one(spec)
