"""Trained reward models (single or ensemble) as reward sources, and ``score_file`` behind ``alignloop score``.

``RewardModel.load(run_dir).score(prompts, completions)`` follows the rewards protocol (float32 CPU
``Tensor[batch]``). Scoring tokenises and packs exactly as training did (settings saved beside the model),
so a prompt shared by several completions (a GRPO group, a ranking) is encoded once.

* An **ensemble** run directory holds ``model/ensemble.json`` naming its members; ``score`` is the members'
  mean and ``uncertainty`` their standard deviation (what the PPO uncertainty KL controller reads). Members
  trained with LoRA on the same base share ONE backbone in memory, with one adapter per member.
* A **multi-objective** model has one head per criterion: ``score_objectives`` returns each, ``score`` the
  overall head, and ``objective(name)`` is a reward source for one criterion, for weighted sums or constraints.
* A **vision-language** reward model scores with the ``images`` keyword (per row: the record's image paths or
  base64 strings); each entry is prepared once and cached, and a row's images go with its prompt. Text reward
  models ignore ``images``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import torch

from alignloop.algos.reward_losses import normalize_ranking
from alignloop.data import first_record_keys, load_records, tokenize_prompt_completion, truncate_pair
from alignloop.data.images import IMAGE_PLACEHOLDER
from alignloop.errors import DataError, ModelError
from alignloop.models import ScalarHeadModel, load_tokenizer, resolve_model
from alignloop.models.files import HEAD_META, is_scalar_head_dir, read_json
from alignloop.models.loading import load_vision_processor
from alignloop.models.scalar_head import load_shared_lora_members, pack_image_groups, score_groups
from alignloop.models.shared_prompt import PackedGroups, ScoreGroup
from alignloop.models.vision_tokenizer import VisionTokenizer

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
        processor: Any = None,
    ):
        if not members:
            raise ModelError("a reward model needs at least one member")
        names = members[0].output_names
        if any(m.output_names != names for m in members):
            raise ModelError(f"ensemble members have different heads: {[m.output_names for m in members]}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.members = [m.to(self.device).eval().requires_grad_(False) for m in members]
        self.adapters = adapters  # shared-backbone LoRA ensemble: the adapter to switch on per member
        self.tokenizer = tokenizer if processor is None else processor.tokenizer
        # a vision-language reward model: its processor prepares each image entry once (cached by entry)
        self.vision = VisionTokenizer(processor) if processor is not None else None
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
                    members = load_shared_lora_members(folders, dtype)
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
        processor = load_vision_processor(first) if members[0].is_vision else None
        tokenizer = processor.tokenizer if processor is not None else load_tokenizer(first)
        return cls(members, tokenizer, settings, adapters=adapters, name=path.name or "reward_model",
                   device=device, batch_size=batch_size, processor=processor)

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
    def encode(
        self, prompts: Sequence[Any], completions: Sequence[Any], images: Sequence[Any] | None = None
    ) -> tuple[list[ScoreGroup], list[tuple]]:
        """One ``ScoreGroup`` per (prompt, completion), tokenised and truncated as in training, and its images."""
        if len(prompts) != len(completions) or (images is not None and len(images) != len(prompts)):
            raise DataError(f"got {len(prompts)} prompts, {len(completions)} completions and "
                            f"{'no' if images is None else len(images)} image lists")
        groups, found = [], []
        limits = self.settings["max_length"], self.settings["max_prompt_length"]
        for row, (prompt, completion) in enumerate(zip(prompts, completions)):
            messages = _messages(prompt, "user"), _messages(completion, "assistant")
            if self.vision is None:  # a text reward model does not look at images
                (p, c), row_images = truncate_pair(*tokenize_prompt_completion(self.tokenizer, *messages), *limits), ()
            else:
                entries = images[row] if images is not None else None
                entries = [entries] if isinstance(entries, str) else entries
                if not entries and any(IMAGE_PLACEHOLDER in str(m.get("content", "")) for m in messages[0]):
                    raise DataError(f"reward model {self.name!r} is a vision-language model and row {row}'s prompt "
                                    f"has {IMAGE_PLACEHOLDER} placeholders, but no images were given (`images`)")
                p, c, row_images = self.vision.prompt_completion(*messages, entries, *limits, where=f"row {row}")
            groups.append(ScoreGroup(p, [c]))
            found.append(row_images)
        return groups, found

    def pack(self, groups: list[ScoreGroup], images: Sequence[tuple] | None = None) -> PackedGroups:
        image_token = self.vision.encoder.image_token_id if self.vision is not None else None
        return pack_image_groups(
            groups, images, self.tokenizer.pad_token_id, image_token,
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
            out.append(score_groups(member, packed).float().cpu())
        return torch.stack(out)

    def score_packed(self, packed: PackedGroups) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mean ``[U, heads]``, std of the overall head ``[U]`` or None for a single model)."""
        scores = self.member_scores_packed(packed)
        return scores.mean(0), scores[:, :, 0].std(0) if self.size > 1 else None

    def member_scores(
        self, prompts: Sequence[Any], completions: Sequence[Any], images: Sequence[Any] | None = None
    ) -> torch.Tensor:
        """``[members, batch, heads]``; the last call is cached so ``score`` then ``uncertainty`` costs one pass.

        ``images``: per row, the record's image entries (paths or base64 strings); used by a VLM reward model."""
        key = json.dumps([list(prompts), list(completions), images if self.vision else None], default=str)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        groups, found = self.encode(prompts, completions, images)
        parts = []
        for start in range(0, len(groups), self.batch_size):
            end = start + self.batch_size
            packed = self.pack(groups[start:end], found[start:end])
            scores = self.member_scores_packed(packed)
            parts.append(scores[:, [row[0] for row in packed.index]])
        result = torch.cat(parts, dim=1) if parts else torch.zeros(self.size, 0, len(self.output_names))
        self._cache = (key, result)
        return result

    def score(self, prompts: Sequence[Any], completions: Sequence[Any], **fields: Any) -> torch.Tensor:
        """The overall score (ensemble mean), ``Tensor[batch]``."""
        return self.member_scores(prompts, completions, fields.get("images"))[:, :, 0].mean(0)

    def uncertainty(self, prompts: Sequence[Any], completions: Sequence[Any], **fields: Any) -> torch.Tensor:
        """Standard deviation of the overall score across ensemble members (zeros for a single model)."""
        scores = self.member_scores(prompts, completions, fields.get("images"))[:, :, 0]
        return scores.std(0) if self.size > 1 else torch.zeros(scores.shape[1])

    def score_objectives(
        self, prompts: Sequence[Any], completions: Sequence[Any], **fields: Any
    ) -> dict[str, torch.Tensor]:
        """Every head's score (ensemble mean): ``{"score": overall, "<criterion>": ...}``."""
        scores = self.member_scores(prompts, completions, fields.get("images")).mean(0)
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
        return self.model.member_scores(prompts, completions, fields.get("images"))[:, :, self.column].mean(0)

    def uncertainty(self, prompts: Sequence[Any], completions: Sequence[Any], **fields: Any) -> torch.Tensor:
        scores = self.model.member_scores(prompts, completions, fields.get("images"))[:, :, self.column]
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


