"""A calculator tool and the arithmetic environment built on it (the bundled ``arith_*.jsonl`` prompts).

``safe_eval`` evaluates ``+ - * /`` (also ``× ÷ −``), unary signs and parentheses over numbers by walking the
Python AST of the expression with exact fractions; anything else (names, calls, attributes, powers, strings...)
is refused with ``CalculatorError``. There is no ``eval()``.
"""

from __future__ import annotations

import ast
import operator
import re
from fractions import Fraction
from typing import Any

from alignloop.envs.base import Message, format_tool_call, parse_tool_call, tool_system_prompt
from alignloop.rewards.rules import exact_match

__all__ = ["CalculatorEnv", "CalculatorError", "format_number", "loose_expression", "safe_eval"]

MAX_EXPRESSION_CHARS = 200
MAX_MAGNITUDE = 10**15
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
# worked exchanges shown as earlier chat turns before the prompt (question, expression, value): without them the
# bundled 135M model never wrote a tool call in 48 samples; with these two it called the tool 0.8 times per episode
DEMONSTRATIONS = (
    ("What is 12 * 3 + 4? End your answer with '#### <number>'.", "12 * 3 + 4", "40"),
    ("What is (7 + 8) * 6? End your answer with '#### <number>'.", "(7 + 8) * 6", "90"),
)


# a call that names the calculator but is not JSON, most often because the expression lost a quote:
# {"name": "calculator", "arguments": {"expression": 2 * 9}}  (a third of the bundled model's calls at T = 0.7)
_NAMES_CALCULATOR = re.compile(r'"name"\s*:\s*"calculator"')
_LOOSE_EXPRESSION = re.compile(r'"expression"\s*:\s*"?([^"{}]*?)"?\s*\}+\s*$', re.DOTALL)


def loose_expression(raw: str) -> str | None:
    """The expression of a calculator call that is not valid JSON only because of its quotes or closing braces
    (``{"expression": 2 * 9}``, ``{"expression": 6 + 2"}}``, ``... "9 * 7"}}}``); None for anything else."""
    if not _NAMES_CALCULATOR.search(raw):
        return None
    match = _LOOSE_EXPRESSION.search(raw)
    return match.group(1).strip() if match and match.group(1).strip() else None


class CalculatorError(ValueError):
    """The expression is not plain arithmetic, or it cannot be computed (division by zero, too large)."""


def _value(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return Fraction(str(node.value))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _value(node.left), _value(node.right)
        if isinstance(node.op, ast.Div) and right == 0:
            raise CalculatorError("division by zero")
        result = _BINARY[type(node.op)](left, right)
    elif isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        result = _UNARY[type(node.op)](_value(node.operand))
    else:
        raise CalculatorError(f"not allowed: {type(node).__name__} (only numbers, + - * / and parentheses)")
    if abs(result) > MAX_MAGNITUDE:
        raise CalculatorError("the number is too large")
    return result


def safe_eval(expression: str) -> Fraction:
    """The exact value of an arithmetic expression; ``CalculatorError`` for anything else."""
    if not isinstance(expression, str) or not expression.strip():
        raise CalculatorError("empty expression")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    text = expression.replace("×", "*").replace("÷", "/").replace("\u2212", "-").replace("^", "**")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise CalculatorError(f"cannot parse {expression!r}") from exc
    return _value(tree.body)


def format_number(value: Fraction) -> str:
    """An integer as is; otherwise a decimal with at most 6 places (trailing zeros removed)."""
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.6f}".rstrip("0").rstrip(".")


class CalculatorEnv:
    """Arithmetic with a calculator tool.

    Each assistant turn either calls ``calculator`` (``{"expression": "..."}``) and gets the value back as a
    ``tool`` message (or ``error: ...``; counted in ``tool_errors``), or answers without a tool call: the episode
    ends and the step's reward is the ``exact_match`` rule on that final answer against the record's ``answer``
    (0 when the record has none). The sampler ends an episode after ``max_turns`` assistant turns.

    ``lenient`` (default) also runs a call whose only fault is JSON quoting or braces around the expression
    (``loose_expression``) and a number given as a JSON number; ``lenient=False`` answers those with an error.
    """

    name = "calculator"
    description = ('It is a calculator: "expression" is arithmetic with + - * / and parentheses, '
                   'e.g. "(13 + 16) * 5".')

    def __init__(self, demonstrations: int = len(DEMONSTRATIONS), lenient: bool = True) -> None:
        self.demonstrations = DEMONSTRATIONS[:demonstrations]
        self.lenient = lenient
        self.record: dict[str, Any] = {}
        self.tool_calls = 0
        self.tool_errors = 0

    def system_prompt(self) -> str:
        example = format_tool_call(self.name, {"expression": "(13 + 16) * 5"})
        return tool_system_prompt(self.description, example)

    def demonstration_messages(self) -> list[Message]:
        out: list[Message] = []
        for question, expression, value in self.demonstrations:
            out += [{"role": "user", "content": question},
                    {"role": "assistant", "content": format_tool_call(self.name, {"expression": expression})},
                    {"role": "tool", "content": value}, {"role": "assistant", "content": f"#### {value}"}]
        return out

    def reset(self, record: dict) -> list[Message]:
        """A system message describing the tool, the worked demonstrations, then the record's prompt."""
        self.record, self.tool_calls, self.tool_errors = record, 0, 0
        prompt = record["prompt"]
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        system = self.system_prompt()
        if messages and messages[0].get("role") == "system":
            system, messages = messages[0]["content"] + "\n" + system, messages[1:]
        return [{"role": "system", "content": system}] + self.demonstration_messages() + messages

    def step(self, action_text: str) -> tuple[list[Message], float, bool]:
        call = parse_tool_call(action_text)
        if call is None:  # the final answer
            answer = self.record.get("answer")
            reward = exact_match([None], [action_text], answer=[answer])[0] if answer is not None else 0.0
            return [], reward, True
        self.tool_calls += 1
        return [{"role": "tool", "content": self._run(call)}], 0.0, False

    def _run(self, call) -> str:
        if self.lenient:
            call = self._repaired(call)
        if call.error is None and call.name != self.name:
            call = type(call)(call.name, error=f"unknown tool {call.name!r} (the tool is {self.name!r})")
        if call.error is None and not isinstance(call.arguments.get("expression"), str):
            call = type(call)(call.name, error='the calculator needs {"expression": "<arithmetic>"}')
        if call.error is not None:
            self.tool_errors += 1
            return f"error: {call.error}"
        try:
            return format_number(safe_eval(call.arguments["expression"]))
        except CalculatorError as exc:
            self.tool_errors += 1
            return f"error: {exc}"

    def _repaired(self, call):
        expression = call.arguments.get("expression")
        if call.error is None and isinstance(expression, (int, float)) and not isinstance(expression, bool):
            return type(call)(call.name, {"expression": str(expression)}, raw=call.raw)
        loose = loose_expression(call.raw) if call.error is not None else None
        return call if loose is None else type(call)(self.name, {"expression": loose}, raw=call.raw)
