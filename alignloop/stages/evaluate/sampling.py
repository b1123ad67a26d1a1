"""Sampling policies on held-out prompts and scoring every sample (gold, proxy, log-probs for KL).

Models are loaded for inference only (LoRA adapters merged). Log-probabilities used for KL are
recomputed for policy and reference with the same fp32 forward pass, so the reference's KL to
itself is exactly zero and bf16 sampling noise does not leak into the estimate.

Prompts may be ``TokenizedPrompt`` objects (a vision-language model's prompts with their images; the rollout keeps
each row's images, so the KL forwards see them too). The prompt records' other fields (``answer``, ``images``, ...)
go to the proxy reward and to a ``rule:<name>`` gold scorer as keyword lists, one entry per sample.
"""

from __future__ import annotations

import contextlib
import logging
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from safetensors.torch import load_file

from alignloop.errors import ModelError
from alignloop.eval.eval_summary import prompt_text
from alignloop.eval.gold import GOLD_SCORERS, get_gold_scorer
from alignloop.models import load_causal_lm, resolve_model
from alignloop.models.compose import place_checkpoint_tensor
from alignloop.models.files import inherited_rank
from alignloop.rewards import build_reward
from alignloop.rollout import HFSampler, Rollout, forward_logprobs

log = logging.getLogger("alignloop")

Progress = Callable[[int], None]  # called with the number of samples just finished


class RecordGold:
    """A reward rule (``rule:exact_match``) as a gold scorer: unlike the others it sees the prompt records' fields,
    e.g. the ``answer`` that exact match compares with."""

    def __init__(self, spec: str):
        self.name = spec
        self.reward = build_reward(spec)

    def score(self, prompts: list[str], completions: list[str], **fields: list) -> list[float]:
        return [float(v) for v in self.reward.score(prompts, completions, **fields)]


class RewardModelGold(RecordGold):
    """A reward-model folder as the gold: a *proxy* gold (AlpacaFarm; Gao et al. 2022) for data with no true scorer,
    meaningful only when it was trained on pairs the policy's reward model never saw. It scores like the proxy: the
    whole prompt conversation, in batches, under bf16 autocast when the evaluation runs in bf16."""

    def score_records(self, prompts: list[Any], completions: list[str], batch_size: int, bf16: bool,
                      fields: dict[str, list]) -> list[float]:
        with _precision(self.reward, bf16):
            return score_proxy(self.reward, prompts, completions, batch_size, fields)


def gold_scorer(name: str) -> Any:
    """``rule:<name>``: a ``RecordGold``; a folder: a ``RewardModelGold``; else ``eval.gold.get_gold_scorer``."""
    if isinstance(name, str) and name.startswith("rule:"):
        return RecordGold(name)
    looks_like_folder = isinstance(name, str) and ":" not in name and ("/" in name or Path(name).exists())
    if looks_like_folder and name not in GOLD_SCORERS:
        if not Path(name).is_dir():
            raise ModelError(f"eval.gold: {name}: no such reward-model folder")
        return RewardModelGold(name)
    return get_gold_scorer(name)


def _precision(source: Any, bf16: bool) -> Any:
    device = getattr(source, "device", torch.device("cpu"))
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def load_policy(name_or_dir: str | Path) -> torch.nn.Module:
    """An inference-only causal LM (adapter merged into the weights for speed)."""
    return load_causal_lm(str(name_or_dir), trainable=False, merge=True)


@torch.no_grad()
def sequence_logprobs(model: torch.nn.Module, rollout: Rollout, batch_size: int) -> torch.Tensor:
    """[N] summed fp32 log-probability of each response under ``model`` at temperature 1."""
    model.eval()
    sums = []
    for start in range(0, len(rollout), batch_size):
        part = rollout.select(range(start, min(start + batch_size, len(rollout))))
        logps = forward_logprobs(model, part)
        sums.append((logps * part.response_mask.to(logps.device)).sum(dim=1).float().cpu())
    return torch.cat(sums) if sums else torch.zeros(0)


def _rows(ro: Rollout) -> list[dict]:
    lengths = ro.response_lengths().tolist()
    return [
        {"prompt": ro.prompts[i], "completion": ro.responses[i], "length": int(lengths[i]), "eos": bool(ro.finished[i])}
        for i in range(len(ro))
    ]


