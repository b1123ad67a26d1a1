"""The pipeline YAML: a list of stages, each run in its own folder of the run directory.

```yaml
name: quickstart
out: runs/quickstart            # default runs/<name>
defaults:                       # merged under every stage's config (the stage's own keys win)
  model: smollm2-135m-instruct
  train: {seed: 0}
stages:
  - name: sft                   # folder runs/quickstart/sft; referenced as ${sft}
    stage: sft                  # a registered stage (alignloop.stages.registry.STAGES)
    config: {train: {max_steps: 30}}   # inline mapping, or a path to a stage YAML
    estimate_seconds: 120       # shown before the stage starts (measured on a 2-core CPU)
  - {name: prefs, stage: collect, config: {model: "${sft}"}}
variants:                       # named sets of `--set` overrides, e.g. `alignloop quickstart --fast`
  fast:
    set: ["sft.train.max_steps=10"]
    estimates: {sft: 40}
```

``${name}`` in any string of a stage's config is replaced by that (earlier) stage's folder, and
``${run}`` by the run directory. Overrides are ``STAGE.dotted.key=value`` (``defaults.key=value``
changes the defaults of every stage).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignloop.config import apply_overrides, read_yaml
from alignloop.errors import ConfigError

_REFERENCE = re.compile(r"\$\{([A-Za-z_][\w-]*)\}")
_STAGE_KEYS = {"name", "stage", "config", "set", "estimate_seconds"}
_TOP_KEYS = {"name", "out", "defaults", "stages", "variants", "description"}


@dataclass
class StageEntry:
    name: str
    stage: str
    config: dict[str, Any]
    estimate_seconds: float | None = None


@dataclass
class Pipeline:
    name: str
    out: Path
    stages: list[StageEntry]
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    source: str = "<pipeline>"  # the YAML file, for error messages
    variant: str | None = None
    smoke: bool = False  # the variant marks a smoke run (too short for its numbers to mean anything)

    def stage_dir(self, name: str) -> Path:
        return self.out / name


def _deep_merge(base: dict, override: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _stage_config(raw: Any, source: str, where: str) -> dict:
    if raw is None:
        return {}
    if isinstance(raw, dict):
        return copy.deepcopy(raw)
    if isinstance(raw, str):
        path = Path(raw)
        if not path.is_absolute():
            path = Path(source).parent / path
        if not path.is_file():
            raise ConfigError(f"{where}.config: {path}: config file not found")
        return read_yaml(path)
    raise ConfigError(f"{where}.config: expected a mapping or a path to a YAML file, got {type(raw).__name__}")


def _with_stage_overrides(config: dict, overrides: Any, where: str) -> dict:
    """A stage's own ``set: [dotted.key=value, ...]``: a stage YAML reused with a few keys changed."""
    if overrides is None:
        return config
    if not isinstance(overrides, list) or not all(isinstance(item, str) for item in overrides):
        raise ConfigError(f"{where}.set: expected a list of 'dotted.key=value' strings")
    try:
        return apply_overrides(config, overrides)
    except ConfigError as err:
        raise ConfigError(f"{where}.set: {err}") from None


def parse_pipeline(data: dict, source: str = "<pipeline>", out: str | Path | None = None) -> Pipeline:
    """Validate a pipeline mapping; every problem names ``source`` and the key."""
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise ConfigError(
            f"{source}: unknown top-level keys {sorted(unknown)}; allowed: {', '.join(sorted(_TOP_KEYS))}"
        )
    name = str(data.get("name") or Path(source).stem)
    stages_raw = data.get("stages")
    if not isinstance(stages_raw, list) or not stages_raw:
        raise ConfigError(f"{source}: stages: expected a non-empty list of {{name, stage, config}}")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise ConfigError(f"{source}: defaults: expected a mapping")
    stages: list[StageEntry] = []
    seen: set[str] = set()
    for i, raw in enumerate(stages_raw):
        where = f"{source}: stages[{i}]"
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: expected a mapping with name, stage and config")
        bad = set(raw) - _STAGE_KEYS
        if bad:
            raise ConfigError(f"{where}: unknown keys {sorted(bad)}; allowed: {', '.join(sorted(_STAGE_KEYS))}")
        kind = raw.get("stage")
        if not isinstance(kind, str):
            raise ConfigError(f"{where}.stage: expected a stage name such as sft, rm, dpo, ppo, collect, eval")
        stage_name = str(raw.get("name") or kind)
        if not re.fullmatch(r"[A-Za-z_][\w-]*", stage_name) or stage_name in ("run", "defaults"):
            raise ConfigError(f"{where}.name: {stage_name!r} is not a valid stage folder name")
        if stage_name in seen:
            raise ConfigError(f"{where}.name: stage {stage_name!r} appears twice")
        seen.add(stage_name)
        estimate = raw.get("estimate_seconds")
        config = _with_stage_overrides(_stage_config(raw.get("config"), source, where), raw.get("set"), where)
        stages.append(StageEntry(stage_name, kind, config, float(estimate) if estimate is not None else None))
    out_dir = Path(out) if out is not None else Path(data.get("out") or Path("runs") / name)
    return Pipeline(name=name, out=out_dir, stages=stages, defaults=defaults,
                    description=str(data.get("description", "")), source=source)


