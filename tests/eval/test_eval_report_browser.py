"""report.html of a run opened in headless Chromium (Debian's, driven by Playwright): every plot loads,
sample text stays text. The screenshot goes to $ALIGNLOOP_TEST_OUTPUT/eval (default test-output/)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from alignloop.eval.eval_report import render_html

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
SHOTS = Path(os.environ.get("ALIGNLOOP_TEST_OUTPUT", "test-output")) / "eval"


def _policy(gold, kl, proxy, method="monte_carlo"):
    return {"gold_reward_mean": gold, "gold_reward_ci95": [gold - 0.1, gold + 0.1], "proxy_reward_mean": proxy,
            "proxy_reward_ci95": [proxy - 0.2, proxy + 0.2], "kl_to_ref": kl, "kl_stderr": 0.1, "kl_method": method,
            "win_rate_vs_ref": 0.5 + gold / 4, "mean_length": 30.0, "distinct_1": 0.6, "distinct_2": 0.8,
            "self_bleu": 0.2, "no_eos_fraction": 0.1, "n_samples": 4}


def _report_and_samples():
    report = {
        "policies": {"sft": _policy(0.1, 0.0, 0.0, "zero"), "ppo": _policy(0.6, 3.0, 2.0), "dpo": _policy(0.5, 2.0, 1.5),
                     "bon16": _policy(0.55, 1.84, 2.5, "analytic_best_of_n")},
        "reference": "sft", "gold_scorer": "vader", "proxy_reward": "runs/q/rm", "prompts": "bundled:prompts_eval.jsonl",
        "n_prompts": 2, "samples_per_prompt": 2,
        "overoptimisation": {
            "best_of_n": {"label": ["N=1", "N=4", "N=16"], "kl": [0.0, 0.64, 1.84], "sqrt_kl": [0, 0.8, 1.36],
                          "proxy": [0.0, 1.5, 2.5], "gold": [0.1, 0.4, 0.55]},
            "ppo": {"label": ["sft", "step 8", "final"], "kl": [0.0, 1.0, 3.0], "sqrt_kl": [0, 1, 1.73],
                    "proxy": [0.0, 1.0, 2.0], "gold": [0.1, 0.5, 0.45]},
        },
        "stages": {"sft": {"kind": "sft", "seconds": 50.0, "status": "ran"}, "eval": {"kind": "eval", "seconds": 90.0}},
    }
    samples = [{"policy": p, "prompt": f"Prompt {i} <b>bold?</b>", "completion": f"<script>window.__xss=1</script> answer {i}",
                "gold": 0.1 * i, "proxy": 0.0, "length": 10 + i + j, "prompt_index": i, "sample_index": j}
               for p in report["policies"] for i in range(2) for j in range(2)]
    training = {"sft": [{"step": s, "loss": 3.0 - 0.1 * s, "eval/loss": 3.1 - 0.1 * s} for s in range(1, 6)],
                "ppo": [{"step": s, "objective/kl": 0.1 * s, "objective/scores": 0.2 * s} for s in range(1, 6)]}
    return report, samples, training


def test_report_html_renders_every_plot_in_chromium(tmp_path):
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"Chromium missing at {CHROMIUM} in CI (apt-get install chromium)")
        pytest.skip(f"Chromium not installed at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    report, samples, training = _report_and_samples()
    path = render_html(tmp_path / "report.html", report, samples, training=training, title="run <i>q</i>")
    html = path.read_text()
    assert "<script>" not in html and "http://" not in html.replace("http://www.w3.org", "")  # self-contained, escaped
    # gold + proxy frontier, 2 over-optimisation curves, length histogram, 2 training-curve figures
    assert html.count("<img ") == 7
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(path.as_uri())
        page.wait_for_load_state("load")
        loaded = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete && i.naturalWidth > 100)")
        assert loaded == [True] * 7
        assert page.evaluate("window.__xss") is None  # model output stayed text
        assert "<script>window.__xss=1</script> answer 0" in page.inner_text("table.text")
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "report.png"), full_page=True)
        browser.close()
    assert (SHOTS / "report.png").stat().st_size > 20_000
