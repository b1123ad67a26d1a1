"""The HTML report: embedded PNG plots, escaped text, and the atomic report.json writer."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
from matplotlib.image import imread

from alignloop.eval.report import (
    Preformatted,
    Section,
    Table,
    plot_length_histograms,
    plot_overoptimisation,
    plot_reliability,
    plot_reward_histograms,
    plot_reward_kl_frontier,
    plot_training_curves,
    read_metrics,
    write_report,
    write_report_json,
)

IMG = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def _metrics_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "loss": 1 / (s + 1), "objective/kl": 0.1 * s, "note": "text"}) for s in range(5)]
    path.write_text("\n".join(lines) + "\n{\"step\": 5, \"loss\"")  # a half-written last line is skipped
    return path


def test_report_embeds_one_png_per_plot_and_escapes_text(tmp_path):
    metrics = _metrics_file(tmp_path)
    assert len(read_metrics(metrics)) == 5
    rng = np.random.default_rng(0)
    plots = [
        plot_training_curves(metrics),
        plot_reward_kl_frontier([{"label": "sft", "kl": 0.0, "reward": 0.1}, {"label": "ppo", "kl": 2.0, "reward": 0.4, "reward_err": 0.05}]),
        plot_overoptimisation([0.0, 1.0, 4.0], [0.0, 1.0, 2.0], [0.1, 0.3, 0.2], labels=["0", "100", "200"]),
        plot_length_histograms({"sft": rng.integers(5, 50, 40), "ppo": rng.integers(5, 80, 40)}),
        plot_reward_histograms(rng.normal(1, 1, 50), rng.normal(0, 1, 50)),
        plot_reliability(rng.random(100), rng.random(100) < 0.5),
    ]
    sample = '<script>alert("x")</script> & friends'
    sections = [
        Section("Summary <i>", ["Evaluated with gold = vader.", Table(["policy", "gold"], [["ppo <b>", 0.41234], ["sft", float("nan")]])]),
        Section("Plots", plots),
        ("Samples", [Preformatted(sample), sample]),
    ]
    path = write_report(tmp_path / "out" / "report.html", "Report <title>", sections)
    page = path.read_text(encoding="utf-8")

    images = IMG.findall(page)
    assert len(images) == len(plots) == page.count("<img ")
    for encoded in images:
        png = base64.b64decode(encoded, validate=True)
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        pixels = imread(io.BytesIO(png), format="png")
        assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100

    assert "<script>" not in page
    assert page.count("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; friends") == 2
    assert "<title>Report &lt;title&gt;</title>" in page
    assert "<h2>Summary &lt;i&gt;</h2>" in page
    assert "<td>ppo &lt;b&gt;</td><td>0.4123</td>" in page and "<td>nan</td>" in page
    assert not list((tmp_path / "out").glob(".*.tmp"))  # the temporary file was renamed away


def test_training_curves_one_subplot_per_metric(tmp_path):
    figure = plot_training_curves(_metrics_file(tmp_path))
    assert sorted(axis.get_title() for axis in figure.axes) == ["loss", "objective/kl"]  # "note" is not numeric
    figure = plot_training_curves([{"step": 1, "a": 1.0, "b": 2.0}], keys=["b"])
    assert [axis.get_title() for axis in figure.axes] == ["b"]


def test_write_report_json_is_strict_json(tmp_path):
    path = write_report_json(tmp_path / "report.json", {"kl": float("nan"), "gold": np.float32(0.5), "n": np.arange(3), "inf": float("inf")})
    assert json.loads(path.read_text()) == {"kl": None, "gold": 0.5, "n": [0, 1, 2], "inf": None}
    write_report_json(path, {"version": 2})  # replaces the old file whole
    assert json.loads(path.read_text()) == {"version": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
