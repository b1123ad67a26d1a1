"""Reward-model losses: Bradley–Terry pairs, K-wise rankings, reward centering.

Rankings follow the record format: best first, a nested list is a tie group,
e.g. ``[[0, 2], 1]`` means completions 0 and 2 tie for best, 1 is worst.
Ranking losses take ONE flat score vector (each completion scored once) and
``group_sizes``: prompt ``i`` owns ``scores[o_i : o_i + group_sizes[i]]`` with
``o_i = Σ_{j<i} group_sizes[j]``, and its ranking uses indices local to that
slice. Without ``group_sizes`` the ranking indices point into ``scores``
directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "Ranking",
    "normalize_ranking",
    "bradley_terry_loss",
    "pairwise_correct",
    "RankingPairs",
    "ranking_pairs",
    "ranking_pairwise_loss",
    "ranking_pair_correct",
    "plackett_luce_loss",
    "reward_centering_loss",
]

Ranking = Sequence[Union[int, Sequence[int]]]

_REDUCTIONS = ("mean", "sum", "none")


def _reduce(losses: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return losses.mean()
    if reduction == "sum":
        return losses.sum()
    if reduction == "none":
        return losses
    raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def bradley_terry_loss(
    r_chosen: Tensor,
    r_rejected: Tensor,
    margin: Tensor | float | None = None,
    reduction: str = "mean",
) -> Tensor:
    """``−log σ(r_c − r_r − m)`` (Bradley & Terry 1952; as an RM loss: Stiennon et al. 2020, Ouyang et al. 2022).

    ``margin`` m (Llama 2's margin loss, Touvron et al. 2023) asks the chosen
    reward to win by at least about m. Computed with ``logsigmoid`` so a large
    negative difference does not overflow.
    """
    diff = r_chosen - r_rejected
    if margin is not None:
        diff = diff - margin
    return _reduce(-F.logsigmoid(diff), reduction)


def pairwise_correct(r_chosen: Tensor, r_rejected: Tensor) -> Tensor:
    """1.0 where ``r_chosen > r_rejected`` else 0.0 (a tie counts as wrong, as in TRL's accuracy)."""
    return (r_chosen > r_rejected).float()


def normalize_ranking(ranking: Ranking) -> list[list[int]]:
    """Ranking as tie groups, best first: ``[[0, 2], 1]`` → ``[[0, 2], [1]]``.

    Raises ``ValueError`` on negative, non-integer, repeated indices or an empty group.
    """
    groups: list[list[int]] = []
    seen: set[int] = set()
    for entry in ranking:
        group = [entry] if isinstance(entry, int) else list(entry)
        if not group:
            raise ValueError(f"ranking {list(ranking)!r}: empty tie group")
        for index in group:
            if isinstance(index, bool) or not isinstance(index, int) or index < 0:
                raise ValueError(f"ranking {list(ranking)!r}: index {index!r} is not a non-negative int")
            if index in seen:
                raise ValueError(f"ranking {list(ranking)!r}: index {index} appears twice")
            seen.add(index)
        groups.append(group)
    return groups


def _global_groups(
    rankings: Sequence[Ranking], group_sizes: Sequence[int] | None, n_scores: int | None
) -> list[list[list[int]]]:
    """Each ranking's tie groups with indices into the flat score vector (checked when sizes are known)."""
    if group_sizes is not None and len(group_sizes) != len(rankings):
        raise ValueError(f"got {len(rankings)} rankings but {len(group_sizes)} group sizes")
    if group_sizes is not None and n_scores is not None and sum(group_sizes) != n_scores:
        raise ValueError(f"group sizes sum to {sum(group_sizes)} but there are {n_scores} scores")
    result = []
    offset = 0
    for i, ranking in enumerate(rankings):
        size = group_sizes[i] if group_sizes is not None else n_scores
        groups = normalize_ranking(ranking)
        for group in groups:
            for index in group:
                if size is not None and index >= size:
                    raise ValueError(f"ranking {i}: index {index} out of range for {size} completions")
        result.append([[offset + index for index in group] for group in groups])
        if group_sizes is not None:
            offset += group_sizes[i]
    return result


class RankingPairs(NamedTuple):
    """All (better, worse) pairs implied by rankings, as index tensors into the score vector."""

    winners: Tensor  # [P] long
    losers: Tensor  # [P] long
    prompt: Tensor  # [P] long, which ranking each pair came from


def ranking_pairs(
    rankings: Sequence[Ranking], group_sizes: Sequence[int] | None = None, n_scores: int | None = None
) -> RankingPairs:
    """Every pair (a, b) with a ranked strictly above b; tied items give no pair.

    A full ranking of K items gives K(K−1)/2 pairs; ``[[0, 2], 1]`` gives
    (0, 1) and (2, 1). ``n_scores`` (the score vector's length) is used only
    to validate the indices.
    """
    winners: list[int] = []
    losers: list[int] = []
    prompt: list[int] = []
    for p, groups in enumerate(_global_groups(rankings, group_sizes, n_scores)):
        for level, better in enumerate(groups):
            for worse_group in groups[level + 1 :]:
                for a in better:
                    for b in worse_group:
                        winners.append(a)
                        losers.append(b)
                        prompt.append(p)
    return RankingPairs(*(torch.tensor(xs, dtype=torch.long) for xs in (winners, losers, prompt)))


def ranking_pairwise_loss(
    scores: Tensor,
    rankings: Sequence[Ranking],
    group_sizes: Sequence[int] | None = None,
) -> Tensor:
    """InstructGPT's K-wise loss (Ouyang et al. 2022, eq. 1).

    ``loss = mean_prompts [ (1/|P_x|) Σ_{(w,l) ∈ P_x} −log σ(s_w − s_l) ]``

    where ``P_x`` are all strictly ordered pairs of prompt x's ranking. Each
    prompt weighs the same however many pairs it has (the paper's fix for
    over-fitting when pairs are used as independent examples). Prompts whose
    items are all tied have no pair and are left out; if none has a pair the
    loss is 0 (still connected to ``scores`` for autograd).
    """
    winners, losers, prompt = ranking_pairs(rankings, group_sizes, scores.shape[0])
    if winners.numel() == 0:
        return scores.sum() * 0.0
    device = scores.device
    winners, losers, prompt = winners.to(device), losers.to(device), prompt.to(device)
    pair_losses = -F.logsigmoid(scores[winners] - scores[losers])
    n_prompts = len(rankings)
    per_prompt_sum = torch.zeros(n_prompts, dtype=pair_losses.dtype, device=device).index_add(0, prompt, pair_losses)
    per_prompt_count = torch.zeros(n_prompts, dtype=pair_losses.dtype, device=device).index_add(
        0, prompt, torch.ones_like(pair_losses)
    )
    has_pairs = per_prompt_count > 0
    return (per_prompt_sum[has_pairs] / per_prompt_count[has_pairs]).mean()


def ranking_pair_correct(
    scores: Tensor, rankings: Sequence[Ranking], group_sizes: Sequence[int] | None = None
) -> Tensor:
    """Per pair of ``ranking_pairs`` (same order): 1.0 if the better item scored strictly higher."""
    winners, losers, _ = ranking_pairs(rankings, group_sizes, scores.shape[0])
    winners, losers = winners.to(scores.device), losers.to(scores.device)
    return pairwise_correct(scores[winners], scores[losers])


def plackett_luce_loss(
    scores: Tensor,
    rankings: Sequence[Ranking],
    group_sizes: Sequence[int] | None = None,
) -> Tensor:
    """Plackett–Luce negative log-likelihood of each ranking, averaged over prompts.

    Strict ranking π (Plackett 1975, Luce 1959):
    ``−log P(π) = −Σ_k [ s_{π_k} − log Σ_{j ≥ k} exp(s_{π_j}) ]``.

    Ties — our convention: a tie group G_t is ONE Luce choice of the whole set
    from the items not yet chosen R_t, with probability
    ``Σ_{i∈G_t} e^{s_i} / Σ_{j∈R_t} e^{s_j}``; then all of G_t leaves R_t. So

    ``−log P = −Σ_t [ logsumexp_{i∈G_t} s_i − logsumexp_{j∈R_t} s_j ]``.

    This is tractable (exact marginalisation over the orders inside a tie is
    exponential), equals the plain PL likelihood without ties, equals the
    Bradley–Terry loss for two items, and is 0 when everything ties. Only
    items named in the ranking take part. Prompts with a single group carry
    no information and are left out; with none left the loss is 0.
    """
    per_prompt = []
    for groups in _global_groups(rankings, group_sizes, scores.shape[0]):
        if len(groups) < 2:
            continue
        nll = scores.new_zeros(())
        for t in range(len(groups) - 1):
            chosen = torch.tensor(groups[t], dtype=torch.long, device=scores.device)
            remaining = torch.tensor([i for g in groups[t:] for i in g], dtype=torch.long, device=scores.device)
            nll = nll - (torch.logsumexp(scores[chosen], 0) - torch.logsumexp(scores[remaining], 0))
        per_prompt.append(nll)
    if not per_prompt:
        return scores.sum() * 0.0
    return torch.stack(per_prompt).mean()


def reward_centering_loss(r_chosen: Tensor, r_rejected: Tensor | None = None, coef: float = 0.01) -> Tensor:
    """Auxiliary term that keeps rewards centred on zero (Eisenstein et al. 2023, "Helping or Herding?").

    With a pair: ``coef · mean((r_c + r_r)²)`` — the paper's form (and TRL's
    ``center_rewards_coefficient``), which pins the pair's mean at 0 without
    touching the margin. With one tensor (e.g. all scores of a ranking
    batch): ``coef · mean(r²)``.
    """
    if r_rejected is None:
        return coef * r_chosen.square().mean()
    return coef * (r_chosen + r_rejected).square().mean()
