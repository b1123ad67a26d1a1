"""Chat-template tokenisation with loss masks.

The token ids are always those of the whole conversation rendered at once by the tokenizer's chat template
(exactly what ``apply_chat_template`` returns), never a concatenation of separately tokenised pieces: templates
are not append-only (default system prompts, trimmed or rewritten earlier turns), so pieces would not add up.
Assistant turns are found in the rendered text and mapped to tokens through the offset mapping.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from alignloop.errors import ModelError

logger = logging.getLogger("alignloop")

_PLACEHOLDER = "ALIGNLOOPMSG{:05d}X"


@dataclass
class TokenizedExample:
    """Token ids plus a 0/1 mask of the tokens that carry a training loss."""

    input_ids: list[int]
    loss_mask: list[int]
    images: tuple = ()  # the sample's images (``models.images.EncodedImage``), in token order

    def __len__(self) -> int:
        return len(self.input_ids)


def render_chat(tokenizer, messages: list[dict], *, add_generation_prompt: bool = False) -> str:
    """The chat template's text for ``messages``; a clear error when the tokenizer has no template."""
    if getattr(tokenizer, "chat_template", None) is None:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ModelError(f"{name}: the tokenizer has no chat template; set tokenizer.chat_template to a Jinja template")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _encode(tokenizer, text: str, *, offsets: bool = False):
    # Same call as apply_chat_template(tokenize=True): the template writes its own special tokens.
    if not offsets:
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    try:
        encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError as err:
        raise ModelError("loss masks need a fast tokenizer (one that returns offset mappings)") from err
    return encoding["input_ids"], encoding["offset_mapping"]


def _content_spans(tokenizer, messages: list[dict], rendered: str) -> list[tuple[int, int] | None]:
    """Character span of each message's content inside ``rendered`` (None if the template omits it).

    The conversation is rendered a second time with each content replaced by a unique placeholder; the text
    between placeholders is the template's own text, which is then matched in order against ``rendered``.
    """
    placeholders = [_PLACEHOLDER.format(i) for i in range(len(messages))]
    skeleton = render_chat(tokenizer, [{**m, "content": p} for m, p in zip(messages, placeholders)])
    hits = sorted(
        (position, index)
        for index, placeholder in enumerate(placeholders)
        for position in _find_all(skeleton, placeholder)
    )
    for index, message in enumerate(messages):
        count = sum(1 for _, i in hits if i == index)
        if message["role"] == "assistant" and count != 1:
            raise ModelError(
                f"the chat template renders assistant message {index} {count} times; cannot build its loss mask"
            )
    spans: list[tuple[int, int] | None] = [None] * len(messages)
    template_end = 0  # end of the previous placeholder in the skeleton
    cursor = 0  # matching position in the rendered text
    for n, (position, index) in enumerate(hits):
        literal = skeleton[template_end:position]
        if not rendered.startswith(literal, cursor):
            raise ModelError(f"the chat template renders message {index} in a way alignloop cannot align")
        start = cursor + len(literal)
        template_end = position + len(placeholders[index])
        following = skeleton[template_end : hits[n + 1][0]] if n + 1 < len(hits) else skeleton[template_end:]
        end = _content_end(rendered, start, following, messages[index]["content"], last=n + 1 == len(hits))
        spans[index] = (start, end)
        cursor = end
    if rendered[cursor:] != skeleton[template_end:]:
        raise ModelError("the chat template's rendering could not be aligned with its messages")
    return spans


def _find_all(text: str, needle: str) -> list[int]:
    found, start = [], text.find(needle)
    while start != -1:
        found.append(start)
        start = text.find(needle, start + 1)
    return found


def _content_end(rendered: str, start: int, following: str, content: str, *, last: bool) -> int:
    if last:
        return len(rendered) - len(following)
    if following:
        end = rendered.find(following, start)
        if end == -1:
            raise ModelError("the chat template's rendering could not be aligned with its messages")
        return end
    # Two contents with no template text between them: only a verbatim rendering can be split.
    if rendered.startswith(content, start):
        return start + len(content)
    raise ModelError("the chat template joins two messages with no text between them; cannot split them")


def _check_rendered_content(span_text: str, content: str, index: int) -> None:
    # Templates may trim whitespace or drop parts (e.g. earlier reasoning); anything else means misalignment.
    if span_text.strip() and (span_text.strip() in content or content.strip() in span_text):
        return
    raise ModelError(f"the chat template alters assistant message {index} beyond recognition; cannot mask it")


def _special_ids(tokenizer) -> set[int]:
    ids = set(tokenizer.all_special_ids)
    ids.update(i for i, token in getattr(tokenizer, "added_tokens_decoder", {}).items() if token.special)
    return ids


