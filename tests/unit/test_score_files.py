"""The files around scoring: atomic writes, the resumable rows file, calibration files, map geometry."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from qasa_vqa.calibration import Calibration, CalibrationError, read_calibration
from qasa_vqa.errors import QasaVqaError
from qasa_vqa.maps import cell_values, paint
from qasa_vqa.metrics import apply_fit, fit_logistic
from qasa_vqa.score_files import RowWriter, read_rows
from qasa_vqa.scoring import segment_ranges
from qasa_vqa.storage import atomic_save, atomic_write_text

FIELDS = ("path", "score", "status", "segments")


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path: Path) -> None:
    target = atomic_write_text(tmp_path / "a.json", "old")

    def half_then_fail(partial: Path) -> None:
        partial.write_text("new, half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_save(target, half_then_fail)
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["a.json"]
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["a.json"]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_rows_survive_a_torn_last_line_and_resume_skips_them(tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"scores{suffix}"
    with RowWriter(out, FIELDS) as writer:
        writer.write({"path": "a.mp4", "score": 0.5, "status": "ok", "segments": [{"start": 0.0}]})
        writer.write({"path": "b.mp4", "score": None, "status": "error"})
    complete = out.read_bytes()
    with open(out, "ab") as handle:
        handle.write(b"c.mp4,0.7" if suffix == ".csv" else b'{"path": "c.mp4", "sc')
    with pytest.raises(QasaVqaError, match="--resume"):
        RowWriter(out, FIELDS)
    with RowWriter(out, FIELDS, resume=True) as writer:
        assert out.read_bytes() == complete  # the torn line is gone
        assert writer.done == {os.path.abspath("a.mp4"), os.path.abspath("b.mp4")}
        writer.write({"path": "c.mp4", "score": 0.25, "status": "ok"})
    rows = read_rows(out)
    assert [r["path"] for r in rows] == ["a.mp4", "b.mp4", "c.mp4"]
    first = rows[0]["segments"] if suffix == ".jsonl" else json.loads(rows[0]["segments"])
    assert first == [{"start": 0.0}]
    assert float(rows[2]["score"]) == 0.25 and rows[1]["score"] in (None, "")
    with RowWriter(out, FIELDS, overwrite=True) as writer:
        assert not writer.done
    assert read_rows(out) == []


def test_rows_file_must_be_csv_or_jsonl(tmp_path: Path) -> None:
    with pytest.raises(QasaVqaError, match=r"\.csv or \.jsonl"):
        RowWriter(tmp_path / "scores.txt", FIELDS)


def test_calibration_round_trip_applies_the_fitted_logistic(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    score = rng.uniform(0, 2, 50)
    mos = 20 + 60 / (1 + np.exp(-(score - 1) / 0.3)) + rng.normal(0, 2, 50)
    params, _ = fit_logistic(score, mos)
    calibration = Calibration("qasa", "logistic4", tuple(params), float(mos.min()), float(mos.max()), 50)
    again = read_calibration(calibration.save(tmp_path / "c.json"))
    assert again == calibration
    np.testing.assert_allclose(again.apply(score), apply_fit(score, params, "logistic4"))
    assert again.apply(1.0) == pytest.approx(20 + 60 / 2, abs=3)  # the logistic's midpoint


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "not a readable"),
        ('{"format": "other"}', "not a qasa-vqa calibration"),
        ('{"format": "qasa-vqa-calibration", "version": 1, "branch": "qasa"}', "incomplete"),
        ('{"format": "qasa-vqa-calibration", "version": 1, "branch": "qasa", "fit": "logistic4", '
         '"params": [1, 2, 3], "mos_min": 0, "mos_max": 1, "n": 3}', "needs 4"),
        ('{"format": "qasa-vqa-calibration", "version": 1, "branch": "x", "fit": "linear", '
         '"params": [1, 2], "mos_min": 0, "mos_max": 1, "n": 3}', "branch"),
    ],
)  # fmt: skip
def test_bad_calibration_files_name_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.json"
    path.write_text(text)
    with pytest.raises(CalibrationError, match=message) as raised:
        read_calibration(path)
    assert str(path) in str(raised.value)


def test_cell_values_average_the_map_over_each_patch() -> None:
    quality_map = np.arange(2 * 4 * 4, dtype=float).reshape(2, 4, 4)
    # patch 16, stride 32: fragment patch (i, j) lies in map cell (i // 2, j // 2)
    values = cell_values(quality_map, grid=7, patch=16, stride=32)
    assert values.shape == (2, 7, 7)
    for i in range(7):
        for j in range(7):
            assert values[1, i, j] == quality_map[1, i // 2, j // 2]
    # patch 32, stride 16 (finer map): each patch averages a 2 x 2 block of map cells
    fine = np.arange(14 * 14, dtype=float).reshape(1, 14, 14)
    averaged = cell_values(fine, grid=7, patch=32, stride=16)
    assert averaged[0, 3, 5] == pytest.approx(fine[0, 6:8, 10:12].mean())


def test_paint_fills_each_cell_box() -> None:
    cells = np.zeros((2, 2, 4))
    for i in range(2):
        for j in range(2):
            cells[i, j] = (i * 5, j * 4, (i + 1) * 5, (j + 1) * 4)
    image = paint(np.array([[1.0, 2.0], [3.0, 4.0]]), cells, (10, 8))
    assert image[0, 0] == 1 and image[0, 7] == 2 and image[9, 0] == 3 and image[9, 7] == 4


def test_segment_ranges_cover_the_video_once() -> None:
    assert segment_ranges(100, 25.0, 1.0) == [(0, 25), (25, 50), (50, 75), (75, 100)]
    assert segment_ranges(16, 25.0, 0.24) == [(0, 6), (6, 12), (12, 16)]
    assert segment_ranges(10, 0.0, 1.0) == [(0, 10)]  # no frame rate: one segment
