"""Direct preference optimisation losses from sequence log-probabilities.

Inputs are per-example sequence log-probs ``log π(y|x) = Σ_t log π(y_t|x, y_<t)``
of the policy (``pc``, ``pr``: chosen, rejected) and the frozen reference
(``rc``, ``rr``). Reference-based losses use the log-ratio difference

    h = (pc − rc) − (pr − rr)

and report the implicit rewards ``β(pc − rc)`` and ``β(pr − rr)``. Every loss
decreases as h grows. A variant is one function ``(h, beta, label_smoothing,
gamma) -> losses`` in ``DPO_LOSSES``; ``dpo_loss`` builds h and calls it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "DPOLossFn",
    "DPO_LOSSES",
    "REFERENCE_FREE_LOSSES",
    "sigmoid_loss",
    "robust_loss",
    "ipo_loss",
    "hinge_loss",
    "simpo_loss",
    "dpo_loss",
    "dpo_metrics",
]

DPOLossFn = Callable[[Tensor, float, float, float], Tensor]


def _smoothed_logsigmoid_loss(z: Tensor, label_smoothing: float) -> Tensor:
    """``−(1−ε) log σ(z) − ε log σ(−z)``: BCE of z against the soft label 1−ε."""
    loss = -F.logsigmoid(z)
    if label_smoothing:
        loss = (1 - label_smoothing) * loss - label_smoothing * F.logsigmoid(-z)
    return loss


def sigmoid_loss(h: Tensor, beta: float, label_smoothing: float = 0.0, gamma: float = 0.0) -> Tensor:
    """DPO (Rafailov et al. 2023): ``−log σ(βh)``.

    With ``label_smoothing`` ε > 0 this is conservative DPO (cDPO, Mitchell
    2023): ``−(1−ε) log σ(βh) − ε log σ(−βh)``, i.e. each label is assumed
    flipped with probability ε. ``gamma`` is unused.
    """
    return _smoothed_logsigmoid_loss(beta * h, label_smoothing)


def robust_loss(h: Tensor, beta: float, label_smoothing: float = 0.0, gamma: float = 0.0) -> Tensor:
    """Robust DPO (Chowdhury et al. 2024): ``[(1−ε)(−log σ(βh)) + ε log σ(−βh)] / (1 − 2ε)``.

    An unbiased estimate of the clean-label DPO loss when labels flip with
    probability ε < ½. ``gamma`` is unused.
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"robust DPO needs 0 <= label_smoothing < 0.5, got {label_smoothing}")
    z = beta * h
    return ((1 - label_smoothing) * -F.logsigmoid(z) + label_smoothing * F.logsigmoid(-z)) / (1 - 2 * label_smoothing)


def ipo_loss(h: Tensor, beta: float, label_smoothing: float = 0.0, gamma: float = 0.0) -> Tensor:
    """IPO (Azar et al. 2023, eq. 17): ``(h − 1/(2β))²`` with β the paper's τ.

    h is built from whatever log-probs are passed: the paper uses sequence
    log-ratios (our default, ``sequence_logprob(average=False)``). TRL instead
    divides each log-prob by the completion length; pass
    ``sequence_logprob(average=True)`` values to reproduce that.
    ``label_smoothing`` and ``gamma`` are unused.
    """
    return (h - 1 / (2 * beta)).square()


def hinge_loss(h: Tensor, beta: float, label_smoothing: float = 0.0, gamma: float = 0.0) -> Tensor:
    """SLiC-HF calibration loss (Zhao et al. 2023) on log-ratios: ``max(0, 1 − βh)``."""
    return torch.relu(1 - beta * h)


def simpo_loss(h: Tensor, beta: float, label_smoothing: float = 0.0, gamma: float = 0.5) -> Tensor:
    """SimPO (Meng et al. 2024): ``−log σ(βh − γ)`` where h is the difference of
    length-normalised policy log-probs ``pc/|y_c| − pr/|y_r|`` (no reference).

    ``gamma`` γ is the target reward margin (the paper's γ, not γ/β);
    label smoothing is applied as in cDPO.
    """
    return _smoothed_logsigmoid_loss(beta * h - gamma, label_smoothing)


DPO_LOSSES: dict[str, DPOLossFn] = {
    "sigmoid": sigmoid_loss,
    "robust": robust_loss,
    "ipo": ipo_loss,
    "hinge": hinge_loss,
    "simpo": simpo_loss,
}

# Losses whose h is built from length-normalised policy log-probs only.
REFERENCE_FREE_LOSSES = frozenset({"simpo"})


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor | None,
    ref_rejected_logps: Tensor | None,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    reference_free: bool = False,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
    gamma: float = 0.5,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-example losses ``[B]`` and implicit rewards ``(chosen_rewards, rejected_rewards)``.

    - ``reference_free=True`` uses rc = rr = 0 (the reference is uniform),
      as in the DPO paper's ablation; rewards become ``β·pc``, ``β·pr``.
    - ``loss_type="simpo"`` needs ``chosen_lengths``/``rejected_lengths`` (number
      of completion tokens) and ignores the reference; its rewards are
      ``β·pc/|y_c|`` and ``β·pr/|y_r|``.

    Rewards are detached: they are for logging, not for gradients.
    """
    if loss_type not in DPO_LOSSES:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; choose one of {sorted(DPO_LOSSES)}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")

    if loss_type in REFERENCE_FREE_LOSSES:
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError(f"loss_type {loss_type!r} needs chosen_lengths and rejected_lengths")
        chosen_score = policy_chosen_logps / chosen_lengths.to(policy_chosen_logps.dtype).clamp(min=1)
        rejected_score = policy_rejected_logps / rejected_lengths.to(policy_rejected_logps.dtype).clamp(min=1)
    elif reference_free:
        chosen_score, rejected_score = policy_chosen_logps, policy_rejected_logps
    else:
        if ref_chosen_logps is None or ref_rejected_logps is None:
            raise ValueError(
                f"reference log-probs are required unless reference_free=True or loss_type is one of "
                f"{sorted(REFERENCE_FREE_LOSSES)}"
            )
        chosen_score = policy_chosen_logps - ref_chosen_logps
        rejected_score = policy_rejected_logps - ref_rejected_logps

    h = chosen_score - rejected_score
    losses = DPO_LOSSES[loss_type](h, beta, label_smoothing, gamma)
    return losses, beta * chosen_score.detach(), beta * rejected_score.detach()


def dpo_metrics(chosen_rewards: Tensor, rejected_rewards: Tensor) -> dict[str, Tensor]:
    """The TRL-named DPO metrics (batch means): ``rewards/chosen``, ``/rejected``, ``/margins``, ``/accuracies``.

    Accuracy is ``chosen > rejected`` strictly, so it is 0 at initialisation
    where both rewards are 0 (TRL's convention).
    """
    return {
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
    }
