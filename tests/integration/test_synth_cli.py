"""``qasa-vqa synth``: a whole tree with its manifest, resuming after SIGKILL, one-line errors."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qasa_vqa.cli import main
from qasa_vqa.video.distortions import MANIFEST_NAME
from qasa_vqa.video.reader import probe, read_frames
from qasa_vqa.video.writer import synthetic_frames, write_video

# relative path -> (frames, height, width): an odd size, a subfolder and a non-MP4 container included
CLIPS = {"a.mp4": (16, 72, 96), "sub/b.mkv": (14, 71, 95), "c.mov": (18, 48, 64)}


def _pristine(root: Path, frames_scale: int = 1) -> Path:
    for seed, (rel, (frames, h, w)) in enumerate(CLIPS.items()):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        pix_fmt = "yuv420p" if h % 2 == 0 else "yuv444p"
        write_video(
            root / rel, synthetic_frames(frames * frames_scale, h, w, seed=seed), pix_fmt=pix_fmt, crf=10
        )
    return root


def _finals(out: Path) -> list[Path]:
    return sorted(
        p for p in out.rglob("*") if p.is_file() and not p.name.startswith(".") and p.name != MANIFEST_NAME
    )


def _check_output(path: Path, source: Path) -> None:
    info, reference = probe(path), probe(source)
    assert (info.width, info.height) == (reference.width, reference.height), path
    assert abs(info.num_frames - reference.num_frames) <= 1, path
    assert len(read_frames(path, range(info.num_frames))) == info.num_frames


def test_synth_writes_every_version_of_every_clip_and_a_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pristine, out = _pristine(tmp_path / "in"), tmp_path / "out"
    assert main(["synth", str(pristine), str(out), "--workers", "2", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "written 39, skipped 0, failed 0" in printed and str(out / MANIFEST_NAME) in printed
    assert [p.relative_to(out).as_posix() for p in _finals(out)] == sorted(
        f"{k}/{rel}" for k in range(13) for rel in CLIPS
    )
    for path in _finals(out):
        _check_output(path, pristine.joinpath(*path.relative_to(out).parts[1:]))
    with (out / MANIFEST_NAME).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 39 and {r["status"] for r in rows} == {"written"}
    for row in rows:
        frames, h, w = CLIPS[row["source"]]
        assert (int(row["width"]), int(row["height"]), int(row["frames"])) == (w, h, frames)
        assert int(row["bytes"]) == (out / row["path"]).stat().st_size and float(row["fps"]) == 30
    assert [r["name"] for r in rows if r["source"] == "a.mp4"][:4] == [
        "reference",
        "mpeg2_q1",
        "mpeg2_q20",
        "mpeg2_q30",
    ]


def test_synth_resumes_after_being_killed_without_redoing_finished_files(tmp_path: Path) -> None:
    pristine, out = _pristine(tmp_path / "in", frames_scale=2), tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "qasa_vqa",
        "synth",
        str(pristine),
        str(out),
        "--workers",
        "2",
        "--no-progress",
    ]
    run = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while run.poll() is None and time.monotonic() < deadline:  # kill with outputs done and some half-written
        if len(_finals(out)) >= 6 and any(".partial" in p.name for p in out.rglob(".*")):
            break
        time.sleep(0.01)
    assert run.poll() is None, "the run ended before it could be killed"
    os.killpg(run.pid, signal.SIGKILL)  # the whole run: the command and its workers
    run.wait(timeout=30)
    assert run.returncode == -signal.SIGKILL, run.stderr.read().decode() if run.stderr else ""
    finished = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in _finals(out)}
    assert 6 <= len(finished) < 39 and not (out / MANIFEST_NAME).exists()
    for path in finished:  # nothing under a final name is half-written
        _check_output(path, pristine.joinpath(*path.relative_to(out).parts[1:]))

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert rerun.returncode == 0, rerun.stderr
    assert f"written {39 - len(finished)}, skipped {len(finished)}, failed 0" in rerun.stdout
    assert len(_finals(out)) == 39 and not [p for p in out.rglob(".*") if p.is_file()]  # no partial left
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in finished} == finished
    with (out / MANIFEST_NAME).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 39 and sum(r["status"] == "skipped" for r in rows) == len(finished)
    assert all(int(r["frames"]) == 2 * CLIPS[r["source"]][0] for r in rows)


@pytest.mark.parametrize("case", ["missing", "empty", "versions"])
def test_synth_rejects_bad_input_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    in_dir = tmp_path / "in"
    extra: list[str] = []
    if case == "empty":
        in_dir.mkdir()
    elif case == "versions":
        _pristine(in_dir)
        extra = ["--versions", "0,13"]
    assert main(["synth", str(in_dir), str(tmp_path / "out"), "--no-progress", *extra]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert ("13" if case == "versions" else str(in_dir)) in err
    assert not (tmp_path / "out").exists()
