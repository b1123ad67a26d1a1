"""The ``collect`` stage: sample pairs of a policy's own responses and label them with the simulated annotator.

For each prompt it samples ``samples_per_prompt`` responses, forms pairs (all of them, or adjacent
ones) and asks ``SimulatedAnnotator`` (noisy Bradley–Terry on a gold scorer) which is better. The
result is ``pairs.jsonl`` in the preference-pair format, ready for the reward-model and DPO stages.
Work is done in chunks of prompts recorded in ``pairs.partial.jsonl``, so an interrupted run resumes.
"""

from __future__ import annotations

import itertools
import json
import logging
from typing import Literal

from pydantic import Field

from alignloop.config import DataConfig, SamplingSettings, StageConfig
from alignloop.data import load_records
from alignloop.eval.eval_summary import prompt_text, simplify_prompt
from alignloop.feedback.simulated import SimulatedAnnotator
from alignloop.models import load_tokenizer
from alignloop.rollout import HFSampler
from alignloop.stages.evaluate.progress import SampleProgress
from alignloop.stages.evaluate.sampling import load_policy
from alignloop.train.run_dir import RunDir
from alignloop.train.stage import StandaloneStage
from alignloop.utils.io import read_jsonl, write_jsonl

__all__ = ["CollectConfig", "CollectOptions", "CollectStage", "make_pairs"]

log = logging.getLogger("alignloop")


class CollectOptions(SamplingSettings.defaults(max_new_tokens=48)):
    greedy_allowed = False  # a prompt's responses must differ to make pairs
    gold: str = Field("vader", description="Gold scorer the annotator judges with.")
    annotator_temperature: float = Field(
        0.1, ge=0, description="Bradley–Terry temperature T: P(a≻b) = σ((g(a)−g(b))/T)."
    )
    flip_prob: float = Field(0.0, ge=0, le=1, description="Probability that a label is flipped (annotator mistakes).")
    samples_per_prompt: int = Field(2, ge=2, description="Responses sampled per prompt.")
    pairing: Literal["all", "adjacent"] = Field(
        "all", description="all: every pair of a prompt's responses; adjacent: (0,1), (2,3), ..."
    )
    n_prompts: int | None = Field(None, gt=0, description="Use only the first N prompts.")
    batch_size: int = Field(16, gt=0, description="Sequences sampled together.")
    seed: int = 0


class CollectConfig(StageConfig):
    stage: Literal["collect"] = "collect"
    data: DataConfig = Field(default_factory=lambda: DataConfig(train="bundled:prompts_train.jsonl"))
    collect: CollectOptions = Field(default_factory=CollectOptions)


def make_pairs(k: int, pairing: str) -> list[tuple[int, int]]:
    """Index pairs among k responses: all k(k−1)/2, or (0,1), (2,3), ... for ``adjacent``."""
    if pairing == "adjacent":
        return [(i, i + 1) for i in range(0, k - 1, 2)]
    return list(itertools.combinations(range(k), 2))


def _chunk_records(
    model, tokenizer, prompts: list, opts: CollectOptions, chunk: int, annotator_seed: int
) -> list[dict]:
    k = opts.samples_per_prompt
    sampler = HFSampler(model, tokenizer, batch_size=opts.batch_size)
    ro = sampler.generate(prompts, n=k, **opts.sampling_kwargs(), seed=opts.seed + chunk)
    by_prompt: dict[int, list[str]] = {}
    for i, g in enumerate(ro.group_index.tolist()):
        by_prompt.setdefault(int(g), []).append(ro.responses[i])
    firsts, seconds, shown = [], [], []
    for g, responses in sorted(by_prompt.items()):
        for a, b in make_pairs(len(responses), opts.pairing):
            if not responses[a].strip() or not responses[b].strip():
                continue  # an empty response is not a valid preference record
            shown.append(prompts[g])
            firsts.append(responses[a])
            seconds.append(responses[b])
    annotator = SimulatedAnnotator(gold=opts.gold, temperature=opts.annotator_temperature, flip_prob=opts.flip_prob,
                                   seed=annotator_seed)
    texts = [prompt_text(p) for p in shown]
    labelled = annotator.label_pairs(texts, firsts, seconds)
    # label_pairs keeps the non-identical pairs in order and sees prompt text; put the original prompt back
    kept = [i for i in range(len(shown)) if firsts[i] != seconds[i]]
    chosen_gold = annotator.gold.score([texts[i] for i in kept], [r["chosen"] for r in labelled])
    rejected_gold = annotator.gold.score([texts[i] for i in kept], [r["rejected"] for r in labelled])
    for record, i, good, bad in zip(labelled, kept, chosen_gold, rejected_gold):
        record["prompt"] = shown[i]
        record["gold_margin"] = float(good - bad)
    return labelled


class CollectStage(StandaloneStage):
    """Registered as ``collect``: a standalone stage (no training loop)."""

    name = "collect"

    @classmethod
    def run(cls, cfg: CollectConfig, run_dir: RunDir) -> dict:
        out_dir = run_dir.begin(cfg).path
        opts = cfg.collect
        prompts = [simplify_prompt(r["prompt"]) for r in load_records(cfg.data.train, "prompt")][: opts.n_prompts]
        per_chunk = max(1, opts.batch_size // opts.samples_per_prompt)
        chunks = [prompts[i : i + per_chunk] for i in range(0, len(prompts), per_chunk)]
        partial = out_dir / "pairs.partial.jsonl"
        done = {row["chunk"]: row["records"] for row in read_jsonl(partial)}
        if done:
            log.info("collect: resuming, %d of %d chunks already labelled", len(done), len(chunks))
        tokenizer = load_tokenizer(cfg.model)
        model = load_policy(cfg.model) if len(done) < len(chunks) else None
        with SampleProgress(len(prompts) * opts.samples_per_prompt, title="collect") as progress:
            progress.describe(f"sampling {opts.samples_per_prompt} responses per prompt")
            for index, chunk in enumerate(chunks):
                if index not in done:
                    done[index] = _chunk_records(model, tokenizer, chunk, opts, index, opts.seed * 100_003 + index)
                    with partial.open("a") as f:  # one line per finished chunk: a torn last line is ignored on resume
                        f.write(json.dumps({"chunk": index, "records": done[index]}) + "\n")
                progress.advance(len(chunk) * opts.samples_per_prompt)
        records = [r for i in range(len(chunks)) for r in done[i]]
        write_jsonl(out_dir / "pairs.jsonl", records)
        n_possible = len(prompts) * len(make_pairs(opts.samples_per_prompt, opts.pairing))
        agree = sum(1 for r in records if r["gold_margin"] > 0)
        summary = {
            "stage": "collect",
            "pairs": len(records),
            "prompts": len(prompts),
            "pairs_skipped": n_possible - len(records),  # identical or empty responses
            "agreement_with_gold": agree / len(records) if records else None,
            "mean_abs_gold_margin": sum(abs(r["gold_margin"]) for r in records) / len(records) if records else None,
        }
        summary = run_dir.finish(summary, write=False)
        write_jsonl(run_dir.metrics_path,
                    [{"step": 0, **{k: v for k, v in summary.items() if isinstance(v, (int, float))}}])
        run_dir.write_summary(summary)
        run_dir.release()
        partial.unlink(missing_ok=True)
        return summary
