"""The ``qasa-vqa`` command line: probe, views and demo, and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qasa_vqa.cli import main


def test_probe_prints_json(videos: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["probe", str(videos["rotated_phone"]), "--json"]) == 0
    fields = json.loads(capsys.readouterr().out)
    assert fields["num_frames"] == 20 and fields["rotation"] == 90 and fields["display_size"] == [96, 128]


def test_views_draws_a_picture(
    videos: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pictures" / "views.png"
    assert main(["views", str(videos["odd_size_vp9"]), "--out", str(out), "--frames", "3"]) == 0
    assert "wrote" in capsys.readouterr().out
    with Image.open(out) as image:
        assert image.width == 170 + 3 * (224 + 6)
        assert image.height > 4 * 224
        # not a blank canvas: the fragment rows hold video content
        assert len(np.unique(np.asarray(image.crop((170, 300, 400, 500))).reshape(-1, 3), axis=0)) > 50


def test_bad_video_is_one_line_and_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bogus = tmp_path / "bogus.mp4"
    bogus.write_text("hello")
    assert main(["views", str(bogus), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert str(bogus) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.png").exists()


def test_module_entry_point_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "qasa_vqa", "--version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert result.stdout.startswith("qasa-vqa ")


@pytest.mark.slow
def test_demo_writes_clip_and_picture(tmp_path: Path) -> None:
    assert main(["demo", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "sample_720p.mp4").exists() and (tmp_path / "views.png").exists()
