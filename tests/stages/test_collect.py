"""The `collect` stage: pairs of a policy's own samples labelled by the simulated annotator, resumable by chunk."""

from __future__ import annotations

import json

from alignloop.data import load_records
from alignloop.pipeline.runner import config_from_dict
from alignloop.stages.collect import CollectConfig, CollectStage, make_pairs
from alignloop.train.run_dir import RunDir


def test_make_pairs():
    assert make_pairs(4, "all") == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]  # 4·3/2 = 6
    assert make_pairs(5, "adjacent") == [(0, 1), (2, 3)]
    assert make_pairs(2, "all") == [(0, 1)]


def test_collect_stage_writes_valid_pairs_and_resumes_identically(tmp_path):
    cfg = config_from_dict(CollectConfig, {
        "model": "tiny-llama",
        "collect": {"n_prompts": 3, "samples_per_prompt": 2, "max_new_tokens": 8, "batch_size": 2,
                  "annotator_temperature": 0.0},
    }, "test")
    out = tmp_path / "prefs"
    summary = CollectStage.run(cfg, RunDir(out))
    pairs = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    assert summary["pairs"] == len(pairs) and summary["prompts"] == 3
    assert summary["pairs"] + summary["pairs_skipped"] == 3  # one pair per prompt with k = 2
    assert len(load_records(out / "pairs.jsonl", "pair")) == len(pairs)  # valid preference records
    assert all(p["source"] == "simulated:vader" and isinstance(p["prompt"], str) for p in pairs)
    # temperature 0: the annotator always prefers the higher gold score (a coin only on exact ties)
    assert all(p["gold_margin"] >= 0 for p in pairs)
    assert {"config.yaml", "metrics.jsonl", "summary.json"} <= {p.name for p in out.iterdir()}
    assert not (out / "pairs.partial.jsonl").exists()

    # An interrupted run: only chunk 0 was finished. The rerun labels the rest and ends with the same pairs.
    again = tmp_path / "again"
    again.mkdir()
    first_chunk = [p for p in pairs if p["prompt"] == pairs[0]["prompt"]]
    (again / "pairs.partial.jsonl").write_text(json.dumps({"chunk": 0, "records": first_chunk}) + "\n{\"chunk\": 1, \"rec")
    CollectStage.run(cfg, RunDir(again))
    assert [json.loads(line) for line in (again / "pairs.jsonl").read_text().splitlines()] == pairs
