"""Taking length out of a reward: ODIN's loss terms for the reward model, and a least-squares length residual
for the scores an RL stage trains on.

ODIN (Chen, Zhu, Soselia, Chen, Zhou, Goldstein, Huang, Shoeybi, Catanzaro 2024, "ODIN: Disentangled Reward
Mitigates Hacking in RLHF", ICML 2024, arXiv:2402.07319, Sec. 4) puts two linear heads on the reward model's
shared features: a length head ``r_L`` and a quality head ``r_Q``. The preference loss is taken on their SUM
``r_Q + r_L``, and two terms split what the sum learns:

* the length term ``(1 − ρ(r_L, len)) + |ρ(r_Q, len)|``: the length head should correlate with the response
  length, the quality head not at all (ρ is the Pearson correlation over the responses of a batch);
* the orthogonality term ``|cos(w_Q, w_L)|``: the two heads' weight vectors should point in unrelated
  directions of the feature space.

At use only ``r_Q`` is the reward; the length head is dropped. The authors' released code
(RLHFlow/RLHF-Reward-Modeling, ``odin/``) writes the length term the same way; the paper's orthogonality term is
``|w_Qᵀ w_L|``, here taken on unit vectors so that it does not shrink by shrinking the weights.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["pearson_correlation", "odin_length_loss", "head_orthogonality_loss", "length_features",
           "regression_sums", "length_coefficients", "length_residual"]


def pearson_correlation(x: Tensor, y: Tensor, eps: float = 1e-8) -> Tensor:
    """Differentiable Pearson correlation ``Σ x̃ ỹ / (‖x̃‖ ‖ỹ‖)`` of two 1-D tensors (x̃ = x − mean x).

    When either input is constant the norm product is below ``eps`` and the result is 0 (no linear relation),
    not NaN, so a batch whose responses all have one length adds no gradient instead of breaking training.
    """
    if x.shape != y.shape or x.dim() != 1:
        raise ValueError(f"pearson_correlation needs two 1-D tensors of one shape, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    xc = x - x.mean()
    yc = y - y.mean()
    norms = xc.norm() * yc.norm()
    # no host sync: a constant input gives 0 through ``where`` (its gradient there is 0 too)
    return torch.where(norms < eps, torch.zeros_like(norms), (xc * yc).sum() / norms.clamp_min(eps))


def odin_length_loss(r_quality: Tensor, r_length: Tensor, lengths: Tensor) -> Tensor:
    """ODIN's length term ``(1 − ρ(r_L, len)) + |ρ(r_Q, len)|`` over one batch of responses.

    ``r_quality``, ``r_length``: the two heads' scores of each response; ``lengths``: its length in tokens.
    0 when the length head is an increasing linear function of length and the quality head is uncorrelated with
    it; 3 at worst (length head anti-correlated, quality head perfectly (anti-)correlated).
    """
    lengths = lengths.to(r_length.dtype)
    return (1.0 - pearson_correlation(r_length, lengths)) + pearson_correlation(r_quality, lengths).abs()


def head_orthogonality_loss(w_quality: Tensor, w_length: Tensor, eps: float = 1e-8) -> Tensor:
    """``|cos(w_Q, w_L)|``: the two heads' weight vectors (1-D, the hidden size) should be orthogonal."""
    if w_quality.shape != w_length.shape or w_quality.dim() != 1:
        raise ValueError(f"head_orthogonality_loss needs two 1-D weight vectors of one shape, got "
                         f"{tuple(w_quality.shape)} and {tuple(w_length.shape)}")
    norms = (w_quality.norm() * w_length.norm()).clamp_min(eps)
    return ((w_quality * w_length).sum() / norms).abs()


def length_features(lengths: Tensor, finished: Tensor) -> Tensor:
    """[N, 2] float64 regressors of a score on length: the answer's length in tokens and 1 where it was cut at
    the token limit (no EOS), so a reward that pays a jump for running into the limit is fitted as well."""
    return torch.stack([lengths.double().cpu(), (~finished.bool()).double().cpu()], dim=1)


def regression_sums(features: Tensor, scores: Tensor) -> Tensor:
    """The sufficient statistics of a least-squares fit, flat so that they add over rollouts and ranks:
    ``[n, Σx (k), Σy, Σxxᵀ (k·k), Σxy (k)]`` for ``features`` [N, k] and ``scores`` [N]."""
    x, y = features.double(), scores.double().cpu()
    return torch.cat([x.new_tensor([len(y)]), x.sum(0), y.sum().reshape(1), (x.T @ x).flatten(), x.T @ y])


def length_coefficients(sums: Tensor, k: int, ridge: float = 1e-3) -> tuple[Tensor, Tensor]:
    """Slopes of score on the ``k`` features (intercept fitted too) and the features' means, from
    ``regression_sums``. ``ridge`` shrinks each slope by that share of its feature's variance, so a feature that
    does not vary (every answer cut) gets slope 0 instead of a singular solve."""
    n = sums[0].clamp_min(1.0)
    sx, sy = sums[1 : 1 + k], sums[1 + k]
    sxx, sxy = sums[2 + k : 2 + k + k * k].reshape(k, k), sums[2 + k + k * k :]
    mean_x = sx / n
    cov_xx = sxx - n * torch.outer(mean_x, mean_x)
    cov_xy = sxy - n * mean_x * (sy / n)
    shrink = torch.diag(ridge * cov_xx.diagonal().clamp_min(0.0) + 1e-12)
    return torch.linalg.solve(cov_xx + shrink, cov_xy), mean_x


def length_residual(scores: Tensor, features: Tensor, slopes: Tensor, mean_x: Tensor) -> Tensor:
    """``score − slopes · (x − x̄)``: the score with the part that length predicts taken out, so that in the
    fitted data longer answers earn nothing on average and the data's mean score is unchanged."""
    shift = (features.double() - mean_x) @ slopes
    return scores - shift.to(scores)
