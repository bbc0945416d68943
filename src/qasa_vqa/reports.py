"""Tables and pictures of evaluation results: the Markdown metrics table and the prediction scatter.

:func:`metrics_table` renders ``{test set: {branch: quality_metrics(...)}}`` as a Markdown table (SRCC,
KRCC, PLCC raw and fitted, fitted RMSE, each with its bootstrap interval when there is one);
:func:`scatter_plot` draws predictions against MOS for each branch with the fitted mapping over them.
(The label-budget curve is :func:`qasa_vqa.sweeps.plot_budget_curve`.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from qasa_vqa.metrics import apply_fit
from qasa_vqa.storage import atomic_save

__all__ = ["BRANCH_LABELS", "metrics_table", "scatter_plot"]

BRANCH_LABELS = {"qasa": "QASA (combined)", "stvqrl": "ST-VQRL branch", "clip": "CLIP branch"}
_COLUMNS = (
    ("srcc", "SRCC"),
    ("krcc", "KRCC"),
    ("plcc", "PLCC"),
    ("plcc_logistic", "PLCC (fit)"),
    ("rmse_logistic", "RMSE (fit)"),
)


def _cell(metrics: Mapping[str, float], key: str) -> str:
    value = metrics.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    text = f"{value:.3f}"
    low, high = metrics.get(f"{key}_low"), metrics.get(f"{key}_high")
    if low is not None and high is not None and not (math.isnan(low) or math.isnan(high)):
        text += f" [{low:.2f}, {high:.2f}]"
    return text


def metrics_table(
    results: Mapping[str, Mapping[str, Mapping[str, float]]], *, model: str = "", fit: str = "logistic4"
) -> str:
    """A Markdown table: one row per (test set, branch). Intervals in brackets are the bootstrap's."""
    header = ["test set", "model" if model else None, "branch", "n", *(label for _, label in _COLUMNS)]
    header = [h for h in header if h is not None]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for test_set, branches in results.items():
        for branch, metrics in branches.items():
            cells = [
                test_set,
                *([model] if model else []),
                BRANCH_LABELS.get(branch, branch),
                str(int(metrics.get("n", 0))),
            ]
            cells += [_cell(metrics, key) for key, _ in _COLUMNS]
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"SRCC, KRCC, PLCC of the raw scores; PLCC (fit) and RMSE (fit, MOS units) after the {fit} mapping "
        "fitted on the same set; [low, high]: 95% bootstrap intervals."
    )
    return "\n".join(lines) + "\n"


def scatter_plot(
    mos: Sequence[float],
    predictions: Mapping[str, Sequence[float]],
    fits: Mapping[str, tuple[str, Sequence[float]]],
    path: str | Path,
    *,
    title: str = "",
    metrics: Mapping[str, Mapping[str, float]] | None = None,
) -> Path:
    """One panel per branch: prediction (x) against MOS (y), and the fitted mapping as a curve.
    ``fits[branch] = (kind, params)``; ``metrics[branch]`` adds SRCC / PLCC to the panel titles."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend (e.g. a notebook's) is left alone

    mos_arr = np.asarray(mos, dtype=np.float64)
    figure = Figure(figsize=(4.0 * len(predictions), 3.6))
    axes = figure.subplots(1, len(predictions), squeeze=False)
    for ax, (branch, values) in zip(axes[0], predictions.items(), strict=True):
        x = np.asarray(values, dtype=np.float64)
        ax.scatter(x, mos_arr, s=14, alpha=0.75)
        if branch in fits and x.size and np.ptp(x) > 0:
            kind, params = fits[branch]
            grid = np.linspace(x.min(), x.max(), 200)
            ax.plot(grid, apply_fit(grid, np.asarray(params), kind), color="C3", lw=1.5, label=f"{kind} fit")
            ax.legend(fontsize=8, loc="best")
        label = BRANCH_LABELS.get(branch, branch)
        if metrics and branch in metrics:
            m = metrics[branch]
            label += f"\nSRCC {m.get('srcc', float('nan')):.3f}, PLCC {m.get('plcc', float('nan')):.3f}"
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("prediction")
        ax.set_ylabel("MOS")
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return atomic_save(path, lambda target: figure.savefig(target, dpi=110, format="png"))
