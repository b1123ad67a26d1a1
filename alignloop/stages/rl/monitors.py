"""Reward-hacking monitors and samples.jsonl for the RL stages.

Logged every step (the values of the rollout being trained on): KL to the reference, response length,
the share of responses that hit ``max_new_tokens``, the correlation of reward with length (a rising
correlation is the classic sign of a length-hacked reward model) and, with a gold scorer, the gold reward
next to the proxy reward.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from alignloop.stages.rl.rewards import prompt_text, score_rollout

__all__ = ["greedy_evaluation", "pearson", "rollout_monitors", "SampleLog"]


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson correlation; 0 when either side is constant (no signal, not NaN)."""
    x, y = x.double().flatten(), y.double().flatten()
    if x.numel() < 2:
        return 0.0
    xc, yc = x - x.mean(), y - y.mean()
    denom = (xc.square().sum() * yc.square().sum()).sqrt()
    return float((xc * yc).sum() / denom) if float(denom) > 0 else 0.0


def rollout_monitors(
    scores: torch.Tensor,
    lengths: torch.Tensor,
    finished: torch.Tensor,
    gold: torch.Tensor | None = None,
) -> dict[str, float]:
    lengths = lengths.float().cpu()
    out = {
        "completions/mean_length": float(lengths.mean()),
        "completions/max_length": float(lengths.max()),
        "completions/min_length": float(lengths.min()),
        "completions/clipped_ratio": float((~finished.bool().cpu()).float().mean()),
        "monitor/reward_length_corr": pearson(scores.cpu(), lengths),
    }
    if gold is not None:
        out["objective/gold_scores"] = float(gold.float().mean())
        out["monitor/gold_proxy_corr"] = pearson(scores.cpu(), gold.cpu())
    return out


class SampleLog:
    """Appends a few (prompt, response, score) rows to ``samples.jsonl``; lines past a resume point are dropped."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled

    def write(
        self, rollout: int, prompts: list[Any], responses: list[str], scores: torch.Tensor, count: int, **extra: Any
    ) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            for i in range(min(count, len(responses))):
                row = {"rollout": rollout, "prompt": prompt_text(prompts[i]), "response": responses[i],
                       "score": float(scores[i])}
                row.update({k: (float(v[i]) if torch.is_tensor(v) else v[i]) for k, v in extra.items()})
                f.write(json.dumps(row) + "\n")

    def truncate_from(self, rollout: int) -> None:
        """On resume, drop samples of rollouts at or after ``rollout`` (they will be generated again)."""
        if not self.enabled or not self.path.exists():
            return
        keep = [line for line in self.path.read_text().splitlines()
                if line and json.loads(line).get("rollout", 0) < rollout]
        self.path.write_text("".join(line + "\n" for line in keep))


def greedy_evaluation(stage: Any) -> dict[str, float]:
    """Greedy responses to the RL stage's first ``eval_prompts`` eval prompts, scored by its reward (and gold)."""
    opts = stage.opts
    records = stage.eval_records[: opts.eval_prompts]
    if not records:
        return {}
    rollout = stage.sampler.generate(stage.prompts.for_sampler(records), n=1, max_new_tokens=opts.max_new_tokens,
                                     temperature=0.0, stop=opts.stop)
    fields = {k: [r.get(k) for r in records] for k in sorted({k for r in records for k in r if k != "prompt"})}
    with torch.no_grad(), stage.run.autocast():  # as in training (and needed with train.frozen_bf16)
        scored = score_rollout(stage.reward, rollout.prompts, rollout.responses, fields)
    out = {"eval/reward": float(scored.scores.mean()),
           "eval/completions/mean_length": float(rollout.response_lengths().float().mean())}
    out.update({f"eval/rewards/{k}/mean": float(v.mean()) for k, v in scored.components.items()})
    if stage.gold is not None:
        golds = stage.gold.score([prompt_text(p) for p in rollout.prompts], rollout.responses)
        out["eval/gold_scores"] = float(torch.tensor(golds).mean())
    return out
