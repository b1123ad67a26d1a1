"""Best-of-N: sample N answers per prompt, score them with any reward source, keep the best.

One run draws ``M = max(bon.n)`` samples per prompt and reports, for every N in ``bon.n``, the expected reward
of the best of N samples next to the analytical KL bound ``log N − (N−1)/N``. The expectation is the unbiased
estimate over all N-subsets of the M samples (``expected_best_of_n``), not the best of the first N, so the
curve is smooth and never decreases with N. The best of all M samples per prompt is written as SFT records
(rejection-sampling fine-tuning) and, paired with the worst, as preference pairs (for DPO).

A vision-language model samples image prompts (records with ``images``): each prompt's images are encoded once
and shared by its M samples; reward sources get the ``images`` entries like every other record field, and the
SFT records, pairs and samples keep them, so a round of rejection-sampling fine-tuning trains on the images.

Files: ``samples.jsonl``, ``sft_records.jsonl``, ``pairs.jsonl``, ``metrics.jsonl`` (one row per N, ``step``
= N), ``summary.json``, ``config.yaml``.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Literal

import torch
from pydantic import Field, field_validator

from alignloop.algos.best_of_n import best_of_n_indices, bon_kl_bound
from alignloop.config import DataConfig, SamplingSettings, StageConfig
from alignloop.data import load_records
from alignloop.data.images import IMAGE_PLACEHOLDER
from alignloop.errors import ConfigError
from alignloop.eval.gold import get_gold_scorer
from alignloop.models import load_causal_lm
from alignloop.rewards import build_reward
from alignloop.rollout import HFSampler
from alignloop.stages.rl.prompts import RLPrompts
from alignloop.train.run_dir import RunDir
from alignloop.train.stage import StandaloneStage
from alignloop.utils.io import write_jsonl

__all__ = ["BoNConfig", "BoNOptions", "BoNStage", "expected_best_of_n", "prompt_text"]

log = logging.getLogger("alignloop")


class BoNOptions(SamplingSettings.defaults(max_new_tokens=64)):
    n: list[int] = Field([1, 4, 16], description="The N values to report; max(n) samples are drawn per prompt.")
    batch_size: int = Field(16, gt=0, description="Sequences decoded together.")
    max_prompts: int | None = Field(None, gt=0, description="Use only the first prompts of data.train.")
    min_reward: float | None = Field(
        None, description="RSFT filter: a prompt's best sample becomes an SFT record "
        "only if its reward is at least this."
    )
    gold: str | None = Field(
        None, description="Optional gold scorer ('vader' or 'module:function') reported for the selected samples."
    )

    @field_validator("n")
    @classmethod
    def _valid_n(cls, value: list[int]) -> list[int]:
        if not value or any(n < 1 for n in value):
            raise ValueError("must be a non-empty list of integers >= 1")
        return sorted(set(value))


class BoNConfig(StageConfig):
    stage: Literal["bon"] = "bon"
    data: DataConfig = Field(default_factory=lambda: DataConfig(train="bundled:prompts_eval.jsonl"))
    reward: str | list[dict[str, Any]] | None = Field(
        None,
        description="Reward source: a reward-model run dir, 'module:function', 'rule:<name>', or a list of "
        "{source, weight, args}.",
    )
    bon: BoNOptions = Field(default_factory=BoNOptions)


def prompt_text(messages: list[dict[str, str]]) -> str:
    """The prompt as reward functions see it: the text of a single user message, else ``role: content`` lines."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def _tie_means(keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Each entry of ``values`` replaced by the mean over the entries whose ``keys`` are equal (per row)."""
    out = torch.empty_like(values)
    for row in range(keys.shape[0]):
        _, group = torch.unique(keys[row], return_inverse=True)
        sums = torch.zeros(int(group.max()) + 1, dtype=values.dtype).index_add_(0, group, values[row])
        counts = torch.bincount(group).to(values.dtype)
        out[row] = (sums / counts)[group]
    return out


