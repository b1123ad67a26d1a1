"""Token sequences with images: each image token of the rendered chat becomes that image's expansion.

The chat is rendered and tokenised as text (one image token per placeholder), then every image token is
replaced by what the processor makes of that image (image tokens plus any markers), with no loss on them.
Truncation never cuts an image: when the images alone do not fit, the error says how many tokens they need.
"""

from __future__ import annotations

from collections.abc import Sequence

from alignloop.errors import DataError

__all__ = ["expand_image_tokens", "fit_keeping_images"]


def expand_image_tokens(
    input_ids: Sequence[int],
    loss_mask: Sequence[int] | None,
    image_token_id: int,
    expansions: Sequence[Sequence[int]],
    where: str = "record",
) -> tuple[list[int], list[int]]:
    """``(ids, loss_mask)`` with the k-th image token replaced by ``expansions[k]`` (loss 0 there)."""
    mask = list(loss_mask) if loss_mask is not None else [0] * len(input_ids)
    found = sum(1 for token in input_ids if token == image_token_id)
    if found != len(expansions):
        raise DataError(f"{where}: {len(expansions)} image(s) but {found} image placeholder(s) after the chat "
                        "template (is an <image> placeholder inside a system message the template drops?)")
    ids_out: list[int] = []
    mask_out: list[int] = []
    k = 0
    for token, weight in zip(input_ids, mask):
        if token == image_token_id:
            ids_out.extend(expansions[k])
            mask_out.extend([0] * len(expansions[k]))
            k += 1
        else:
            ids_out.append(token)
            mask_out.append(weight)
    return ids_out, mask_out


def _image_span(ids: Sequence[int], image_ids: set[int]) -> tuple[int, int] | None:
    positions = [i for i, token in enumerate(ids) if token in image_ids]
    return (positions[0], positions[-1] + 1) if positions else None


def fit_keeping_images(
    ids: list[int], mask: list[int], max_length: int, image_ids: set[int], *, side: str = "right", where: str = "record"
) -> tuple[list[int], list[int]]:
    """Cut ``ids`` to ``max_length`` from ``side``; a ``DataError`` if the cut would reach an image token."""
    if len(ids) <= max_length:
        return ids, mask
    span = _image_span(ids, image_ids)
    if side == "right":
        if span is not None and span[1] > max_length:
            raise DataError(f"{where}: its images end at token {span[1]} but data.max_length is {max_length}; "
                            "image tokens are never truncated: raise data.max_length or shorten the text")
        return ids[:max_length], mask[:max_length]
    cut = len(ids) - max_length
    if span is not None and span[0] < cut:
        raise DataError(f"{where}: keeping its images needs {len(ids) - span[0]} tokens but the prompt budget is "
                        f"{max_length}; image tokens are never truncated: raise data.max_length or shorten the text")
    return ids[cut:], mask[cut:]
