"""``build_reward(spec)``: a reward source from a config ``reward:`` value (the factory over every source kind).

Strings name a function (``"module:function"``, ``"path/file.py:function"``), a built-in rule
(``"rule:<name>"``) or a reward-model directory; a list of ``{source, weight, args?}`` becomes a
``WeightedSum``; ``{objective, constraints}`` a ``ConstrainedReward`` (see ``alignloop.rewards.multi``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from alignloop.errors import AlignloopError, ConfigError
from alignloop.rewards.base import HasObjectiveHeads, RewardSource, RuleReward, WeightedSum, load_reward_function
from alignloop.rewards.judge import LLMJudge
from alignloop.rewards.model import load_reward_model_source
from alignloop.rewards.multi import ConstrainedReward, Constraint
from alignloop.rewards.rules import BUILTIN_RULES

__all__ = ["build_constrained", "build_reward", "build_source"]


def _build_rule(spec: str, args: Mapping[str, Any]) -> RuleReward:
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
        return load_reward_model_source(spec)
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


_SOURCE_KEYS = {"source", "judge", "args", "name", "head"}


def build_source(entry: Any, where: str) -> Any:
    """One reward source from a config entry: a string/source, ``{source, args?, head?, name?}`` or ``{judge: {...}}``.

    ``head`` picks one criterion head of a multi-objective reward-model directory (``rm.criteria``).

    ``judge`` takes ``model`` plus ``LLMJudge`` options (``mode`` defaults to ``pointwise``: the
    expected 1–10 rating is the reward).
    """
    if not isinstance(entry, Mapping):
        return build_reward(entry)
    if "judge" in entry:
        options = dict(entry["judge"])
        if "model" not in options:
            raise ConfigError(f"{where}.judge.model: missing")
        options.setdefault("mode", "pointwise")
        if "name" in entry:
            options["name"] = entry["name"]
        return LLMJudge.from_model(options.pop("model"), **options)
    if "source" not in entry:
        raise ConfigError(f"{where}: expected 'source' or 'judge'")
    if "args" in entry:
        source = build_reward([{"source": entry["source"], "args": entry["args"]}]).sources[0]
    else:
        source = build_reward(entry["source"])
    if "head" in entry:
        if not (isinstance(source, HasObjectiveHeads) and callable(source.objective)):
            raise ConfigError(f"{where}.head: {entry['source']!r} is not a reward model with criterion heads")
        source = source.objective(str(entry["head"]))
    if "name" in entry:
        source.name = str(entry["name"])
    return source


def build_constrained(spec: Mapping[str, Any]) -> ConstrainedReward:
    """A ``ConstrainedReward`` from ``{objective: ..., constraints: [{..., threshold, lr?}], normalize?}``."""
    unknown = set(spec) - {"objective", "constraints", "normalize", "update_on_score"}
    if unknown:
        raise ConfigError(
            f"reward: unknown keys {sorted(unknown)}; allowed: objective, constraints, normalize, update_on_score"
        )
    if "objective" not in spec or not spec.get("constraints"):
        raise ConfigError("reward: a constrained reward needs 'objective' and a non-empty 'constraints' list")
    objective = build_source(spec["objective"], "reward.objective")
    constraints = []
    for i, entry in enumerate(spec["constraints"]):
        where = f"reward.constraints[{i}]"
        if not isinstance(entry, Mapping) or "threshold" not in entry:
            raise ConfigError(f"{where}.threshold: missing")
        extra = set(entry) - _SOURCE_KEYS - {"threshold", "lr", "initial_multiplier", "max_multiplier"}
        if extra:
            raise ConfigError(f"{where}: unknown keys {sorted(extra)}")
        numbers = {k: entry[k] for k in ("threshold", "lr", "initial_multiplier", "max_multiplier") if k in entry}
        for key, value in numbers.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{where}.{key}: expected a finite number, got {value!r}")
        source = build_source({k: v for k, v in entry.items() if k in _SOURCE_KEYS}, where)
        constraints.append(Constraint(source, name=entry.get("name"), **{k: float(v) for k, v in numbers.items()}))
    return ConstrainedReward(
        objective, constraints, normalize=bool(spec.get("normalize", True)),
        update_on_score=bool(spec.get("update_on_score", True)),
    )
