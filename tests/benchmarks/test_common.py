"""The shared benchmark helpers (benchmarks/common.py): flags, the --runs N driver, medians and spreads."""

from __future__ import annotations

import argparse
import importlib.util
import sys

import pytest

from tests.conftest import ROOT


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return module


common = _load("common")


def test_common_flags_defaults_and_checks():
    parser = common.add_common_flags(argparse.ArgumentParser(), trl_venv=common.TRL_VENV)
    args = parser.parse_args([])
    assert (args.trl_venv, args.threads, args.precision, args.runs) == (common.TRL_VENV, 0, "bf16", 1)
    assert args.trl_venv.startswith(str(ROOT)) and "/.bench/" in args.trl_venv  # inside the clone, gitignored
    args = parser.parse_args(["--runs", "3", "--threads", "1", "--precision", "fp32", "--trl-venv", "v"])
    assert (args.runs, args.threads, args.precision, args.trl_venv) == (3, 1, "fp32", "v")
    with pytest.raises(SystemExit):
        common.check_common_flags(parser, parser.parse_args(["--runs", "0"]))


def test_paired_runs_alternate_sides_abba():
    calls = []
    pairs = common.paired_runs(
        3, lambda i: calls.append(("alignloop", i)) or {"run": i}, lambda i: calls.append(("trl", i)) or {"run": i}
    )
    assert calls == [("alignloop", 0), ("trl", 0), ("trl", 1), ("alignloop", 1), ("alignloop", 2), ("trl", 2)]
    assert pairs == [({"run": 0}, {"run": 0}), ({"run": 1}, {"run": 1}), ({"run": 2}, {"run": 2})]


def test_paired_comparison_medians_spreads_and_per_pair_ratios():
    pairs = [
        ({"throughput": 2.0, "peak_rss_mb": 100.0, "version": "x"}, {"throughput": 1.0, "peak_rss_mb": 200.0}),
        ({"throughput": 3.0, "peak_rss_mb": 110.0, "version": "y"}, {"throughput": 2.0, "peak_rss_mb": 200.0}),
        ({"throughput": 6.0, "peak_rss_mb": 90.0, "version": "z"}, {"throughput": 2.0, "peak_rss_mb": 180.0}),
    ]
    payload = common.paired_comparison("x", pairs, unit="u")
    assert payload["alignloop"] == {"throughput": 3.0, "peak_rss_mb": 100.0, "version": "x"}
    assert payload["trl"] == {"throughput": 2.0, "peak_rss_mb": 200.0}
    # ratios per run pair (2.0, 1.5, 3.0), not the ratio of the medians (1.5)
    assert payload["throughput_ratio"] == 2.0
    assert payload["spread"]["throughput_ratio"] == [1.5, 3.0]
    assert payload["rss_ratio"] == 0.5 and payload["spread"]["rss_ratio"] == [0.5, 0.55]
    assert payload["spread"]["alignloop"]["throughput"] == [2.0, 6.0]
    assert "cpu_throughput_ratio" not in payload  # no side reported it
    assert payload["runs"] == 3 and len(payload["per_run"]) == 3 and payload["unit"] == "u"


def test_one_run_reads_as_the_plain_comparison():
    ours = {"throughput": 2.0, "cpu_throughput": 1.0, "peak_rss_mb": 100.0}
    theirs = {"throughput": 1.0, "cpu_throughput": 0.5, "peak_rss_mb": 200.0}
    payload = common.paired_comparison("x", [(ours, theirs)])
    plain = common.comparison("x", ours, theirs)
    for key in ("alignloop", "trl", "throughput_ratio", "rss_ratio", "cpu_throughput_ratio"):
        assert payload[key] == plain[key]


def test_thread_env_and_run_isolated_pins_torch_threads(tmp_path):
    assert common.thread_env(0) == {}
    assert common.thread_env(3)["OMP_NUM_THREADS"] == "3"
    script = tmp_path / "child.py"
    script.write_text("def threads():\n    import torch\n    return {'threads': torch.get_num_threads()}\n")
    result = common.run_isolated(f"{script}:threads", threads=1, echo=False)
    assert result["threads"] == 1 and result["peak_rss_mb"] > 0


def test_run_command_measures_and_raises():
    result = common.run_command([sys.executable, "-c", "x = bytearray(50 * 2**20)"])
    assert result["peak_rss_mb"] >= 50 and result["wall_seconds"] > 0
    with pytest.raises(common.BenchmarkError):
        common.run_command([sys.executable, "-c", "raise SystemExit(3)"])


def test_a_venv_made_from_a_venv_sees_its_packages(tmp_path):
    """install.sh's .venv: the TRL venv must see .venv's torch/transformers, not only the base interpreter's."""
    import subprocess

    venv = tmp_path / "v"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import pytest"]
    assert subprocess.run(probe, capture_output=True).returncode != 0  # an isolated venv: no pytest
    common._inherit_site_packages(python)
    assert subprocess.run(probe, capture_output=True).returncode == 0


def test_wilson_interval():
    quality = _load("reward_quality")
    low, high = quality.wilson_interval(60, 100)
    assert (round(low, 4), round(high, 4)) == (0.5020, 0.6906)  # standard Wilson 95% for 60/100
    assert quality.wilson_interval(0, 0) == (None, None)


def test_reward_quality_cuts_prompt_from_the_left_first():
    quality = _load("reward_quality")
    prompt, chosen, rejected = list(range(10)), [100, 101], [200, 201, 202]
    assert quality.fit(prompt, chosen, rejected, 13) == (prompt, chosen, rejected)  # fits: unchanged
    assert quality.fit(prompt, chosen, rejected, 8) == (list(range(5, 10)), chosen, rejected)
    p, c, r = quality.fit(list(range(10)), [1] * 20, [2] * 3, 10)  # a long answer: half the window for the prompt
    assert p == list(range(5, 10)) and len(c) == 5 and r == [2] * 3
