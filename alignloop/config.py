"""Typed stage configs: pydantic models loadable from YAML, overridable with ``--set a.b=value``.

Every validation problem becomes one ``ConfigError`` line naming the file and the dotted key,
never a pydantic traceback.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from alignloop.errors import ConfigError
from alignloop.utils.io import atomic_write_text


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SamplingSettings(Section):
    """How responses are sampled: one definition of the knobs, inherited by every config section that samples
    (``ppo``, ``grpo``, ``bon``, ``eval``, ``collect``, ``label``, ``constitution``), so the keys stay flat under the
    stage's own section (``ppo.max_new_tokens``). A section sets its own defaults with ``defaults(...)``."""

    max_new_tokens: int = Field(64, gt=0, description="Tokens generated per response at most.")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature (0: greedy).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling: keep the smallest token set with this mass.")
    top_k: int = Field(0, ge=0, description="Top-k sampling (0: off).")
    stop: list[str] | None = Field(None, description="Stop strings that end a response besides EOS.")
    # False where a stage needs a proper distribution (RL log-probs, KL estimates, distinct samples to pair)
    greedy_allowed: ClassVar[bool] = True

    @model_validator(mode="after")
    def _temperature(self) -> "SamplingSettings":
        if not self.greedy_allowed and self.temperature <= 0:
            raise ValueError("temperature: must be > 0 here (0 would be greedy decoding)")
        return self

    def sampling_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``Sampler.generate`` these settings give."""
        return {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "top_p": self.top_p,
                "top_k": self.top_k, "stop": self.stop}

    @classmethod
    def field(cls, name: str, default: Any) -> Any:
        """The field ``name`` with another default (its constraints and description kept)."""
        info = copy.copy(cls.model_fields[name])
        info.default = default
        return info

    @classmethod
    def defaults(cls, **values: Any) -> type["SamplingSettings"]:
        """A base class with these default values, e.g.
        ``class BoNOptions(SamplingSettings.defaults(max_new_tokens=64))``."""
        fields = {name: (cls.model_fields[name].annotation, cls.field(name, v)) for name, v in values.items()}
        return create_model(cls.__name__, __base__=cls, **fields)


class DataConfig(Section):
    train: str | None = Field(None, description="Training records (JSONL, Parquet, HF datasets dir, or bundled:NAME).")
    eval: str | None = Field(None, description="Held-out records; if absent, `eval_fraction` of train is held out.")
    eval_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="Fraction of train held out when `eval` is absent.")
    split_by: Literal["record", "prompt"] = Field(
        "record", description="What `eval_fraction` holds out: records, or whole prompts (no prompt on both sides).")
    max_length: int = Field(512, gt=8, description="Maximum tokens per sequence (prompt + completion).")
    skip_invalid: bool = Field(False, description="Drop bad records (counted and logged) instead of failing.")


class TrainConfig(Section):
    max_steps: int = Field(100, ge=-1, description="Optimizer steps; -1 means run `epochs` epochs.")
    epochs: float = Field(1.0, gt=0, description="Epochs when max_steps is -1.")
    batch_size: int = Field(8, gt=0, description="Global batch (examples per optimizer step, all processes).")
    micro_batch_size: int | None = Field(
        None, gt=0, description="Examples per forward pass; batch_size/micro_batch_size is gradient accumulation."
    )
    lr: float = Field(2e-5, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps.")
    lr_schedule: Literal["constant", "linear", "cosine"] = "cosine"
    max_grad_norm: float | None = Field(1.0, description="Gradient clipping norm (null disables).")
    seed: int = 0
    precision: Literal["bf16", "fp32"] = Field("bf16", description="bf16 autocast (fp32 master weights) or fp32.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    log_every: int = Field(1, gt=0)
    eval_every: int = Field(0, ge=0, description="Evaluate every N steps (0: only at the end).")
    save_every: int = Field(50, ge=0, description="Checkpoint every N steps (0: only at the end).")
    keep_checkpoints: int = Field(2, gt=0)
    resume: Literal["auto", "never"] = Field("auto", description="auto: continue from the run dir's last checkpoint.")
    max_bad_steps: int = Field(5, gt=0, description="Stop after this many consecutive NaN/inf steps.")
    gradient_checkpointing: bool = False
    compile: Literal["off", "blocks"] = Field(
        "off",
        description="blocks (or true): torch.compile each layer's attention, MLP and norms (inductor; on CPU it needs "
        "g++ or clang++). The first steps pay the compile; docs/benchmarks.md has the measured gain.",
    )
    frozen_bf16: bool = Field(
        True,
        description="With precision bf16 on bf16-native hardware: store frozen linear weights (a LoRA base, reward and "
        "reference models) in bf16, the dtype autocast computes them in (same results, half their memory). "
        "Not applied under FSDP/DeepSpeed.",
    )

    @field_validator("compile", mode="before")
    @classmethod
    def _yaml_booleans(cls, value):
        # YAML reads a bare `off` as false (and `on` as true)
        return {False: "off", True: "blocks"}.get(value, value) if isinstance(value, bool) else value

    @model_validator(mode="after")
    def _micro_divides(self) -> "TrainConfig":
        if self.micro_batch_size is not None and self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of micro_batch_size ({self.micro_batch_size})"
            )
        return self


class LoraSettings(Section):
    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | str = Field("all-linear", description="Module names, or 'all-linear'.")
    vision: Literal["frozen", "connector", "all"] = Field(
        "connector", description="Vision-language models: what of the vision side trains in full beside the adapter."
    )
    save_merged: bool = Field(
        False, description="Save the model merged into full weights (AutoModelForCausalLM) instead of as an adapter."
    )


class StageConfig(Section):
    """Keys shared by every stage (DESIGN.md contract)."""

    model: str = Field("smollm2-135m-instruct", description="Bundled name, local HF dir, or a run/stage dir.")
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    lora: LoraSettings | None = Field(
        None, description="LoRA is off (full fine-tuning) unless the config has a `lora:` section or a "
        "`--set lora.KEY=...`; the `lora.*` defaults below apply once it is on.")
    out: str | None = Field(None, description="Output directory (default runs/<stage>).")


class SFTOptions(Section):
    packing: bool = Field(True, description="Pack several examples per row (no attention across them).")
    loss_on: Literal["assistant", "all"] = Field("assistant", description="Which tokens are trained.")


class SFTConfig(StageConfig):
    stage: Literal["sft"] = "sft"
    data: DataConfig = Field(
        default_factory=lambda: DataConfig(train="bundled:sft_demo_train.jsonl", eval="bundled:sft_demo_eval.jsonl")
    )
    # checkpointing on by default (as TRL's SFTConfig): peak memory below TRL's at ~25% more compute
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(gradient_checkpointing=True))
    sft: SFTOptions = Field(default_factory=SFTOptions)


C = TypeVar("C", bound=BaseModel)


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item}: expected dotted.key=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for item in overrides:
        keys, value = _parse_override(item)
        node = data
        for k in keys[:-1]:
            if not isinstance(node.get(k), dict):
                node[k] = {}
            node = node[k]
        node[keys[-1]] = value
    return data


def _fields_at(cls: type[BaseModel], loc: tuple) -> list[str]:
    model: Any = cls
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return []
    return list(getattr(model, "model_fields", {}))


def _where(source: str, loc: tuple, key_lines: dict | None, overridden: set | None) -> str:
    """``file:line`` for a key given in the YAML (the deepest enclosing key that has a line), ``--set`` for one
    given on the command line."""
    if overridden and any(loc[: len(o)] == o or o[: len(loc)] == loc for o in overridden):
        return "--set"
    for n in range(len(loc), 0, -1):
        if key_lines and loc[:n] in key_lines:
            return f"{source}:{key_lines[loc[:n]]}"
    return source


def format_validation_error(
    err: ValidationError, cls: type[BaseModel], source: str, key_lines: dict | None = None,
    overridden: set | None = None,
) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(str(p) for p in e["loc"] if not str(p).startswith("function-after"))
        key = ".".join(loc) or "<root>"
        where = _where(source, loc, key_lines, overridden)
        head = f"--set {key}" if where == "--set" else f"{where}: {key}"
        if e["type"] == "extra_forbidden":
            near = difflib.get_close_matches(loc[-1], _fields_at(cls, loc), n=1)
            hint = f" (did you mean '{'.'.join(loc[:-1] + (near[0],))}'?)" if near else ""
            stage = cls.model_fields.get("stage")
            if len(loc) == 1 and not near and isinstance(e.get("input"), dict) and stage is not None:
                # a whole unknown section is most often another stage's config given to the wrong command
                hint = f" (a '{key}' section: is this a config for `alignloop {key}`, not `{stage.default}`?)"
            lines.append(f"{head}: unknown key{hint}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            got = e.get("input")
            shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
            lines.append(f"{head}: {msg}{shown}")
    return "\n".join(lines)


def _section_defaults(cls: type[BaseModel], key: str) -> dict:
    """The section class's own defaults for field ``key`` of ``cls`` (``{}`` when it has none to give)."""
    field = cls.model_fields.get(key)
    ann = field.annotation if field is not None else None
    for cand in (ann, *getattr(ann, "__args__", ())):
        if isinstance(cand, type) and issubclass(cand, BaseModel):
            try:
                return cand().model_dump()
            except (ValidationError, TypeError):
                return {}
    return {}


