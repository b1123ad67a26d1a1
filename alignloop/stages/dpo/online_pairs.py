"""Online DPO's rollout → pairs: two samples per prompt, scored by a reward source, the higher-scored one chosen.

A rollout holds ``2N`` rows in prompt-major order (rows ``2i`` and ``2i + 1`` answer prompt ``i``). Each prompt
gives one pair unless its two samples tie (scores within ``tie_margin``, or token-identical samples): a tie is
skipped and counted. The pairs are built from the sampled token ids themselves (never re-tokenised text), so the
policy is trained on exactly what it generated.

``PairRolloutSource`` is the RL stages' ``RolloutBatchSource`` with one rollout per optimizer step: the step's
prompts are sampled and labelled when its first micro-batch is asked for, and its pairs are dealt out over the
step's micro-batches (as evenly as they go; a micro-batch may get none when most prompts tied). Its checkpointed
state only moves when a step has been trained.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from alignloop.rewards import build_reward, build_source
from alignloop.rewards.judge import LLMJudge
from alignloop.rollout import Rollout
from alignloop.stages.dpo.batch import PairExample
from alignloop.stages.rl.rewards import score_rollout
from alignloop.stages.rl.source import RolloutBatchSource

__all__ = ["PairLabels", "PairRollout", "PairRolloutSource", "build_pair_reward", "label_pairs", "pair_examples",
           "score_samples"]


def build_pair_reward(spec: Any) -> Any:
    """The reward source of ``dpo.reward``: every ``reward:`` form the RL stages take, plus ``{judge: {...}}``
    (an LLM judge, pairwise unless ``mode: pointwise`` is given)."""
    if isinstance(spec, Mapping) and "judge" in spec:
        judge = spec["judge"]
        options = {"mode": "pairwise", **judge} if isinstance(judge, Mapping) else judge
        return build_source({**spec, "judge": options}, "dpo.reward")
    return build_reward(spec)


def score_samples(reward: Any, rollout: Rollout, records: list[dict]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Scores ``[2N]`` of a two-samples-per-prompt rollout and the per-part scores of a weighted sum.

    A pairwise LLM judge compares each prompt's two samples (in both orders): the first scores P(first better),
    the second 1 − that. Any other source scores each sample on its own (``score(prompts, completions,
    **fields)``, the records' extra keys as fields).
    """
    if isinstance(reward, LLMJudge) and reward.mode == "pairwise":
        prob = reward.compare(rollout.prompts[0::2], rollout.responses[0::2], rollout.responses[1::2]).prob_a
        scores = torch.stack([prob, 1 - prob], dim=1).flatten().float().cpu()
        return scores, {reward.name: scores}
    group = rollout.group_index.cpu().tolist()
    keys = sorted({k for r in records for k in r if k != "prompt"})
    fields = {k: [records[g].get(k) for g in group] for k in keys}
    scored = score_rollout(reward, rollout.prompts, rollout.responses, fields)
    return scored.scores, scored.components


@dataclass
class PairLabels:
    """Per prompt ``[N]``: whether the first sample won, and whether the two tied (no pair)."""

    first_wins: torch.Tensor
    tie: torch.Tensor

    @property
    def decisive(self) -> int:
        return int((~self.tie).sum())


def _responses(rollout: Rollout) -> list[list[int]]:
    return [ids[mask.bool()].tolist() for ids, mask in zip(rollout.response_ids.cpu(), rollout.response_mask.cpu())]


def label_pairs(rollout: Rollout, scores: torch.Tensor, tie_margin: float = 0.0) -> PairLabels:
    """The higher-scored sample of each prompt is chosen; scores within ``tie_margin`` (or token-identical
    samples, which a DPO step could not tell apart) tie."""
    first, second = scores[0::2].float(), scores[1::2].float()
    responses = _responses(rollout)
    identical = torch.tensor([responses[2 * i] == responses[2 * i + 1] for i in range(len(first))], dtype=torch.bool)
    return PairLabels(first_wins=first > second, tie=((first - second).abs() <= tie_margin) | identical)


def pair_examples(rollout: Rollout, labels: PairLabels) -> list[PairExample]:
    """One ``PairExample`` per decisive prompt, from the sampled token ids (prompt without its left padding)."""
    responses = _responses(rollout)
    examples: list[PairExample] = []
    for i, (wins, tie) in enumerate(zip(labels.first_wins.tolist(), labels.tie.tolist())):
        if tie:
            continue
        row = 2 * i
        prompt = rollout.prompt_ids[row][rollout.prompt_mask[row].bool()].tolist()
        a, b = responses[row], responses[row + 1]
        chosen, rejected = (a, b) if wins else (b, a)
        examples.append(PairExample(prompt, chosen, rejected, index=len(examples)))
    return examples


NO_PAIRS: dict[str, Any] = {"index": torch.zeros(0, dtype=torch.long)}  # a micro-batch that got no pair


@dataclass
class PairRollout:
    """One step's pairs, the ``Experience`` of ``PairRolloutSource``."""

    examples: list[PairExample]
    collate: Callable[[list[PairExample]], dict]

    def __len__(self) -> int:
        return len(self.examples)

    def micro_batch(self, rows: list[int]) -> dict[str, Any]:
        return self.collate([self.examples[i] for i in rows]) if rows else dict(NO_PAIRS)


class PairRolloutSource(RolloutBatchSource):
    """One rollout per optimizer step, its pairs dealt into the step's ``minibatch_size // micro_batch_size``
    micro-batches (contiguous, sizes differing by at most one).

    Its state is the one at the end of the last step the stage finished (``commit``, from ``on_step_end``), never
    a position inside a step: a run stopped during a step (a second Ctrl-C while sampling or training) resumes
    with the weights from before the step, samples the step's rollout again with the same seed and trains it.
    """

    def __init__(self, prompts, rollout_phase, *, minibatch_size: int, micro_batch_size: int, seed: int):
        super().__init__(prompts, rollout_phase, minibatch_size=minibatch_size, micro_batch_size=micro_batch_size,
                         epochs=1, seed=seed)
        self.commit()

    def _make_schedule(self) -> None:
        assert self.experience is not None
        n, k = len(self.experience), self.minibatch_size // self.micro_batch_size
        self.schedule = [list(range(i * n // k, (i + 1) * n // k)) for i in range(k)]

    def commit(self) -> None:
        """A step finished: its rollout is trained, and the state moves past it."""
        self._committed = super().state_dict()

    def state_dict(self) -> dict:
        return dict(self._committed)

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.commit()
