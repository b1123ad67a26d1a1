"""The run report says what its numbers are: smoke runs are labelled, the RM's held-out accuracy is named so."""

from __future__ import annotations

import json

from alignloop.eval.eval_report import BON_NOTE, SMOKE_NOTE, render_html
from alignloop.pipeline.runner import _stage_figures, write_pipeline_report
from alignloop.pipeline.spec import Pipeline, StageEntry, load_pipeline


def test_rm_summary_gives_heldout_accuracy_under_its_own_name():
    figures = _stage_figures({"steps": 10, "accuracy": 0.875, "eval/accuracy": 0.737, "loss": 0.4})
    assert figures == {"steps": 10, "loss": 0.4, "train_accuracy_last_batch": 0.875, "heldout_accuracy": 0.737}
    assert "accuracy" not in figures  # the old ambiguous name is gone


def test_fast_variant_is_a_labelled_smoke_run(tmp_path):
    spec = tmp_path / "p.yaml"
    spec.write_text("name: p\nstages:\n  - {name: sft, stage: sft, config: {model: tiny-llama}}\n"
                    "variants:\n  fast: {smoke: true, set: ['sft.train.max_steps=1']}\n  long: {set: []}\n")
    assert load_pipeline(spec, variant="fast").smoke is True
    assert load_pipeline(spec, variant="long").smoke is False
    assert load_pipeline(spec).smoke is False
    pipeline = Pipeline(name="p", out=tmp_path / "run", stages=[StageEntry("sft", "sft", {}, None)],
                        variant="fast", smoke=True)
    (tmp_path / "run" / "sft").mkdir(parents=True)
    (tmp_path / "run" / "sft" / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    report = write_pipeline_report(pipeline, {"sft": {"kind": "sft", "seconds": 1.0, "status": "ran"}})
    saved = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["smoke_run"] is True and saved["smoke_run"] is True and saved["variant"] == "fast"
    assert SMOKE_NOTE in (tmp_path / "run" / "report.html").read_text()


def test_best_of_n_curve_explains_its_n1_point_and_one_point_panels_are_not_drawn(tmp_path):
    report = {"policies": {"sft": {"gold_reward_mean": 0.1, "kl_to_ref": 0.0}}, "reference": "sft",
              "overoptimisation": {"best_of_n": {"kl": [0.0, 0.5], "proxy": [0.1, 0.3], "gold": [0.1, 0.2],
                                                 "label": ["1", "4"]}}}
    html = render_html(tmp_path / "r.html", report, [], training={"sft": [{"step": 1, "loss": 1.0}]}).read_text()
    assert BON_NOTE in html
    assert "Reward vs KL" not in html  # one policy: a single dot is not drawn
    assert "Training curves" not in html  # one logged step: no curve
