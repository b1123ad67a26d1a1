"""Head-only reward models: a linear head on frozen backbone features (``rm.head_only``).

Why: on the bundled 135M model and the HH-RLHF harmless pairs, a ridge-regularised linear head on the frozen
last-token features generalises better than fine-tuning the network (docs/reward-models.md, measured), and it
costs one forward pass per record instead of a forward and a backward per epoch. So ``setup`` runs the backbone
once over every train and held-out record (``FeatureCache``); the loop's steps then train only the head on the
cached features, and evaluation scores the cached held-out features.

``head_l2 · Σ_i (w_i σ_i)²`` (σ_i: the std of feature i over the train completions) is an L2 penalty in units of
standardised features: ridge logistic regression on standardised inputs, while the saved head stays a plain linear
layer on raw features (a feature's mean cancels in every chosen − rejected difference, so centring is not needed).
"""

from __future__ import annotations

import logging
import time

import torch
from torch import nn

from alignloop.models import ScalarHeadModel
from alignloop.models.scalar_head import score_groups
from alignloop.stages.evaluate.progress import SampleProgress
from alignloop.stages.rm.data import PreferenceBatch, PreferenceExample

__all__ = ["FeatureCache", "freeze_backbone", "head_l2_penalty"]

log = logging.getLogger("alignloop")


def freeze_backbone(model: ScalarHeadModel) -> None:
    for p in model.backbone.parameters():
        p.requires_grad_(False)


def head_l2_penalty(weight: torch.Tensor, feature_std: torch.Tensor) -> torch.Tensor:
    """``Σ (w σ)²`` over every head output and feature: the ridge penalty on standardised features."""
    return (weight.float() * feature_std.to(weight.device)).pow(2).sum()


class FeatureCache:
    """The backbone's last-token hidden state of every completion, computed once under ``no_grad``."""

    def __init__(self, model: ScalarHeadModel, device: torch.device, autocast):
        self.model, self.device, self.autocast = model, device, autocast
        self._by_example: dict[int, torch.Tensor] = {}  # id(example) -> [K, hidden]

    def encode(self, batches: list[PreferenceBatch], title: str) -> None:
        captured: list[torch.Tensor] = []
        hook = self.model.head.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0]))
        total = sum(len(b.examples) for b in batches)
        started, tokens = time.perf_counter(), 0
        try:
            with torch.no_grad(), self.autocast(), SampleProgress(total, title) as progress:
                for batch in batches:
                    packed = batch.packed.to(self.device)
                    captured.clear()
                    score_groups(self.model, packed)
                    hidden = captured[0][packed.end_rows, packed.end_cols].float().cpu()
                    for example, rows in zip(batch.examples, packed.index):
                        self._by_example[id(example)] = hidden[rows]
                    progress.advance(len(batch.examples))
                    tokens += packed.n_tokens
        finally:
            hook.remove()
        log.info("%s: %d records, %d tokens in %.1f s", title, total, tokens, time.perf_counter() - started)

    def rows(self, batch: PreferenceBatch) -> torch.Tensor:
        """``[U, hidden]`` in the order of ``batch.packed``'s unique completions (what ``score_groups`` scores)."""
        packed = batch.packed
        out = torch.empty(packed.n_unique, self.hidden_size)
        for example, rows in zip(batch.examples, packed.index):
            out[rows] = self._by_example[id(example)]
        return out

    @property
    def hidden_size(self) -> int:
        return next(iter(self._by_example.values())).shape[-1]

    def feature_std(self, examples: list[PreferenceExample]) -> torch.Tensor:
        features = torch.cat([self._by_example[id(ex)] for ex in examples])
        return features.std(dim=0).clamp_min(1e-6)

    def scores(self, head: nn.Linear, batch: PreferenceBatch) -> torch.Tensor:
        """The head on the cached features: the same ``[U, num_outputs]`` as ``score_groups`` on the full model."""
        return head(self.rows(batch).to(head.weight.device, head.weight.dtype)).float()
