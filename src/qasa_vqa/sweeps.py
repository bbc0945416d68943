"""Label-budget sweeps: one results CSV that concurrent runs append to, its summary and its plot.

Every run of a sweep appends one row (:func:`append_row`): experiment, ablation, budget (``n_labelled``),
``n_unlabelled``, seed, split file and its SHA-256, steps, checkpoint, and every validation and test
metric. Runs of a sweep may finish at the same time in several processes and on several machines (joblib,
SLURM job arrays on a shared filesystem, where file locks are not to be trusted), so no run ever edits a
file that another run writes, and nothing is locked:

* each row is a file of its own, ``<csv>.rows/<time>-<host>-<pid>-<random>.row.json``, written whole
  under a temporary name and renamed (:func:`qasa_vqa.storage.atomic_write_text`);
* the CSV is then rebuilt from all the row files (oldest name first; the header is the union of the
  columns in order of first appearance) into a temporary file whose name no other process can take
  (host, pid, random), fsynced and renamed over the CSV, so a reader sees a whole CSV, old or new;
* after its rename the run lists the row files again, and if they are not the ones it wrote from, it
  rebuilds again. This converges on every row: whichever run renames last lists after every row file
  that any run wrote before renaming, so its CSV holds them all (each listing opens the folder anew,
  which NFS revalidates under its close-to-open consistency; a ``nocto`` mount would void this);
* a CSV made before this scheme (no row folder yet) keeps its rows: the first append records them, once,
  in ``<csv>.rows/pre-existing.json``, created with ``link`` so that of two first appends only one wins
  (the winner read the CSV before any rebuild could replace it).

Temporary files left by a killed run start with a dot and are never read. The row files are the record;
the CSV is rebuilt from them (:func:`rebuild_csv`, also after deleting a row file or losing the CSV).

:func:`summarise` gives mean, standard deviation and count over seeds per experiment, ablation and
budget, and :func:`plot_budget_curve` draws a test metric against the number of labels with error bars
(mean +- std; never the best seed). ``qasa-vqa report SWEEP_DIR`` prints the one and writes the other.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qasa_vqa.errors import QasaVqaError
from qasa_vqa.storage import atomic_save, atomic_write_bytes, atomic_write_text, create_once, unique_name

__all__ = [
    "RESULTS_CSV",
    "append_row",
    "plot_budget_curve",
    "read_rows",
    "rebuild_csv",
    "rows_folder",
    "summarise",
]

RESULTS_CSV = "results.csv"
_KEYS = ("experiment", "ablation", "n_labelled")
_ROW_SUFFIX = ".row.json"
_PRE_EXISTING = "pre-existing.json"


def rows_folder(path: str | Path) -> Path:
    """The folder that holds the row files of the CSV at ``path`` (``<csv>.rows``)."""
    path = Path(path)
    return path.with_name(path.name + ".rows")


def _unique() -> str:
    """A row file's name part: the time first (rows sort oldest first), then what no other process takes."""
    return f"{time.time_ns():020d}-{unique_name()}"


def _read_json(path: Path, attempts: int = 20) -> Any:
    """A row file's JSON; one that does not parse is read again for a second (only a pre-existing.json
    made through the O_EXCL fallback can be seen half-written), then reported."""
    for _ in range(attempts - 1):
        with contextlib.suppress(json.JSONDecodeError):
            return json.loads(path.read_text(encoding="utf-8"))
        time.sleep(0.05)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise QasaVqaError(f"{path}: not a whole JSON row file ({error}); move it away to go on") from None


def _record_pre_existing(path: Path, folder: Path) -> None:
    """Record, once, the rows the CSV held before its row folder existed (module docstring)."""
    record = folder / _PRE_EXISTING
    if record.exists():
        return
    header: list[str] = []
    rows: list[dict[str, str]] = []
    if path.is_file():
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            header = list(reader.fieldnames or [])
            rows = [{k: v for k, v in row.items() if k is not None} for row in reader]
    create_once(record, json.dumps({"header": header, "rows": rows}))


def _row_names(folder: Path) -> frozenset[str]:
    with os.scandir(folder) as entries:
        return frozenset(
            e.name for e in entries if e.name.endswith(_ROW_SUFFIX) and not e.name.startswith(".")
        )


def _render(folder: Path, names: frozenset[str], cache: dict[str, Mapping[str, Any]] | None = None) -> str:
    """The CSV text of the pre-existing rows and the row files ``names`` (oldest name first); ``cache``
    keeps rows already read (a row file never changes), so a rebuild reads only the new ones."""
    cache = {} if cache is None else cache
    header: dict[str, None] = {}
    rows: list[Mapping[str, Any]] = []
    record = folder / _PRE_EXISTING
    if record.is_file():
        before = _read_json(record)
        header |= dict.fromkeys(before["header"])
        rows += before["rows"]
    for name in sorted(names):
        if name not in cache:
            try:
                cache[name] = _read_json(folder / name)
            except FileNotFoundError:  # deleted since the listing; the next listing differs: we come back
                continue
        rows.append(cache[name])
    for row in rows:
        header |= dict.fromkeys(row)
    text = io.StringIO()
    if header:
        writer = csv.DictWriter(text, fieldnames=list(header), restval="")
        writer.writeheader()
        writer.writerows(rows)
    return text.getvalue()


def rebuild_csv(path: str | Path) -> Path:
    """Rewrite the CSV at ``path`` from its row files, again until the row files it was written from are
    still all there are (module docstring); a CSV without a row folder first has its rows recorded."""
    path = Path(path)
    folder = rows_folder(path)
    folder.mkdir(parents=True, exist_ok=True)
    _record_pre_existing(path, folder)
    names = _row_names(folder)
    cache: dict[str, Mapping[str, Any]] = {}
    while True:
        atomic_write_bytes(path, _render(folder, names, cache).encode("utf-8"))  # csv line ends as written
        listed = _row_names(folder)
        if listed == names:
            return path
        names = listed


def read_rows(path: str | Path) -> list[dict[str, str]]:
    """The rows of a results CSV (empty if it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def append_row(path: str | Path, row: Mapping[str, Any]) -> Path:
    """Add ``row`` to the CSV at ``path``: write it as a row file of its own, then rebuild the CSV from
    all row files (module docstring). Safe from any number of processes on any number of machines."""
    path = Path(path)
    folder = rows_folder(path)
    folder.mkdir(parents=True, exist_ok=True)
    _record_pre_existing(path, folder)  # before this row exists, so the CSV read there is the old one
    values = {str(k): ("" if v is None else v) for k, v in row.items()}
    atomic_write_text(folder / f"{_unique()}{_ROW_SUFFIX}", json.dumps(values, default=str))
    return rebuild_csv(path)


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
