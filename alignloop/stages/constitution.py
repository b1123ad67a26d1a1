"""Constitutional AI: critique → revision chains (supervised phase) and AI preferences by principle (RL phase).

Supervised phase: the model answers each prompt; then, for ``rounds`` rounds, a principle is drawn
at random, the model critiques its last answer by the principle's critique request and rewrites
it by the revision request. ``sft.jsonl`` holds the final revisions as SFT records, each with its
whole chain (initial response, every critique and revision) for inspection.

RL phase: the model samples two responses per prompt; a judge (the same model unless
``judge_model`` is set) compares them on a randomly drawn principle's preference question, both
A/B orders averaged. ``pairs.jsonl`` holds preference pairs for the RM or DPO stages.
"""

from __future__ import annotations

import importlib.resources
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import Field

from alignloop.config import DataConfig, SamplingSettings, StageConfig
from alignloop.data import load_records
from alignloop.errors import ConfigError, DataError
from alignloop.models import load_causal_lm, load_tokenizer
from alignloop.rewards.judge import LLMJudge
from alignloop.rollout import HFSampler
from alignloop.train.run_dir import RunDir
from alignloop.train.stage import StandaloneStage
from alignloop.utils.io import atomic_write_text

__all__ = ["ConstitutionConfig", "ConstitutionOptions", "ConstitutionStage", "Principle", "critique_revision_chains",
           "load_constitution", "principle_pairs"]

log = logging.getLogger("alignloop")
DEFAULT_CONSTITUTION = "default"


@dataclass(frozen=True)
class Principle:
    name: str
    critique: str
    revision: str
    preference: str

    @classmethod
    def from_mapping(cls, item: Any, where: str) -> "Principle":
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: must be a mapping with 'critique' and 'revision'")
        problems = [f"{where}.{key}: missing or empty" for key in ("critique", "revision")
                    if not str(item.get(key, "")).strip()]
        unknown = set(item) - {"name", "critique", "revision", "preference"}
        problems += [f"{where}.{key}: unknown key (allowed: name, critique, revision, preference)"
                     for key in sorted(unknown)]
        if problems:
            raise ConfigError("\n".join(problems))
        critique = str(item["critique"]).strip()
        # Without a preference question the judge is asked which response the critique would find less to fault in.
        preference = str(item.get("preference") or f"Which response does better on this request: {critique}").strip()
        return cls(str(item.get("name") or where), critique, str(item["revision"]).strip(), preference)


def constitution_path(spec: str) -> Path:
    if spec in (DEFAULT_CONSTITUTION, f"bundled:{DEFAULT_CONSTITUTION}"):
        return Path(str(importlib.resources.files("alignloop.resources") / "constitutions" / "default.yaml"))
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ConfigError(f"constitution {spec!r}: file not found")
    return path


def load_constitution(spec: str = DEFAULT_CONSTITUTION) -> list[Principle]:
    """Principles from a YAML file: a list, or a mapping with a ``principles`` list; ``default`` is ours."""
    path = constitution_path(spec)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from None
    items = data.get("principles") if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{path}: expected a non-empty list of principles (or 'principles: [...]')")
    principles = []
    for i, item in enumerate(items):
        try:
            principles.append(Principle.from_mapping(item, f"principles[{i}]"))
        except ConfigError as err:
            raise ConfigError("\n".join(f"{path}: {line}" for line in str(err).splitlines())) from None
    return principles


class ConstitutionOptions(SamplingSettings.defaults(max_new_tokens=96, temperature=0.7, top_p=0.95)):
    constitution: str = Field(DEFAULT_CONSTITUTION, description="YAML file of principles, or 'default' (shipped).")
    phase: Literal["supervised", "preference", "both"] = Field("both", description="Which outputs to produce.")
    rounds: int = Field(1, ge=1, description="Critique → revision rounds per prompt (a new principle each round).")
    num_prompts: int | None = Field(16, gt=0, description="Use the first N prompts of data.train (null: all).")
    critique_max_tokens: int = Field(64, gt=0, description="Tokens per critique.")
    batch_size: int = Field(8, gt=0, description="Sequences generated / judged together.")
    judge_model: str | None = Field(None, description="Model judging the RL-phase pairs (default: `model`).")
    chain_of_thought: bool = Field(False, description="Let the judge reason before its verdict.")


class ConstitutionConfig(StageConfig):
    stage: Literal["constitution"] = "constitution"
    data: DataConfig = Field(default_factory=lambda: DataConfig(train="bundled:prompts_train.jsonl"))
    constitution: ConstitutionOptions = Field(default_factory=ConstitutionOptions)


class _Generator:
    """Batched chat generation with fixed sampling settings and a running seed."""

    def __init__(self, model, tokenizer, opts: ConstitutionOptions, seed: int):
        self.sampler = HFSampler(model, tokenizer, batch_size=opts.batch_size)
        self.opts = opts
        self.seed = seed

    def __call__(self, conversations: list[list[dict]], max_new_tokens: int, n: int = 1) -> list[str]:
        self.seed += 1
        rollout = self.sampler.generate(
            conversations, n=n, **{**self.opts.sampling_kwargs(), "max_new_tokens": max_new_tokens}, seed=self.seed,
        )
        return [text.strip() for text in rollout.responses]


