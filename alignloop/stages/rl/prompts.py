"""What the RL sampler is given for prompt records: the messages (text models), or for a vision-language model
the prompt's token ids with its images attached (``TokenizedPrompt``), so every sample of a group shares them."""

from __future__ import annotations

import logging
from typing import Any

from alignloop.errors import DataError
from alignloop.models import load_tokenizer
from alignloop.models.loading import is_vision_language_model, load_vision_processor
from alignloop.models.vision_tokenizer import VisionTokenizer
from alignloop.rollout import TokenizedPrompt
from alignloop.rollout.prompts import encode_prompts

__all__ = ["RLPrompts"]


class RLPrompts:
    def __init__(self, model: str, max_length: int):
        self.processor = load_vision_processor(model) if is_vision_language_model(model) else None
        self.tokenizer = self.processor.tokenizer if self.processor is not None else load_tokenizer(model)
        self.vision = VisionTokenizer(self.processor) if self.processor is not None else None
        self.max_length = max_length

    @property
    def saved_with_model(self) -> Any:
        """What is saved beside the policy: the processor of a VLM, else the tokenizer."""
        return self.processor if self.processor is not None else self.tokenizer

    def for_sampler(self, records: list[dict], where: str = "prompts") -> list[Any]:
        if self.vision is None:
            return [r["prompt"] for r in records]
        out = []
        for index, record in enumerate(records):
            # the left cut never reaches an image: a DataError says so instead
            ids, images = self.vision.prompt(record["prompt"], record.get("images"), self.max_length,
                                             where=f"{where}: record {index + 1}")
            out.append(TokenizedPrompt(ids, images, shown=record["prompt"]))
        return out

    def lengths(self, records: list[dict], where: str) -> list[int]:
        if self.vision is None:
            token_lists, _ = encode_prompts(self.tokenizer, [r["prompt"] for r in records])
            return [len(ids) for ids in token_lists]
        return [len(p.token_ids) for p in self.for_sampler(records, where)]

    def fitting(self, records: list[dict], path: str, limit: int, budget: str) -> list[dict]:
        """The records whose prompt leaves room for the answer (``limit`` tokens = data.max_length − ``budget``);
        the others are dropped with a warning, and none left is an error."""
        kept = [r for r, n in zip(records, self.lengths(records, path)) if n <= limit]
        if len(kept) < len(records):
            logging.getLogger("alignloop").warning(
                "%s: dropped %d prompt(s) longer than data.max_length - %s (%d tokens)",
                path, len(records) - len(kept), budget, limit)
        if not kept:
            raise DataError(f"{path}: every prompt is longer than data.max_length - {budget} ({limit} tokens)")
        return kept
