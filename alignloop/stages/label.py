"""The ``label`` stage: an LLM judge labels pairs (RLAIF) and writes preference-pair records.

Input (``data.train``): prompt records (``label.policy`` samples ``samples_per_prompt`` completions
per prompt and every pair of them is judged, as the quickstart does with its annotator), preference
pairs (re-judged; their own label is the reference the judge's agreement is measured against),
rankings (every pair of differently ranked completions), or
``{"prompt", "completions": [...]}`` records without a ranking (every pair of completions).

Output (``labels.jsonl``): ``{"prompt", "chosen", "rejected", "source": "ai:<judge>", "probability",
"margin", "judge": {...}}`` where ``probability`` is the judge's P(chosen ≻ rejected) ≥ 0.5 and
``margin = 2·probability − 1`` in [0, 1]. ``summary.json`` reports the position-bias rate and
agreement with the input labels and/or a gold scorer.
"""

from __future__ import annotations

import itertools
import json
import logging
from typing import Any, Literal

import torch
from pydantic import Field

from alignloop.config import DataConfig, SamplingSettings, StageConfig
from alignloop.data import load_records, resolve_data_path, split_data_path, validate_record
from alignloop.errors import DataError
from alignloop.eval.gold import get_gold_scorer
from alignloop.models import load_causal_lm, load_tokenizer
from alignloop.rewards.judge import DEFAULT_CRITERIA, LLMJudge, as_text
from alignloop.rollout import HFSampler
from alignloop.train.metrics import MetricsWriter
from alignloop.train.run_dir import RunDir
from alignloop.train.stage import StandaloneStage
from alignloop.utils.io import atomic_write_text

__all__ = ["LabelConfig", "LabelOptions", "LabelStage", "judge_pairs", "load_label_inputs"]

log = logging.getLogger("alignloop")


class LabelOptions(SamplingSettings.defaults(max_new_tokens=48)):
    mode: Literal["pairwise", "pointwise"] = Field(
        "pairwise", description="pairwise: 'A or B?'; pointwise: rate each completion 1-10 and compare the ratings."
    )
    criteria: str = Field(DEFAULT_CRITERIA, description="What the judge is asked to prefer.")
    swap_order: bool = Field(
        True, description="Judge each pair in both A/B orders and average (cancels position bias)."
    )
    chain_of_thought: bool = Field(False, description="Let the judge reason briefly before its verdict is read.")
    cot_max_tokens: int = Field(96, gt=0, description="Tokens of reasoning when chain_of_thought is on.")
    batch_size: int = Field(8, gt=0, description="Judge prompts per forward pass.")
    max_pairs: int | None = Field(None, gt=0, description="Label at most this many pairs (the first ones).")
    min_confidence: float = Field(
        0.0, ge=0, lt=1, description="Drop pairs whose margin 2·|p − 0.5| is below this (0 keeps all)."
    )
    gold: str | None = Field(None, description="Gold scorer (e.g. 'vader') to measure the judge's agreement with.")
    output: str = Field("labels.jsonl", description="File name of the labelled pairs inside the output directory.")
    judge_name: str | None = Field(None, description="Name in the records' source 'ai:<name>' (default: the model's).")
    policy: str | None = Field(
        None, description="For prompt-only records: the model that samples completions (default: `model`)."
    )
    samples_per_prompt: int = Field(2, ge=2, description="For prompt-only records: completions sampled per prompt.")


class LabelConfig(StageConfig):
    stage: Literal["label"] = "label"
    data: DataConfig = Field(default_factory=lambda: DataConfig(train="bundled:prompts_eval.jsonl"))
    label: LabelOptions = Field(default_factory=LabelOptions)


def load_label_inputs(
    path: str, opts: LabelOptions | None = None, model: str | None = None, seed: int = 0
) -> list[dict]:
    """Pairs ``{"prompt", "a", "b", "reference"}`` to judge; ``reference`` is 1 when the input says a ≻ b.

    Prompt-only records need ``opts`` and ``model``: completions are sampled from ``opts.policy or model``.
    """
    first = _first_record(path)
    if "chosen" in first or "rejected" in first:
        return [{"prompt": r["prompt"], "a": r["chosen"], "b": r["rejected"], "reference": 1}
                for r in load_records(path, "pair")]
    if "ranking" in first:
        return [_rank_pair(r, i, j) for r in load_records(path, "ranking") for i, j in _ranked_pairs(r)]
    if "completions" in first:
        return [
            {"prompt": r["prompt"], "a": r["completions"][i], "b": r["completions"][j], "reference": None}
            for r in _load_unranked(path)
            for i, j in itertools.combinations(range(len(r["completions"])), 2)
            if r["completions"][i] != r["completions"][j]
        ]
    if "prompt" in first and opts is not None and model is not None:
        return _sampled_pairs(load_records(path, "prompt"), opts, opts.policy or model, seed)
    raise DataError(f"{path}:1: record: expected prompts, pairs (chosen/rejected), rankings, or prompt + completions")


