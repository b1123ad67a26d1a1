"""Constitutional AI: the constitution file, critique → revision chains, principle-judged pairs, the stage."""

from __future__ import annotations

import json
import random

import pytest

from alignloop.config import load_config
from alignloop.data import load_records
from alignloop.errors import ConfigError
from alignloop.stages.constitution import (
    ConstitutionConfig,
    ConstitutionStage,
    Principle,
    critique_revision_chains,
    load_constitution,
)
from alignloop.train.run_dir import RunDir


def test_default_constitution_is_complete():
    principles = load_constitution()
    assert len(principles) == 8
    assert {p.name for p in principles} >= {"harmless", "honest", "helpful"}
    assert all(p.critique and p.revision and p.preference for p in principles)


def test_bad_constitution_errors_name_the_entry(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("principles:\n  - name: a\n    critique: Find flaws.\n  - critique: x\n    revision: y\n    colour: red\n")
    with pytest.raises(ConfigError) as err:
        load_constitution(str(path))
    assert str(err.value) == f"{path}: principles[0].revision: missing or empty"
    path.write_text("- critique: x\n  revision: y\n  colour: red\n")
    with pytest.raises(ConfigError, match=r"principles\[0\].colour: unknown key"):
        load_constitution(str(path))
    with pytest.raises(ConfigError, match="file not found"):
        load_constitution(str(tmp_path / "missing.yaml"))


class ScriptedModel:
    """``generate`` stand-in: answers with a numbered text, or '' for chats whose last request says EMPTY."""

    def __init__(self):
        self.calls = 0

    def __call__(self, conversations, max_new_tokens, n=1):
        self.calls += 1
        out = []
        for conv in conversations:
            last = conv[-1]["content"]
            out.append("" if "EMPTY" in last else f"call{self.calls}:{len(conv)}")
        return out


def test_chains_have_the_configured_rounds():
    principles = [Principle("p", "Critique it.", "Revise it.", "Which is better?")]
    model = ScriptedModel()
    prompts = [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "yo"}]]
    results = critique_revision_chains(model, prompts, principles, rounds=3, rng=random.Random(0))
    # 1 call for the responses + (critique, revision) per round
    assert model.calls == 1 + 2 * 3
    for result in results:
        assert result["initial_response"] == "call1:1"
        assert [s["round"] for s in result["chain"]] == [1, 2, 3]
        # round r: critique is call 2r (chat of 3 messages), revision call 2r + 1 (chat of 5 messages)
        assert [s["critique"] for s in result["chain"]] == ["call2:3", "call4:3", "call6:3"]
        assert [s["revision"] for s in result["chain"]] == ["call3:5", "call5:5", "call7:5"]
        assert result["final_response"] == "call7:5"
        assert result["chain"][0]["critique_request"] == "Critique it." and result["chain"][0]["principle"] == "p"


def test_empty_revision_keeps_the_previous_response():
    principles = [Principle("p", "Critique it.", "EMPTY please", "Which is better?")]
    results = critique_revision_chains(ScriptedModel(), [[{"role": "user", "content": "hi"}]], principles, 1, random.Random(0))
    assert results[0]["final_response"] == "call1:1"
    assert results[0]["chain"][0]["revision_empty"] is True


@pytest.mark.slow
def test_constitution_stage_writes_chains_and_pairs(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Tell me about topic {i}."}) + "\n" for i in range(2)))
    overrides = ["model=tiny-llama", f"data.train={prompts}", "constitution.rounds=2", "constitution.max_new_tokens=6",
                 "constitution.critique_max_tokens=4", "constitution.temperature=1.0"]
    summary = ConstitutionStage.run(load_config(ConstitutionConfig, None, overrides), RunDir(tmp_path / "out"))
    sft = load_records(tmp_path / "out" / "sft.jsonl", "sft")
    assert summary["sft_records"] == len(sft) >= 1
    for record in sft:
        assert len(record["chain"]) == 2
        assert record["messages"][-1]["content"] in [s["revision"] for s in record["chain"]] + [record["initial_response"]]
    pairs_text = (tmp_path / "out" / "pairs.jsonl").read_text()
    if pairs_text.strip():
        for record in load_records(tmp_path / "out" / "pairs.jsonl", "pair"):
            assert record["source"] == "ai:constitution:tiny-llama" and 0.5 <= record["probability"] <= 1
    assert summary["pairs"] == len(pairs_text.splitlines())
    assert (tmp_path / "out" / "config.yaml").is_file() and (tmp_path / "out" / "summary.json").is_file()
