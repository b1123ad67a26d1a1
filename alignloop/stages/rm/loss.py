"""Reward-model objective on a packed micro-batch, and held-out evaluation.

The loss of a micro-batch is a SUM over its records (the loop divides by the records of the whole
effective batch), and every record weighs the same:

* a pair: Bradley–Terry ``−log σ(r_c − r_r − margin)`` (margin from the record when ``use_margin``);
* a ranking: InstructGPT's mean over its K(K−1)/2 ordered pairs, or its Plackett–Luce NLL;
* each criterion head: Bradley–Terry on the pairs labelled ±1 for that criterion (0 or absent: no term);
* optional reward centering ``coef · (r_c + r_r)²`` per pair, ``coef · mean(s²)`` per ranking, on every head;
* with ``length_debias="odin"`` the LAST head is a length head: the preference terms above score ``r_Q + r_L``
  (quality head 0 plus the length head), and ODIN's length term ``(1 − ρ(r_L, len)) + |ρ(r_Q, len)|`` over the
  micro-batch's unique completions is added once per record (``odin_length_coef``). Its orthogonality term needs
  the head weights and is added by the stage. Evaluation scores the quality head alone: that is the reward.

The formulas are the pure functions of ``alignloop.algos.reward_losses``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch

from alignloop.algos.length_debias import odin_length_loss
from alignloop.algos.reward_losses import (
    bradley_terry_loss,
    pairwise_correct,
    plackett_luce_loss,
    ranking_pairs,
    ranking_pairwise_loss,
    reward_centering_loss,
)
from alignloop.eval.rm_report import PreferenceScores, length_bias_summary, preference_metrics
from alignloop.models.shared_prompt import PackedGroups
from alignloop.stages.rm.data import PreferenceBatch


@dataclass
class LossSettings:
    ranking_loss: str = "pairwise"  # or "plackett_luce"
    use_margin: bool = True
    center_coef: float = 0.0
    criteria: list[str] = field(default_factory=list)  # head j + 1 is criteria[j]; head 0 is the overall score
    length_debias: str = "none"  # "odin": the last head is ODIN's length head
    odin_length_coef: float = 1.0

    @property
    def odin(self) -> bool:
        return self.length_debias == "odin"


def _long(values: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long, device=device)


def unique_lengths(batch: PreferenceBatch) -> list[int]:
    """Token length of each unique completion of the packed batch, in its score order."""
    lengths = [0] * (max((u for index in batch.packed.index for u in index), default=-1) + 1)
    for example, index in zip(batch.examples, batch.packed.index):
        for completion, u in zip(example.completions, index):
            lengths[u] = len(completion)
    return lengths


def ordered_pairs(batch: PreferenceBatch) -> tuple[list[int], list[int]]:
    """(better, worse) unique-completion indices of every strictly ordered pair in the batch."""
    winners, losers = [], []
    for example, index in zip(batch.examples, batch.packed.index):
        for level, better in enumerate(example.ranking):
            for worse_group in example.ranking[level + 1 :]:
                for a in better:
                    for b in worse_group:
                        winners.append(index[a])
                        losers.append(index[b])
    return winners, losers


def criterion_pairs(batch: PreferenceBatch, name: str) -> tuple[list[int], list[int]]:
    """(better, worse) unique indices of the pairs labelled for criterion ``name``."""
    winners, losers = [], []
    for example, index in zip(batch.examples, batch.packed.index):
        vote = example.criteria.get(name)
        if vote:
            better, worse = (index[0], index[1]) if vote > 0 else (index[1], index[0])
            winners.append(better)
            losers.append(worse)
    return winners, losers


def preference_loss(
    scores: torch.Tensor, batch: PreferenceBatch, settings: LossSettings
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss summed over records, and metric sums: ``accuracy`` and ``margin`` (each record's mean over its pairs)."""
    device = scores.device
    overall = scores[:, 0] + scores[:, -1] if settings.odin else scores[:, 0]
    examples, index = batch.examples, batch.packed.index
    loss = scores.new_zeros(())
    if settings.odin and settings.odin_length_coef:
        lengths = torch.tensor(unique_lengths(batch), dtype=scores.dtype, device=device)
        term = odin_length_loss(scores[:, 0], scores[:, -1], lengths)
        loss = loss + settings.odin_length_coef * term * len(examples)
    accuracy = margin = 0.0
    coef = settings.center_coef

    pair_rows = [i for i, ex in enumerate(examples) if ex.is_pair]
    if pair_rows:
        chosen = overall[_long([index[i][0] for i in pair_rows], device)]
        rejected = overall[_long([index[i][1] for i in pair_rows], device)]
        margins = None
        if settings.use_margin and any(examples[i].margin is not None for i in pair_rows):
            margins = torch.tensor([examples[i].margin or 0.0 for i in pair_rows], dtype=scores.dtype, device=device)
        loss = loss + bradley_terry_loss(chosen, rejected, margins, reduction="sum")
        if coef:
            loss = loss + reward_centering_loss(chosen, rejected, coef) * len(pair_rows)
        accuracy += float(pairwise_correct(chosen, rejected).sum())
        margin += float((chosen - rejected).detach().sum())

    rank_rows = [i for i, ex in enumerate(examples) if not ex.is_pair]
    if rank_rows:
        sizes = [len(index[i]) for i in rank_rows]
        flat = overall[_long([u for i in rank_rows for u in index[i]], device)]
        rankings = [examples[i].ranking for i in rank_rows]
        ranking_loss = plackett_luce_loss if settings.ranking_loss == "plackett_luce" else ranking_pairwise_loss
        loss = loss + ranking_loss(flat, rankings, sizes) * len(rank_rows)
        if coef:
            for part in torch.split(flat, sizes):
                loss = loss + reward_centering_loss(part, coef=coef)
        winners, losers, owner = ranking_pairs(rankings, sizes, flat.shape[0])
        winners, losers, owner = winners.to(device), losers.to(device), owner.to(device)
        counts = torch.zeros(len(rank_rows), device=device).index_add(
            0, owner, torch.ones_like(owner, dtype=torch.float)
        )
        per_pair_correct = pairwise_correct(flat[winners], flat[losers])
        per_pair_margin = (flat[winners] - flat[losers]).detach().float()
        accuracy += float((torch.zeros_like(counts).index_add(0, owner, per_pair_correct) / counts).sum())
        margin += float((torch.zeros_like(counts).index_add(0, owner, per_pair_margin) / counts).sum())

    for head, name in enumerate(settings.criteria, start=1):
        winners, losers = criterion_pairs(batch, name)
        if winners:
            better, worse = scores[_long(winners, device), head], scores[_long(losers, device), head]
            loss = loss + bradley_terry_loss(better, worse, reduction="sum")
            if coef:
                loss = loss + reward_centering_loss(better, worse, coef) * len(winners)
    return loss, {"accuracy": accuracy, "margin": margin}


