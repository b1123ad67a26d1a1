"""Generate docs/configuration.md from the pydantic config models (so the reference never drifts)."""

from __future__ import annotations

import typing

from pydantic import BaseModel

from alignloop.stages.registry import STAGES, stage_classes


def _type_name(ann) -> str:
    text = repr(ann) if not isinstance(ann, type) else ann.__name__
    return text.replace("typing.", "").replace("NoneType", "None")


def _submodel(ann) -> type[BaseModel] | None:
    for cand in (ann, *typing.get_args(ann)):
        if isinstance(cand, type) and issubclass(cand, BaseModel):
            return cand
    return None


def describe(model: type[BaseModel], prefix: str = "", instance: BaseModel | None = None) -> list[str]:
    """One table row per leaf key; defaults come from the stage's own default instance."""
    rows, nested = [], []
    for name, field in model.model_fields.items():
        sub = _submodel(field.annotation)
        key = f"{prefix}{name}"
        value = getattr(instance, name) if instance is not None else field.get_default(call_default_factory=True)
        if sub is not None:
            if value is None:  # an optional section, off unless the config has it: say so before its keys
                rows.append(f"| `{key}` | section | absent | {field.description or ''} |")
            nested.append((key, sub, value if isinstance(value, BaseModel) else None))
            continue
        default = value
        rows.append(f"| `{key}` | `{_type_name(field.annotation)}` | `{default!r}` | {field.description or ''} |")
    out = rows
    for key, sub, inst in nested:
        out += describe(sub, key + ".", inst)
    return out


def config_reference(stages: dict[str, type[BaseModel]]) -> str:
    lines = [
        "# Configuration reference",
        "",
        "Generated from the pydantic models in `alignloop/config.py` and the stage modules by",
        "`python -m alignloop.config_docs > docs/configuration.md` (a test checks it is current).",
        "Every key can be set in the YAML file or overridden with `--set dotted.key=value`.",
        "",
    ]
    for stage, cls in stages.items():
        lines += [f"## `{stage}`", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        lines += describe(cls, "", cls())
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    print(config_reference({name: stage_classes(name)[0] for name in STAGES}), end="")


if __name__ == "__main__":
    main()
