"""PRM stage: train a process reward model on per-step labels, one step function on the shared loop.

Each step's label sits on the step's end token: 1 (correct) → target 1, -1 (first mistake) →
target 0, 0 (ungraded, after a mistake) → masked out. The loss is binary cross-entropy on the
scalar head's logit at those tokens, summed over graded steps (the loop's loss unit).

``prm.supervision: outcome`` trains the outcome-only baseline (ORM) on the same records: one
target per solution (1 when every step is correct), placed at the last step's end token.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from alignloop.config import DataConfig, Section, StageConfig
from alignloop.data import load_records
from alignloop.data.splits import load_splits
from alignloop.models import ScalarHeadModel, enable_gradient_checkpointing, load_tokenizer
from alignloop.rewards.process import PRM_META, aggregate_steps, tokenize_solution
from alignloop.train.batches import EpochBatchSource
from alignloop.train.stage import Stage, StepOutput

__all__ = ["PRMConfig", "PRMOptions", "PRMStage", "step_targets"]

log = logging.getLogger("alignloop")


class PRMOptions(Section):
    supervision: Literal["process", "outcome"] = Field(
        "process", description="process: a target per graded step; outcome: one per solution (the ORM baseline)."
    )
    aggregate: Literal["min", "product", "last"] = Field(
        "min", description="How a solution's score combines its step scores (saved with the model)."
    )
    separator: str = Field("\n", description="Text between steps when a solution is one string.")


class PRMConfig(StageConfig):
    stage: Literal["prm"] = "prm"
    data: DataConfig = Field(
        default_factory=lambda: DataConfig(
            train="bundled:arith_steps_train.jsonl", eval="bundled:arith_steps_eval.jsonl", max_length=256
        )
    )
    prm: PRMOptions = Field(default_factory=PRMOptions)


def step_targets(labels: list[int], supervision: str) -> tuple[list[float], list[float]]:
    """(targets, mask) per step. process: 1→1, -1→0, 0→masked; outcome: only the last step, 1 iff all labels are 1."""
    if supervision == "outcome":
        mask = [0.0] * (len(labels) - 1) + [1.0]
        return [0.0] * (len(labels) - 1) + [float(all(x == 1 for x in labels))], mask
    return [1.0 if x == 1 else 0.0 for x in labels], [0.0 if x == 0 else 1.0 for x in labels]


class PRMStage(Stage):
    name = "prm"
    config: PRMConfig

    def setup(self, run) -> None:
        cfg = self.config
        self.tokenizer = load_tokenizer(cfg.model)
        model = ScalarHeadModel.from_causal_lm(cfg.model, lora=cfg.lora, output_names=["step_correct"])
        if cfg.train.gradient_checkpointing:
            enable_gradient_checkpointing(model.backbone)
        self.models["prm"] = model.to(run.device)
        train, evals = load_splits(
            cfg.data, cfg.train.seed, lambda path: load_records(path, "process", skip_invalid=cfg.data.skip_invalid),
            missing="no process-supervision records given",
        )
        self.train_rows = self._rows(train)
        self.eval_rows = self._rows(evals)
        log.info("prm: %d train / %d eval solutions (%s supervision)", len(self.train_rows), len(self.eval_rows),
                 cfg.prm.supervision)

    def _rows(self, records) -> list[dict]:
        rows = []
        max_len = self.config.data.max_length
        for rec in records:
            ex = tokenize_solution(self.tokenizer, rec["prompt"], rec["steps"], self.config.prm.separator)
            targets, mask = step_targets(rec["labels"], self.config.prm.supervision)
            # Steps cut off by max_length (or with no token) keep no target.
            mask = [m if 0 <= end < max_len else 0.0 for m, end in zip(mask, ex.step_ends)]
            if sum(mask):
                rows.append({
                    "input_ids": ex.input_ids[:max_len], "step_ends": ex.step_ends, "targets": targets, "mask": mask,
                    "correct": all(x == 1 for x in rec["labels"]),
                })
        return rows

    def _collate(self, rows: list[dict]) -> dict:
        width = max(len(r["input_ids"]) for r in rows)
        n_steps = max(len(r["step_ends"]) for r in rows)
        pad = self.tokenizer.pad_token_id or 0
        batch = {
            "input_ids": torch.full((len(rows), width), pad, dtype=torch.long),
            "attention_mask": torch.zeros(len(rows), width, dtype=torch.long),
            "step_ends": torch.zeros(len(rows), n_steps, dtype=torch.long),
            "targets": torch.zeros(len(rows), n_steps),
            "mask": torch.zeros(len(rows), n_steps),
            "correct": torch.tensor([r["correct"] for r in rows]),
        }
        for i, r in enumerate(rows):
            n, k = len(r["input_ids"]), len(r["step_ends"])
            batch["input_ids"][i, :n] = torch.tensor(r["input_ids"])
            batch["attention_mask"][i, :n] = 1
            batch["step_ends"][i, :k] = torch.tensor(r["step_ends"]).clamp(0, n - 1)
            batch["targets"][i, :k] = torch.tensor(r["targets"])
            batch["mask"][i, :k] = torch.tensor(r["mask"])
        return batch

    def batches(self):
        tc = self.config.train
        return EpochBatchSource(
            self.train_rows, tc.micro_batch_size or tc.batch_size, self._collate,
            seed=tc.seed, rank=self.run.rank, world_size=self.run.world_size,
        )

    def units(self, batch) -> float:
        return float(batch["mask"].sum())

    def _step_logits(self, model, batch: dict) -> torch.Tensor:
        values = model(batch["input_ids"], batch["attention_mask"])[..., 0]  # [B, T]
        return values.gather(1, batch["step_ends"]).float()  # [B, S]

    def step(self, batch) -> StepOutput:
        batch = {k: v.to(self.run.device) for k, v in batch.items()}
        logits = self._step_logits(self.models["prm"], batch)
        mask = batch["mask"]
        loss = (F.binary_cross_entropy_with_logits(logits, batch["targets"], reduction="none") * mask).sum()
        hits = (((logits > 0).float() == batch["targets"]).float() * mask).sum()
        return StepOutput(
            loss=loss, units=float(mask.sum()), n_tokens=int(batch["attention_mask"].sum()),
            metrics={"accuracy": float(hits)}
        )

    def evaluate(self) -> dict[str, float]:
        if not self.eval_rows:
            return {}
        loss = hits = graded = 0.0
        solution_hits = 0
        mb = self.config.train.micro_batch_size or self.config.train.batch_size
        with self.eval_mode():
            for start in range(0, len(self.eval_rows), mb):
                batch = {k: v.to(self.run.device) for k, v in self._collate(self.eval_rows[start : start + mb]).items()}
                logits = self._step_logits(self.models["prm"], batch)
                mask = batch["mask"]
                loss += float(
                    (F.binary_cross_entropy_with_logits(logits, batch["targets"], reduction="none") * mask).sum()
                )
                hits += float((((logits > 0).float() == batch["targets"]).float() * mask).sum())
                graded += float(mask.sum())
                for row, rec in enumerate(self.eval_rows[start : start + mb]):
                    probs = torch.sigmoid(logits[row, : len(rec["step_ends"])]).cpu()
                    solution_hits += int((aggregate_steps(probs, self._aggregate()) > 0.5) == rec["correct"])
        return {
            "eval/loss": loss / max(graded, 1),
            "eval/accuracy": hits / max(graded, 1),
            "eval/solution_accuracy": solution_hits / len(self.eval_rows),
        }

    def _aggregate(self) -> str:
        # An outcome model only scores the end of a solution.
        return "last" if self.config.prm.supervision == "outcome" else self.config.prm.aggregate

    def save(self, out_dir: Path) -> None:
        folder = Path(out_dir) / "model"
        self.unwrap("prm").save_pretrained(folder, self.tokenizer)
        meta = {"kind": "process_reward_model", "supervision": self.config.prm.supervision,
                "aggregate": self._aggregate(), "separator": self.config.prm.separator}
        (folder / PRM_META).write_text(json.dumps(meta, indent=2) + "\n")

