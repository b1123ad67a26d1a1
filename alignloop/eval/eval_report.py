"""report.json + samples.jsonl + report.html for an evaluation (or a whole pipeline run), and the printed table."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from rich.console import Console
from rich.table import Table as RichTable

from alignloop.eval.eval_summary import prompt_text
from alignloop.eval.report import (
    Section,
    Table,
    plot_length_histograms,
    plot_overoptimisation,
    plot_reward_kl_frontier,
    plot_training_curves,
    write_report,
    write_report_json,
)
from alignloop.utils.io import write_jsonl

# The training metrics worth a plot, in this order; other numeric keys are used only if none of these exist.
CURVE_KEYS = (
    "loss", "eval/loss", "accuracy", "eval/accuracy", "margin", "rewards/accuracies", "rewards/margins",
    "objective/scores", "objective/kl", "objective/rlhf_reward", "objective/entropy", "policy/clipfrac_avg",
    "loss/value_avg", "eval/rewards/accuracies",
)
_NOISE_KEYS = {"lr", "step_time", "tokens_per_second", "epoch", "grad_norm", "skipped"}
SAMPLE_KEYS = ("policy", "prompt", "completion", "gold", "proxy")


def sample_rows(records: Mapping[str, Sequence[dict]]) -> list[dict]:
    """samples.jsonl rows: the contract keys first, then the per-sample extras (length, eos, log-probs)."""
    rows = []
    for policy, recs in records.items():
        for r in recs:
            row = {"policy": policy, "prompt": r["prompt"], "completion": r["completion"], "gold": r["gold"],
                   "proxy": r.get("proxy")}
            row.update({k: v for k, v in r.items() if k not in row})
            rows.append(row)
    return rows


def write_eval_outputs(
    out_dir: Path, report: dict, records: Mapping[str, Sequence[dict]], show_samples: int = 6,
    training: Mapping[str, Sequence[dict]] | None = None, title: str = "alignloop evaluation",
) -> None:
    rows = sample_rows(records)
    write_jsonl(out_dir / "samples.jsonl", rows)
    write_report_json(out_dir / "report.json", report)
    render_html(out_dir / "report.html", report, rows, training=training, show_samples=show_samples, title=title)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _ci(entry: dict, key: str) -> str:
    ci = entry.get(key)
    return f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""


def _kl(entry: dict) -> str:
    text = _fmt(entry.get("kl_to_ref"))
    if entry.get("kl_method") == "analytic_best_of_n":
        return text + "*"
    if entry.get("kl_stderr") is not None:
        return f"{text}±{entry['kl_stderr']:.2f}"
    return text


POLICY_COLUMNS = ["policy", "gold", "gold 95% CI", "proxy", "KL to ref", "win rate", "length", "distinct-2",
                  "self-BLEU", "no EOS"]


SMOKE_NOTE = ("SMOKE RUN (a short variant such as quickstart --fast): it checks that every stage runs; its "
              "numbers are too noisy to compare policies. Run without --fast for real figures.")
BON_NOTE = ("Best-of-N draws its own samples from the reference policy: the N = 1 point is one such draw per prompt, "
            "so it differs from the reference row above (another draw of the same policy) by sampling noise only.")


def gold_name(report: dict) -> str:
    """The gold as reports name it: its label (e.g. "proxy gold (RM trained on disjoint pairs)") and what it is."""
    label, scorer = report.get("gold_label"), report.get("gold_scorer")
    return f"{label}: {scorer}" if label and label != scorer else str(scorer)


def policy_rows(report: dict) -> list[list[str]]:
    rows = []
    for name, e in report.get("policies", {}).items():
        label = f"{name} (ref)" if name == report.get("reference") else name
        rows.append([label, _fmt(e["gold_reward_mean"]), _ci(e, "gold_reward_ci95"), _fmt(e.get("proxy_reward_mean")),
                     _kl(e), _fmt(e.get("win_rate_vs_ref"), 2), _fmt(e.get("mean_length"), 1),
                     _fmt(e.get("distinct_2"), 2), _fmt(e.get("self_bleu"), 2), _fmt(e.get("no_eos_fraction"), 2)])
    return rows


def stage_rows(report: dict) -> list[list[str]]:
    return [[name, info.get("kind", name), _fmt(info.get("seconds"), 1), info.get("status", "ran")]
            for name, info in report.get("stages", {}).items()]


def print_report_table(report: dict, console: Any = None) -> None:
    """The rich table printed at the end of ``alignloop eval`` / ``run`` / ``quickstart``."""
    console = console or Console()
    if report.get("smoke_run"):
        console.print(f"[bold yellow]{SMOKE_NOTE}[/]")
    if report.get("policies"):
        smoke = "SMOKE RUN · " if report.get("smoke_run") else ""
        table = RichTable(title=f"{smoke}policies on held-out prompts (gold = {gold_name(report)})")
        for i, col in enumerate(POLICY_COLUMNS):
            table.add_column(col, justify="left" if i == 0 else "right")
        for row in policy_rows(report):
            table.add_row(*row)
        table.caption = "KL: Monte-Carlo ± std. error; * analytic bound log N − (N−1)/N for best-of-N"
        console.print(table)
    if report.get("stages"):
        timings = RichTable(title="stages")
        for col in ("stage", "kind", "seconds", "status"):
            timings.add_column(col, justify="right" if col == "seconds" else "left")
        for row in stage_rows(report):
            timings.add_row(*row)
        console.print(timings)


def _frontier(report: dict, key: str, ci_key: str) -> list[dict]:
    points = []
    for name, e in report["policies"].items():
        if e.get(key) is None or e.get("kl_to_ref") is None:
            continue
        point = {"label": name, "kl": max(float(e["kl_to_ref"]), 0.0), "reward": float(e[key])}
        if e.get(ci_key):
            lo, hi = e[ci_key]
            point["reward_err"] = [[max(point["reward"] - lo, 0.0)], [max(hi - point["reward"], 0.0)]]
        points.append(point)
    return points


def _curve_keys(records: Sequence[dict]) -> list[str]:
    present = {k for r in records for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    keys = [k for k in CURVE_KEYS if k in present]
    if not keys:
        keys = sorted(present - _NOISE_KEYS - {"step"})
    return keys[:9]


def _sample_table(samples: Sequence[dict], report: dict, show: int) -> Table | None:
    policies = list(report["policies"])
    first = {}
    for s in samples:
        if s.get("sample_index", 0) == 0 and s["policy"] in report["policies"]:
            first.setdefault(s.get("prompt_index", 0), {})[s["policy"]] = s
    indices = sorted(first)[:show]
    if not indices:
        return None
    rows = []
    for i in indices:
        by_policy = first[i]
        cells = [prompt_text(next(iter(by_policy.values()))["prompt"])]
        for p in policies:
            s = by_policy.get(p)
            cells.append(f"{s['completion']}\n\n[gold {s['gold']:.2f}]" if s else "")
        rows.append(cells)
    return Table(["prompt", *policies], rows, caption="first sample per prompt, with its gold score", text=True)


def render_html(path: Path, report: dict, samples: Sequence[dict], training: Mapping[str, Sequence[dict]] | None = None,
                show_samples: int = 6, title: str = "alignloop evaluation") -> Path:
    sections: list[Section] = []
    intro = (f"Reference policy: {report.get('reference')}. Gold scorer: {gold_name(report)} "
             f"(never seen by the reward model). Proxy reward: {report.get('proxy_reward') or 'none'}. "
             f"Prompts: {report.get('prompts')} "
             f"({report.get('n_prompts')} prompts × {report.get('samples_per_prompt')} samples).")
    blocks: list[Any] = [SMOKE_NOTE, intro] if report.get("smoke_run") else [intro]
    if report.get("policies"):
        blocks.append(Table(POLICY_COLUMNS, policy_rows(report), caption="policies"))
        blocks.append("KL is the Monte-Carlo estimate (± standard error) from the policy's own samples at "
                      "temperature 1; for best-of-N (marked *) it is the analytic bound log N − (N−1)/N. Win rate is "
                      "judged by the gold scorer against the reference's sample for the same prompt, ties counting "
                      "one half.")
    if report.get("stages"):
        blocks.append(Table(["stage", "kind", "seconds", "status"], stage_rows(report), caption="stages"))
    sections.append(Section("Summary", blocks))
    if report.get("policies"):
        gold_points = _frontier(report, "gold_reward_mean", "gold_reward_ci95")
        proxy_points = _frontier(report, "proxy_reward_mean", "proxy_reward_ci95")
        frontier = [plot_reward_kl_frontier(gold_points, "gold reward")] if len(gold_points) > 1 else []
        if len(proxy_points) > 1:
            frontier.append(plot_reward_kl_frontier(proxy_points, "proxy (reward-model) reward"))
        if frontier:  # one policy is a single dot: the table already says it
            sections.append(Section("Reward vs KL", [
                "Each point is a policy; up and to the left is better. Bars: 95% intervals.", *frontier
            ]))
    curves = [(name, c) for name, c in (report.get("overoptimisation") or {}).items()
              if len(c.get("kl") or []) > 1 and all(v is not None for v in c["proxy"] + c["gold"])]
    if curves:
        blocks = ["Proxy and gold reward against √KL. Reward hacking shows as the gold curve turning down while the "
                  "proxy keeps rising (Gao et al. 2022)."]
        for name, c in curves:
            blocks.append(f"{'best-of-N of the reference' if name == 'best_of_n' else name + ' checkpoints'}:")
            if name == "best_of_n":
                blocks.append(BON_NOTE)
            blocks.append(plot_overoptimisation(c["kl"], c["proxy"], c["gold"], c["label"]))
        sections.append(Section("Over-optimisation", blocks))
    lengths: dict[str, list[float]] = {}
    for s in samples:
        if s["policy"] in report.get("policies", {}) and s.get("length") is not None:
            lengths.setdefault(s["policy"], []).append(float(s["length"]))
    if lengths:
        sections.append(Section("Completion length", [plot_length_histograms(lengths)]))
    if training:
        blocks = []
        for name, records in training.items():
            keys = _curve_keys(records)
            if len(records) > 1 and keys:  # one logged step is a dot, not a curve
                blocks.extend([f"{name}:", plot_training_curves(records, keys)])
        if blocks:
            sections.append(Section("Training curves", blocks))
    if report.get("policies"):
        table = _sample_table(samples, report, show_samples)
        if table is not None:
            sections.append(Section("Samples side by side", [table]))
    return write_report(path, title, sections)