def critique_revision_chains(generate, prompts: list[list[dict]], principles: list[Principle], rounds: int,
                             rng: random.Random, max_new_tokens: int = 96, critique_max_tokens: int = 64) -> list[dict]:
    """For each prompt: the initial response and ``rounds`` (principle, critique, revision) steps.

    ``generate(conversations, max_new_tokens) -> list[str]`` answers each chat. An empty revision
    keeps the previous response (recorded as ``"revision_empty": true``).
    """
    responses = generate(prompts, max_new_tokens)
    results = [{"prompt": p, "initial_response": r, "chain": []} for p, r in zip(prompts, responses)]
    for round_index in range(1, rounds + 1):
        drawn = [rng.choice(principles) for _ in prompts]
        ask_critique = [p + [{"role": "assistant", "content": r or "(no response)"},
                             {"role": "user", "content": d.critique}]
                        for p, r, d in zip(prompts, responses, drawn)]
        critiques = generate(ask_critique, critique_max_tokens)
        ask_revision = [c + [{"role": "assistant", "content": k or "(no critique)"},
                             {"role": "user", "content": d.revision}]
                        for c, k, d in zip(ask_critique, critiques, drawn)]
        revisions = generate(ask_revision, max_new_tokens)
        for i, (principle, critique, revision) in enumerate(zip(drawn, critiques, revisions)):
            step = {"round": round_index, "principle": principle.name, "critique_request": principle.critique,
                    "critique": critique, "revision_request": principle.revision, "revision": revision}
            if not revision:
                step["revision_empty"] = True
            results[i]["chain"].append(step)
            responses[i] = revision or responses[i]
    for result, final in zip(results, responses):
        result["final_response"] = final
    return results


def principle_pairs(generate, judge, prompts: list[list[dict]], principles: list[Principle], rng: random.Random,
                    max_new_tokens: int = 96) -> list[dict]:
    """Two sampled responses per prompt, judged on a randomly drawn principle; preference-pair records."""
    samples = generate(prompts, max_new_tokens, n=2)
    rows = [(p, samples[2 * i], samples[2 * i + 1]) for i, p in enumerate(prompts)]
    rows = [(p, a, b) for p, a, b in rows if a and b and a != b]
    if not rows:
        return []
    drawn = [rng.choice(principles) for _ in rows]
    verdict = judge.compare([p for p, _, _ in rows], [a for _, a, _ in rows], [b for _, _, b in rows],
                            criteria=[d.preference for d in drawn])
    records = []
    for k, ((prompt, a, b), principle) in enumerate(zip(rows, drawn)):
        p = float(verdict.prob_a[k])
        chosen, rejected, prob = (a, b, p) if p >= 0.5 else (b, a, 1 - p)
        records.append({
            "prompt": prompt, "chosen": chosen, "rejected": rejected, "source": f"ai:constitution:{judge.name}",
            "principle": principle.name, "principle_question": principle.preference, "probability": round(prob, 6),
            "margin": round(2 * prob - 1, 6), "position_consistent": bool(verdict.consistent[k]),
        })
    return records


def _jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


class ConstitutionStage(StandaloneStage):
    """Not a training loop: ``run`` writes ``sft.jsonl`` and/or ``pairs.jsonl`` plus a summary."""

    name = "constitution"

    @classmethod
    def run(cls, cfg: ConstitutionConfig, run_dir: RunDir) -> dict[str, Any]:
        out_dir = run_dir.begin(cfg).path
        opts = cfg.constitution
        principles = load_constitution(opts.constitution)
        if not cfg.data.train:
            raise DataError("data.train: no prompts given")
        prompts = [r["prompt"] for r in load_records(cfg.data.train, "prompt")][: opts.num_prompts]
        torch.manual_seed(cfg.train.seed)
        rng = random.Random(cfg.train.seed)
        model = load_causal_lm(cfg.model, trainable=False)
        tokenizer = load_tokenizer(cfg.model)
        generate = _Generator(model, tokenizer, opts, cfg.train.seed)
        summary: dict[str, Any] = {"stage": "constitution", "principles": len(principles), "prompts": len(prompts)}

        if opts.phase in ("supervised", "both"):
            chains = critique_revision_chains(generate, prompts, principles, opts.rounds, rng,
                                              opts.max_new_tokens, opts.critique_max_tokens)
            sft = [{"messages": c["prompt"] + [{"role": "assistant", "content": c["final_response"]}],
                    "initial_response": c["initial_response"], "chain": c["chain"], "source": "ai:constitution"}
                   for c in chains if c["final_response"]]
            atomic_write_text(out_dir / "sft.jsonl", _jsonl(sft))
            summary.update(sft_records=len(sft), rounds=opts.rounds,
                           empty_revisions=sum(bool(s.get("revision_empty")) for c in chains for s in c["chain"]))
        if opts.phase in ("preference", "both"):
            if opts.judge_model:
                judge = LLMJudge.from_model(opts.judge_model, chain_of_thought=opts.chain_of_thought,
                                            batch_size=opts.batch_size)
            else:
                judge = LLMJudge(model, tokenizer, chain_of_thought=opts.chain_of_thought, batch_size=opts.batch_size,
                                 name=Path(cfg.model).name)
            pairs = principle_pairs(generate, judge, prompts, principles, rng, opts.max_new_tokens)
            atomic_write_text(out_dir / "pairs.jsonl", _jsonl(pairs))
            summary["pairs"] = len(pairs)
            if pairs:
                summary["position_bias_rate"] = sum(not p["position_consistent"] for p in pairs) / len(pairs)
        return run_dir.finish(summary)
