"""``qasa-vqa score`` and :func:`qasa_vqa.load_scorer` on generated demo videos and broken files.

A tiny random QASA model (the tiny twin's backbone and a tiny CLIP) stands in for a trained one: what
is checked is the scorer's contract (rows, errors, determinism, resume after SIGKILL, spread of K
draws, segments, calibration, quality maps), not the model's accuracy.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from qasa_vqa import load_scorer
from qasa_vqa.calibration import Calibration
from qasa_vqa.cli import main
from qasa_vqa.data.datasets import ViewSpec
from qasa_vqa.data.synthetic import generate_demo_corpus
from qasa_vqa.errors import QasaVqaError
from qasa_vqa.maps import cell_boxes, paint
from qasa_vqa.models.clip_quality import build_clip_quality
from qasa_vqa.models.factory import build_qasa_model
from qasa_vqa.models.qasa import QASAModel
from qasa_vqa.score_files import collect_videos, read_rows
from qasa_vqa.scoring import Scorer, ScoreSettings
from qasa_vqa.video.fragments import IMAGENET_MEAN, IMAGENET_STD
from qasa_vqa.video.writer import write_video

TINY_BACKBONE = {"embed_dim": 24, "depths": [1, 1, 2, 1], "num_heads": [1, 2, 2, 4], "window_size": [4, 7, 7]}
TINY_VIEWS = ViewSpec(segments=4, frames_per_segment=2, test_frames_per_segment=4, patch=16)
SCORE_COLUMNS = ("score", "stvqrl", "clip")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 demo videos (10 scenes x 2 variants, 16 frames of 96 x 72) with their manifest."""
    root = tmp_path_factory.mktemp("demo")
    knobs = {"scenes": 10, "variants": 2, "frames": 16, "width": 96, "height": 72, "tree_scenes": 1}
    generate_demo_corpus(root / "demo", seed=5, progress=False, build_tree=False, **knobs)
    return root / "demo"


