"""Sweep results: concurrent appends keep every row, summaries are mean +- std over seeds, the curve is drawn."""

from __future__ import annotations

import math
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pytest

from qasa_vqa.errors import QasaVqaError
from qasa_vqa.sweeps import append_row, plot_budget_curve, read_rows, summarise


def _writer(args: tuple[str, int]) -> None:
    path, worker = args
    for i in range(15):
        row = {"experiment": "demo", "ablation": "", "n_labelled": 6 * (1 + worker % 2), "seed": i,
               "test/x/qasa/srcc": worker + i / 100}  # fmt: skip
        if i % 5 == 4:  # a run that reports one more metric: the file is rewritten with the new column
            row[f"test/extra{worker}/qasa/srcc"] = 0.5
        append_row(path, row)


def test_concurrent_appends_keep_every_row(tmp_path: Path) -> None:
    path = tmp_path / "sweep" / "results.csv"
    with get_context("fork").Pool(4) as pool:
        pool.map(_writer, [(str(path), worker) for worker in range(4)])
    rows = read_rows(path)
    assert len(rows) == 60
    assert sorted((float(r["test/x/qasa/srcc"])) for r in rows) == pytest.approx(
        sorted(w + i / 100 for w in range(4) for i in range(15))
    )
    assert all(f"test/extra{w}/qasa/srcc" in rows[0] for w in range(4))  # the union of the columns


def test_summary_is_mean_and_std_over_seeds(tmp_path: Path) -> None:
    rows = [
        {"experiment": "demo", "ablation": "", "n_labelled": "12", "seed": str(s), "m": str(v)}
        for s, v in enumerate((0.5, 0.7, 0.9))
    ] + [{"experiment": "demo", "ablation": "supervised", "n_labelled": "6", "seed": "0", "m": "0.4"}]
    summary = summarise(rows, ["m"])
    assert [(e["ablation"], e["n_labelled"], e["runs"]) for e in summary] == [
        ("", "12", 3),
        ("supervised", "6", 1),
    ]
    assert summary[0]["m"]["mean"] == pytest.approx(0.7)
    assert summary[0]["m"]["std"] == pytest.approx(np.std([0.5, 0.7, 0.9], ddof=1))
    assert summary[1]["m"] == {"mean": 0.4, "std": 0.0, "n": 1}
    picture = plot_budget_curve(summary, "m", tmp_path / "curve.png")
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(QasaVqaError, match="no run"):
        plot_budget_curve(summary, "absent", tmp_path / "none.png")
    assert math.isnan(summarise([{"experiment": "d", "m": "nan"}], ["m"])[0]["m"]["mean"])
