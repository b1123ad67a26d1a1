"""SFT: next-token loss on assistant tokens of demonstrations. One step function on the shared loop."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from alignloop.config import SFTConfig
from alignloop.data import collate_packed, load_records, pack_examples, pad_batch, tokenize_conversation
from alignloop.data.splits import load_splits
from alignloop.models import load_tokenizer, load_trainable_lm, save_model
from alignloop.models.loading import is_vision_language_model, load_vision_processor
from alignloop.models.vision_tokenizer import VisionTokenizer
from alignloop.models.head import token_logprobs
from alignloop.train.batches import EpochBatchSource
from alignloop.train.stage import Stage, StepOutput

__all__ = ["SFTConfig", "SFTStage", "token_nll_sum"]

log = logging.getLogger("alignloop")


def token_nll_sum(model, batch: dict) -> tuple[torch.Tensor, int]:
    """Summed next-token NLL over labelled tokens (labels == -100 are ignored), and their count."""
    keys = ("input_ids", "attention_mask", "position_ids", "images")
    inputs = {k: batch[k] for k in keys if batch.get(k) is not None}
    labels = batch["labels"]
    predicted = torch.full_like(labels, -100)  # position t predicts token t + 1
    predicted[:, :-1] = labels[:, 1:]
    logp = token_logprobs(model, inputs, predicted)  # no [B, T, V] logits (models/head.py)
    return -logp.sum(), int((predicted != -100).sum())


class SFTStage(Stage):
    name = "sft"
    config: SFTConfig

    def setup(self, run) -> None:
        cfg = self.config
        # a vision-language model tokenises through its processor and saves it beside the weights
        self.processor = load_vision_processor(cfg.model) if is_vision_language_model(cfg.model) else None
        self.tokenizer = self.processor.tokenizer if self.processor is not None else load_tokenizer(cfg.model)
        self.vision = VisionTokenizer(self.processor) if self.processor is not None else None
        self.models["policy"] = load_trainable_lm(cfg.model, cfg.lora, cfg.train.gradient_checkpointing, run.device)
        train, evals = load_splits(
            cfg.data, cfg.train.seed, lambda path: load_records(path, "sft", skip_invalid=cfg.data.skip_invalid)
        )
        self.n_skipped = getattr(train, "skipped", 0) + getattr(evals, "skipped", 0)
        self.train_rows = self._rows(train)
        self.eval_rows = self._rows(evals)
        log.info("sft: %d train rows, %d eval rows (packing=%s)", len(self.train_rows), len(self.eval_rows),
                 cfg.sft.packing)

    def _rows(self, records) -> list:
        max_len = self.config.data.max_length
        examples = []
        source = getattr(records, "source", "data")
        for index, rec in enumerate(records):
            if self.vision is not None:
                ex, images = self.vision.conversation(rec["messages"], rec.get("images"), max_len,
                                                      where=f"{source}: record {index + 1}")
                ex.images = images
            else:
                ex = tokenize_conversation(self.tokenizer, rec["messages"], max_length=max_len)
            if self.config.sft.loss_on == "all":
                ex.loss_mask = [1] * len(ex.input_ids)
            if sum(ex.loss_mask):
                examples.append(ex)
        if self.config.sft.packing:
            return pack_examples(examples, max_len)
        return examples

    def _collate(self, rows: list) -> dict:
        if self.config.sft.packing:
            # no 4D mask: transformers derives the block-diagonal mask from restarting position_ids (use_cache=False)
            batch = collate_packed(rows, self.tokenizer.pad_token_id, block_mask=False)
        else:
            batch = pad_batch(rows, self.tokenizer.pad_token_id, side="right")
        if self.vision is not None:
            batch["images"] = [row.images for row in rows]  # a list, one tuple per row: never stacked
        return batch

    def batches(self):
        tc = self.config.train
        run = self.run
        return EpochBatchSource(
            self.train_rows, tc.micro_batch_size or tc.batch_size, self._collate,
            seed=tc.seed, rank=run.rank, world_size=run.world_size,
        )

    def units(self, batch) -> float:
        return float((batch["labels"][:, 1:] != -100).sum())

    def step(self, batch) -> StepOutput:
        batch = {k: v.to(self.run.device) if torch.is_tensor(v) else v for k, v in batch.items()}
        loss, n = token_nll_sum(self.models["policy"], batch)
        return StepOutput(loss=loss, units=n, n_tokens=int(batch["input_ids"].numel()))

    def evaluate(self) -> dict[str, float]:
        if not self.eval_rows:
            return {}
        total, count = 0.0, 0
        mb = self.config.train.micro_batch_size or self.config.train.batch_size
        with self.eval_mode():
            for i in range(0, len(self.eval_rows), mb):
                batch = self._collate(self.eval_rows[i : i + mb])
                batch = {k: v.to(self.run.device) if torch.is_tensor(v) else v for k, v in batch.items()}
                loss, n = token_nll_sum(self.models["policy"], batch)
                total += float(loss)
                count += n
        mean = total / max(count, 1)  # every rank evaluates the full (small) eval set
        return {"eval/loss": mean, "eval/perplexity": float(torch.exp(torch.tensor(mean)))}

    def summary(self) -> dict:
        return {"skipped_records": self.n_skipped} if self.n_skipped else {}

    def save(self, out_dir: Path) -> None:
        save_model(self.unwrap("policy"), self.processor or self.tokenizer, Path(out_dir) / "model")
