"""Rule rewards (answer extraction, exact match, format, length), the arithmetic checker and data."""

from __future__ import annotations

import importlib.util
import json

import pytest

from alignloop.errors import AlignloopError
from alignloop.rewards.arith_checker import (
    AFTER_ERROR,
    CORRECT,
    WRONG,
    label_steps,
    parse_equation,
    solution_is_correct,
)
from alignloop.rewards.rules import (
    ANSWER_FORMAT_PATTERN,
    BUILTIN_RULES,
    exact_match,
    extract_answer,
    format_reward,
    length_penalty,
    parse_number,
)
from tests.conftest import ROOT

DATA = ROOT / "alignloop" / "resources" / "data"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("23 + 48 is 71.\n#### 71", "71"),
        ("#### 5\nmore work\n#### 1,000.", "1,000"),  # the last #### wins; the full stop is dropped
        ("so \\boxed{42}.", "42"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),  # nested braces
        ("first 3 then 7 and finally -2.5 apples", "-2.5"),  # fallback: the last number
        ("that makes 1,234 in total", "1,234"),
        ("the result is \u22124", "-4"),  # typographic minus
        ("#### \n the answer is 9", "9"),  # an empty #### falls through to the last number
        ("no digits here", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    "text, value",
    [("42", 42.0), ("42.0", 42.0), ("1,000", 1000.0), ("$5", 5.0), ("42.", 42.0), ("3/4", 0.75), ("-7", -7.0), ("x", None), ("1/0", None)],
)
def test_parse_number(text, value):
    assert parse_number(text) == value


def test_exact_match_compares_numbers_and_text():
    completions = ["#### 42.0", "The answer is 1,000", "\\boxed{7}", "#### 41", "#### Paris", "nothing"]
    answers = ["42", "1000", "7", "42", "paris", "3"]
    assert exact_match([""] * 6, completions, answer=answers) == [1.0, 1.0, 1.0, 0.0, 1.0, 0.0]
    # a gold answer written GSM8K-style is extracted too
    assert exact_match(["q"], ["so 18"], answer=["Janet sells 18 eggs.\n#### 18"]) == [1.0]


def test_exact_match_errors_are_clear():
    with pytest.raises(AlignloopError, match="exact_match needs an 'answer' field in every prompt record"):
        exact_match(["q"], ["1"])
    with pytest.raises(AlignloopError, match="exact_match got 2 answers for 1 completions"):
        exact_match(["q"], ["1"], answer=["1", "2"])
    with pytest.raises(AlignloopError, match="exact_match: prompt record 0 has no 'answer'"):
        exact_match(["q"], ["1"], answer=[None])


def test_format_reward_and_answer_format():
    reward = format_reward(r"^Answer:")
    assert reward(["p", "p"], ["Answer: 3", "I think Answer: 3"], extra=[1, 2]) == [1.0, 0.0]
    answer_format = format_reward(ANSWER_FORMAT_PATTERN)
    texts = ["work\n#### 12", "#### 1,200.", "#### 12 and more text", "12"]
    assert answer_format([""] * 4, texts) == [1.0, 1.0, 0.0, 0.0]


def test_length_penalty():
    # limit 10 chars: 5 chars -> 0; 15 chars -> -(15-10)/10 = -0.5; 30 chars -> -(30-10)/10 = -2.0
    penalty = length_penalty(max_chars=10)
    assert penalty(["p"] * 3, ["a" * 5, "a" * 15, "a" * 30]) == [0.0, -0.5, -2.0]
    # whitespace tokens, limit 2, scale 0.5: "a b c d" has 4 words -> -0.5 * (4-2)/2 = -0.5
    assert length_penalty(max_tokens=2, scale=0.5)(["p"], ["a b c d"]) == [-0.5]
    # a tokenizer callable: one token per character, limit 4: "abcdef" -> -(6-4)/4 = -0.5
    assert length_penalty(max_tokens=4, tokenizer=list)(["p"], ["abcdef"]) == [-0.5]
    with pytest.raises(AlignloopError, match="exactly one of max_chars or max_tokens"):
        length_penalty()
    with pytest.raises(AlignloopError, match="the limit must be positive, got 0"):
        length_penalty(max_chars=0)


def test_builtin_rules_registry():
    assert {"exact_match", "answer_format", "boxed_format", "format", "length_penalty"} <= set(BUILTIN_RULES)
    assert BUILTIN_RULES["exact_match"]()(["q"], ["#### 3"], answer=["3"]) == [1.0]
    assert BUILTIN_RULES["length_penalty"](max_chars=4)(["q"], ["abcdef"]) == [-0.5]  # -(6-4)/4
    assert BUILTIN_RULES["length_penalty"]()(["q"], ["short"]) == [0.0]
    assert BUILTIN_RULES["format"](pattern="^ok")(["q", "q"], ["ok then", "not ok"]) == [1.0, 0.0]


# ---- arithmetic checker ----

PROMPT = "Start with 23. Add 48, multiply by 3, then subtract 17."