def merge_defaults(cls: type[BaseModel], data: dict) -> dict:
    """A partial section (``data: {max_length: 256}``) keeps the stage's other defaults for that section.

    Only the keys where the stage's default differs from the section class's own are filled in, so a section's
    validators still see which keys the config gave (``grpo.loss`` presets fill only the unset ones)."""
    try:
        defaults = cls().model_dump()
    except ValidationError:
        return data
    merged = dict(data)
    for key, value in data.items():
        if isinstance(value, dict) and isinstance(defaults.get(key), dict):
            own = _section_defaults(cls, key)
            stage_only = {k: v for k, v in defaults[key].items() if k not in own or own[k] != v}
            merged[key] = {**stage_only, **value}
    return merged


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a key given twice in one mapping (plain YAML keeps the last value silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ConfigError(f"{self.name}:{line}: {key}: duplicate key (also on line {seen[key]})")
            seen[key] = line
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{path}: is a directory, not a config file (give a .yaml file)")
    if not p.is_file():
        raise ConfigError(f"{path}: config file not found")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        byte = f"0x{raw[e.start]:02x}"
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte {byte}); save the config as UTF-8") from None
    loader = _UniqueKeyLoader(text)
    loader.name = str(path)
    try:
        data = loader.get_single_data() or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: invalid YAML: {getattr(e, 'problem', e)}") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    return data


