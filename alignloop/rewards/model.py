"""Trained reward models (single or ensemble) as reward sources, and ``score_file`` behind ``alignloop score``.

``RewardModel.load(run_dir).score(prompts, completions)`` follows the rewards protocol (float32 CPU
``Tensor[batch]``). Scoring tokenises and packs exactly as training did (settings saved beside the model),
so a prompt shared by several completions (a GRPO group, a ranking) is encoded once.

* An **ensemble** run directory holds ``model/ensemble.json`` naming its members; ``score`` is the members'
  mean and ``uncertainty`` their standard deviation (what the PPO uncertainty KL controller reads). Members
  trained with LoRA on the same base share ONE backbone in memory, with one adapter per member.
* A **multi-objective** model has one head per criterion: ``score_objectives`` returns each, ``score`` the
  overall head, and ``objective(name)`` is a reward source for one criterion, for weighted sums or constraints.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import torch
from peft import PeftModel
from safetensors.torch import load_file

from alignloop.algos.reward_losses import normalize_ranking
from alignloop.data import first_record_keys, load_records, tokenize_prompt_completion, truncate_pair
from alignloop.errors import DataError, ModelError
from alignloop.models import ScalarHeadModel, load_causal_lm, load_tokenizer, resolve_model
from alignloop.models.files import HEAD_META, HEAD_WEIGHTS, is_scalar_head_dir, read_json
from alignloop.models.shared_prompt import PackedGroups, ScoreGroup, pack_groups, score_packed

__all__ = ["ENSEMBLE_FILE", "ObjectiveReward", "RewardModel", "load_reward_model_source", "score_file"]

ENSEMBLE_FILE = "ensemble.json"  # {"members": ["../member-0/model", ...]} relative to the folder holding it
SETTINGS_FILE = "alignloop_rm.json"
DEFAULT_SETTINGS = {"max_length": 1024, "max_prompt_length": 512, "share_prompt": True, "pack_length": 2048}


def _messages(value: Any, role: str) -> list[dict]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, (list, tuple)) and all(isinstance(m, dict) for m in value):
        return list(value)
    raise DataError(f"expected a string or a list of messages, got {type(value).__name__}")


def _model_folder(path: str | Path) -> Path:
    try:
        folder = resolve_model(path)
    except ModelError:
        raise ModelError(
            f"{path}: not a reward-model directory (no model/ with {HEAD_META} or {ENSEMBLE_FILE})"
        ) from None
    if not isinstance(folder, Path):
        raise ModelError(f"{path}: not a reward-model directory")
    return folder


def _find_ensemble(path: Path) -> Path | None:
    for candidate in (path / ENSEMBLE_FILE, path / "model" / ENSEMBLE_FILE):
        if candidate.is_file():
            return candidate
    return None


def _load_shared_lora(folders: list[Path], dtype: torch.dtype) -> list[ScalarHeadModel]:
    """LoRA members on the same base: one backbone in memory, one adapter (+ head) per member."""
    meta = read_json(folders[0] / HEAD_META)
    base = load_causal_lm(meta["base_model"], dtype=dtype, trainable=False).base_model
    backbone = PeftModel.from_pretrained(base, folders[0], adapter_name="member-0", is_trainable=False)
    for i, folder in enumerate(folders[1:], start=1):
        backbone.load_adapter(folder, adapter_name=f"member-{i}", is_trainable=False)
    members = []
    for folder in folders:
        meta = read_json(folder / HEAD_META)
        outputs, names = int(meta["num_outputs"]), meta.get("output_names")
        member = ScalarHeadModel(backbone, outputs, names, base_model=meta["base_model"])
        member.head.load_state_dict(load_file(str(folder / HEAD_WEIGHTS)))
        members.append(member.eval().requires_grad_(False))
    return members


class RewardModel:
    """A reward model or an ensemble of them, scoring ``(prompt, completion)`` pairs."""

    def __init__(
        self,
        members: list[ScalarHeadModel],
        tokenizer: Any,
        settings: dict[str, Any] | None = None,
        *,
        adapters: list[str] | None = None,
        name: str = "reward_model",
        device: str | torch.device | None = None,
        batch_size: int = 16,
    ):
        if not members:
            raise ModelError("a reward model needs at least one member")
        names = members[0].output_names
        if any(m.output_names != names for m in members):
            raise ModelError(f"ensemble members have different heads: {[m.output_names for m in members]}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.members = [m.to(self.device).eval().requires_grad_(False) for m in members]
        self.adapters = adapters  # shared-backbone LoRA ensemble: the adapter to switch on per member
        self.tokenizer = tokenizer
        self.settings = {**DEFAULT_SETTINGS, **(settings or {})}
        self.name = name
        self.batch_size = batch_size
        self._cache: tuple[str, torch.Tensor] | None = None

    # --- loading --------------------------------------------------------------------------
    @classmethod
    def load(
        cls, path: str | Path, *, device: str | torch.device | None = None, batch_size: int = 16,
        dtype: torch.dtype = torch.float32,
    ) -> "RewardModel":
        """Load a reward-model run directory (``runs/rm``), its ``model/`` folder, or an ensemble run."""
        path = Path(path).expanduser()
        if not path.is_dir():
            raise ModelError(f"{path}: no such reward-model directory")
        manifest = _find_ensemble(path)
        # loading builds heads with random init first: keep the caller's random stream untouched
        with torch.random.fork_rng(devices=[]):
            if manifest is not None:
                folders = [(manifest.parent / m).resolve() for m in json.loads(manifest.read_text())["members"]]
                missing = [str(f) for f in folders if not is_scalar_head_dir(f)]
                if missing:
                    raise ModelError(f"{manifest}: member folders missing: {', '.join(missing)}")
                metas = [read_json(f / HEAD_META) for f in folders]
                shared = all(m.get("format") == "lora" for m in metas) and len({m["base_model"] for m in metas}) == 1
                if shared:
                    members = _load_shared_lora(folders, dtype)
                    adapters = [f"member-{i}" for i in range(len(folders))]
                else:
                    members = [ScalarHeadModel.from_pretrained(f, trainable=False, dtype=dtype) for f in folders]
                    adapters = None
                first = folders[0]
            else:
                first = _model_folder(path)
                if not is_scalar_head_dir(first):
                    raise ModelError(f"{path}: not a reward-model directory (no {HEAD_META})")
                members, adapters = [ScalarHeadModel.from_pretrained(first, trainable=False, dtype=dtype)], None
        settings = read_json(first / SETTINGS_FILE) if (first / SETTINGS_FILE).is_file() else {}
        tokenizer = load_tokenizer(first)
        return cls(members, tokenizer, settings, adapters=adapters, name=path.name or "reward_model",
                   device=device, batch_size=batch_size)

    # --- properties -----------------------------------------------------------------------
    @property
    def output_names(self) -> list[str]:
        return list(self.members[0].output_names)

    @property
    def size(self) -> int:
        return len(self.members)

    @property
    def supports_uncertainty(self) -> bool:
        return self.size > 1

    def frozen_modules(self) -> list[torch.nn.Module]:
        """The members' modules (frozen, eval mode): what ``reward_members`` collects for ``train.frozen_bf16``."""
        return list(self.members)

    # --- scoring --------------------------------------------------------------------------
    def encode(self, prompts: Sequence[Any], completions: Sequence[Any]) -> list[ScoreGroup]:
        """One ``ScoreGroup`` per (prompt, completion), tokenised and truncated as in training."""
        if len(prompts) != len(completions):
            raise DataError(f"got {len(prompts)} prompts for {len(completions)} completions")
        groups = []
        for prompt, completion in zip(prompts, completions):
            messages = _messages(prompt, "user"), _messages(completion, "assistant")
            p, c = tokenize_prompt_completion(self.tokenizer, *messages)
            p, c = truncate_pair(p, c, self.settings["max_length"], self.settings["max_prompt_length"])
            groups.append(ScoreGroup(p, [c]))
        return groups

    def pack(self, groups: list[ScoreGroup]) -> PackedGroups:
        return pack_groups(
            groups, self.tokenizer.pad_token_id,
            share_prompt=self.settings["share_prompt"], max_segment=self.settings["pack_length"],
        )

    @torch.no_grad()
    def member_scores_packed(self, packed: PackedGroups) -> torch.Tensor:
        """``[members, U, heads]`` float32 on CPU for one packed batch."""
        packed = packed.to(self.device)
        out = []
        for i, member in enumerate(self.members):
            if self.adapters is not None:
                member.backbone.set_adapter(self.adapters[i])
            out.append(score_packed(member, packed).float().cpu())
        return torch.stack(out)

    def score_packed(self, packed: PackedGroups) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mean ``[U, heads]``, std of the overall head ``[U]`` or None for a single model)."""
        scores = self.member_scores_packed(packed)
        return scores.mean(0), scores[:, :, 0].std(0) if self.size > 1 else None

    def member_scores(self, prompts: Sequence[Any], completions: Sequence[Any]) -> torch.Tensor:
        """``[members, batch, heads]``; the last call is cached so ``score`` then ``uncertainty`` costs one pass."""
        key = json.dumps([list(prompts), list(completions)], default=str)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        groups = self.encode(prompts, completions)
        parts = []
        for start in range(0, len(groups), self.batch_size):
            packed = self.pack(groups[start : start + self.batch_size])
            scores = self.member_scores_packed(packed)
            parts.append(scores[:, [row[0] for row in packed.index]])
        result = torch.cat(parts, dim=1) if parts else torch.zeros(self.size, 0, len(self.output_names))
        self._cache = (key, result)
        return result

    def score(self, prompts: Sequence[Any], completions: Sequence[Any], **fields: Any) -> torch.Tensor:
        """The overall score (ensemble mean), ``Tensor[batch]``."""
        return self.member_scores(prompts, completions)[:, :, 0].mean(0)

    def uncertainty(self, prompts: Sequence[Any], completions: Sequence[Any], **fields: Any) -> torch.Tensor:
        """Standard deviation of the overall score across ensemble members (zeros for a single model)."""
        scores = self.member_scores(prompts, completions)[:, :, 0]
        return scores.std(0) if self.size > 1 else torch.zeros(scores.shape[1])

    def score_objectives(
        self, prompts: Sequence[Any], completions: Sequence[Any], **fields: Any
    ) -> dict[str, torch.Tensor]:
        """Every head's score (ensemble mean): ``{"score": overall, "<criterion>": ...}``."""
        scores = self.member_scores(prompts, completions).mean(0)
        return {name: scores[:, j] for j, name in enumerate(self.output_names)}

    def objective(self, name: str) -> "ObjectiveReward":
        if name not in self.output_names:
            raise ModelError(f"reward model {self.name!r} has no head {name!r}; heads: {', '.join(self.output_names)}")
        return ObjectiveReward(self, name)

    def __repr__(self) -> str:
        return f"RewardModel({self.name!r}, members={self.size}, heads={self.output_names})"


