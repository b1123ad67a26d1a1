"""KTO and ORPO: preference losses beyond DPO, from sequence log-probabilities.

**KTO** (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization", eq. 8) learns from
single completions labelled desirable or undesirable. With the implied reward ``r = log π(y|x) − log π_ref(y|x)``
and the reference point ``z0 ≈ KL(π ‖ π_ref)``, the loss per example is

    desirable:    λ_D · (1 − σ(β(r − z0)))
    undesirable:  λ_U · (1 − σ(β(z0 − r)))

``z0`` is estimated from mismatched pairs ``(x, y')`` of the batch, ``y'`` a completion written for another
prompt, as the mean of ``log π(y'|x) − log π_ref(y'|x)``; it is detached (no gradient flows through it, as in
the paper and TRL's ``KTOTrainer``), averaged over processes, then clamped at 0 (a KL is never negative).

**ORPO** (Hong et al. 2024, "ORPO: Monolithic Preference Optimization without Reference Model", eq. 6-7) adds an
odds-ratio term to SFT and needs no reference model:

    L = L_SFT(y_w) − λ · log σ(log odds(y_w|x) − log odds(y_l|x)),    odds(y|x) = P(y|x) / (1 − P(y|x))

with ``P(y|x) = exp(mean_t log π(y_t|x, y_<t))`` the length-normalised likelihood and ``L_SFT`` the chosen
answer's mean token NLL. ``log(1 − P)`` is computed in log space (``log1mexp``), so P near 0 or 1 stays finite.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ORPOTerms", "kto_loss", "kto_reference_point", "log1mexp", "orpo_log_odds", "orpo_loss"]

_LOG_HALF = -math.log(2.0)


def kto_reference_point(
    policy_kl_logps: Tensor, ref_kl_logps: Tensor, mean_over_processes: Callable[[Tensor], Tensor] | None = None
) -> Tensor:
    """KTO's reference point ``z0 = max(0, mean(log π(y'|x) − log π_ref(y'|x)))`` over mismatched pairs, detached.

    ``policy_kl_logps`` and ``ref_kl_logps`` ``[B]`` are summed log-probs of completions ``y'`` scored under
    prompts they were not written for. ``mean_over_processes`` (data parallel) averages the local mean across
    processes before the clamp, as TRL does; None for one process. Returns a 0-dim tensor.
    """
    if policy_kl_logps.numel() == 0:
        return policy_kl_logps.new_zeros(())
    kl = (policy_kl_logps.detach() - ref_kl_logps.detach()).mean()
    if mean_over_processes is not None:
        kl = mean_over_processes(kl)
    return kl.clamp(min=0)


def kto_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    desirable: Tensor,
    kl: Tensor | float,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Per-example KTO losses ``[B]`` and implied rewards ``β·r`` ``[B]`` (detached, for logging).

    ``desirable`` is a bool ``[B]`` (True: a desirable completion); ``kl`` is the reference point z0 from
    ``kto_reference_point`` (treated as a constant). Loss: ``λ_D(1 − σ(β(r − z0)))`` for desirable examples,
    ``λ_U(1 − σ(β(z0 − r)))`` for undesirable ones, with ``r = policy_logps − ref_logps``.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if desirable_weight < 0 or undesirable_weight < 0:
        raise ValueError("desirable_weight and undesirable_weight must be >= 0")
    z0 = kl.detach() if torch.is_tensor(kl) else torch.tensor(float(kl), device=policy_logps.device)
    z0 = z0.to(policy_logps.dtype)
    r = policy_logps - ref_logps
    desirable = desirable.to(torch.bool)
    good = desirable_weight * (1 - torch.sigmoid(beta * (r - z0)))
    bad = undesirable_weight * (1 - torch.sigmoid(beta * (z0 - r)))
    return torch.where(desirable, good, bad), beta * r.detach()


def log1mexp(x: Tensor, eps: float = 1e-7) -> Tensor:
    """``log(1 − exp(x))`` for ``x < 0``, accurate everywhere (Mächler 2012, "Accurately computing log(1 − exp(−|a|))").

    Uses ``log(−expm1(x))`` for ``x > −log 2`` and ``log1p(−exp(x))`` below; each branch gets an input clamped to
    its own range, so neither yields inf or NaN gradients for the other. ``x`` is capped at ``−eps`` (P = 1
    exactly would make the odds infinite).
    """
    x = x.clamp(max=-eps)
    near_zero = torch.log(-torch.expm1(x.clamp(min=_LOG_HALF)))
    far = torch.log1p(-torch.exp(x.clamp(max=_LOG_HALF)))
    return torch.where(x > _LOG_HALF, near_zero, far)


def orpo_log_odds(chosen_mean_logps: Tensor, rejected_mean_logps: Tensor) -> Tensor:
    """``log odds(y_w) − log odds(y_l)``, ``log odds = log P − log(1 − P)`` with ``log P`` the mean token log-prob."""
    chosen = chosen_mean_logps - log1mexp(chosen_mean_logps)
    rejected = rejected_mean_logps - log1mexp(rejected_mean_logps)
    return chosen - rejected


class ORPOTerms(NamedTuple):
    """Per-pair ORPO values ``[B]``: the loss, its SFT part, ``log σ(log odds ratio)`` and the log odds ratio."""

    losses: Tensor
    nll: Tensor
    log_odds_ratio: Tensor
    log_odds: Tensor


def orpo_loss(chosen_mean_logps: Tensor, rejected_mean_logps: Tensor, beta: float = 0.1) -> ORPOTerms:
    """ORPO per pair: ``−mean log π(y_w) − β · log σ(log odds(y_w) − log odds(y_l))`` (β is the paper's λ).

    Inputs are length-normalised (mean token) log-probs ``[B]`` of the chosen and rejected answers under the
    policy. ``log_odds_ratio`` and ``log_odds`` are returned detached (for logging).
    """
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    log_odds = orpo_log_odds(chosen_mean_logps, rejected_mean_logps)
    ratio = F.logsigmoid(log_odds)
    nll = -chosen_mean_logps
    return ORPOTerms(nll - beta * ratio, nll, ratio.detach(), log_odds.detach())