def _key_lines(node: Any, prefix: tuple = ()) -> dict[tuple, int]:
    """``{("train", "lr"): 7, ...}``: the line of every mapping key in a composed YAML node tree."""
    out: dict[tuple, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = (*prefix, str(key_node.value))
            out[path] = key_node.start_mark.line + 1
            out.update(_key_lines(value_node, path))
    return out


def yaml_key_lines(path: str | Path) -> dict[tuple, int]:
    """Line numbers of the keys of a config file that ``read_yaml`` accepted (only read again on an error)."""
    try:
        return _key_lines(yaml.compose(Path(path).read_text(encoding="utf-8-sig"), Loader=yaml.SafeLoader))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return {}


def override_keys(overrides: list[str]) -> set[tuple]:
    return {tuple(_parse_override(item)[0]) for item in overrides}


def load_config(cls: type[C], path: str | Path | None = None, overrides: list[str] | None = None) -> C:
    """Load ``cls`` from a YAML file (optional) plus ``--set`` overrides, with friendly errors."""
    data = read_yaml(path) if path else {}
    data = apply_overrides(data, overrides or [])
    data = merge_defaults(cls, data)
    source = str(path) if path else "--set"
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        lines = yaml_key_lines(path) if path else None
        raise ConfigError(format_validation_error(e, cls, source, lines, override_keys(overrides or []))) from None


def dump_config(cfg: BaseModel, path: str | Path) -> None:
    atomic_write_text(path, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