def sample_and_score(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[Any],
    *,
    n: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    batch_size: int,
    top_k: int = 0,
    stop: Any = None,
    seed: int,
    gold: Any,
    proxy: Any | None,
    reference: torch.nn.Module | None,
    progress: Progress | None = None,
    proxy_bf16: bool = False,
    fields: dict[str, list] | None = None,
) -> list[dict]:
    """``n`` samples per prompt with gold (and proxy) scores; with ``reference``, also ``logp`` and ``ref_logp``.

    Prompts are processed in chunks so the progress bar moves; chunk ``c`` samples with seed
    ``seed + c``, so a run is repeatable. Records are prompt-major: sample j of prompt i is row i·n + j.
    ``proxy_bf16`` scores with the proxy under bf16 autocast (the precision reward models train in; ~2× faster
    on CPUs with native bf16). KL log-probs stay fp32: they are small differences of large sums.
    ``fields``: the prompt records' other fields, one list entry per prompt (see the module docstring).
    """
    sampler = HFSampler(model, tokenizer, batch_size=batch_size)
    per_chunk = max(1, batch_size // n)
    records: list[dict] = []
    for chunk, start in enumerate(range(0, len(prompts), per_chunk)):
        chunk_prompts = list(prompts[start : start + per_chunk])
        ro = sampler.generate(chunk_prompts, n=n, max_new_tokens=max_new_tokens, temperature=temperature,
                              top_p=top_p, top_k=top_k, stop=stop, seed=seed + chunk)
        rows = _rows(ro)
        if reference is not None:
            policy_lp = sequence_logprobs(model, ro, batch_size)
            ref_lp = sequence_logprobs(reference, ro, batch_size)
        group = ro.group_index.tolist()
        for i, row in enumerate(rows):
            row["prompt_index"] = start + int(group[i])
            row["sample_index"] = i % n
            if reference is not None:
                row["logp"], row["ref_logp"] = float(policy_lp[i]), float(ref_lp[i])
        records.extend(rows)
        if progress is not None:
            progress(len(rows))
    texts = [prompt_text(r["prompt"]) for r in records]
    completions = [r["completion"] for r in records]
    row_fields = {k: [values[r["prompt_index"]] for r in records] for k, values in (fields or {}).items()}
    if isinstance(gold, RewardModelGold):
        gold_scores = gold.score_records([r["prompt"] for r in records], completions, batch_size, proxy_bf16,
                                         row_fields)
    elif isinstance(gold, RecordGold):
        gold_scores = gold.score(texts, completions, **row_fields)
    else:
        gold_scores = gold.score(texts, completions)
    for r, g in zip(records, gold_scores):
        r["gold"] = float(g)
    proxy_scores = None
    if proxy:
        with _precision(proxy, proxy_bf16):
            proxy_scores = score_proxy(proxy, [r["prompt"] for r in records], completions, batch_size, row_fields)
    for i, r in enumerate(records):
        r["proxy"] = float(proxy_scores[i]) if proxy_scores is not None else None
    return records


def score_proxy(proxy: Any, prompts: list[Any], completions: list[str], batch_size: int,
                fields: dict[str, list] | None = None) -> list[float]:
    """Proxy scores in batches; ``fields``: keyword lists with one entry per completion (the record fields)."""
    scores: list[float] = []
    for start in range(0, len(completions), batch_size):
        part = slice(start, start + batch_size)
        values = proxy.score(prompts[part], completions[part], **{k: v[part] for k, v in (fields or {}).items()})
        scores.extend(float(v) for v in (values.tolist() if hasattr(values, "tolist") else values))
    return scores


# ---- training checkpoints (the over-optimisation curve) ----

_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_steps(stage_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` of every complete checkpoint in a training stage's folder, oldest first."""
    root = Path(stage_dir) / "checkpoints"
    found = []
    for path in root.glob("step-*") if root.is_dir() else []:
        match = _STEP_DIR.match(path.name)
        if match and (path / "state.json").is_file() and (path / "policy.safetensors").is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def _match_names(saved: Sequence[str], params: dict[str, torch.nn.Parameter]) -> dict[str, str]:
    """Checkpoint tensor name -> model parameter name; a wrapper prefix (``policy.``, ``module.``) is dropped."""
    mapping = {}
    for key in saved:
        parts = key.split(".")
        for cut in range(len(parts)):
            candidate = ".".join(parts[cut:])
            if candidate in params:
                mapping[key] = candidate
                break
    return mapping


def load_checkpoint_policy(stage_dir: str | Path, checkpoint: Path) -> torch.nn.Module:
    """The stage's final model with the policy weights of ``checkpoint`` put back, then merged.

    An adapter trained on top of an earlier LoRA run is saved composed with it (models/compose.py): the
    checkpoint's factors go to the trained adapter's rows of the composed one."""
    model = load_causal_lm(str(stage_dir), trainable=False, merge=False)
    offset = inherited_rank(Path(resolve_model(str(stage_dir))))
    state = load_file(str(checkpoint / "policy.safetensors"))
    params = dict(model.named_parameters())
    mapping = _match_names(list(state), params)
    if len(mapping) < len(state):
        missing = next(k for k in state if k not in mapping)
        raise ModelError(f"{checkpoint}: tensor {missing!r} matches no parameter of the model in {stage_dir}")
    with torch.no_grad():
        for key, name in mapping.items():
            try:
                place_checkpoint_tensor(params[name], name, state[key], offset)
            except ValueError as err:
                raise ModelError(f"{checkpoint}: {err} (the model in {stage_dir})") from err
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.eval()
    return model
