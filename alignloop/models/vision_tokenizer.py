"""Records with images as token ids plus their ``EncodedImage`` tuple, for one VLM processor.

Each image entry is opened and prepared once per run and the same object is reused by every record and row
that names it, so a forward pass encodes it once (``models.images``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from alignloop.data.chat import TokenizedExample, tokenize_conversation, tokenize_prompt, tokenize_prompt_completion
from alignloop.data.image_chat import expand_image_tokens, fit_keeping_images
from alignloop.data.images import IMAGE_PLACEHOLDER, open_image
from alignloop.errors import DataError
from alignloop.models.images import EncodedImage, ImageEncoder

__all__ = ["VisionTokenizer"]


class VisionTokenizer:
    def __init__(self, processor: Any):
        self.encoder = ImageEncoder(processor)
        self.tokenizer = processor.tokenizer
        self._images: dict[str, EncodedImage] = {}
        self._image_ids: set[int] = {self.encoder.image_token_id}

    def images(self, entries: Sequence[str] | None, where: str = "record") -> tuple[EncodedImage, ...]:
        found = []
        for index, entry in enumerate(entries or ()):
            if entry not in self._images:
                try:
                    image = open_image(entry)
                except ValueError as err:
                    raise DataError(f"{where}: images[{index}]: {err}") from err
                encoded = self.encoder.encode(image, source=entry if len(entry) < 200 else f"images[{index}]")
                self._images[entry] = encoded
                self._image_ids.update(encoded.token_ids)
            found.append(self._images[entry])
        return tuple(found)

    def _messages(self, messages: list[dict]) -> list[dict]:
        text = self.encoder.placeholder_text
        if text == IMAGE_PLACEHOLDER:
            return messages
        return [{**m, "content": m["content"].replace(IMAGE_PLACEHOLDER, text)} for m in messages]

    def _expand(self, ids, mask, images, where):
        return expand_image_tokens(ids, mask, self.encoder.image_token_id, [im.token_ids for im in images], where)

    def conversation(self, messages: list[dict], entries: Sequence[str] | None, max_length: int | None,
                     where: str = "record") -> tuple[TokenizedExample, tuple[EncodedImage, ...]]:
        """A whole conversation (SFT): loss on assistant turns only, never on image tokens; cut from the right."""
        images = self.images(entries, where)
        example = tokenize_conversation(self.tokenizer, self._messages(messages))
        ids, mask = self._expand(example.input_ids, example.loss_mask, images, where)
        if max_length is not None:
            ids, mask = fit_keeping_images(ids, mask, max_length, self._image_ids, side="right", where=where)
        return TokenizedExample(ids, mask), images

    def prompt(self, messages: list[dict], entries: Sequence[str] | None, max_length: int | None,
               where: str = "record") -> tuple[list[int], tuple[EncodedImage, ...]]:
        """Prompt tokens ending with the assistant header (generation's view); cut from the left."""
        images = self.images(entries, where)
        ids, mask = self._expand(tokenize_prompt(self.tokenizer, self._messages(messages)), None, images, where)
        if max_length is not None:
            ids, mask = fit_keeping_images(ids, mask, max_length, self._image_ids, side="left", where=where)
        return ids, images

    def prompt_completion(self, prompt: list[dict], completion: list[dict], entries: Sequence[str] | None,
                          max_length: int | None, max_prompt_length: int | None = None, where: str = "record"
                          ) -> tuple[list[int], list[int], tuple[EncodedImage, ...]]:
        """``(prompt_ids, completion_ids, images)``; the prompt keeps its images, the completion is cut to fit."""
        images = self.images(entries, where)
        prompt_ids, completion_ids = tokenize_prompt_completion(self.tokenizer, self._messages(prompt), completion)
        prompt_ids, _ = self._expand(prompt_ids, None, images, where)
        if max_prompt_length is not None:
            prompt_ids, _ = fit_keeping_images(prompt_ids, [0] * len(prompt_ids), max_prompt_length,
                                               self._image_ids, side="left", where=where)
        if max_length is not None:
            if len(prompt_ids) >= max_length:
                prompt_ids, _ = fit_keeping_images(prompt_ids, [0] * len(prompt_ids), max_length, self._image_ids,
                                                   side="left", where=where)
            completion_ids = completion_ids[: max(0, max_length - len(prompt_ids))]
        return prompt_ids, completion_ids, images
