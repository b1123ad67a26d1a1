"""Length debiasing of the reward model: ODIN's length head, trained with the model and dropped when it is saved.

With ``rm.length_debias: odin`` the scalar head gets one more output, ``length``, after the overall head and any
criterion heads. Training scores preferences with ``quality + length`` and adds ODIN's terms
(``alignloop.algos.length_debias``) so that the length head takes up what length explains and the quality head
does not; the saved model holds the quality head only, so ``RewardModel.load`` and everything downstream (PPO,
GRPO, best-of-N, ``alignloop score``, evaluation) get the debiased score with no setting of their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from alignloop.algos.length_debias import head_orthogonality_loss
from alignloop.models import ScalarHeadModel

__all__ = ["LENGTH_HEAD", "add_length_head", "orthogonality_term", "quality_heads_only"]

LENGTH_HEAD = "length"  # ODIN's length head: always the last output while training, never saved


def _rows(head: nn.Linear, keep: int, extra: int = 0) -> nn.Linear:
    """A new ``Linear`` with the first ``keep`` rows of ``head`` and ``extra`` freshly initialised rows after them."""
    out = nn.Linear(head.in_features, keep + extra, device=head.weight.device, dtype=head.weight.dtype)
    with torch.no_grad():
        if extra:  # the same init as ScalarHeadModel's head
            nn.init.normal_(out.weight, std=1.0 / (head.in_features + 1) ** 0.5)
            nn.init.zeros_(out.bias)
        out.weight[:keep] = head.weight[:keep]
        out.bias[:keep] = head.bias[:keep]
    return out


def add_length_head(model: ScalarHeadModel) -> ScalarHeadModel:
    """Give a reward model (e.g. a saved one trained further) a fresh length head as its last output."""
    model.head = _rows(model.head, model.num_outputs, extra=1)
    model.num_outputs += 1
    model.output_names = [*model.output_names, LENGTH_HEAD]
    return model


@contextmanager
def quality_heads_only(model: ScalarHeadModel) -> Iterator[ScalarHeadModel]:
    """Within the block the model has no length head (for saving); the trained heads are put back afterwards."""
    if not model.output_names or model.output_names[-1] != LENGTH_HEAD:
        yield model
        return
    head, names, count = model.head, model.output_names, model.num_outputs
    model.head, model.output_names, model.num_outputs = _rows(head, count - 1), names[:-1], count - 1
    try:
        yield model
    finally:
        model.head, model.output_names, model.num_outputs = head, names, count


def orthogonality_term(model: ScalarHeadModel) -> torch.Tensor:
    """ODIN's ``|cos(w_Q, w_L)|`` between the overall (quality) head and the length head."""
    weight = model.head.weight
    return head_orthogonality_loss(weight[0].float(), weight[-1].float())
