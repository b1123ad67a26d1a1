"""Verifiable rule rewards: answer extraction, exact match, format and length rules.

Every reward here has the rule-reward signature
``f(prompts: list[str], completions: list[str], **fields) -> list[float]``; prompt-record fields
such as ``answer`` arrive as lists aligned with the batch.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Sequence

from alignloop.errors import AlignloopError

RewardFn = Callable[..., list[float]]

_HASH_ANSWER = re.compile(r"####[ \t]*([^\n]*)")
_BOXED = "\\boxed{"
# Thousands-separated numbers first so "1,000" is one number, then plain integers/decimals.
_NUMBER = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?|[-+]?\d*\.?\d+")
_TRAILING_PUNCT = ".,;:!?\"' "


def _boxed_contents(text: str) -> str | None:
    """Contents of the last ``\\boxed{...}``, following nested braces (``\\boxed{\\frac{1}{2}}``)."""
    start = text.rfind(_BOXED)
    if start < 0:
        return None
    depth, begin = 1, start + len(_BOXED)
    for pos in range(begin, len(text)):
        if text[pos] == "{":
            depth += 1
        elif text[pos] == "}":
            depth -= 1
            if depth == 0:
                return text[begin:pos].strip()
    return None  # unbalanced: fall through to the next strategy


def extract_answer(text: str) -> str | None:
    """The final answer in ``text``, or ``None`` when there is none.

    Tried in order, first hit wins:
      1. the rest of the line after the last ``####`` (GSM8K style), e.g. ``"#### 42"`` -> ``"42"``;
      2. the contents of the last ``\\boxed{...}`` (MATH style, nested braces allowed);
      3. the last number anywhere in the text (``"1,000"`` and ``"-3.5"`` count as one number).
    Trailing punctuation such as a full stop is removed from 1 and 2.
    """
    text = text.replace("\u2212", "-")  # typographic minus sign
    marked = _marked_answer(text)
    if marked is not None:
        return marked or None
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def _marked_answer(text: str) -> str | None:
    """The answer after the last ``####`` or inside the last ``\\boxed{}`` (trailing punctuation removed), ""
    for an empty box, or None when the text marks no answer."""
    hits = _HASH_ANSWER.findall(text)
    if hits and hits[-1].strip(_TRAILING_PUNCT):
        return hits[-1].strip(_TRAILING_PUNCT)
    boxed = _boxed_contents(text)
    return boxed.strip(_TRAILING_PUNCT) if boxed else None


def _word_answer(text: str) -> str | None:
    """A non-numeric answer: after ``####`` or in ``\\boxed{}`` when present, else the whole response (case,
    surrounding space and trailing punctuation aside) — "Red." matches "red", "The shape is red" does not."""
    marked = _marked_answer(text)
    if marked is not None:
        return marked or None
    return text.strip().strip(_TRAILING_PUNCT) or None


def parse_number(text: str) -> float | None:
    """``text`` as a number, accepting ``"1,000"``, ``"$5"``, ``"42."``, ``"+7"`` and ``"3/4"``; else None."""
    cleaned = text.strip().replace("\u2212", "-").lstrip("$").rstrip(".").replace(" ", "")
    if re.fullmatch(r"[-+]?\d{1,3}(,\d{3})+(\.\d+)?", cleaned):
        cleaned = cleaned.replace(",", "")
    fraction = re.fullmatch(r"([-+]?\d+)/(\d+)", cleaned)
    if fraction:
        denominator = int(fraction.group(2))
        return int(fraction.group(1)) / denominator if denominator else None
    try:
        value = float(cleaned)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def answers_match(predicted: str | None, gold: str) -> bool:
    """Numeric comparison when both sides parse as numbers, else case-insensitive text comparison."""
    if predicted is None:
        return False
    pred_num, gold_num = parse_number(predicted), parse_number(gold)
    if pred_num is not None and gold_num is not None:
        return math.isclose(pred_num, gold_num, rel_tol=1e-9, abs_tol=1e-9)
    return " ".join(predicted.split()).casefold() == " ".join(gold.split()).casefold()


def exact_match(
    prompts: Sequence[Any], completions: Sequence[str], answer: Sequence[Any] | None = None, **_: Any
) -> list[float]:
    """1.0 when the answer extracted from a completion equals the record's ``answer``, else 0.0.

    A numeric gold answer is compared with the last number of the completion (``extract_answer``); a word
    answer ("red") with the whole completion, case and trailing punctuation aside.

    The gold ``answer`` may itself be written as ``"#### 42"``; it goes through ``extract_answer``.
    """
    if answer is None:
        raise AlignloopError("exact_match needs an 'answer' field in every prompt record")
    if len(answer) != len(completions):
        raise AlignloopError(f"exact_match got {len(answer)} answers for {len(completions)} completions")
    rewards = []
    for index, (completion, gold) in enumerate(zip(completions, answer)):
        if gold is None:
            raise AlignloopError(f"exact_match: prompt record {index} has no 'answer'")
        gold_text = str(gold)
        gold_answer = extract_answer(gold_text) if "####" in gold_text or _BOXED in gold_text else gold_text
        gold_answer = gold_answer or gold_text
        predicted = extract_answer(completion) if parse_number(gold_answer) is not None else _word_answer(completion)
        rewards.append(1.0 if answers_match(predicted, gold_answer) else 0.0)
    return rewards


def format_reward(pattern: str, flags: int = re.DOTALL) -> RewardFn:
    """A reward of 1.0 when ``re.search(pattern, completion)`` matches, else 0.0 (anchor with ^/$ yourself)."""
    compiled = re.compile(pattern, flags)

    def reward(prompts: Sequence[Any], completions: Sequence[str], **_: Any) -> list[float]:
        return [1.0 if compiled.search(text) else 0.0 for text in completions]

    reward.__name__ = f"format_reward({pattern!r})"
    return reward


def length_penalty(
    max_chars: int | None = None,
    max_tokens: int | None = None,
    tokenizer: Any = None,
    scale: float = 1.0,
) -> RewardFn:
    """A penalty ``-scale * max(0, length - limit) / limit``: 0 within the limit, -scale at twice it.

    Give exactly one of ``max_chars`` (characters) or ``max_tokens``. Tokens are counted with
    ``tokenizer`` (a callable returning a list, or any object with ``encode``) when given, else as
    whitespace-separated words.
    """
    if (max_chars is None) == (max_tokens is None):
        raise AlignloopError("length_penalty needs exactly one of max_chars or max_tokens")
    limit = max_chars if max_chars is not None else max_tokens
    assert limit is not None
    if limit <= 0:
        raise AlignloopError(f"length_penalty: the limit must be positive, got {limit}")

    def measure(text: str) -> int:
        if max_chars is not None:
            return len(text)
        if tokenizer is None:
            return len(text.split())
        if hasattr(tokenizer, "encode"):  # a Hugging Face tokenizer
            return len(tokenizer.encode(text, add_special_tokens=False))
        return len(tokenizer(text))

    def reward(prompts: Sequence[Any], completions: Sequence[str], **_: Any) -> list[float]:
        return [-scale * max(0, measure(text) - limit) / limit for text in completions]

    unit = "chars" if max_chars is not None else "tokens"
    reward.__name__ = f"length_penalty(max_{unit}={limit})"
    return reward


# The answer format the bundled arithmetic prompts ask for: a last line "#### <number>".
ANSWER_FORMAT_PATTERN = r"####[ \t]*[-+]?[\d,]*\.?\d+[ \t.]*$"

# ``rule:<name>`` -> factory(**args) returning the reward function. ``{source: rule:<name>, args: {...}}``
# passes arguments; every rule but ``format`` (which needs ``pattern``) also works without any.
BUILTIN_RULES: dict[str, Callable[..., RewardFn]] = {
    "exact_match": lambda: exact_match,
    "answer_format": lambda pattern=ANSWER_FORMAT_PATTERN: format_reward(pattern),
    "boxed_format": lambda: format_reward(r"\\boxed\{"),
    "format": lambda pattern: format_reward(pattern),
    "length_penalty": lambda max_chars=None, max_tokens=None, scale=1.0: length_penalty(
        max_chars=max_chars if max_chars is not None or max_tokens is not None else 500,
        max_tokens=max_tokens,
        scale=scale,
    ),
}