def _sampled_pairs(records: list[dict], opts: LabelOptions, policy_name: str, seed: int) -> list[dict]:
    if opts.max_pairs is not None:  # sample no more prompts than the pairs asked for need
        per_prompt = opts.samples_per_prompt * (opts.samples_per_prompt - 1) // 2
        records = records[: -(-opts.max_pairs // per_prompt)]
    policy = load_causal_lm(policy_name, trainable=False)
    sampler = HFSampler(policy, load_tokenizer(policy_name), batch_size=16)
    prompts = [r["prompt"] for r in records]
    n = opts.samples_per_prompt
    rollout = sampler.generate(prompts, n=n, **opts.sampling_kwargs(), seed=seed)
    pairs = []
    for k, prompt in enumerate(prompts):
        texts = [t.strip() for t in rollout.responses[k * n : (k + 1) * n]]
        for i, j in itertools.combinations(range(n), 2):
            if texts[i] and texts[j] and texts[i] != texts[j]:
                pairs.append({"prompt": prompt, "a": texts[i], "b": texts[j], "reference": None})
    return pairs


def _first_record(path: str) -> dict:
    with resolve_data_path(path).open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}:1: invalid JSON: {err.msg}") from None
                return value if isinstance(value, dict) else {}
    raise DataError(f"{path}: no records")


def _load_unranked(path: str) -> list[dict]:
    """Prompt + completions records, validated as rankings with a placeholder order; a record selection
    (``FILE[0:100]``, ``FILE[1/2]``) keeps only those records, as for every other kind."""
    file_label, selection = split_data_path(path)
    items = []
    with resolve_data_path(file_label).open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    items.append((number, json.loads(line), None))
                except json.JSONDecodeError as err:
                    items.append((number, None, f"invalid JSON: {err.msg} (column {err.colno})"))
    if selection is not None:
        items = selection.apply(items, lambda item: item[1], file_label)
    records, problems = [], []
    for number, raw, parse_error in items:
        if parse_error:
            problems.append(f"{file_label}:{number}: {parse_error}")
            continue
        n = len(raw.get("completions") or []) if isinstance(raw, dict) else 0
        record, found = validate_record({**raw, "ranking": list(range(n))} if n else raw, "ranking")
        problems += [f"{file_label}:{number}: {p}" for p in found]
        if record is not None:
            records.append(record)
    if problems:
        raise DataError(problems[:20], len(problems))
    return records


def _ranked_pairs(record: dict) -> list[tuple[int, int]]:
    groups = [g if isinstance(g, list) else [g] for g in record["ranking"]]
    return [(i, j) for k, better in enumerate(groups) for worse in groups[k + 1 :] for i in better for j in worse]


def _rank_pair(record: dict, better: int, worse: int) -> dict:
    return {"prompt": record["prompt"], "a": record["completions"][better], "b": record["completions"][worse],
            "reference": 1}


def judge_pairs(judge: LLMJudge, pairs: list[dict], chunk: int = 32) -> dict[str, Any]:
    """P(a ≻ b) per pair (``prob_a``), with the raw per-order probabilities and choice mass."""
    keys = ("prob_a", "p_ab", "p_ba", "choice_mass", "uncertainty")
    out: dict[str, list] = {k: [] for k in keys}
    out["reasoning"] = []
    for start in range(0, len(pairs), chunk):
        part = pairs[start : start + chunk]
        prompts, a, b = [p["prompt"] for p in part], [p["a"] for p in part], [p["b"] for p in part]
        if judge.mode == "pairwise":
            verdict = judge.compare(prompts, a, b)
            out["prob_a"] += verdict.prob_a.tolist()
            out["p_ab"] += verdict.p_ab.tolist()
            out["p_ba"] += verdict.p_ba.tolist() if verdict.p_ba is not None else [None] * len(part)
            out["choice_mass"] += verdict.choice_mass.tolist()
            out["uncertainty"] += verdict.uncertainty.tolist()
            out["reasoning"] += verdict.reasoning or [None] * len(part)
        else:
            ra, rb = judge.rate(prompts, a), judge.rate(prompts, b)
            out["prob_a"] += rating_win_probability(ra.probs, rb.probs).tolist()
            out["p_ab"] += ra.expected.tolist()  # the two ratings, for inspection
            out["p_ba"] += rb.expected.tolist()
            out["choice_mass"] += ((ra.choice_mass + rb.choice_mass) / 2).tolist()
            out["uncertainty"] += ((ra.std**2 + rb.std**2).sqrt()).tolist()
            out["reasoning"] += ([[x, y] for x, y in zip(ra.reasoning, rb.reasoning)] if ra.reasoning
                                 else [None] * len(part))
        log.info("label: judged %d/%d pairs", min(start + chunk, len(pairs)), len(pairs))
    return out


def rating_win_probability(probs_a: torch.Tensor, probs_b: torch.Tensor) -> torch.Tensor:
    """P(R_a > R_b) + ½·P(R_a = R_b) for independent ratings with the given distributions ``[B, K]``."""
    cdf_b = probs_b.cumsum(-1)
    below_b = cdf_b - probs_b  # P(R_b < k)
    return (probs_a * (below_b + 0.5 * probs_b)).sum(-1)


def agreement(prob_a: list[float], reference: list[float | None]) -> tuple[float | None, int]:
    """Share of pairs with a reference (1: a ≻ b, 0: b ≻ a, None: unknown/tie) where the judge agrees."""
    rows = [(p, r) for p, r in zip(prob_a, reference) if r is not None]
    if not rows:
        return None, 0
    hits = sum((p > 0.5) == (r > 0.5) for p, r in rows)
    return hits / len(rows), len(rows)


class LabelStage(StandaloneStage):
    """Not a training loop: ``run`` judges the pairs and writes records and a summary."""

    name = "label"

    @classmethod
    def run(cls, cfg: LabelConfig, run_dir: RunDir) -> dict[str, Any]:
        out_dir = run_dir.begin(cfg).path
        opts = cfg.label
        if not cfg.data.train:
            raise DataError("data.train: no records to label")
        pairs = load_label_inputs(cfg.data.train, opts, cfg.model, cfg.train.seed)[: opts.max_pairs]
        torch.manual_seed(cfg.train.seed)
        judge = LLMJudge.from_model(
            cfg.model, mode=opts.mode, criteria=opts.criteria, swap_order=opts.swap_order,
            chain_of_thought=opts.chain_of_thought, cot_max_tokens=opts.cot_max_tokens,
            batch_size=opts.batch_size, max_length=cfg.data.max_length,
            **({"name": opts.judge_name} if opts.judge_name else {}),
        )
        result = judge_pairs(judge, pairs)
        records = _pair_records(judge, pairs, result, opts.min_confidence)
        atomic_write_text(out_dir / opts.output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))

        summary: dict[str, Any] = {"stage": "label", "judge": judge.source, "mode": opts.mode,
                                   "pairs_judged": len(pairs)}
        summary["pairs_written"] = len(records)
        probs = torch.tensor(result["prob_a"])
        summary["mean_confidence"] = float((2 * (probs - 0.5).abs()).mean())
        summary["mean_choice_mass"] = float(torch.tensor(result["choice_mass"]).mean())
        if opts.mode == "pairwise" and opts.swap_order:
            p_ab, p_ba = torch.tensor(result["p_ab"]), torch.tensor(result["p_ba"])
            summary["position_bias_rate"] = float(((p_ab > 0.5) != (p_ba < 0.5)).float().mean())
            summary["first_slot_rate"] = float(torch.cat([p_ab, p_ba]).mean())
        ref_agree, n_ref = agreement(result["prob_a"], [p["reference"] for p in pairs])
        if ref_agree is not None:
            summary.update(agreement_with_input=ref_agree, input_labelled_pairs=n_ref)
        if opts.gold:
            gold_agree, n_gold = _gold_agreement(opts.gold, pairs, result["prob_a"])
            summary.update({f"agreement_with_gold_{opts.gold}": gold_agree, "gold_decisive_pairs": n_gold})
        summary = run_dir.finish(summary, write=False)
        writer = MetricsWriter(run_dir.metrics_path)
        writer.write(len(pairs), {k: v for k, v in summary.items() if isinstance(v, (int, float)) and v is not None})
        writer.close()
        run_dir.write_summary(summary)
        run_dir.release()
        return summary


