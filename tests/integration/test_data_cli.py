"""`qasa-vqa manifest` and `qasa-vqa split`: summaries, split files, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qasa_vqa.cli import main


@pytest.fixture
def label_file(tmp_path: Path) -> Path:
    path = tmp_path / "labels.txt"
    path.write_text("".join(f"v/{i}.mp4, -1, -1, {1 + (i % 40) / 10}\n" for i in range(60)))
    return path


def test_manifest_summarises_a_label_file(label_file: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "0.mp4").write_bytes(b"")
    assert main(["manifest", str(label_file), "--root", str(tmp_path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["format"] == "fastvqa_txt" and summary["entries"] == 60
    assert summary["scale"] == [1.0, 5.0] and summary["mos_min"] == 1.0 and summary["mos_max"] == 4.9
    assert summary["missing"] == 59


def test_split_writes_a_budget_once(label_file: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "split.json"
    arguments = [
        "split",
        str(label_file),
        "--labelled",
        "10",
        "--validation",
        "5",
        "--seed",
        "2",
        "--out",
        str(out),
    ]
    assert main(arguments) == 0
    assert f"wrote {out}: 10 labelled, 5 validation, 45 unlabelled" in capsys.readouterr().out
    payload = json.loads(out.read_text())
    assert payload["inputs"]["seed"] == 2 and len(payload["labelled"]) == 10
    assert main(arguments) == 0
    assert f"kept {out}" in capsys.readouterr().out
    assert main([*arguments[:-3], "3", "--out", str(out)]) == 2  # another seed, same file
    assert "made from other inputs (differs in seed)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "give either --official or --labelled N"),
        (["--labelled", "3", "--official"], "give either --official or --labelled N"),
        (["--official"], "60 entries; the official QASA split needs"),
        (["--labelled", "70"], "exceeds the 60 in the manifest"),
        (["--labelled", "3", "--strategy", "best"], "unknown split strategy 'best'"),
    ],
)
def test_split_errors_are_one_line(
    label_file: Path, tmp_path: Path, capsys, extra: list[str], message: str
) -> None:
    assert main(["split", str(label_file), "--out", str(tmp_path / "s.json"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "s.json").exists()


def test_demo_data_refuses_a_folder_holding_something_else(tmp_path: Path, capsys) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["demo-data", "--out", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{tmp_path} is not empty and holds no demo corpus of seed 0" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
