"""Label-budget sweeps: one results CSV that concurrent runs append to, its summary and its plot.

Every run of a sweep appends one row (:func:`append_row`): experiment, ablation, budget (``n_labelled``),
``n_unlabelled``, seed, split file and its SHA-256, steps, checkpoint, and every validation and test
metric. Runs of a sweep may finish at the same time in several processes (joblib, SLURM arrays on a
shared filesystem), so a row is written under an exclusive lock on ``<csv>.lock``; a row that brings new
columns rewrites the file with the union of the columns (to a temporary file, then an atomic rename), so
the CSV is always whole and readable.

:func:`summarise` gives mean, standard deviation and count over seeds per experiment, ablation and
budget, and :func:`plot_budget_curve` draws a test metric against the number of labels with error bars
(mean +- std; never the best seed). ``qasa-vqa report SWEEP_DIR`` prints the one and writes the other.
"""

from __future__ import annotations

import csv
import fcntl
import math
import os
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from qasa_vqa.errors import QasaVqaError
from qasa_vqa.storage import atomic_save

__all__ = ["RESULTS_CSV", "append_row", "plot_budget_curve", "read_rows", "summarise"]

RESULTS_CSV = "results.csv"
_KEYS = ("experiment", "ablation", "n_labelled")


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_rows(path: str | Path) -> list[dict[str, str]]:
    """The rows of a results CSV (empty if it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def append_row(path: str | Path, row: Mapping[str, Any]) -> Path:
    """Append ``row`` to the CSV at ``path`` under a lock (module docstring)."""
    path = Path(path)
    values = {k: ("" if v is None else v) for k, v in row.items()}
    with _locked(path):
        header: list[str] = []
        if path.is_file() and path.stat().st_size:
            with open(path, newline="", encoding="utf-8") as handle:
                header = next(csv.reader(handle), [])
        new = [k for k in values if k not in header]
        if not new:
            with open(path, "a", newline="", encoding="utf-8") as handle:
                csv.DictWriter(handle, fieldnames=header).writerow(values)
                handle.flush()
                os.fsync(handle.fileno())
            return path
        rows = [*read_rows(path), values]
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(temporary, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=header + new, restval="")
            writer.writeheader()
            writer.writerows(rows)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    return path


def _number(text: Any) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def summarise(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> list[dict[str, Any]]:
    """Mean, std (ddof 1; 0 for one seed) and count of each of ``metrics`` over the rows of each
    (experiment, ablation, n_labelled), sorted by those keys."""
    groups: dict[tuple[str, ...], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(str(row.get(k, "")) for k in _KEYS), []).append(row)
    out = []
    for key in sorted(groups, key=lambda k: (k[0], k[1], _number(k[2]))):
        members = groups[key]
        entry: dict[str, Any] = dict(zip(_KEYS, key, strict=True)) | {"runs": len(members)}
        entry["seeds"] = sorted({str(m.get("seed", "")) for m in members})
        for metric in metrics:
            values = np.array([_number(m.get(metric)) for m in members])
            values = values[np.isfinite(values)]
            entry[metric] = {
                "mean": float(values.mean()) if values.size else math.nan,
                "std": float(values.std(ddof=1)) if values.size > 1 else 0.0,
                "n": int(values.size),
            }
        out.append(entry)
    return out


def plot_budget_curve(summary: Sequence[Mapping[str, Any]], metric: str, path: str | Path) -> Path:
    """``metric`` (mean +- std over seeds) against the number of labels, one line per experiment and
    ablation, as a PNG."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend (e.g. a notebook's) is left alone

    lines: dict[str, list[tuple[float, float, float]]] = {}
    for entry in summary:
        value = entry.get(metric)
        if not value or not value["n"]:
            continue
        label = entry["experiment"] + (f" ({entry['ablation']})" if entry.get("ablation") else "")
        lines.setdefault(label, []).append((_number(entry["n_labelled"]), value["mean"], value["std"]))
    if not lines:
        raise QasaVqaError(f"no run in the sweep reports {metric}")
    figure = Figure(figsize=(6, 4), dpi=120)
    axes = figure.subplots()
    for label, points in sorted(lines.items()):
        x, mean, std = (np.array(v) for v in zip(*sorted(points), strict=True))
        axes.errorbar(x, mean, yerr=std, marker="o", capsize=3, label=label)
    axes.set_xlabel("labelled videos")
    axes.set_ylabel(f"{metric} (mean ± std over seeds)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    return atomic_save(path, lambda target: figure.savefig(target, format="png"))