def tokenize_conversation(tokenizer, messages: list[dict], max_length: int | None = None) -> TokenizedExample:
    """Tokenise a whole conversation; the loss mask covers each assistant turn's content and end-of-turn token.

    The end-of-turn token is the first special token right after the content (``<|im_end|>`` in ChatML,
    ``<|eot_id|>`` in Llama 3, the eos in Zephyr), whitespace tokens in between included. Role headers, system
    and user turns are never trained. A token straddling a header and the content counts as content.
    ``max_length`` truncates from the right.
    """
    rendered = render_chat(tokenizer, messages)
    input_ids, offsets = _encode(tokenizer, rendered, offsets=True)
    spans = _content_spans(tokenizer, messages, rendered)
    special = _special_ids(tokenizer)
    loss_mask = [0] * len(input_ids)
    token = 0
    for index, (message, span) in enumerate(zip(messages, spans)):
        if message["role"] != "assistant" or span is None:
            continue
        start, end = span
        _check_rendered_content(rendered[start:end], message["content"], index)
        while token < len(input_ids) and offsets[token][1] <= start:
            token += 1
        while token < len(input_ids) and offsets[token][0] < end:
            loss_mask[token] = 1
            token += 1
        token = _mark_end_of_turn(input_ids, offsets, rendered, token, special, loss_mask)
    if max_length is not None:
        input_ids, loss_mask = input_ids[:max_length], loss_mask[:max_length]
    return TokenizedExample(list(input_ids), loss_mask)


def _mark_end_of_turn(input_ids, offsets, rendered: str, token: int, special: set[int], loss_mask: list[int]) -> int:
    """Mark whitespace tokens then the first special token after an assistant turn; return the next index."""
    look = token
    while look < len(input_ids) and input_ids[look] not in special:
        if rendered[offsets[look][0] : offsets[look][1]].strip():
            return token  # template text follows the content directly: no end-of-turn token to learn
        look += 1
    if look == len(input_ids):
        return token
    for i in range(token, look + 1):
        loss_mask[i] = 1
    return look + 1


def tokenize_prompt(tokenizer, prompt_messages: list[dict], max_length: int | None = None) -> list[int]:
    """Prompt tokens ending with the assistant header, as generation sees them; truncated from the left."""
    ids = _encode(tokenizer, render_chat(tokenizer, prompt_messages, add_generation_prompt=True))
    return ids[-max_length:] if max_length is not None and len(ids) > max_length else ids


_warned_boundary = False


def tokenize_prompt_completion(
    tokenizer,
    prompt_messages: list[dict],
    completion_messages: list[dict],
    max_length: int | None = None,
    max_prompt_length: int | None = None,
) -> tuple[list[int], list[int]]:
    """Split the tokens of prompt + completion (rendered at once) into ``(prompt_ids, completion_ids)``.

    ``prompt_ids`` equals the prompt rendered with ``add_generation_prompt=True``, and normally
    ``prompt_ids + completion_ids`` equals the whole conversation's tokens. If the tokenizer merges tokens
    across the boundary, the prompt tokens are kept (generation sees exactly them) and the completion text is
    tokenised on its own, with a warning. Truncation: the prompt is first cut from the left to
    ``max_prompt_length``; then the completion is cut from the right to fit ``max_length``; a prompt that alone
    exceeds ``max_length`` is cut from the left to ``max_length``, leaving an empty completion.
    """
    global _warned_boundary
    prompt_text = render_chat(tokenizer, prompt_messages, add_generation_prompt=True)
    full_text = render_chat(tokenizer, list(prompt_messages) + list(completion_messages))
    prompt_ids = _encode(tokenizer, prompt_text)
    full_ids = _encode(tokenizer, full_text)
    if full_ids[: len(prompt_ids)] == prompt_ids:
        completion_ids = full_ids[len(prompt_ids) :]
    elif full_text.startswith(prompt_text):
        if not _warned_boundary:
            logger.warning("tokens merge across the prompt/completion boundary; tokenising the completion alone")
            _warned_boundary = True
        completion_ids = _encode(tokenizer, full_text[len(prompt_text) :])
    else:
        raise ModelError(
            "the chat template renders the prompt differently with add_generation_prompt=True than inside the "
            "full conversation, so prompt and completion tokens cannot be split"
        )
    if max_prompt_length is not None and len(prompt_ids) > max_prompt_length:
        prompt_ids = prompt_ids[-max_prompt_length:]
    if max_length is not None:
        if len(prompt_ids) >= max_length:
            prompt_ids, completion_ids = prompt_ids[-max_length:], []
        else:
            completion_ids = completion_ids[: max_length - len(prompt_ids)]
    return list(prompt_ids), list(completion_ids)


def prompt_completion_example(prompt_ids: list[int], completion_ids: list[int]) -> TokenizedExample:
    """A training example that puts the loss on the completion only."""
    return TokenizedExample(list(prompt_ids) + list(completion_ids), [0] * len(prompt_ids) + [1] * len(completion_ids))