class ObjectiveReward:
    """One head of a multi-objective reward model as a reward source (``name`` is ``<model>/<head>``)."""

    def __init__(self, model: RewardModel, head: str):
        self.model = model
        self.head = head
        self.column = model.output_names.index(head)
        self.name = f"{model.name}/{head}"

    @property
    def supports_uncertainty(self) -> bool:
        return self.model.supports_uncertainty

    def score(self, prompts: Sequence[Any], completions: Sequence[Any], **fields: Any) -> torch.Tensor:
        return self.model.member_scores(prompts, completions)[:, :, self.column].mean(0)

    def uncertainty(self, prompts: Sequence[Any], completions: Sequence[Any], **fields: Any) -> torch.Tensor:
        scores = self.model.member_scores(prompts, completions)[:, :, self.column]
        return scores.std(0) if self.model.size > 1 else torch.zeros(scores.shape[1])


def load_reward_model_source(path: str | Path) -> RewardModel:
    """What ``build_reward`` calls for a directory spec."""
    return RewardModel.load(path)


def _record_items(record: dict, kind: str) -> tuple[Any, list[Any]]:
    if kind == "pair":
        return record["prompt"], [record["chosen"], record["rejected"]]
    if kind == "ranking":
        return record["prompt"], list(record["completions"])
    messages = record["messages"]
    return messages[:-1], [messages[-1:]]


