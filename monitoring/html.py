"""`tabserve monitor --html`: one self-contained page (inline SVG, no CDN) with the report's plots."""

from __future__ import annotations

import html
import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import BoundaryNorm, ListedColormap

from monitoring.report import Report
from service.drift import FEW_ROWS, NO_ROWS

# the usual PSI reading as colours: stable, moderate, act
PSI_COLOURS = ListedColormap(["#d8f0d2", "#9fd39a", "#ffe08a", "#f4a259", "#d1495b"])
PSI_BOUNDS = BoundaryNorm([0, 0.05, 0.1, 0.175, 0.25, 10], PSI_COLOURS.N)


def write_html(report: Report, path: Path) -> None:
    """The report as a page: PSI heat map, score distribution against training, live metrics over time."""
    figures = []
    if not report.empty:  # an empty heat map would colour every feature "stable"
        figures.append(("Which feature moved, and when (PSI by period)", heat_map(report)))
        figures.append(("Score distribution: the log against training", score_distribution(report)))
    if report.live:
        figures.append(("Live metrics of labelled predictions over time", live_metrics(report)))
    if report.calibration:
        figures.append(("Calibration of labelled predictions", calibration_plot(report.calibration)))
    body = "\n".join(f"<h2>{html.escape(title)}</h2>\n{svg}" for title, svg in figures)
    if report.empty:
        body = f"<p><b>{NO_ROWS}</b>: no row was logged in this span, so there is no drift verdict.</p>\n{body}"
    title = f"tabserve monitor: {report.model} v{report.version}"
    path.write_text(
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}}</style>"
        f"<h1>{html.escape(title)}</h1><p>PSI &lt; 0.1 stable, 0.1–0.25 moderate, &gt; 0.25 act; grey: "
        f"{FEW_ROWS} in that period to tell. "
        f"{sum(report.rows):,} logged rows over {len(report.periods)} period(s).</p>\n{body}\n"
    )


def heat_map(report: Report) -> str:
    names = sorted(report.psi, key=lambda n: -report.moved(n))
    values = np.array([report.psi[n] for n in names]) if report.periods else np.zeros((len(names), 1))
    few = np.array([[r == FEW_ROWS for r in report.readings(n)] for n in names]) if report.periods else False
    values = np.ma.masked_array(values, mask=few)  # a period too small to tell: grey, not a colour
    # room for the longest name (german's run to 56 characters): else tight_layout gives up with a warning
    labels = 0.08 * max((len(n) for n in names), default=0)
    ticks = period_labels(report.periods)
    below = 0.07 * max((len(t) for t in ticks), default=0)  # the periods' slanted labels under the map
    fig, ax = plt.subplots(figsize=(min(2 + 0.5 * len(report.periods), 14) + labels, 1 + 0.3 * len(names) + below))
    shown = ax.imshow(values, cmap=PSI_COLOURS.with_extremes(bad="#dddddd"), norm=PSI_BOUNDS, aspect="auto")
    ax.set_yticks(range(len(names)), names)
    ax.set_xticks(range(len(report.periods)), ticks, rotation=60, ha="right")
    fig.colorbar(shown, ax=ax, label="PSI")
    return _svg(fig)


def score_distribution(report: Report) -> str:
    fig, ax = plt.subplots(figsize=(8, 3.5))
    at = np.arange(len(report.score_shares))
    ax.bar(at - 0.2, report.score_reference, 0.4, label="training")
    ax.bar(at + 0.2, report.score_shares, 0.4, label="logged")
    edges = [f"{e:.2g}" for e in report.score_edges]
    ax.set_xticks(at, [f"< {edges[0]}", *(f"≥ {e}" for e in edges)] if edges else ["all"], rotation=45)
    ax.set_ylabel("share of rows")
    ax.legend()
    return _svg(fig)


def live_metrics(report: Report) -> str:
    keys = [k for k in ("auc", "ece", "brier", "rmse", "mae") if report.live[0].get(k) is not None]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3), squeeze=False)
    periods = period_labels([doc["period"] for doc in report.live])
    test = (report.training or {}).get("test") or {}
    for ax, key in zip(axes[0], keys, strict=True):
        ax.plot(periods, [doc[key] for doc in report.live], marker="o")
        offline = test.get("roc_auc" if key == "auc" else key)
        if isinstance(offline, float):
            ax.axhline(offline, color="grey", linestyle="--", label="training's test split")
            ax.legend()
        ax.set_title(key)
        ax.tick_params(axis="x", rotation=60)
    return _svg(fig)


def period_labels(periods: list[str]) -> list[str]:
    """Days (and weeks) by their date; hours with their time, else every hour of a day was one label."""
    hourly = any(not p.endswith(" 00:00") for p in periods if len(p) > 10)
    return [p if hourly else p[:10] for p in periods]


def calibration_plot(bins: list[dict[str, Any]]) -> str:
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--")
    ax.plot([b["predicted"] for b in bins], [b["observed"] for b in bins], marker="o")
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("observed positive rate")
    return _svg(fig)


def _svg(fig: Any) -> str:
    fig.tight_layout()
    out = io.StringIO()
    fig.savefig(out, format="svg")
    plt.close(fig)
    text = out.getvalue()
    return text[text.index("<svg") :]