def _line_fields(kind: str, scores: list, stds: list | None, objectives: list | None) -> dict[str, Any]:
    """A scored record's fields: chosen/rejected for a pair, lists for a ranking, one score for an SFT record."""
    if kind == "pair":
        line = {"chosen_score": scores[0], "rejected_score": scores[1],
                "p_chosen": 1 / (1 + math.exp(scores[1] - scores[0]))}
        keys = ("chosen_std", "rejected_std", "chosen_objectives", "rejected_objectives")
        return {**line, **{k: v for k, v in zip(keys, [*(stds or [None] * 2), *(objectives or [None] * 2)])
                         if v is not None}}
    pick = (lambda values: values) if kind == "ranking" else (lambda values: values[0])
    plural = "s" if kind == "ranking" else ""
    line = {f"score{plural}": pick(scores), f"std{plural}": pick(stds) if stds else None,
            "objectives": pick(objectives) if objectives else None}
    return {k: v for k, v in line.items() if v is not None}


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
    prompts, completions, images, sizes = [], [], [], []
    for record in records:
        prompt, items = _record_items(record, kind)
        prompts += [prompt] * len(items)
        completions += items
        images += [record.get("images")] * len(items)
        sizes.append(len(items))
    per_item = model.member_scores(prompts, completions, images)  # [members, items, heads]
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
        objectives = [{name: float(mean[r, j]) for j, name in enumerate(names)} for r in rows] if names[1:] else None
        lines.append(json.dumps({"index": i, **_line_fields(kind, scores, stds, objectives)}))
        ranking = [[0], [1]] if kind == "pair" else normalize_ranking(record["ranking"]) if kind == "ranking" else []
        for level, better in enumerate(ranking):
            for worse in ranking[level + 1 :]:
                for a in better:
                    for b in worse:
                        correct += scores[a] > scores[b]
                        pairs += 1
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    summary: dict[str, Any] = {"records": len(records), "kind": kind, "members": model.size, "out": str(out)}
    if pairs:
        summary["accuracy"] = correct / pairs
    return summary
