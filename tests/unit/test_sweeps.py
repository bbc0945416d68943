"""Sweep results: concurrent appends from many processes keep every row exactly once without locks (row
files, rebuilt CSV), stale temporary files and CSVs from before the row files are handled, summaries are
mean +- std over seeds, the curve is drawn."""

from __future__ import annotations

import csv
import math
import time
from collections import Counter
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pytest

from qasa_vqa import sweeps
from qasa_vqa.errors import QasaVqaError
from qasa_vqa.storage import atomic_write_text
from qasa_vqa.sweeps import append_row, plot_budget_curve, read_rows, rebuild_csv, rows_folder, summarise


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


def _csv_table(path: Path) -> tuple[list[str], list[list[str]]]:
    """The header and the records of a CSV, every record checked to have the header's length."""
    with open(path, newline="", encoding="utf-8") as handle:
        header, *records = list(csv.reader(handle))
    assert len(set(header)) == len(header), header
    assert all(len(record) == len(header) for record in records)
    return header, records


def _jittery_writer(args: tuple[str, int]) -> None:
    path, worker = args
    rng = np.random.default_rng(1000 + worker)
    for i in range(5):
        time.sleep(float(rng.uniform(0.0, 0.02)))
        row = {"experiment": "demo", "ablation": "", "n_labelled": 6, "seed": i, "run": f"{worker}-{i}",
               "test/x/qasa/srcc": float(rng.uniform())}  # fmt: skip
        if i == 2:
            row[f"test/only{worker}/qasa/srcc"] = worker
        append_row(path, row)


def test_many_processes_each_row_once(tmp_path: Path) -> None:
    path = tmp_path / "sweep" / "results.csv"
    with get_context("fork").Pool(8) as pool:
        pool.map(_jittery_writer, [(str(path), worker) for worker in range(8)], chunksize=1)
    header, records = _csv_table(path)
    assert header[:6] == ["experiment", "ablation", "n_labelled", "seed", "run", "test/x/qasa/srcc"]
    assert {f"test/only{w}/qasa/srcc" for w in range(8)} <= set(header)
    runs = Counter(record[header.index("run")] for record in records)
    assert runs == Counter({f"{w}-{i}": 1 for w in range(8) for i in range(5)})
    assert len(list(rows_folder(path).glob("*.row.json"))) == 40
    leftovers = [
        p.name for p in [*path.parent.iterdir(), *rows_folder(path).iterdir()] if ".partial" in p.name
    ]
    assert not leftovers  # every temporary file was renamed or removed
    assert read_rows(path) == read_rows(rebuild_csv(path))  # the CSV is what its row files say


def test_stale_temporary_files_are_never_read(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    append_row(path, {"experiment": "demo", "seed": 0, "m": 0.5})
    folder = rows_folder(path)
    # what a run killed mid-write leaves: a half-written row under its temporary name, a half CSV
    (folder / ".00000000000000000001-host-7-abc.row.json.7.partial.json").write_text('{"experiment": "de')
    (tmp_path / ".results.csv.00000000000000000001-host-7-abc.partial").write_text("experiment,se")
    append_row(path, {"experiment": "demo", "seed": 1, "m": 0.7})
    header, records = _csv_table(path)
    assert header == ["experiment", "seed", "m"]
    assert records == [["demo", "0", "0.5"], ["demo", "1", "0.7"]]


def test_columns_are_the_union_and_values_as_csv_writes_them(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    append_row(path, {"a": 1, "b": 0.1 + 0.2})
    append_row(path, {"a": None, "c": np.float32(0.5), "d": math.nan})
    append_row(path, {"b": True})
    assert read_rows(path) == [
        {"a": "1", "b": "0.30000000000000004", "c": "", "d": ""},
        {"a": "", "b": "", "c": "0.5", "d": "nan"},
        {"a": "", "b": "True", "c": "", "d": ""},
    ]


def _legacy_csv(path: Path) -> None:
    """A results CSV as the locked appends wrote it, before row files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "experiment,ablation,n_labelled,seed,test/x/qasa/srcc\r\n"
        "demo,,6,0,0.41\r\n"
        "demo,supervised,12,1,0.52\r\n"
        "demo,,24,2,0.63\r\n",
        encoding="utf-8",
    )
    path.with_name(path.name + ".lock").touch()


def test_a_csv_from_before_the_row_files_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    _legacy_csv(path)
    before = read_rows(path)
    append_row(path, {"experiment": "demo", "ablation": "", "n_labelled": 6, "seed": 3, "new/metric": 1.5})
    append_row(path, {"experiment": "demo", "ablation": "", "n_labelled": 6, "seed": 4})
    rows = read_rows(path)
    assert [{k: r[k] for k in before[0]} for r in rows[:3]] == before  # kept, first, once, unchanged
    assert [r["seed"] for r in rows] == ["0", "1", "2", "3", "4"]
    assert list(rows[0]) == [*before[0], "new/metric"]
    assert rows[3]["new/metric"] == "1.5" and rows[0]["new/metric"] == ""


def _one_append(args: tuple[str, int]) -> None:
    path, worker = args
    append_row(path, {"experiment": "demo", "ablation": "", "n_labelled": 6, "seed": 10 + worker})


def test_first_appends_to_an_old_csv_at_once_keep_its_rows_once(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    _legacy_csv(path)
    with get_context("fork").Pool(6) as pool:
        pool.map(_one_append, [(str(path), worker) for worker in range(6)], chunksize=1)
    seeds = Counter(row["seed"] for row in read_rows(path))
    assert seeds == Counter([str(s) for s in (0, 1, 2, *range(10, 16))])


def test_a_rebuild_that_lands_after_a_newer_one_is_redone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Job A lists the rows, job B writes its row and renames its CSV first, then A's stale CSV lands
    over B's: A sees the row folder changed and rebuilds, so B's row is not lost."""
    path = tmp_path / "results.csv"
    write = sweeps.atomic_write_bytes
    calls: list[bytes] = []

    def late_rename(target: Path, data: bytes) -> Path:
        if not calls:  # B's row and B's CSV arrive between A's listing and A's rename
            atomic_write_text(rows_folder(path) / "99999999999999999999-b-1-0.row.json", '{"run": "b"}')
            write(target, read_rows_text(rows_folder(path)).encode("utf-8"))
        calls.append(data)
        return write(target, data)

    def read_rows_text(folder: Path) -> str:
        return sweeps._render(folder, sweeps._row_names(folder))

    monkeypatch.setattr(sweeps, "atomic_write_bytes", late_rename)
    append_row(path, {"run": "a"})
    assert len(calls) == 2 and b"b" not in calls[0]
    assert [row["run"] for row in read_rows(path)] == ["a", "b"]
