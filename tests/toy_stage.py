"""A tiny pure-torch stage for testing the loop: variable-length 'sequences' of regression tokens."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import torch
from torch import nn

from alignloop.config import StageConfig
from alignloop.train.batches import EpochBatchSource
from alignloop.train.stage import Stage, StepOutput


def make_data(n: int = 16, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    w = torch.tensor([1.0, -2.0, 0.5, 3.0])
    out = []
    for i in range(n):
        t = 1 + (i * 7) % 4  # 1..4 tokens, different per example
        x = torch.randn(t, 4, generator=g)
        out.append({"x": x, "y": x @ w + 0.1 * torch.randn(t, generator=g)})
    return out


def collate(items: list[dict]) -> dict:
    return {"x": torch.cat([i["x"] for i in items]), "y": torch.cat([i["y"] for i in items])}


class ToyStage(Stage):
    name = "toy"

    def __init__(self, config: StageConfig, data=None, interrupt_at: int | None = None, nan_at: set[int] | None = None):
        super().__init__(config)
        self.data = data if data is not None else make_data()
        self.interrupt_at = interrupt_at
        self.nan_at = nan_at or set()
        self.grads: list[torch.Tensor] = []
        self.calls = 0
        self.extra = {"counter": 0}

    def setup(self, run):
        torch.manual_seed(1234)
        self.models["model"] = nn.Linear(4, 1)

    def batches(self):
        tc = self.config.train
        return EpochBatchSource(self.data, tc.micro_batch_size or tc.batch_size, collate, seed=tc.seed)

    def units(self, batch):
        return batch["x"].shape[0]

    def step(self, batch):
        self.calls += 1
        pred = self.models["model"](batch["x"]).squeeze(-1)
        loss = ((pred - batch["y"]) ** 2).sum()
        if self.calls in self.nan_at:
            loss = loss * float("nan")
        return StepOutput(loss=loss, units=batch["x"].shape[0], n_tokens=batch["x"].shape[0])

    def on_step_end(self, step, metrics):
        m = self.unwrap("model")
        self.grads.append(torch.cat([p.grad.flatten().clone() for p in m.parameters()]) if m.weight.grad is not None else None)
        self.extra["counter"] += 1
        if self.interrupt_at == step:
            os.kill(os.getpid(), signal.SIGINT)

    def state_dict(self):
        return dict(self.extra)

    def load_state_dict(self, state):
        self.extra = dict(state)

    def save(self, out_dir: Path):
        torch.save(self.unwrap("model").state_dict(), Path(out_dir) / "toy.pt")
