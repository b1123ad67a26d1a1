"""Checks step-by-step arithmetic solutions and labels each step for process supervision.

A step is either an equation ``a <op> b = c`` (``op`` one of ``+ - * x × −``; surrounding words are
allowed, e.g. ``"Step 2: 71 * 3 = 213."``) or a final answer ``#### c``.

A step is **correct** when
  * its arithmetic is right (``a op b`` really equals ``c``), and
  * it follows from correct work: each operand is a number written in the prompt or the result of
    an earlier correct step; a final answer must equal the result of the last equation (and the
    expected answer when one is given).

Labels (the process-supervision record's ``labels``):
  *  1 — a correct step before any mistake;
  * -1 — the first incorrect step (an arithmetic slip, an operand that appears nowhere, a step that
    cannot be parsed, or a wrong final answer);
  *  0 — every step after the first mistake: it builds on a trajectory that has already gone wrong,
    so it is left ungraded (as in PRM800K, where grading stops at the first error). Trainers that
    want binary labels should mask 0s out rather than count them as good or bad.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

CORRECT, WRONG, AFTER_ERROR = 1, -1, 0

_NUM = r"-?\d+(?:\.\d+)?"
_EQUATION = re.compile(rf"({_NUM})\s*([-+*x×\u2212])\s*({_NUM})\s*=\s*({_NUM})")
_FINAL = re.compile(rf"####\s*({_NUM})")
_PROMPT_NUMBER = re.compile(r"\d+(?:\.\d+)?")


@dataclass(frozen=True)
class Equation:
    left: Fraction
    op: str
    right: Fraction
    result: Fraction

    def evaluate(self) -> Fraction:
        if self.op == "+":
            return self.left + self.right
        if self.op == "-":
            return self.left - self.right
        return self.left * self.right


def _number(text: str) -> Fraction:
    return Fraction(text)  # exact: "0.1 + 0.2 = 0.3" is right, no float rounding


def parse_equation(step: str) -> Equation | None:
    """The (first) equation in ``step``, or None when there is none."""
    match = _EQUATION.search(step.replace(",", ""))
    if match is None:
        return None
    op = {"x": "*", "×": "*", "\u2212": "-"}.get(match.group(2), match.group(2))
    return Equation(_number(match.group(1)), op, _number(match.group(3)), _number(match.group(4)))


def parse_final_answer(step: str) -> Fraction | None:
    """The number after ``####`` in ``step``, or None."""
    match = _FINAL.search(step.replace(",", ""))
    return _number(match.group(1)) if match else None


def prompt_numbers(prompt: str | list[dict]) -> set[Fraction]:
    """The numbers written in the problem (unsigned: "5 - 3" has the numbers 5 and 3).

    A chat-message prompt counts the numbers in every message's content.
    """
    if not isinstance(prompt, str):
        prompt = "\n".join(str(message.get("content", "")) for message in prompt)
    return {_number(text) for text in _PROMPT_NUMBER.findall(prompt.replace(",", ""))}


def check_step(
    step: str, known: set[Fraction], last_result: Fraction | None, answer: Fraction | None = None
) -> tuple[bool, Fraction | None]:
    """Whether ``step`` is correct given the ``known`` correct values, and the value it establishes."""
    final = parse_final_answer(step)
    if final is not None:
        correct = last_result is not None and final == last_result and (answer is None or final == answer)
        return correct, None
    equation = parse_equation(step)
    if equation is None:
        return False, None
    follows = equation.left in known and equation.right in known
    return follows and equation.evaluate() == equation.result, equation.result


def label_steps(prompt: str | list[dict], steps: list[str], answer: str | float | None = None) -> list[int]:
    """Labels for ``steps`` (1 / -1 / 0, see the module docstring); ``answer`` checks the final step."""
    known = prompt_numbers(prompt)
    expected = _number(str(answer)) if answer is not None else None
    labels: list[int] = []
    last_result: Fraction | None = None
    for step in steps:
        if labels and labels[-1] != CORRECT:
            labels.append(AFTER_ERROR)
            continue
        correct, value = check_step(step, known, last_result, expected)
        labels.append(CORRECT if correct else WRONG)
        if correct and value is not None:
            known.add(value)
            last_result = value
    return labels


def solution_is_correct(prompt: str | list[dict], steps: list[str], answer: str | float | None = None) -> bool:
    """True when every step is labelled correct."""
    return all(label == CORRECT for label in label_steps(prompt, steps, answer))
