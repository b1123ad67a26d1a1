"""A self-contained HTML report (plots embedded as base64 PNGs) and an atomic ``report.json`` writer.

Plots use matplotlib's object API (``matplotlib.figure.Figure``), never pyplot, so nothing here
changes the user's backend or keeps figures alive. All text that reaches the HTML is escaped:
model outputs are untrusted.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from alignloop.eval.metrics import calibration_bins, expected_calibration_error

# A report section holds blocks: str (a paragraph), Preformatted (e.g. a sample), Table, or Figure.


@dataclass
class Table:
    columns: list[str]
    rows: list[list[Any]]
    caption: str = ""
    text: bool = False  # cells are prose (model samples): left-aligned, top-aligned


@dataclass
class Preformatted:
    text: str


@dataclass
class Section:
    title: str
    blocks: list[Any] = field(default_factory=list)


def _atomic_write_text(path: str | Path, text: str) -> Path:
    """Writes via a temporary file in the same folder and ``os.replace``, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # open(..., "x") rather than mkstemp: the file gets the usual umask permissions, not 0600.
    temp_name = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(temp_name, "x", encoding="utf-8") as temp:
            temp.write(text)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return path


def _json_safe(obj: Any) -> Any:
    """NaN and ±inf become null (strict JSON has no such numbers); numpy/torch scalars become Python numbers."""
    if isinstance(obj, Mapping):
        return {str(key): _json_safe(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(value) for value in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return _json_safe(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_report_json(path: str | Path, obj: Any) -> Path:
    """Writes ``obj`` as indented JSON atomically; NaN/inf are written as null."""
    return _atomic_write_text(path, json.dumps(_json_safe(obj), indent=2, allow_nan=False) + "\n")


def figure_png(figure: Figure) -> bytes:
    """The figure rendered as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def save_figure(figure: Figure, path: str | Path) -> Path:
    """Writes the figure as a PNG at ``path`` (folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(figure_png(figure))
    return path


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return html.escape(str(value))


def _render_block(block: Any) -> str:
    if isinstance(block, Figure):
        encoded = base64.b64encode(figure_png(block)).decode("ascii")
        return f'<img src="data:image/png;base64,{encoded}" alt="plot">'
    if isinstance(block, bytes):  # an already-rendered PNG
        return f'<img src="data:image/png;base64,{base64.b64encode(block).decode("ascii")}" alt="plot">'
    if isinstance(block, Table):
        head = "".join(f"<th>{html.escape(str(column))}</th>" for column in block.columns)
        body = "".join("<tr>" + "".join(f"<td>{_cell(value)}</td>" for value in row) + "</tr>" for row in block.rows)
        caption = f"<caption>{html.escape(block.caption)}</caption>" if block.caption else ""
        css = ' class="text"' if block.text else ""
        return f"<table{css}>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if isinstance(block, Preformatted):
        return f"<pre>{html.escape(block.text)}</pre>"
    if isinstance(block, str):
        return f"<p>{html.escape(block)}</p>"
    raise TypeError(f"report blocks are str, Preformatted, Table, Figure or PNG bytes; got {type(block).__name__}")


_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
th { background: #f3f3f3; }
td:first-child, th:first-child { text-align: left; }
table.text td { text-align: left; vertical-align: top; white-space: pre-wrap; max-width: 28em; }
caption { caption-side: top; text-align: left; font-weight: 600; padding: 4px 0; }
pre { background: #f7f7f7; padding: 8px; white-space: pre-wrap; word-break: break-word; }
img { max-width: 100%; display: block; margin: 1em 0; }
"""


def write_report(path: str | Path, title: str, sections: Iterable[Section | tuple[str, Sequence[Any]]]) -> Path:
    """Writes a single-file HTML report with no external resources; sections are ``Section``s or (title, blocks)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for section in sections:
        heading, blocks = (section.title, section.blocks) if isinstance(section, Section) else section
        parts.append(f"<section><h2>{html.escape(heading)}</h2>")
        parts.extend(_render_block(block) for block in blocks)
        parts.append("</section>")
    parts.append("</body></html>\n")
    return _atomic_write_text(path, "\n".join(parts))


# ---- plot helpers: each returns a Figure for write_report or save_figure ----


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` (blank and unparsable lines are skipped: the file may be mid-write)."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def plot_training_curves(
    metrics: str | Path | Sequence[Mapping[str, Any]], keys: Sequence[str] | None = None
) -> Figure:
    """One subplot per metric against ``step`` (default: every numeric key except ``step``)."""
    records = read_metrics(metrics) if isinstance(metrics, (str, Path)) else list(metrics)
    if keys is None:
        keys = sorted({key for r in records for key, v in r.items() if key != "step" and _is_number(v)})
    columns = min(3, max(1, len(keys)))
    rows = max(1, math.ceil(len(keys) / columns))
    figure = Figure(figsize=(4.2 * columns, 2.8 * rows))
    for index, key in enumerate(keys):
        axis = figure.add_subplot(rows, columns, index + 1)
        points = [(r.get("step", i), r[key]) for i, r in enumerate(records) if _is_number(r.get(key))]
        if points:
            steps, values = zip(*points)
            axis.plot(steps, values, marker="." if len(points) < 30 else None)
        axis.set_title(key, fontsize=9)
        axis.set_xlabel("step", fontsize=8)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def plot_reward_kl_frontier(points: Sequence[Mapping[str, Any]], reward_label: str = "gold reward") -> Figure:
    """Reward against KL to the reference, one labelled point per policy.

    Each point: ``{"label", "kl", "reward"}`` plus optional ``"kl_err"`` / ``"reward_err"`` error bars.
    """
    figure = Figure(figsize=(6, 4.2))
    axis = figure.add_subplot(1, 1, 1)
    for point in points:
        xy = (point["kl"], point["reward"])
        axis.errorbar(*xy, xerr=point.get("kl_err"), yerr=point.get("reward_err"), fmt="o", capsize=3)
        axis.annotate(str(point["label"]), xy, textcoords="offset points", xytext=(5, 5), fontsize=8)
    axis.set_xlabel("KL(policy ‖ reference) [nats]")
    axis.set_ylabel(reward_label)
    axis.set_title("Reward vs KL")
    axis.grid(alpha=0.3)
    return figure


def plot_overoptimisation(
    kls: Sequence[float], proxy: Sequence[float], gold: Sequence[float], labels: Sequence[str] | None = None
) -> Figure:
    """Proxy (reward model) and gold reward against √KL over checkpoints, on twin y-axes.

    Proxy rising while gold falls is reward over-optimisation (Gao et al. 2022).
    """
    order = np.argsort(np.asarray(kls, dtype=float))
    root_kl = np.sqrt(np.clip(np.asarray(kls, dtype=float)[order], 0, None))
    figure = Figure(figsize=(6, 4.2))
    proxy_axis = figure.add_subplot(1, 1, 1)
    gold_axis = proxy_axis.twinx()
    proxy_values = np.asarray(proxy, dtype=float)[order]
    proxy_axis.plot(root_kl, proxy_values, "o-", color="tab:blue", label="proxy (reward model)")
    gold_axis.plot(root_kl, np.asarray(gold, dtype=float)[order], "s--", color="tab:orange", label="gold")
    if labels is not None:
        for x, y, text in zip(root_kl, np.asarray(gold, dtype=float)[order], np.asarray(labels, dtype=object)[order]):
            gold_axis.annotate(str(text), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    proxy_axis.set_xlabel("√KL(policy ‖ reference)")
    proxy_axis.set_ylabel("proxy reward", color="tab:blue")
    gold_axis.set_ylabel("gold reward", color="tab:orange")
    proxy_axis.set_title("Over-optimisation")
    proxy_axis.grid(alpha=0.3)
    handles = proxy_axis.get_legend_handles_labels()[0] + gold_axis.get_legend_handles_labels()[0]
    proxy_axis.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="best")
    return figure


def plot_length_histograms(lengths_by_policy: Mapping[str, Sequence[float]], unit: str = "tokens") -> Figure:
    """Overlaid histograms of completion length, one per policy, on shared bins."""
    figure = Figure(figsize=(6, 4.2))
    axis = figure.add_subplot(1, 1, 1)
    pooled = np.concatenate([np.asarray(v, dtype=float) for v in lengths_by_policy.values()] or [np.zeros(0)])
    bins = np.histogram_bin_edges(pooled, bins=20) if pooled.size else 10
    for name, lengths in lengths_by_policy.items():
        axis.hist(np.asarray(lengths, dtype=float), bins=bins, alpha=0.5, label=str(name))
    axis.set_xlabel(f"completion length [{unit}]")
    axis.set_ylabel("count")
    axis.set_title("Completion length")
    axis.legend(fontsize=8)
    return figure


def plot_reward_histograms(chosen: Sequence[float], rejected: Sequence[float]) -> Figure:
    """Histograms of the reward model's scores on chosen vs rejected completions."""
    figure = Figure(figsize=(6, 4.2))
    axis = figure.add_subplot(1, 1, 1)
    pooled = np.concatenate([np.asarray(chosen, dtype=float), np.asarray(rejected, dtype=float)])
    bins = np.histogram_bin_edges(pooled, bins=20) if pooled.size else 10
    axis.hist(np.asarray(chosen, dtype=float), bins=bins, alpha=0.55, label="chosen", color="tab:green")
    axis.hist(np.asarray(rejected, dtype=float), bins=bins, alpha=0.55, label="rejected", color="tab:red")
    axis.set_xlabel("reward")
    axis.set_ylabel("count")
    axis.set_title("Reward: chosen vs rejected")
    axis.legend(fontsize=8)
    return figure


def plot_reliability(probs: Any, labels: Any, n_bins: int = 10, title: str = "Reliability") -> Figure:
    """Observed frequency of label 1 per bin of predicted probability, the diagonal, and the ECE."""
    confidence, frequency, counts = calibration_bins(probs, labels, n_bins)
    centres = (np.arange(n_bins) + 0.5) / n_bins
    filled = counts > 0
    figure = Figure(figsize=(4.8, 4.8))
    axis = figure.add_subplot(1, 1, 1)
    axis.bar(centres[filled], frequency[filled], width=1.0 / n_bins, edgecolor="black", alpha=0.7, label="observed")
    axis.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    axis.plot(confidence[filled], frequency[filled], "o", color="black", markersize=3)
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_xlabel("predicted probability")
    axis.set_ylabel("observed frequency")
    axis.set_title(f"{title} (ECE = {expected_calibration_error(probs, labels, n_bins):.3f})")
    axis.legend(fontsize=8, loc="upper left")
    return figure


def reliability_diagram(
    probs: Any, labels: Any, path: str | Path, n_bins: int = 10, title: str = "Reliability"
) -> Path:
    """Writes a reliability diagram (observed frequency vs predicted probability, with ECE) as a PNG."""
    return save_figure(plot_reliability(probs, labels, n_bins=n_bins, title=title), path)