def expected_best_of_n(rewards: torch.Tensor, n: int, values: torch.Tensor | None = None) -> torch.Tensor:
    """``[P]``: the expected ``values`` (default: the reward) of the highest-reward sample among ``n`` samples
    drawn without replacement from each row of ``rewards`` ``[P, M]``.

    With the row sorted by reward, the i-th smallest (1-based) is the best of a uniformly random n-subset with
    probability ``C(i−1, n−1) / C(M, n)``; averaging over all subsets this way is the unbiased best-of-n
    estimate from M ≥ n samples (n = 1 gives the mean, n = M the maximum). Reward ties are broken uniformly at
    random, so tied samples contribute the mean of their ``values``.
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [prompts, samples], got shape {tuple(rewards.shape)}")
    m = rewards.shape[1]
    if not 1 <= n <= m:
        raise ValueError(f"n must be in [1, {m}] (the samples per prompt), got {n}")
    rewards = rewards.double()
    values = rewards if values is None else _tie_means(rewards, values.double())
    order = torch.sort(rewards, dim=1, stable=True).indices
    ranked = values.gather(1, order)
    i = torch.arange(1, m + 1, dtype=torch.float64)
    log_weight = torch.full((m,), -math.inf, dtype=torch.float64)
    ok = i >= n
    # log C(i−1, n−1) − log C(m, n), in lgamma form so large m cannot overflow
    log_weight[ok] = (
        torch.lgamma(i[ok]) - math.lgamma(n) - torch.lgamma(i[ok] - n + 1)
        - (math.lgamma(m + 1) - math.lgamma(n + 1) - math.lgamma(m - n + 1))
    )
    return (ranked * log_weight.exp()).sum(dim=1)


class BoNStage(StandaloneStage):
    """Not a training loop: ``run`` samples, scores, selects and writes the files."""

    name = "bon"

    @classmethod
    def run(cls, cfg: BoNConfig, run_dir: RunDir) -> dict[str, Any]:
        out_dir = run_dir.begin(cfg).path
        opts = cfg.bon
        if cfg.reward is None:
            raise ConfigError(
                "reward: no reward source given (a reward-model run dir, 'module:function', 'rule:<name>' "
                "or a list of {source, weight})"
            )
        reward = build_reward(cfg.reward)
        gold = None
        if opts.gold:
            gold = get_gold_scorer(opts.gold)
        torch.manual_seed(cfg.train.seed)
        records = list(load_records(cfg.data.train, "prompt", skip_invalid=cfg.data.skip_invalid))
        records = records[: opts.max_prompts] if opts.max_prompts else records
        samples, rewards, golds, sampling = cls._sample_and_score(cfg, records, reward, gold)
        by_n, rows = {}, []
        for n in opts.n:
            stats = {
                "n": n,
                "mean_best_reward": float(expected_best_of_n(rewards, n).mean()),
                "kl_bound": bon_kl_bound(n),
            }
            stats["gain"] = stats["mean_best_reward"] - float(rewards.double().mean())
            if golds is not None:
                stats["mean_best_gold"] = float(expected_best_of_n(rewards, n, golds).mean())
            by_n[str(n)] = stats
            rows.append({"step": n, **{f"bon/{k}": v for k, v in stats.items()}})
        write_jsonl(out_dir / "metrics.jsonl", rows)
        write_jsonl(out_dir / "samples.jsonl", samples)
        sft_records, pairs = cls._select(records, samples, rewards, opts.min_reward, reward.name)
        write_jsonl(out_dir / "sft_records.jsonl", sft_records)
        write_jsonl(out_dir / "pairs.jsonl", pairs)
        summary = {
            "stage": "bon",
            "prompts": len(records),
            "samples_per_prompt": rewards.shape[1],
            "reward": reward.name,
            "mean_reward": float(rewards.double().mean()),
            "by_n": by_n,
            "sft_records": len(sft_records),
            "pairs": len(pairs),
            **sampling,
        }
        return run_dir.finish(summary)

    @staticmethod
    def _sample_and_score(cfg: BoNConfig, records: list[dict], reward, gold):
        """Samples (as ``samples.jsonl`` rows), rewards ``[P, M]`` and gold scores ``[P, M]`` (or None)."""
        opts = cfg.bon
        m = max(opts.n)
        device = "cuda" if cfg.train.device != "cpu" and torch.cuda.is_available() else "cpu"
        inputs = RLPrompts(cfg.model, cfg.data.max_length)  # a VLM's prompts carry their encoded images
        if inputs.vision is None and any(r.get("images") for r in records):
            raise ConfigError(
                f"data.train: the prompt records hold images but model {cfg.model!r} is not a vision-language "
                "model; use a VLM (e.g. smolvlm-tiny) or prompts without images"
            )
        prompts_in = inputs.for_sampler(records, where=str(cfg.data.train))  # a prompt too long fails before sampling
        model = load_causal_lm(cfg.model, trainable=False).to(device)
        dtype = "auto" if cfg.train.precision == "bf16" else "fp32"
        sampler = HFSampler(model, inputs.tokenizer, batch_size=opts.batch_size, dtype=dtype)
        chunk = max(1, opts.batch_size // m)  # prompts per generate call: progress and memory stay bounded
        samples: list[dict] = []
        rewards, golds = [], []
        tokens, t0 = 0, time.perf_counter()
        field_names = sorted({k for r in records for k in r if k != "prompt"})
        for start in range(0, len(records), chunk):
            part = records[start : start + chunk]
            rollout = sampler.generate(
                prompts_in[start : start + chunk], n=m, **opts.sampling_kwargs(),
                seed=cfg.train.seed * 1_000_003 + start,
            )
            tokens += int(rollout.response_lengths().sum())
            prompts = [prompt_text(r["prompt"]) for r in part for _ in range(m)]
            fields = {k: [r.get(k) for r in part for _ in range(m)] for k in field_names}
            scores = reward.score(prompts, rollout.responses, **fields).float()
            rewards.append(scores.view(len(part), m))
            gold_scores = torch.tensor(gold.score(prompts, rollout.responses)).view(len(part), m) if gold else None
            if gold_scores is not None:
                golds.append(gold_scores)
            lengths = rollout.response_lengths().tolist()
            for row, text in enumerate(rollout.responses):
                p, j = start + row // m, row % m
                sample = {"prompt_index": p, "sample": j, "prompt": records[p]["prompt"], "completion": text}
                if records[p].get("images"):
                    sample["images"] = records[p]["images"]
                sample.update(reward=float(scores[row]), tokens=int(lengths[row]))
                if gold_scores is not None:
                    sample["gold"] = float(gold_scores.view(-1)[row])
                samples.append(sample)
            log.info("bon: %d/%d prompts sampled", min(start + chunk, len(records)), len(records))
        seconds = time.perf_counter() - t0
        stats = {"sampling_seconds": round(seconds, 2), "tokens_per_second": tokens / max(seconds, 1e-9)}
        return samples, torch.cat(rewards), (torch.cat(golds) if golds else None), stats

    @staticmethod
    def _select(records, samples, rewards, min_reward, reward_name) -> tuple[list[dict], list[dict]]:
        """Per prompt: the best sample as an SFT record, and (best, worst) as a pair when their rewards differ."""
        m = rewards.shape[1]
        best = best_of_n_indices(rewards.reshape(-1), m).tolist()
        worst = best_of_n_indices(-rewards.reshape(-1), m).tolist()
        sft_records, pairs = [], []
        for p, record in enumerate(records):
            top, low = samples[best[p]], samples[worst[p]]
            extra = {k: v for k, v in record.items() if k != "prompt"}  # the answer, the images, ...
            if not _usable(top["completion"], record):
                continue  # can be neither a demonstration nor a chosen answer
            if min_reward is None or top["reward"] >= min_reward:
                messages = record["prompt"] + [{"role": "assistant", "content": top["completion"]}]
                sft_records.append({"messages": messages, **extra, "reward": top["reward"]})
            differ = low["completion"] != top["completion"]
            if top["reward"] > low["reward"] and _usable(low["completion"], record) and differ:
                pair = {
                    "prompt": record["prompt"], "chosen": top["completion"], "rejected": low["completion"],
                    "margin": top["reward"] - low["reward"], "source": f"ai:bon-{reward_name}",
                }
                if record.get("images"):
                    pair["images"] = record["images"]
                pairs.append(pair)
        return sft_records, pairs


def _usable(completion: str, record: dict) -> bool:
    """Not empty, and for an image prompt without an image placeholder (its images belong to the prompt: such a
    record would fail to load as SFT or pair data)."""
    return bool(completion.strip()) and not (record.get("images") and IMAGE_PLACEHOLDER in completion)