def apply_pipeline_overrides(data: dict, overrides: list[str], source: str = "<pipeline>") -> dict:
    """``STAGE.key=value`` goes into that stage's config; ``defaults.key=value`` into the defaults."""
    data = copy.deepcopy(data)
    stages = data.get("stages")
    stages = stages if isinstance(stages, list) else []  # parse_pipeline reports a malformed list
    by_name = {str(s.get("name") or s.get("stage")): s for s in stages if isinstance(s, dict)}
    for item in overrides:
        head, _, rest = item.partition(".")
        if not rest or "=" not in rest:
            raise ConfigError(f"--set {item}: expected STAGE.dotted.key=value (or defaults.key=value)")
        if head == "defaults":
            data["defaults"] = apply_overrides(dict(data.get("defaults") or {}), [rest])
        elif head in by_name:
            entry = by_name[head]
            if not isinstance(entry.get("config"), dict) or entry.get("set") is not None:
                # the stage's own `set` first, so a command-line --set wins over it
                config = _stage_config(entry.get("config"), source, f"{source}: {head}")
                entry["config"] = _with_stage_overrides(config, entry.pop("set", None), f"{source}: {head}")
            apply_overrides(entry["config"], [rest])
        else:
            raise ConfigError(f"--set {item}: no stage named {head!r}; stages: {', '.join(by_name)}")
    return data


def apply_variant(data: dict, variant: str, source: str) -> dict:
    variants = data.get("variants") or {}
    if variant not in variants:
        raise ConfigError(f"{source}: no variant {variant!r}; known: {', '.join(variants) or 'none'}")
    spec = variants[variant] or {}
    data = apply_pipeline_overrides(data, list(spec.get("set", [])), source)
    estimates = spec.get("estimates", {}) or {}
    for entry in data.get("stages", []):
        key = str(entry.get("name") or entry.get("stage"))
        if key in estimates:
            entry["estimate_seconds"] = estimates[key]
    return data


def load_pipeline(
    path: str | Path, overrides: list[str] | None = None, out: str | Path | None = None, variant: str | None = None
) -> Pipeline:
    data = read_yaml(path)
    smoke = False
    if variant:
        smoke = bool(((data.get("variants") or {}).get(variant) or {}).get("smoke", False))
        data = apply_variant(data, variant, str(path))
    data = apply_pipeline_overrides(data, overrides or [], str(path))
    pipeline = parse_pipeline(data, str(path), out)
    pipeline.variant, pipeline.smoke = variant, smoke
    return pipeline


def resolve_references(value: Any, folders: dict[str, Path], where: str) -> Any:
    """Replace ``${stage}`` by the folder of that stage (it must come earlier) in every string."""
    if isinstance(value, dict):
        return {k: resolve_references(v, folders, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_references(v, folders, f"{where}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        ref = match.group(1)
        if ref not in folders:
            known = ", ".join(folders) or "none yet"
            raise ConfigError(f"{where}: ${{{ref}}} names no earlier stage (available: {known})")
        return str(folders[ref])

    return _REFERENCE.sub(substitute, value)


def merge_defaults(defaults: dict, config: dict, accepted: set[str]) -> dict:
    """``defaults`` under ``config``, keeping only top-level keys the stage's config class accepts."""
    usable = {k: v for k, v in defaults.items() if k in accepted}
    return _deep_merge(usable, config)
