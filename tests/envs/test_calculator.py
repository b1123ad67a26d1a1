"""The calculator tool: exact arithmetic over + - * / and parentheses, everything else refused; the environment's
turns (tool result, tool errors, the final answer's exact-match reward)."""

from __future__ import annotations

from fractions import Fraction

import pytest

from alignloop.envs import CalculatorEnv, CalculatorError, format_tool_call, parse_tool_call, safe_eval
from alignloop.envs.calculator import format_number, loose_expression


@pytest.mark.parametrize("expression, value", [
    ("(13 + 16) * 5", 145), ("49 + 45 - 6", 88), ("-3 * -(2 + 1)", 9), ("7 / 2", Fraction(7, 2)),
    ("1.5 * 4", 6), ("6 × 7 − 2 ÷ 2", 41), ("((2))", 2),
])
def test_safe_eval_computes_exactly(expression, value):
    assert safe_eval(expression) == value


@pytest.mark.parametrize("expression, message", [
    ("__import__('os').system('echo hi')", "not allowed: Call"),
    ("x + 1", "not allowed: Name"),
    ("2 ** 10", "not allowed: BinOp"),
    ("2 ^ 10", "not allowed: BinOp"),
    ("(1).__class__", "not allowed: Attribute"),
    ("'a' * 3", "not allowed: Constant"),
    ("True + 1", "not allowed: Constant"),
    ("[1, 2]", "not allowed: List"),
    ("lambda: 1", "not allowed: Lambda"),
    ("1 / 0", "division by zero"),
    ("1 +", "cannot parse"),
    ("", "empty expression"),
    ("9" * 201, "longer than 200 characters"),
    ("99999999 * 99999999 * 99999999", "too large"),
    ("7 % 2", "not allowed: BinOp"),
])
def test_safe_eval_refuses_everything_but_arithmetic(expression, message):
    with pytest.raises(CalculatorError, match=message):
        safe_eval(expression)


def test_numbers_are_written_as_integers_or_short_decimals():
    assert format_number(Fraction(145)) == "145"
    assert format_number(Fraction(7, 2)) == "3.5"
    assert format_number(Fraction(1, 3)) == "0.333333"


def test_tool_call_format_round_trips_and_reports_bad_calls():
    text = "Let me compute. " + format_tool_call("calculator", {"expression": "2 + 2"})
    assert text.endswith('<tool_call>{"name": "calculator", "arguments": {"expression": "2 + 2"}}</tool_call>')
    call = parse_tool_call(text)
    assert call.name == "calculator" and call.arguments == {"expression": "2 + 2"} and call.error is None
    assert parse_tool_call("no call here #### 4") is None
    assert parse_tool_call("<tool_call>{oops</tool_call>").error.startswith("the tool call is not JSON")
    assert parse_tool_call('<tool_call>{"name": "c", "arguments": "{\\"a\\": 1}"}</tool_call>').arguments == {"a": 1}


def test_calculator_episode_returns_tool_results_then_the_exact_match_reward():
    env = CalculatorEnv()
    messages = env.reset({"prompt": "What is (13 + 16) * 5?", "answer": "145"})
    assert [m["role"] for m in messages] == ["system"] + ["user", "assistant", "tool", "assistant"] * 2 + ["user"]
    assert "<tool_call>" in messages[0]["content"] and messages[-1]["content"] == "What is (13 + 16) * 5?"
    assert messages[2]["content"] == format_tool_call("calculator", {"expression": "12 * 3 + 4"})
    assert [m["role"] for m in CalculatorEnv(demonstrations=0).reset({"prompt": "q"})] == ["system", "user"]
    assert env.step(format_tool_call("calculator", {"expression": "(13 + 16) * 5"})) == (
        [{"role": "tool", "content": "145"}], 0.0, False)
    assert env.step(format_tool_call("calculator", {"expression": "open('x')"}))[0][0]["content"].startswith(
        "error: not allowed: Call")
    assert env.step(format_tool_call("search", {"q": "x"}))[0][0]["content"] == (
        "error: unknown tool 'search' (the tool is 'calculator')")
    assert env.step("<tool_call>{bad json</tool_call>")[0][0]["content"].startswith("error: the tool call is not JSON")
    assert env.tool_calls == 4 and env.tool_errors == 3
    assert env.step("The answer is #### 145") == ([], 1.0, True)
    env.reset({"prompt": "What is 2 + 2?", "answer": "4"})
    assert env.step("#### 5") == ([], 0.0, True) and env.tool_calls == 0


def test_loose_expression_reads_calculator_calls_that_only_lost_their_quotes_or_braces():
    call = '{{"name": "calculator", "arguments": {{"expression": {}}}'
    assert loose_expression(call.format("2 * 9}")) == "2 * 9"          # no quotes
    assert loose_expression(call.format("6 + 2\"}")) == "6 + 2"        # the opening quote lost
    assert loose_expression(call.format("(16 + 11) * 4}}")) == "(16 + 11) * 4"  # an extra brace
    assert loose_expression(call.format("\"9 * 7\"}}")) == "9 * 7"    # valid but for the extra brace
    assert loose_expression('{"name": "search", "arguments": {"expression": 2 * 9}}') is None  # another tool
    assert loose_expression('{"name": "calculator", "arguments": {"operation": "add", "number": 9}}') is None
    assert loose_expression('{"name": "calculator", "arguments": {"expression": }}') is None


def test_lenient_calculator_runs_near_json_calls_and_strict_one_refuses_them():
    unquoted = '<tool_call>{"name": "calculator", "arguments": {"expression": 2 * 9}}</tool_call>'
    number = format_tool_call("calculator", {"expression": 18})
    lenient = CalculatorEnv()
    lenient.reset({"prompt": "What is 2 * 9?", "answer": "18"})
    assert lenient.step(unquoted) == ([{"role": "tool", "content": "18"}], 0.0, False)
    assert lenient.step(number) == ([{"role": "tool", "content": "18"}], 0.0, False)
    assert lenient.tool_calls == 2 and lenient.tool_errors == 0
    strict = CalculatorEnv(lenient=False)
    strict.reset({"prompt": "What is 2 * 9?", "answer": "18"})
    assert strict.step(unquoted)[0][0]["content"].startswith("error: the tool call is not JSON")
    assert strict.step(number)[0][0]["content"] == 'error: the calculator needs {"expression": "<arithmetic>"}'
    assert strict.tool_calls == 2 and strict.tool_errors == 2
