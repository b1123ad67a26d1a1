"""Malformed reward specs and misbehaving reward functions: one exact line, naming the function and record."""

from __future__ import annotations

import pytest

from alignloop.errors import AlignloopError
from alignloop.rewards.build import build_reward

RULES = '''
def wrong_length(prompts, completions, **kw):
    return [1.0]
def nan_reward(prompts, completions, **kw):
    return [float("nan")] * len(completions)
def not_a_list(prompts, completions, **kw):
    return "good"
def raises_on_b(prompts, completions, **kw):
    return [1.0 if c != "b" else {}["score"] for c in completions]
def strings(prompts, completions, **kw):
    return ["high"] * len(completions)
value = 3
'''

SPEC_CASES = [
    ("unknown_rule", "rule:nope",
     "reward 'rule:nope': unknown rule; known rules: answer_format, boxed_format, exact_match, format, length_penalty"),
    ("missing_file", "{d}/missing.py:f", "reward '{d}/missing.py:f': file '{d}/missing.py' not found"),
    ("missing_function", "{d}/rules.py:nope", "reward '{d}/rules.py:nope': '{d}/rules.py' has no function 'nope'"),
    ("syntax_error", "{d}/broken.py:f",
     "reward '{d}/broken.py:f': importing '{d}/broken.py' failed: SyntaxError: invalid syntax (broken.py, line 1)"),
    ("not_callable", "{d}/rules.py:value", "reward '{d}/rules.py:value': int object is not callable"),
    ("unknown_module", "no_such_module_xyz:f", "reward 'no_such_module_xyz:f': module 'no_such_module_xyz' not found"),
    ("folder_without_rm", "{d}", "{d}: not a reward-model directory (no model/ with alignloop_head.json or ensemble.json)"),
    ("nonexistent_path", "{d}/nonexistent",
     "reward '{d}/nonexistent': not a reward-model directory, a 'module:function' or a 'rule:<name>' (no such "
     "directory)"),
    ("a_number", 42, "reward: expected a string, a list of {{source, weight}} or a reward source, got 42"),
    ("weight_not_number", [{"source": "rule:exact_match", "weight": "x"}],
     "reward[0].weight: expected a finite number, got 'x'"),
    ("weight_misspelt", [{"source": "rule:exact_match", "wieght": 1}],
     "reward[0]: unknown keys ['wieght']; allowed: source, weight, args"),
    ("constrained_without_constraints", {"objective": "rule:exact_match"},
     "reward: a constrained reward needs 'objective' and a non-empty 'constraints' list"),
    ("empty_list", [], "a weighted reward needs at least one source"),
]


@pytest.fixture
def rules_dir(tmp_path):
    (tmp_path / "rules.py").write_text(RULES)
    (tmp_path / "broken.py").write_text("def f(:\n")
    return tmp_path


@pytest.mark.parametrize("spec,expected", [c[1:] for c in SPEC_CASES], ids=[c[0] for c in SPEC_CASES])
def test_malformed_reward_spec_is_one_exact_line(rules_dir, spec, expected):
    spec = spec.format(d=rules_dir) if isinstance(spec, str) else spec
    with pytest.raises(AlignloopError) as err:
        build_reward(spec)
    assert str(err.value) == expected.format(d=rules_dir)


FUNCTION_CASES = [
    ("wrong_length", "reward function '{d}/rules.py:wrong_length' returned (1,) values for 2 completions; expected one "
     "per completion"),
    ("nan_reward", "reward function '{d}/rules.py:nan_reward' returned nan at index 0; rewards must be finite"),
    ("not_a_list", "reward function '{d}/rules.py:not_a_list' must return a list of floats, got str"),
    ("strings", "reward function '{d}/rules.py:strings' returned 'high' at index 0; expected a number"),
    ("raises_on_b", "reward rules.py:raises_on_b failed on record 2 of 2 in this batch (prompt 'p2'): KeyError: "
     "'score'"),
]


@pytest.mark.parametrize("name,expected", FUNCTION_CASES, ids=[c[0] for c in FUNCTION_CASES])
def test_misbehaving_reward_function_is_one_exact_line(rules_dir, name, expected):
    reward = build_reward(f"{rules_dir}/rules.py:{name}")
    with pytest.raises(AlignloopError) as err:
        reward.score(["p1", "p2"], ["a", "b"])
    assert str(err.value) == expected.format(d=rules_dir)