def score_file(rm_dir: str | Path, data_path: str | Path, out_path: str | Path | None = None) -> dict[str, Any]:
    """Score every record of a pair, ranking or prompt/completion file; write one JSON line per record.

    Pairs get ``chosen_score``, ``rejected_score`` and ``p_chosen = σ(chosen − rejected)``; rankings get
    ``scores`` in completion order; prompt/completion (SFT) records get ``score`` for the last assistant
    message. Ensembles add ``*_std`` / ``stds``; multi-objective models add ``*_objectives``. Returns a summary.
    """
    keys = first_record_keys(data_path)
    kind = "ranking" if "completions" in keys else "pair" if "chosen" in keys else "sft"
    records = load_records(data_path, kind)
    if kind == "sft" and any(r["messages"][-1]["role"] != "assistant" for r in records):
        raise DataError(f"{data_path}: every record must end with an assistant message to be scored")
    model = RewardModel.load(rm_dir)
    out = Path(out_path) if out_path is not None else Path(f"{Path(str(data_path)).stem}.scores.jsonl")
    prompts, completions, sizes = [], [], []
    for record in records:
        prompt, items = _record_items(record, kind)
        prompts += [prompt] * len(items)
        completions += items
        sizes.append(len(items))
    per_item = model.member_scores(prompts, completions)  # [members, items, heads]
    mean = per_item.mean(0)
    std = per_item[:, :, 0].std(0) if model.size > 1 else None
    names = model.output_names
    correct = pairs = 0
    lines = []
    start = 0
    for i, (record, n) in enumerate(zip(records, sizes)):
        rows = range(start, start + n)
        start += n
        scores = [float(mean[r, 0]) for r in rows]
        stds = [float(std[r]) for r in rows] if std is not None else None
        objectives = None
        if len(names) > 1:
            objectives = [{name: float(mean[r, j]) for j, name in enumerate(names)} for r in rows]
        line: dict[str, Any] = {"index": i}
        if kind == "pair":
            p_chosen = 1 / (1 + math.exp(scores[1] - scores[0]))
            line.update(chosen_score=scores[0], rejected_score=scores[1], p_chosen=p_chosen)
            if stds:
                line.update(chosen_std=stds[0], rejected_std=stds[1])
            if objectives:
                line.update(chosen_objectives=objectives[0], rejected_objectives=objectives[1])
            correct += scores[0] > scores[1]
            pairs += 1
        elif kind == "ranking":
            line["scores"] = scores
            if stds:
                line["stds"] = stds
            if objectives:
                line["objectives"] = objectives
            groups = normalize_ranking(record["ranking"])
            for level, better in enumerate(groups):
                for worse in groups[level + 1 :]:
                    for a in better:
                        for b in worse:
                            correct += scores[a] > scores[b]
                            pairs += 1
        else:
            line["score"] = scores[0]
            if stds:
                line["std"] = stds[0]
            if objectives:
                line["objectives"] = objectives[0]
        lines.append(json.dumps(line))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    summary: dict[str, Any] = {"records": len(records), "kind": kind, "members": model.size, "out": str(out)}
    if pairs:
        summary["accuracy"] = correct / pairs
    return summary