def test_parse_equation_variants():
    eq = parse_equation("Step 2: 71 × 3 = 213.")
    assert (eq.left, eq.op, eq.right, eq.result) == (71, "*", 3, 213)
    assert parse_equation("1,000 \u2212 1 = 999").op == "-"
    assert parse_equation("no equation here") is None


def test_label_steps_correct_solution():
    steps = ["23 + 48 = 71", "71 * 3 = 213", "213 - 17 = 196", "#### 196"]
    assert label_steps(PROMPT, steps, answer="196") == [CORRECT] * 4
    assert solution_is_correct(PROMPT, steps)


def test_label_steps_arithmetic_slip_then_after_error():
    # 71 * 3 is 213, not 212; the later steps are ungraded (0) even though 212 - 17 = 195 is right
    steps = ["23 + 48 = 71", "71 * 3 = 212", "212 - 17 = 195", "#### 195"]
    assert label_steps(PROMPT, steps) == [CORRECT, WRONG, AFTER_ERROR, AFTER_ERROR]


def test_label_steps_operand_must_follow_from_correct_work():
    # 72 appears neither in the prompt nor as an earlier result: right arithmetic, wrong step
    steps = ["23 + 48 = 71", "72 * 3 = 216", "216 - 17 = 199", "#### 199"]
    assert label_steps(PROMPT, steps) == [CORRECT, WRONG, AFTER_ERROR, AFTER_ERROR]


def test_label_steps_final_answer_and_unparsable_steps():
    assert label_steps(PROMPT, ["23 + 48 = 71", "#### 70"]) == [CORRECT, WRONG]
    # the final answer must be the last result, not any earlier one
    assert label_steps(PROMPT, ["23 + 48 = 71", "71 * 3 = 213", "#### 71"]) == [CORRECT, CORRECT, WRONG]
    # right work but a different expected answer
    assert label_steps(PROMPT, ["23 + 48 = 71", "#### 71"], answer=196) == [CORRECT, WRONG]
    assert label_steps(PROMPT, ["I am not sure", "23 + 48 = 71"]) == [WRONG, AFTER_ERROR]
    assert label_steps("What is 0.1 + 0.2?", ["0.1 + 0.2 = 0.3"]) == [CORRECT]  # exact, no float rounding
    messages = [{"role": "user", "content": PROMPT}]  # a loaded prompt record is chat messages
    assert label_steps(messages, ["23 + 48 = 71", "#### 71"]) == [CORRECT, CORRECT]


# ---- generated data ----


def _read(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines()]


def test_arith_prompt_files():
    train, evaluation = _read("arith_train.jsonl"), _read("arith_eval.jsonl")
    assert len(train) == 500 and len(evaluation) == 100
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in evaluation}
    for record in train + evaluation:
        assert set(record) == {"prompt", "answer"}
        assert record["prompt"].endswith("End your answer with '#### <number>'.")
        expression = record["prompt"].removeprefix("What is ").split("?")[0]
        assert eval(expression, {"__builtins__": {}}) == int(record["answer"])  # independent check by Python
    two_step = sum(r["prompt"].count(" + ") + r["prompt"].count(" - ") + r["prompt"].count(" * ") == 2 for r in train)
    assert 0.25 < two_step / len(train) < 0.45  # PROBLEM_MIX asks for 35%


def test_arith_steps_files_match_the_checker():
    records = _read("arith_steps_train.jsonl") + _read("arith_steps_eval.jsonl")
    assert len(records) == 500
    with_error = 0
    for record in records:
        assert set(record) == {"prompt", "steps", "labels"}
        assert record["labels"] == label_steps(record["prompt"], record["steps"])
        labels = record["labels"]
        if WRONG in labels:
            with_error += 1
            first = labels.index(WRONG)
            assert labels[:first] == [CORRECT] * first and labels[first + 1 :] == [AFTER_ERROR] * (len(labels) - first - 1)
    assert 0.35 < with_error / len(records) < 0.65


def test_make_arith_data_is_deterministic(tmp_path):
    spec = importlib.util.spec_from_file_location("make_arith_data", ROOT / "scripts" / "make_arith_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--check"]) == 0  # the committed files are what the script writes
    assert module.main(["--out", str(tmp_path), "--seed", "7"]) == 0
    first = (tmp_path / "arith_steps_eval.jsonl").read_text()
    assert module.main(["--out", str(tmp_path), "--seed", "7", "--check"]) == 0
    assert first != (DATA / "arith_steps_eval.jsonl").read_text()  # another seed, other data


@pytest.mark.parametrize("completion,gold,expected", [
    ("Red.", "red", 1.0), (" orange\n", "orange", 1.0), ("#### green", "green", 1.0), ("\\boxed{Blue}", "blue", 1.0),
    ("The shape is red", "red", 0.0), ("blue", "red", 0.0), ("", "red", 0.0), ("3", "3", 1.0),
    ("There are 3 shapes.", "3", 1.0),
])
def test_exact_match_word_answers_compare_the_whole_response(completion, gold, expected):
    assert exact_match(["q"], [completion], answer=[gold]) == [expected]