def _pair_records(judge: LLMJudge, pairs: list[dict], result: dict, min_confidence: float) -> list[dict]:
    records = []
    for i, pair in enumerate(pairs):
        p = result["prob_a"][i]
        if 2 * abs(p - 0.5) < min_confidence:
            continue
        chosen, rejected, prob = (pair["a"], pair["b"], p) if p >= 0.5 else (pair["b"], pair["a"], 1 - p)
        details = {"p_ab": result["p_ab"][i], "p_ba": result["p_ba"][i], "choice_mass": result["choice_mass"][i]}
        details["uncertainty"] = result["uncertainty"][i]
        if result["reasoning"][i]:
            details["reasoning"] = result["reasoning"][i]
        records.append({
            "prompt": pair["prompt"], "chosen": chosen, "rejected": rejected, "source": judge.source,
            "probability": round(prob, 6), "margin": round(2 * prob - 1, 6), "judge": details,
        })
    return records


def _gold_agreement(gold_name: str, pairs: list[dict], prob_a: list[float]) -> tuple[float | None, int]:
    gold = get_gold_scorer(gold_name)
    prompts = [as_text(p["prompt"]) for p in pairs]
    gold_a = gold.score(prompts, [as_text(p["a"]) for p in pairs])
    gold_b = gold.score(prompts, [as_text(p["b"]) for p in pairs])
    reference = [None if ga == gb else float(ga > gb) for ga, gb in zip(gold_a, gold_b)]
    return agreement(prob_a, reference)
