"""Sampling and scoring one rollout's prompts, with DAPO's dynamic sampling and soft overlong punishment.

``sample_and_score(stage, records, index)`` is the first part of ``RLStage.rollout_phase``: generate
``num_generations`` responses per prompt and score them. Two options of the stage section (GRPO's; both off by
default, and absent from PPO's) change it (Yu et al. 2025, "DAPO", arXiv 2503.14476):

* ``overlong_buffer`` > 0 adds ``soft_overlong_penalty`` (§3.4) to each score, logged as the reward component
  ``overlong``;
* ``dynamic_sampling`` (§3.2) drops the groups whose scores (the overlong penalty included) are all equal and
  samples further prompts (the next ones of the prompt stream, with seeds derived from the rollout's) until the
  rollout holds as many informative groups as it has prompts, at most ``dynamic_sampling_max_rounds`` extra
  rounds. A rollout still short after that is topped up with dropped groups (advantage 0 in GRPO), so its shape,
  and with it the step count, never changes.

With ``async_rollouts`` the responses come from ``stage.ahead`` (async_rollouts.py: sampled in a background thread
on an older copy of the weights) and are scored here as usual.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Sequence

import torch

from alignloop.algos import informative_groups, soft_overlong_penalty
from alignloop.rollout import Rollout, concat_rollouts
from alignloop.stages.rl.rewards import ScoredRollout, score_rollout
from alignloop.stages.rl.source import rollout_seed

if TYPE_CHECKING:
    from alignloop.stages.rl.stage import RLStage

__all__ = ["pick_groups", "sample_and_score"]


def pick_groups(informative: Sequence[torch.Tensor], need: int) -> tuple[list[list[int]], int]:
    """Which groups of each sampling round make the rollout: the first ``need`` informative ones in order, then,
    if there are fewer, the first all-equal ones. Returns each round's group indices (ascending) and how many
    all-equal groups topped the rollout up."""
    picks: list[list[int]] = [[] for _ in informative]
    taken = 0
    for wanted in (True, False):
        for r, flags in enumerate(informative):
            for g, flag in enumerate(flags.tolist()):
                if taken < need and flag == wanted:
                    picks[r].append(g)
                    taken += 1
    topped_up = sum(1 for r, flags in enumerate(informative) for g in picks[r] if not bool(flags[g]))
    return [sorted(p) for p in picks], topped_up


def _sample_round(stage: RLStage, records: list[dict], seed: int) -> tuple[Rollout, ScoredRollout]:
    opts = stage.opts
    started = time.perf_counter()
    with_records = {"records": records} if getattr(stage.sampler, "takes_records", False) else {}  # envs
    rollout = stage.sampler.generate(
        stage.prompts.for_sampler(records), n=opts.num_generations, max_new_tokens=opts.max_new_tokens,
        temperature=opts.temperature, top_p=opts.top_p, top_k=opts.top_k, stop=opts.stop, seed=seed, **with_records,
    )
    stage.generation_seconds += time.perf_counter() - started
    return rollout, _score(stage, records, rollout)


def _score(stage: RLStage, records: list[dict], rollout: Rollout) -> ScoredRollout:
    opts = stage.opts
    group = rollout.group_index.cpu().tolist()
    keys = sorted({k for r in records for k in r if k != "prompt"})
    fields = {k: [records[g].get(k) for g in group] for k in keys}
    with torch.no_grad(), stage.run.autocast():  # a reward model scores in the precision it trained in
        scored = score_rollout(stage.reward, rollout.prompts, rollout.responses, fields, stage.kl.per_sample)
    buffer = getattr(opts, "overlong_buffer", None)
    if buffer:
        lengths = rollout.response_lengths().cpu()
        penalty = soft_overlong_penalty(lengths, opts.max_new_tokens, buffer, opts.overlong_penalty)
        scored = ScoredRollout(scores=scored.scores + penalty, components={**scored.components, "overlong": penalty},
                               uncertainty=scored.uncertainty)
    return scored


def _select(rollout: Rollout, scored: ScoredRollout, groups: list[int]) -> tuple[Rollout, ScoredRollout]:
    wanted = set(groups)
    rows = [i for i, g in enumerate(rollout.group_index.tolist()) if g in wanted]
    index = torch.tensor(rows, dtype=torch.long)
    return rollout.select(rows), ScoredRollout(
        scores=scored.scores[index], components={k: v[index] for k, v in scored.components.items()},
        uncertainty=None if scored.uncertainty is None else scored.uncertainty[index],
    )


def _concat_scored(parts: list[ScoredRollout]) -> ScoredRollout:
    return ScoredRollout(
        scores=torch.cat([p.scores for p in parts]),
        components={k: torch.cat([p.components[k] for p in parts]) for k in parts[0].components},
        uncertainty=None if parts[0].uncertainty is None else torch.cat([p.uncertainty for p in parts]),  # type: ignore[misc]
    )


def sample_and_score(stage: RLStage, records: list[dict], index: int) -> tuple[Rollout, ScoredRollout, dict[str, Any]]:
    """Rollout ``index``'s responses to ``records``, scored, and the dynamic-sampling stats (empty when off)."""
    opts = stage.opts
    if getattr(stage, "ahead", None) is not None:  # async_rollouts: sampled ahead in a background thread
        rollout, stats = stage.ahead.rollout(index, records)
        return rollout, _score(stage, records, rollout), stats
    seed = rollout_seed(stage.config.train.seed, index, stage.run.rank)
    rollout, scored = _sample_round(stage, records, seed)
    if not getattr(opts, "dynamic_sampling", False):
        return rollout, scored, {}
    G, need = opts.num_generations, len(records)
    rounds = [(rollout, scored)]
    informative = [informative_groups(scored.scores, G)]
    while sum(int(f.sum()) for f in informative) < need and len(rounds) <= opts.dynamic_sampling_max_rounds:
        more = stage.source.prompts.next_batch()
        rollout, scored = _sample_round(stage, more, (seed + 15_485_863 * len(rounds)) % 2**62)
        rounds.append((rollout, scored))
        informative.append(informative_groups(scored.scores, G))
    picks, topped_up = pick_groups(informative, need)
    parts = [_select(r, s, groups) for (r, s), groups in zip(rounds, picks) if groups]
    rollout = concat_rollouts([r for r, _ in parts], stage.tokenizer.pad_token_id)
    equal = sum(int((~f).sum()) for f in informative)
    stats = {
        "dynamic_sampling/dropped_groups": float(equal - topped_up),
        "dynamic_sampling/topped_up_groups": float(topped_up),
        "dynamic_sampling/rounds": float(len(rounds)),
    }
    return rollout, _concat_scored([s for _, s in parts]), stats
