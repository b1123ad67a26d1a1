"""The reward protocol: RuleReward validation, loading 'module:function', WeightedSum and build_reward."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch

from alignloop.errors import AlignloopError, ConfigError
from alignloop.rewards.base import (
    RewardSource,
    RuleReward,
    WeightedSum,
    has_uncertainty,
    load_reward_function,
)
from alignloop.rewards.build import build_reward


def count_chars(prompts, completions, **_):
    return [float(len(text)) for text in completions]


class FixedEnsemble:
    """A source with an uncertainty, as an ensemble would have."""

    name = "ensemble"

    def score(self, prompts, completions, **fields):
        return torch.ones(len(completions))

    def uncertainty(self, prompts, completions, **fields):
        return torch.full((len(completions),), 0.5)


def test_rule_reward_wraps_a_function_and_passes_fields():
    seen = {}

    def needs_answer(prompts, completions, answer, **_):
        seen["answer"] = answer
        return [1, True, 0.5]

    reward = RuleReward(needs_answer)
    assert isinstance(reward, RewardSource) and reward.name == "needs_answer"
    out = reward.score(["p"] * 3, ["a", "b", "c"], answer=["1", "2", "3"])
    assert out.dtype == torch.float32 and out.tolist() == [1.0, 1.0, 0.5]
    assert seen["answer"] == ["1", "2", "3"]


@pytest.mark.parametrize(
    "returned, message",
    [
        ([1.0], "reward function 'bad' returned (1,) values for 2 completions; expected one per completion"),
        (5.0, "reward function 'bad' must return a list of floats, got float"),
        ("11", "reward function 'bad' must return a list of floats, got str"),
        ([1.0, None], "reward function 'bad' returned None at index 1; expected a number"),
        ([1.0, "x"], "reward function 'bad' returned 'x' at index 1; expected a number"),
        ([1.0, [2.0]], "reward function 'bad' returned list at index 1; expected a number"),
        ([1.0, float("nan")], "reward function 'bad' returned nan at index 1; rewards must be finite"),
    ],
)
def test_rule_reward_rejects_bad_returns(returned, message):
    reward = RuleReward(lambda prompts, completions, **_: returned, name="bad")
    with pytest.raises(AlignloopError) as err:
        reward.score(["p", "p"], ["a", "b"])
    assert str(err.value) == message


def test_rule_reward_passes_only_the_fields_a_function_names():
    def plain(prompts, completions):
        return [0.0] * len(completions)

    def wants_answer(prompts, completions, answer):
        return [float(a == c) for a, c in zip(answer, completions)]

    assert RuleReward(plain).score(["p"], ["a"], answer=["a"], difficulty=[3]).tolist() == [0.0]
    assert RuleReward(wants_answer).score(["p"], ["a"], answer=["a"], difficulty=[3]).tolist() == [1.0]


def test_rule_reward_accepts_tensors_and_arrays():
    import numpy as np

    assert RuleReward(lambda p, c, **_: np.array([1, 2])).score(["p"] * 2, ["a", "b"]).tolist() == [1.0, 2.0]
    assert RuleReward(lambda p, c, **_: torch.tensor([3.0, 4.0])).score(["p"] * 2, ["a", "b"]).tolist() == [3.0, 4.0]


def test_load_reward_function_from_module_and_file(tmp_path, monkeypatch):
    fn = load_reward_function("alignloop.rewards.rules:exact_match")
    assert fn.__name__ == "exact_match"
    path = tmp_path / "my_rewards.py"
    path.write_text("def shout(prompts, completions, **_):\n    return [float(c.isupper()) for c in completions]\nVALUE = 3\n")
    from_file = load_reward_function(f"{path}:shout")
    assert from_file(["p", "p"], ["HI", "hi"]) == [1.0, 0.0]
    # a module in the working directory, as with a console script that does not put it on sys.path
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "my_rewards", raising=False)
    assert load_reward_function("my_rewards:shout")(["p"], ["OK"]) == [1.0]


def test_load_reward_function_errors(tmp_path):
    (tmp_path / "broken.py").write_text("import not_a_real_package_xyz\n")
    (tmp_path / "fine.py").write_text("VALUE = 3\n")
    cases = {
        "no_colon_here": "reward 'no_colon_here': expected 'module:function' or 'path/to/file.py:function'",
        "not_a_module_xyz:f": "reward 'not_a_module_xyz:f': module 'not_a_module_xyz' not found",
        "alignloop.rewards.rules:nope": "reward 'alignloop.rewards.rules:nope': 'alignloop.rewards.rules' has no function 'nope'",
        f"{tmp_path}/missing.py:f": f"reward '{tmp_path}/missing.py:f': file '{tmp_path}/missing.py' not found",
        f"{tmp_path}/fine.py:VALUE": f"reward '{tmp_path}/fine.py:VALUE': int object is not callable",
        f"{tmp_path}/broken.py:f": (
            f"reward '{tmp_path}/broken.py:f': importing '{tmp_path}/broken.py' failed: "
            "ModuleNotFoundError: No module named 'not_a_real_package_xyz'"
        ),
    }
    for spec, message in cases.items():
        with pytest.raises(ConfigError) as err:
            load_reward_function(spec)
        assert str(err.value) == message


def test_weighted_sum_totals_and_components():
    length = RuleReward(count_chars, name="length")
    exact = build_reward("rule:exact_match")
    total = WeightedSum([length, exact], [0.5, 2.0])
    scores = total.score(["q", "q"], ["#### 4", "5"], answer=["4", "4"])
    # 0.5 * len("#### 4") + 2 * 1 = 0.5*6 + 2 = 5.0 ; 0.5 * len("5") + 2 * 0 = 0.5
    assert scores.tolist() == [5.0, 0.5]
    assert total.last_components["length"].tolist() == [6.0, 1.0]
    assert total.last_components["exact_match"].tolist() == [1.0, 0.0]
    same_name = WeightedSum([length, length])
    same_name.score(["q"], ["ab"])
    assert set(same_name.last_components) == {"length", "length#2"}


def test_weighted_sum_uncertainty():
    rule = RuleReward(count_chars, name="length")
    assert not has_uncertainty(WeightedSum([rule]))
    combined = WeightedSum([FixedEnsemble(), rule, FixedEnsemble()], [2.0, 1.0, 1.0])
    assert has_uncertainty(combined)
    # independent parts: sqrt((2*0.5)^2 + (1*0.5)^2) = sqrt(1.25)
    assert combined.uncertainty(["q"], ["a"]).item() == pytest.approx(1.25**0.5)


def test_build_reward_specs(tmp_path):
    assert isinstance(build_reward("alignloop.rewards.rules:exact_match"), RuleReward)
    ensemble = FixedEnsemble()
    assert build_reward(ensemble) is ensemble
    combo = build_reward(
        [
            {"source": "rule:exact_match", "weight": 1.0},
            {"source": "rule:length_penalty", "weight": 0.1, "args": {"max_chars": 4}},
        ]
    )
    assert isinstance(combo, WeightedSum) and combo.weights == [1.0, 0.1]
    # "#### 12": exact 1, length 7 chars -> -(7-4)/4 = -0.75 ; total 1 + 0.1*(-0.75) = 0.925
    assert combo.score(["q"], ["#### 12"], answer=["12"]).item() == pytest.approx(0.925)
    assert isinstance(build_reward({"source": "rule:boxed_format"}), WeightedSum)


def test_build_reward_errors(tmp_path):
    cases = [
        ("rule:nope", "reward 'rule:nope': unknown rule; known rules: answer_format, boxed_format, exact_match, format, length_penalty"),
        ("nowhere", "reward 'nowhere': not a reward-model directory, a 'module:function' or a 'rule:<name>' (no such directory)"),
        (42, "reward: expected a string, a list of {source, weight} or a reward source, got 42"),
        ([{"weight": 1}], "reward[0]: expected a mapping with 'source' (and 'weight'), got {'weight': 1}"),
        ([{"source": "rule:exact_match", "weight": "a lot"}], "reward[0].weight: expected a finite number, got 'a lot'"),
        ([{"source": "rule:exact_match", "scale": 2}], "reward[0]: unknown keys ['scale']; allowed: source, weight, args"),
        (
            [{"source": "alignloop.rewards.rules:exact_match", "args": {"x": 1}}],
            "reward 'alignloop.rewards.rules:exact_match': 'args' only apply to 'rule:<name>' sources",
        ),
    ]
    for spec, message in cases:
        with pytest.raises(ConfigError) as err:
            build_reward(spec)
        assert str(err.value) == message
    with pytest.raises(ConfigError, match=r"reward 'rule:length_penalty': bad args \{'max_lines': 3\}"):
        build_reward([{"source": "rule:length_penalty", "args": {"max_lines": 3}}])


def test_build_reward_directory_uses_the_reward_model_hook(tmp_path, monkeypatch):
    monkeypatch.setattr("alignloop.rewards.build.load_reward_model_source", lambda path: ("loaded", path))
    assert build_reward(str(tmp_path)) == ("loaded", str(tmp_path))


def test_user_reward_file_end_to_end(tmp_path):
    path = tmp_path / "rewards.py"
    path.write_text(
        textwrap.dedent(
            """
            def polite(prompts, completions, **fields):
                return [1.0 if "please" in c else 0.0 for c in completions]
            """
        )
    )
    reward = build_reward(f"{path}:polite")
    assert reward.name == f"{path}:polite"
    assert reward.score(["p", "p"], ["please do", "do it"]).tolist() == [1.0, 0.0]
