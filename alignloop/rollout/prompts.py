"""Turning the prompts a caller passes (text, chat messages, token ids) into token ids."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from alignloop.errors import DataError, ModelError
from alignloop.rollout.base import Prompt, TokenizedPrompt


def _is_token_ids(prompt: Any) -> bool:
    if isinstance(prompt, torch.Tensor):
        return prompt.dim() == 1 and not prompt.is_floating_point()
    return isinstance(prompt, (list, tuple)) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)


def _is_messages(prompt: Any) -> bool:
    return isinstance(prompt, (list, tuple)) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in prompt
    )


def _render_chat(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError("the tokenizer has no chat template: pass prompts as plain strings or token ids")
    return tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)


def encode_prompts(tokenizer: Any, prompts: Sequence[Prompt]) -> tuple[list[list[int]], list[Any]]:
    """Token ids per prompt, and the prompt as ``Rollout.prompts`` reports it.

    A string becomes one user message rendered with the chat template (with the generation
    prompt); without a chat template it is tokenised as-is, special tokens included. Message lists
    are rendered with the chat template. Token ids are used verbatim and decoded for display.
    """
    if isinstance(prompts, (str, dict)):
        raise DataError("prompts: expected a list of prompts, got a single prompt (wrap it in a list)")
    has_template = bool(getattr(tokenizer, "chat_template", None))
    token_lists: list[list[int] | None] = []
    shown: list[Any] = []
    texts_to_tokenize: dict[int, str] = {}
    problems: list[str] = []
    for i, prompt in enumerate(prompts):
        token_lists.append(None)
        shown.append(prompt)
        if isinstance(prompt, TokenizedPrompt):
            token_lists[i] = list(prompt.token_ids)
            shown[i] = prompt.shown if prompt.shown is not None else tokenizer.decode(token_lists[i])
        elif isinstance(prompt, str):
            if has_template:
                texts_to_tokenize[i] = _render_chat(tokenizer, [{"role": "user", "content": prompt}])
            else:
                token_lists[i] = tokenizer(prompt)["input_ids"]
        elif _is_token_ids(prompt):
            token_lists[i] = [int(t) for t in prompt]
            shown[i] = tokenizer.decode(token_lists[i])
            if not token_lists[i]:
                problems.append(f"prompts[{i}]: empty after tokenisation")
        elif _is_messages(prompt) and len(prompt) > 0:
            texts_to_tokenize[i] = _render_chat(tokenizer, prompt)
        else:
            problems.append(f"prompts[{i}]: expected a string, a list of {{role, content}} messages or token ids")
    if problems:
        raise DataError(problems)
    if texts_to_tokenize:
        # The rendered template already contains its special tokens; one batched call for speed.
        encoded = tokenizer(list(texts_to_tokenize.values()), add_special_tokens=False)["input_ids"]
        for i, ids in zip(texts_to_tokenize, encoded):
            token_lists[i] = list(ids)
    empty = [f"prompts[{i}]: empty after tokenisation" for i, ids in enumerate(token_lists) if not ids]
    if empty:
        raise DataError(empty)
    return token_lists, shown  # type: ignore[return-value]