Scorer = Callable[[PackedGroups], tuple[torch.Tensor, torch.Tensor | None]]


def evaluate_examples(
    batches: list[PreferenceBatch],
    scorer: Scorer,
    settings: LossSettings,
    n_bins: int = 10,
) -> tuple[dict[str, float], PreferenceScores]:
    """Held-out metrics (``eval/loss``, ``eval/accuracy``, ``eval/margin``, ``eval/ece``, per criterion) and scores.

    ``scorer(packed)`` returns ``(scores [U, heads], std [U] or None)``; it runs without gradients.
    Accuracy, margin and ECE are over every ordered pair (a ranking of K gives K(K−1)/2 of them).
    With ODIN (``settings.odin``) the last head is the length head: everything is measured on the quality head
    (the reward the saved model gives), and the length head's scores are kept for its correlation with length.
    """
    odin, settings = settings.odin, replace(settings, length_debias="none")
    loss_sum, units = 0.0, 0
    winners: list[float] = []
    losers: list[float] = []
    by_criterion: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in settings.criteria}
    lengths: list[int] = []
    completion_scores: list[float] = []
    stds: list[float] = []
    length_head: list[float] = []
    winner_lengths: list[int] = []
    loser_lengths: list[int] = []
    for batch in batches:
        scores, std = scorer(batch.packed)
        full = scores.float()
        scores = full[:, :-1] if odin else full
        loss, _ = preference_loss(scores, batch, settings)
        loss_sum += float(loss)
        units += len(batch.examples)
        overall = scores[:, 0].cpu().numpy()
        w, l = ordered_pairs(batch)
        winners.extend(overall[w].tolist())
        losers.extend(overall[l].tolist())
        by_index = unique_lengths(batch)
        winner_lengths.extend(by_index[u] for u in w)
        loser_lengths.extend(by_index[u] for u in l)
        for head, name in enumerate(settings.criteria, start=1):
            cw, cl = criterion_pairs(batch, name)
            by_criterion[name][0].extend(scores[cw, head].tolist())
            by_criterion[name][1].extend(scores[cl, head].tolist())
        seen: set[int] = set()
        for example, index in zip(batch.examples, batch.packed.index):
            for completion, u in zip(example.completions, index):
                if u not in seen:
                    seen.add(u)
                    lengths.append(len(completion))
                    completion_scores.append(float(overall[u]))
                    if odin:
                        length_head.append(float(full[u, -1]))
                    if std is not None:
                        stds.append(float(std[u]))
    result = PreferenceScores(
        winners=np.asarray(winners),
        losers=np.asarray(losers),
        lengths=np.asarray(lengths),
        scores=np.asarray(completion_scores),
        criteria={name: (np.asarray(a), np.asarray(b)) for name, (a, b) in by_criterion.items()},
        uncertainty=np.asarray(stds) if stds else None,
        winner_lengths=np.asarray(winner_lengths),
        loser_lengths=np.asarray(loser_lengths),
        length_head=np.asarray(length_head) if odin else None,
    )
    metrics = {"eval/loss": loss_sum / max(units, 1)}
    overall_metrics = preference_metrics(result.winners, result.losers, n_bins)
    metrics.update({f"eval/{k}": v for k, v in overall_metrics.items() if k != "pairs"})
    for name, (a, b) in result.criteria.items():
        if len(a):
            metrics[f"eval/accuracy/{name}"] = preference_metrics(a, b, n_bins)["accuracy"]
    if result.uncertainty is not None:
        metrics["eval/uncertainty"] = float(result.uncertainty.mean())
    for key, value in length_bias_summary(result).items():  # eval_length_correlation -> eval/length_correlation
        if value is not None and not key.startswith("eval_pairs"):
            metrics["eval/" + key.removeprefix("eval_")] = float(value)
    return metrics, result