@pytest.fixture(scope="module")
def inputs(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the 20 demo videos and 3 broken files: empty, random bytes, truncated."""
    folder = tmp_path_factory.mktemp("inputs")
    videos = sorted((corpus / "videos").glob("*.mp4"))
    assert len(videos) == 20
    for video in videos:
        os.symlink(video, folder / video.name)
    (folder / "broken_empty.mp4").write_bytes(b"")
    (folder / "broken_random.mp4").write_bytes(np.random.default_rng(0).bytes(30_000))
    data = videos[0].read_bytes()
    (folder / "broken_truncated.mp4").write_bytes(data[: len(data) // 2])
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from qasa_vqa.models.checkpoints import save_qasa

    torch.manual_seed(0)
    clip = build_clip_quality("tiny", pretrained=None)
    model = build_qasa_model(TINY_BACKBONE, clip, head={"hidden_channels": 16}, seed=0)
    path = tmp_path_factory.mktemp("model") / "qasa_model.pt"
    return save_qasa(model.eval(), path, views=dataclasses.asdict(TINY_VIEWS))


def _score(args: list[str]) -> int:
    return main(["score", *args, "--quiet"])


def _by_path(rows: list[dict]) -> dict[str, dict]:
    return {Path(row["path"]).name: row for row in rows}


@pytest.fixture(scope="module")
def first_run(inputs: Path, checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder scored once: CSV, one decoding worker, batch 1."""
    out = tmp_path_factory.mktemp("first") / "scores.csv"
    assert _score([str(inputs), "--checkpoint", str(checkpoint), "--out", str(out), "--workers", "1"]) == 0
    return out


def test_twenty_videos_and_three_broken_files_give_23_rows(first_run: Path) -> None:
    rows = _by_path(read_rows(first_run))
    assert len(rows) == 23
    errors = {name: row for name, row in rows.items() if row["status"] == "error"}
    assert sorted(errors) == ["broken_empty.mp4", "broken_random.mp4", "broken_truncated.mp4"]
    assert "empty" in errors["broken_empty.mp4"]["error"]
    assert all(row["error"] and row["score"] == "" for row in errors.values())
    for name, row in rows.items():
        if name in errors:
            continue
        assert row["status"] == "ok" and row["error"] == ""
        score, stvqrl, clip = (float(row[c]) for c in SCORE_COLUMNS)
        assert 0 < stvqrl < 1 and 0 < clip < 2 and math.isclose(score, stvqrl * clip, rel_tol=1e-5)
        assert (int(row["width"]), int(row["height"]), int(row["num_frames"])) == (96, 72, 16)
        assert float(row["fps"]) == 25.0 and float(row["duration"]) == pytest.approx(0.64)
        assert float(row["decode_ms"]) > 0 and float(row["model_ms"]) > 0
    scores = [float(row["score"]) for name, row in rows.items() if name not in errors]
    assert len(set(scores)) > 10, "different videos get different scores"


def test_the_same_command_twice_gives_identical_scores(
    first_run: Path, inputs: Path, checkpoint: Path, tmp_path: Path
) -> None:
    again = tmp_path / "again.csv"
    _score([str(inputs), "--checkpoint", str(checkpoint), "--out", str(again), "--workers", "1"])
    assert [(r["path"], r["score"], r["stvqrl"], r["clip"]) for r in read_rows(again)] == [
        (r["path"], r["score"], r["stvqrl"], r["clip"]) for r in read_rows(first_run)
    ]


def test_batches_and_inline_decoding_agree_with_the_cli(
    first_run: Path, inputs: Path, checkpoint: Path
) -> None:
    videos = [*sorted(inputs.glob("[!b]*.mp4"))[:5], inputs / "broken_random.mp4"]
    rows = list(load_scorer(checkpoint, batch_size=3, workers=0).score_many(videos))
    reference = _by_path(read_rows(first_run))
    assert [Path(r["path"]).name for r in rows] == [v.name for v in videos], "rows come in input order"
    assert rows[-1]["status"] == "error"
    for row in rows[:-1]:
        for column in SCORE_COLUMNS:
            assert row[column] == pytest.approx(float(reference[Path(row["path"]).name][column]), rel=1e-5)


def test_api_row_equals_the_cli_row(inputs: Path, checkpoint: Path, tmp_path: Path) -> None:
    video = sorted(inputs.glob("[!b]*.mp4"))[3]
    out = tmp_path / "one.jsonl"
    _score([str(video), "--checkpoint", str(checkpoint), "--out", str(out), "--workers", "0"])
    (cli_row,) = read_rows(out)
    row = load_scorer(checkpoint).score(video)
    assert row["status"] == "ok" and row["score"] == cli_row["score"] and row["clip"] == cli_row["clip"]
    bad = load_scorer(checkpoint).score(inputs / "broken_random.mp4")
    assert bad["status"] == "error" and "broken_random.mp4" in bad["error"]


def test_inputs_as_folder_glob_and_label_file(corpus: Path, inputs: Path) -> None:
    videos = sorted((corpus / "videos").glob("*.mp4"))
    assert [p.name for p in collect_videos([corpus / "videos"])] == [p.name for p in videos]
    assert len(collect_videos([str(corpus / "videos" / "*_00.mp4")])) == 10
    from_labels = collect_videos([corpus / "manifest.csv"])
    assert sorted(p.name for p in from_labels) == [p.name for p in videos]
    assert all(p.is_file() for p in from_labels)
    # duplicates are dropped, first occurrence kept; a missing file is kept for its error row
    mixed = collect_videos([videos[0], corpus / "videos", "missing.mp4"])
    assert mixed[0] == videos[0] and len(mixed) == 21 and mixed[-1] == Path("missing.mp4")
    with pytest.raises(QasaVqaError, match="no files match"):
        collect_videos([str(corpus / "nothing-*.mp4")])


def test_existing_output_is_refused_without_resume(
    inputs: Path, checkpoint: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "s.csv"
    out.write_text("path,score\nx.mp4,0.5\n")
    assert _score([str(inputs), "--checkpoint", str(checkpoint), "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err and out.read_text() == "path,score\nx.mp4,0.5\n"
    assert _score([str(inputs), "--checkpoint", str(checkpoint), "--out", str(out), "--resume"]) == 2
    assert "columns" in capsys.readouterr().err  # another run's columns: not mixed in


def test_sigkill_then_resume_scores_each_video_exactly_once(
    first_run: Path, inputs: Path, checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "killed.jsonl"
    command = [sys.executable, "-m", "qasa_vqa", "score", str(inputs), "--checkpoint", str(checkpoint),
               "--out", str(out), "--workers", "0", "--quiet"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= 4:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()
    written = out.read_bytes()
    assert 4 <= written.count(b"\n") < 23
    with open(out, "ab") as handle:  # a kill in the middle of a write leaves a torn line
        handle.write(b'{"path": "' + str(inputs).encode() + b"/half-writ")
    assert _score([str(inputs), "--checkpoint", str(checkpoint), "--out", str(out), "--resume"]) == 0
    rows = read_rows(out)
    assert len(rows) == 23 and len({row["path"] for row in rows}) == 23
    assert out.read_bytes().startswith(written)  # rows written before the kill are kept as they were
    reference = _by_path(read_rows(first_run))
    for name, row in _by_path(rows).items():
        assert row["status"] == reference[name]["status"]
        if row["status"] == "ok":
            assert row["score"] == float(reference[name]["score"])


def test_clips_report_their_spread_and_segments_give_a_timeline(inputs: Path, checkpoint: Path) -> None:
    video = sorted(inputs.glob("[!b]*.mp4"))[0]
    centred = load_scorer(checkpoint).score(video)
    assert centred["score_std"] is None and centred["clips"] == 1
    drawn = load_scorer(checkpoint, clips=4, seed=1).score(video)
    # 16 frames: every draw takes the same frames (CLIP agrees), but the fragments move
    assert drawn["stvqrl_std"] > 0 and drawn["clip_std"] == 0 and drawn["clips"] == 4
    assert load_scorer(checkpoint, clips=4, seed=1).score(video)["score"] == drawn["score"]
    assert load_scorer(checkpoint, clips=4, seed=2).score(video)["score"] != drawn["score"]
    timeline = load_scorer(checkpoint, segment_seconds=0.24).score(video)  # 6 frames at 25 fps
    assert timeline["score"] == centred["score"], "segments do not change the whole-video score"
    segments = timeline["segments"]
    assert [s["start"] for s in segments] == pytest.approx([0, 0.24, 0.48])
    assert [s["end"] for s in segments] == pytest.approx([0.24, 0.48, 0.64])
    assert all(0 < s["score"] < 2 and s["score"] == pytest.approx(s["stvqrl"] * s["clip"]) for s in segments)


def test_calibration_adds_mos_pred(inputs: Path, checkpoint: Path, tmp_path: Path) -> None:
    calibration = Calibration(branch="clip", fit="linear", params=(40.0, 10.0), mos_min=0, mos_max=100, n=9)
    path = calibration.save(tmp_path / "calibration.json")
    video = sorted(inputs.glob("[!b]*.mp4"))[0]
    row = load_scorer(checkpoint, calibration=path).score(video)
    assert row["mos_pred"] == pytest.approx(40.0 * row["clip"] + 10.0)


# -- quality maps ------------------------------------------------------------------------------------


class BrightnessMap(nn.Module):
    """A stand-in for backbone + head: each map cell is the mean brightness of the fragment pixels it
    covers (``stride`` pixels square, 2 frames), so the map shows where bright patches came from."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, fragments: torch.Tensor) -> torch.Tensor:
        brightness = fragments.mean(dim=1, keepdim=True)
        return nn.functional.avg_pool3d(brightness, (2, self.stride, self.stride), ceil_mode=True)


def _normalised(level: float) -> float:
    """The fragments' mean over channels of a grey ``level`` after ImageNet normalisation."""
    return float(np.mean((level - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)))


def _half_bright_video(path: Path, side: str, frames: int = 16, height: int = 240, width: int = 320) -> Path:
    frame = np.full((height, width, 3), 40, np.uint8)
    if side == "right":
        frame[:, width // 2 :] = 220
    else:
        frame[height // 2 :] = 220
    write_video(path, [frame] * frames, fps=25, codec="h264")
    return path


@pytest.mark.parametrize(
    ("views", "stride"), [(ViewSpec(segments=4, test_frames_per_segment=4), 32), (TINY_VIEWS, 32)]
)
@pytest.mark.parametrize("side", ["right", "bottom"])
def test_map_cells_lie_over_the_frame_region_their_fragments_came_from(
    views: ViewSpec, stride: int, side: str, tmp_path: Path
) -> None:
    video = _half_bright_video(tmp_path / f"{side}.mp4", side)
    model = QASAModel(BrightnessMap(stride), build_clip_quality("tiny", pretrained=None))  # type: ignore[arg-type]
    scorer = Scorer(model, model.clip, views, settings=ScoreSettings(), map_stride=stride)
    row = scorer.score(video, maps_dir=tmp_path / "maps")
    picture = Path(row["map"])
    assert picture.is_file() and picture.stat().st_size > 10_000
    arrays = np.load(picture.with_suffix(".npz"))
    values, cells = arrays["cell_values"], arrays["cell_boxes"]
    assert values.shape == (views.segments * views.test_frames_per_segment // 2, 7, 7)
    centre = (cells[..., 1] + cells[..., 3]) / 2 if side == "right" else (cells[..., 0] + cells[..., 2]) / 2
    half = 160 if side == "right" else 120
    bright, dark = values[:, centre > half + 40], values[:, centre < half - 40]
    assert bright.min() > dark.max() + 1.0, "bright patches must be laid over the bright half"
    if views.patch == stride:  # one map cell per patch: values are exactly the patches' brightness
        np.testing.assert_allclose(bright, _normalised(220), atol=0.05)
        np.testing.assert_allclose(dark, _normalised(40), atol=0.05)
    painted = paint(values[0], cells, (240, 320))
    if side == "right":
        assert np.nanmean(painted[:, 200:]) > np.nanmean(painted[:, :120]) + 1.0
    else:
        assert np.nanmean(painted[150:]) > np.nanmean(painted[:90]) + 1.0
    assert not np.isnan(painted).any(), "the grid cells cover the whole frame"


@pytest.mark.parametrize("clips", [1, 3])
def test_views_made_frame_by_frame_score_as_views_of_the_whole_clip(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clips: int
) -> None:
    # 144 x 176 stored, tagged as turned 90 degrees: upright it is 176 x 144, large enough for the tiny
    # views' 112-pixel fragment grid, so the scorer builds views as frames are decoded (one held at a
    # time). Forcing the whole-clip path must give the same rows bit for bit, maps included.
    rng = np.random.default_rng(7)
    frames = [rng.integers(0, 256, (144, 176, 3), dtype=np.uint8) for _ in range(24)]
    video = write_video(tmp_path / "turned.mp4", frames, codec="h264", rotation=90, gop=6, crf=10)
    scorer = load_scorer(checkpoint, clips=clips, seed=4)
    streamed = scorer.score(video, maps_dir=tmp_path / "streamed")
    monkeypatch.setattr(
        "qasa_vqa.scoring.IncrementalTestViews.fits", staticmethod(lambda *args, **kwargs: False)
    )
    whole = scorer.score(video, maps_dir=tmp_path / "whole")
    assert streamed["status"] == whole["status"] == "ok", (streamed["error"], whole["error"])
    assert (streamed["width"], streamed["height"]) == (144, 176)
    for column in ("score", "stvqrl", "clip", "score_std"):
        assert streamed[column] == whole[column], column
    a, b = np.load(Path(streamed["map"]).with_suffix(".npz")), np.load(Path(whole["map"]).with_suffix(".npz"))
    assert sorted(a.files) == sorted(b.files)
    for name in a.files:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert Path(streamed["map"]).read_bytes() == Path(whole["map"]).read_bytes(), "the pictures differ"


def test_cell_boxes_undo_the_upsampling_of_small_videos() -> None:
    top = np.zeros((1, 7, 7), np.int64)
    source = {"top": top, "left": top, "patch": 32, "upsampled": (224, 298), "frame_size": (72, 96)}
    cells, patches = cell_boxes(source)
    assert cells[-1, -1, 2:] == pytest.approx((72, 96)) and cells[0, 0, :2] == pytest.approx((0, 0))
    assert patches[0, 0] == pytest.approx((0, 0, 32 * 72 / 224, 32 * 96 / 298))
    assert cells[3, 2] == pytest.approx(
        (3 * 32 * 72 / 224, 2 * 42 * 96 / 298, 4 * 32 * 72 / 224, 3 * 42 * 96 / 298)
    )


def test_scoring_rows_are_json_safe(inputs: Path, checkpoint: Path) -> None:
    row = load_scorer(checkpoint, segment_seconds=0.5).score(sorted(inputs.glob("[!b]*.mp4"))[0])
    assert json.loads(json.dumps(row))["segments"][0]["start"] == 0
