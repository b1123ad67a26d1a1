"""The evaluation stage: every policy on held-out prompts, judged by a gold scorer the reward model never saw.

Per policy: gold reward (mean and 95% bootstrap interval), proxy (reward-model) reward, KL to the
reference, win rate against the reference, length, diversity and the share of responses cut by
the length limit. Best-of-N policies re-rank N samples of the reference by the proxy reward. An
over-optimisation view puts proxy and gold reward against √KL for best-of-N with N = 1, 2, 4, ...
and for the saved checkpoints of chosen training stages (Gao et al. 2022).

A vision-language model evaluates image prompts (records with ``images``; each prompt's images are encoded once).
``eval.gold: rule:exact_match`` scores against the records' ``answer``; with ``temperature: 0`` a single model
(no policies, no best-of-N) is evaluated greedily, the usual held-out exact-match check.

Writes ``report.json`` (schema: docs/report-json.md), ``samples.jsonl``, ``report.html``,
``config.yaml`` and ``summary.json``. Each policy's samples are kept in ``parts/`` as soon as they
are done, so an interrupted evaluation resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from alignloop.config import DataConfig, SamplingSettings, Section, StageConfig
from alignloop.data import load_records
from alignloop.errors import ConfigError
from alignloop.eval.eval_report import write_eval_outputs
from alignloop.eval.eval_summary import (
    best_of_n_kl,
    best_of_n_pick,
    overoptimisation_curve,
    simplify_prompt,
    summarize_policy,
)
from alignloop.rewards import build_reward
from alignloop.stages.evaluate.progress import SampleProgress
from alignloop.stages.evaluate.sampling import (
    RewardModelGold,
    checkpoint_steps,
    gold_scorer,
    load_checkpoint_policy,
    load_policy,
    sample_and_score,
)
from alignloop.stages.rl.prompts import RLPrompts
from alignloop.train.run_dir import RunDir
from alignloop.train.stage import StandaloneStage
from alignloop.utils.io import read_jsonl, write_jsonl

__all__ = ["EvalConfig", "EvalOptions", "EvalStage", "PolicySpec", "evaluate"]

log = logging.getLogger("alignloop")


class PolicySpec(Section):
    model: str | None = Field(None, description="Bundled name, HF folder or stage folder of the policy.")
    best_of: int | None = Field(
        None, gt=0, description="Instead of a model: best-of-N of the reference by the proxy reward."
    )
    checkpoints: bool = Field(
        False, description="Also evaluate the stage's saved checkpoints (over-optimisation curve)."
    )

    @model_validator(mode="after")
    def _one_kind(self) -> "PolicySpec":
        if (self.model is None) == (self.best_of is None):
            raise ValueError("give exactly one of 'model' or 'best_of'")
        if self.checkpoints and self.model is None:
            raise ValueError("'checkpoints' needs a model folder")
        return self


class EvalOptions(SamplingSettings.defaults(max_new_tokens=48)):
    # T = 1 keeps the Monte-Carlo KL estimate unbiased; T = 0 only for `model` alone (``_greedy_alone``)
    reference: str = Field("reference", description="Name under which `model` (the reference policy) is reported.")
    policies: dict[str, str | PolicySpec] = Field(
        default_factory=dict, description="name -> model folder, or {model, checkpoints} / {best_of: N}."
    )
    best_of_n: list[int] = Field(default_factory=list, description="Shorthand: adds policies bon<N> for each N.")
    best_of_n_curve: bool = Field(True, description="Best-of-N for N = 1, 2, 4, ... in the over-optimisation view.")
    gold: str = Field("vader", description="Gold scorer: a name in alignloop.eval.gold, 'module:function', "
                      "'rule:<name>' (a reward rule given the record fields, e.g. rule:exact_match), or a reward-model "
                      "folder (a proxy gold: train it on pairs the proxy reward model never saw).")
    gold_label: str | None = Field(None, description="How reports name the gold (default: `gold`; for a "
                                   "reward-model folder, 'proxy gold (reward model <folder>)').")
    n_prompts: int | None = Field(None, gt=0, description="Use only the first N prompts.")
    samples_per_prompt: int = Field(1, gt=0)
    batch_size: int = Field(16, gt=0, description="Sequences sampled together.")
    n_boot: int = Field(1000, gt=0, description="Bootstrap resamples for the 95% intervals.")
    seed: int = 0
    show_samples: int = Field(6, ge=0, description="Prompts shown side by side in report.html.")

    @model_validator(mode="after")
    def _greedy_alone(self) -> "EvalOptions":
        if self.temperature <= 0 and (self.policies or self.best_of_n or self.samples_per_prompt > 1):
            raise ValueError(
                "temperature: 0 (greedy) evaluates `model` alone with one sample per prompt; policies, best_of_n "
                "and samples_per_prompt > 1 need temperature > 0 (1.0 keeps the Monte-Carlo KL estimate unbiased)"
            )
        return self


class EvalConfig(StageConfig):
    stage: Literal["eval"] = "eval"
    data: DataConfig = Field(default_factory=lambda: DataConfig(eval="bundled:prompts_eval.jsonl"))
    reward: Any = Field(
        None, description="Proxy reward (a reward-model folder, 'module:function', or a list); "
        "needed for best-of-N."
    )
    eval: EvalOptions = Field(default_factory=EvalOptions)


def _policies(opts: EvalOptions) -> dict[str, PolicySpec]:
    specs = {name: PolicySpec(model=s) if isinstance(s, str) else s for name, s in opts.policies.items()}
    for n in opts.best_of_n:
        specs.setdefault(f"bon{n}", PolicySpec(best_of=n))
    for name in specs:
        if name == opts.reference or not name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(
                f"eval.policies: {name!r}: names are letters, digits, - and _, and differ from eval.reference"
            )
    return specs


class _Parts:
    """Per-policy sample files in ``parts/``: computed once, reused on resume."""

    def __init__(self, out_dir: Path, progress: Any):
        self.root = out_dir / "parts"
        self.root.mkdir(parents=True, exist_ok=True)
        self.progress = progress

    def get(self, name: str, compute) -> list[dict]:
        path = self.root / f"{name}.jsonl"
        if path.exists():
            log.info("eval: %s already sampled (%s)", name, path)
            records = read_jsonl(path)
            self.progress.advance(len(records))
            return records
        records = compute()
        write_jsonl(path, records)
        return records


def evaluate(cfg: EvalConfig, out_dir: str | Path | RunDir) -> dict:
    """Run the evaluation into ``out_dir``; return the report dict (also written as report.json)."""
    run_dir = out_dir if isinstance(out_dir, RunDir) else RunDir(out_dir)

    t0 = time.time()
    opts = cfg.eval
    specs = _policies(opts)
    bon_sizes = sorted({s.best_of for s in specs.values() if s.best_of})
    if bon_sizes and cfg.reward is None:
        raise ConfigError("eval: best-of-N policies need a proxy reward: set 'reward' (e.g. a reward-model folder)")
    source = cfg.data.eval or cfg.data.train
    if not source:
        raise ConfigError("data.eval: no prompts to evaluate on")
    prompt_records = list(load_records(source, "prompt"))[: opts.n_prompts]
    inputs = RLPrompts(cfg.model, cfg.data.max_length)
    prompts = _sampler_prompts(inputs, prompt_records, source, cfg.model)
    gold = gold_scorer(opts.gold)
    proxy = build_reward(cfg.reward) if cfg.reward is not None else None
    out_dir = run_dir.begin(cfg).path
    pool_size = max(bon_sizes, default=0)
    tokenizer = inputs.tokenizer
    k = opts.samples_per_prompt
    fields = {key: [r.get(key) for r in prompt_records]
              for key in sorted({key for r in prompt_records for key in r if key != "prompt"})}
    sampling = dict(**opts.sampling_kwargs(), batch_size=opts.batch_size, gold=gold, proxy=proxy,
                    proxy_bf16=cfg.train.precision == "bf16", fields=fields)
    ckpt_plan = {name: _intermediate_checkpoints(s.model) for name, s in specs.items() if s.checkpoints}
    n_model = sum(1 for s in specs.values() if s.model) + sum(len(v) for v in ckpt_plan.values())
    total = len(prompts) * (k * (1 + n_model) + k * pool_size)

    records: dict[str, list[dict]] = {}
    groups: list[list[dict]] | None = None
    checkpoint_points: dict[str, list[dict]] = {}
    with SampleProgress(total) as progress:
        parts = _Parts(out_dir, progress)
        reference = load_policy(cfg.model)
        progress.describe(opts.reference)
        records[opts.reference] = parts.get(opts.reference, lambda: sample_and_score(
            reference, tokenizer, prompts, n=k, seed=opts.seed, reference=None, progress=progress.advance, **sampling))
        for name, spec in specs.items():
            if spec.model is None:
                continue
            progress.describe(name)

            def run_policy(model_dir: str = spec.model) -> list[dict]:
                policy = load_policy(model_dir)
                try:
                    return sample_and_score(policy, tokenizer, prompts, n=k, seed=opts.seed + 1, reference=reference,
                                            progress=progress.advance, **sampling)
                finally:
                    del policy
                    gc.collect()

            records[name] = parts.get(name, run_policy)
        if pool_size:
            progress.describe(f"best-of-{pool_size} pool")
            pool = parts.get("_best_of_pool", lambda: sample_and_score(
                reference, tokenizer, prompts, n=k * pool_size, seed=opts.seed + 2, reference=None,
                progress=progress.advance, **sampling))
            groups = _pool_groups(pool, pool_size)
            for name, spec in specs.items():
                if spec.best_of:
                    records[name] = best_of_n_pick(groups, spec.best_of)
        for name, steps in ckpt_plan.items():
            checkpoint_points[name] = []
            for step, path in steps:
                progress.describe(f"{name} step {step}")

                def run_checkpoint(stage_dir: str = specs[name].model, ckpt: Path = path) -> list[dict]:
                    policy = load_checkpoint_policy(stage_dir, ckpt)
                    try:
                        return sample_and_score(policy, tokenizer, prompts, n=k, seed=opts.seed + 1,
                                                reference=reference, progress=progress.advance, **sampling)
                    finally:
                        del policy
                        gc.collect()

                ckpt_records = parts.get(f"{name}@step-{step}", run_checkpoint)
                checkpoint_points[name].append({"step": step, "records": ckpt_records})
        reference = None  # free the model before the report is drawn
        gc.collect()

    report = _build_report(cfg, specs, records, checkpoint_points, groups, len(prompts),
                           gold_is_model=isinstance(gold, RewardModelGold))
    report["stages"] = {"eval": {"seconds": round(time.time() - t0, 2)}}
    write_eval_outputs(out_dir, report, records, show_samples=opts.show_samples)
    run_dir.finish(_summary(report))
    return report


def _sampler_prompts(inputs: RLPrompts, records: list[dict], source: str, model: str) -> list[Any]:
    """What the sampler is given: the (simplified) messages, or for a VLM token ids with the images attached."""
    if inputs.vision is None:
        if any(r.get("images") for r in records):
            raise ConfigError(f"data.eval: the prompt records hold images but model {model!r} is not a "
                              "vision-language model; use a VLM (e.g. smolvlm-tiny) or prompts without images")
        return [simplify_prompt(r["prompt"]) for r in records]
    return [dataclasses.replace(p, shown=simplify_prompt(r["prompt"]))  # the report shows the text as before
            for p, r in zip(inputs.for_sampler(records, where=str(source)), records)]


def _intermediate_checkpoints(stage_dir: str) -> list[tuple[int, Path]]:
    """The stage's checkpoints except the last step's, which is the final model (evaluated anyway)."""
    summary = Path(stage_dir) / "summary.json"
    final_step = json.loads(summary.read_text()).get("steps") if summary.is_file() else None
    return [(step, path) for step, path in checkpoint_steps(stage_dir) if step != final_step]


def _pool_groups(pool: list[dict], size: int) -> list[list[dict]]:
    """Candidates grouped per (prompt, slot): slot j holds pool samples j·size ... (j+1)·size − 1."""
    groups: dict[tuple[int, int], list[dict]] = {}
    for r in pool:
        slot = r["sample_index"] // size
        groups.setdefault((r["prompt_index"], slot), []).append({**r, "sample_index": slot})
    return [groups[key] for key in sorted(groups)]


def _build_report(cfg: EvalConfig, specs: dict[str, PolicySpec], records: dict[str, list[dict]],
                  checkpoint_points: dict[str, list[dict]], groups: list[list[dict]] | None, n_prompts: int,
                  gold_is_model: bool = False) -> dict:
    opts = cfg.eval
    ref_records = records[opts.reference]
    summarize = lambda recs, kl: summarize_policy(recs, ref_records, kl, n_boot=opts.n_boot, seed=opts.seed)  # noqa: E731
    policies = {opts.reference: summarize(ref_records, {"method": "zero"})}
    for name, spec in specs.items():
        kl = {"method": "analytic_best_of_n", "n": spec.best_of} if spec.best_of else {"method": "monte_carlo"}
        policies[name] = summarize(records[name], kl)
    ref_point = {"label": opts.reference, "kl": 0.0, "gold": policies[opts.reference]["gold_reward_mean"],
                 "proxy": policies[opts.reference]["proxy_reward_mean"]}
    overopt: dict[str, Any] = {}
    if groups is not None and opts.best_of_n_curve:
        points, n = [], 1
        while n <= len(groups[0]):
            picks = best_of_n_pick(groups, n)
            points.append({"label": f"N={n}", "kl": best_of_n_kl(n), "gold": _mean(picks, "gold"),
                           "proxy": _mean(picks, "proxy")})
            n *= 2
        overopt["best_of_n"] = overoptimisation_curve(points)
    for name, steps in checkpoint_points.items():
        points = [ref_point]
        for item in steps:
            s = summarize(item["records"], {"method": "monte_carlo"})
            points.append({"label": f"step {item['step']}", "kl": max(s["kl_to_ref"], 0.0),
                           "gold": s["gold_reward_mean"], "proxy": s["proxy_reward_mean"]})
        final = policies[name]
        points.append({"label": "final", "kl": max(final["kl_to_ref"], 0.0), "gold": final["gold_reward_mean"],
                       "proxy": final["proxy_reward_mean"]})
        overopt[name] = overoptimisation_curve(points, sort=False)
    return {
        "policies": policies,
        "reference": opts.reference,
        "gold_scorer": opts.gold,
        "gold_label": _gold_label(opts, gold_is_model),
        "proxy_reward": None if cfg.reward is None else (cfg.reward if isinstance(cfg.reward, str) else "combined"),
        "prompts": cfg.data.eval or cfg.data.train,
        "n_prompts": n_prompts,
        "samples_per_prompt": opts.samples_per_prompt,
        "sampling": {"max_new_tokens": opts.max_new_tokens, "temperature": opts.temperature, "top_p": opts.top_p,
                     "seed": opts.seed},
        "overoptimisation": overopt,
    }


def _gold_label(opts: EvalOptions, gold_is_model: bool) -> str:
    if opts.gold_label:
        return opts.gold_label
    return f"proxy gold (reward model {opts.gold})" if gold_is_model else opts.gold


def _mean(records: list[dict], key: str) -> float | None:
    values = [r[key] for r in records if r.get(key) is not None]
    return sum(values) / len(values) if values else None


def _summary(report: dict) -> dict:
    summary: dict[str, Any] = {"stage": "eval", "reference": report["reference"]}
    for name, entry in report["policies"].items():
        summary[f"{name}/gold"] = entry["gold_reward_mean"]
        summary[f"{name}/kl"] = entry["kl_to_ref"]
        summary[f"{name}/win_rate"] = entry["win_rate_vs_ref"]
    return summary


class EvalStage(StandaloneStage):
    """Registered as ``eval``: not a training loop."""

    name = "eval"

    @classmethod
    def run(cls, cfg: EvalConfig, run_dir: RunDir) -> dict:
        evaluate(cfg, run_dir)
        return run_dir.read_summary()
