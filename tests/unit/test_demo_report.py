"""The demo's report: its table comes from evaluate's metrics.json files, and the report links what exists."""

from __future__ import annotations

import json
from pathlib import Path

from qasa_vqa.demo import METHODS, _results, _table_text, _write_report


def _metrics(folder: Path, branches: dict[str, float]) -> None:
    folder.mkdir(parents=True)
    results = {
        branch: {"srcc": value, "srcc_low": value - 0.3, "srcc_high": value + 0.2, "plcc": value / 2,
                 "plcc_low": -0.1, "plcc_high": 0.4, "n": 18.0}
        for branch, value in branches.items()
    }  # fmt: skip
    (folder / "metrics.json").write_text(
        json.dumps({"model": "m", "fit": "logistic4", "results": {"demo_test": results}})
    )
    (folder / "scatter_demo_test.png").write_bytes(b"png")


def test_table_and_report_follow_the_metrics_files(tmp_path: Path) -> None:
    _metrics(tmp_path / "eval" / "full", {"qasa": 0.25, "stvqrl": 0.3, "clip": 0.05})
    _metrics(tmp_path / "eval" / "supervised", {"qasa": 0.125, "stvqrl": 0.2, "clip": 0.0})
    _metrics(tmp_path / "eval" / "zeroshot", {"clip": 0.0625})
    table = _results(tmp_path)
    assert [(row["method"], row["srcc"]) for row in table] == [
        ("full", 0.25), ("full/stvqrl", 0.3), ("full/clip", 0.05), ("supervised", 0.125),
        ("supervised/stvqrl", 0.2), ("supervised/clip", 0.0), ("zeroshot", 0.0625),
    ]  # fmt: skip
    text = _table_text(table)
    assert "0.250 [-0.05, 0.45]" in text and "0.062 [-0.24, 0.26]" in text and "18 videos" in text
    maps = tmp_path / "maps"
    maps.mkdir()
    scores = [
        {"path": "a.mp4", "score": "0.9", "mos_pred": "71.5", "map": str(maps / "a.png")},
        {"path": "b.mp4", "score": "0.1", "mos_pred": "", "map": str(maps / "b.png")},
    ]
    report = _write_report(tmp_path, table, None, scores).read_text()
    for method in METHODS:
        assert f"eval/{method}/scatter_demo_test.png" in report
    assert report.index("maps/a.png") < report.index("maps/b.png"), "best first, then worst"
    assert "predicted MOS 71.5" in report and "| QASA-VQA (demo CLIP guide), combined score | 0.250" in report
