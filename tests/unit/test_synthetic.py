"""The demo corpus: SSIM against scikit-image, the pseudo-MOS's behaviour, and the corpus on disk."""

from __future__ import annotations

import csv
import itertools
import json
import os
from pathlib import Path

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from qasa_vqa.data.synthetic import (
    DISTORTIONS,
    PHOTOS,
    DemoKnobs,
    distort,
    generate_demo_corpus,
    plan_corpus,
    pseudo_mos,
    render_scene,
    ssim,
    write_clip,
)
from qasa_vqa.errors import QasaVqaError
from qasa_vqa.video.reader import probe, read_frames

TINY = {"scenes": 3, "variants": 3, "frames": 16, "width": 96, "height": 72, "progress": False}
FPS = 25


def _image_pair(kind: str, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(height * 1000 + width)
    if kind == "random":
        x = rng.uniform(0, 255, (height, width))
        return x, np.clip(x + rng.normal(0, 25, x.shape), 0, 255)
    yy, xx = np.mgrid[:height, :width]
    x = 128 + 100 * np.sin(xx / 3.0) * np.cos(yy / 5.0)  # structured: smooth pattern, edges, flat patch
    x[: height // 3, : width // 3] = 40
    y = np.roll(x, 1, axis=1) * 0.9 + 10 + rng.normal(0, 3, x.shape)
    return x, np.clip(y, 0, 255)


@pytest.mark.parametrize("kind", ["random", "structured"])
@pytest.mark.parametrize(("height", "width"), [(11, 11), (17, 23), (48, 64), (72, 96)])
def test_ssim_matches_skimage(kind: str, height: int, width: int) -> None:
    x, y = _image_pair(kind, height, width)
    expected = structural_similarity(
        x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )
    assert float(ssim(x, y)) == pytest.approx(expected, abs=1e-4)
    assert float(ssim(x, x)) == pytest.approx(1.0, abs=1e-12)


def test_ssim_batches_and_rejects_small_images() -> None:
    pairs = [_image_pair("structured", 40, 50), _image_pair("random", 40, 50)]
    batch = ssim(np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]))
    assert batch.shape == (2,)
    assert batch == pytest.approx([float(ssim(*p)) for p in pairs])
    with pytest.raises(ValueError, match="11x11"):
        ssim(np.zeros((10, 20)), np.zeros((10, 20)))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """A photo scene, 24 frames at 96x72, through the pristine encode as the corpus makes it."""
    frames = render_scene("astronaut", DemoKnobs(frames=24, width=96, height=72), seed=0)
    path = write_clip(tmp_path_factory.mktemp("ref") / "pristine.mp4", frames, [], seed=0, fps=FPS)
    return read_frames(path, np.arange(24))


def test_pristine_scores_the_maximum(reference: np.ndarray, tmp_path: Path) -> None:
    itself = pseudo_mos(reference, reference)
    assert itself == {
        "spatial": pytest.approx(1.0),
        "temporal": pytest.approx(1.0),
        "mos": pytest.approx(100.0),
    }
    clean = read_frames(write_clip(tmp_path / "clean.mp4", reference, [], seed=1, fps=FPS), np.arange(24))
    assert 80 < pseudo_mos(reference, clean)["mos"] < itself["mos"]


@pytest.mark.parametrize("name", DISTORTIONS)
def test_mos_falls_with_severity(name: str, reference: np.ndarray, tmp_path: Path) -> None:
    scores = []
    for severity in (0.1, 0.4, 0.7, 1.0):
        path = write_clip(
            tmp_path / f"{severity}.mp4", reference, [{"name": name, "severity": severity}], seed=3, fps=FPS
        )
        scores.append(pseudo_mos(reference, read_frames(path, np.arange(len(reference))))["mos"])
    assert all(a > b for a, b in itertools.pairwise(scores)), scores
    assert 0 <= scores[-1] < 90


@pytest.mark.parametrize("name", ["frame_drop", "stutter"])
def test_repeated_frames_lower_mos_though_each_frame_is_pristine(name: str, reference: np.ndarray) -> None:
    shown = distort(reference, [{"name": name, "severity": 0.5}], seed=5, fps=FPS, tmp=Path("."))
    for frame in shown:  # every frame is an exact copy of some pristine frame...
        assert any(np.array_equal(frame, ref) for ref in reference)
    assert not np.array_equal(shown, reference)
    score = pseudo_mos(reference, shown)  # ...yet the clip loses quality, in time and per frame
    assert score["temporal"] < 0.95 and score["mos"] < 90


def test_distort_rejects_unknown_names(reference: np.ndarray) -> None:
    with pytest.raises(ValueError, match="unknown distortion"):
        distort(reference, [{"name": "sepia", "severity": 0.5}], seed=0, fps=FPS, tmp=Path("."))


def test_every_photo_renders_a_moving_scene() -> None:
    knobs = DemoKnobs(frames=6, width=64, height=48)
    for name in [p.split(".")[0] for p in PHOTOS] + ["proc00"]:
        frames = render_scene(name, knobs, seed=1)
        assert frames.shape == (6, 48, 64, 3) and frames.dtype == np.uint8
        assert np.abs(frames[-1].astype(int) - frames[0]).mean() > 1, name  # the camera moves
        assert frames.std() > 5, name  # not a blank picture
    assert np.array_equal(render_scene("coffee", knobs, seed=1), render_scene("coffee", knobs, seed=1))


def test_plan_mixes_distortions_and_validates_knobs() -> None:
    splits, clips = plan_corpus(0, DemoKnobs())
    assert len(splits) == 12 and len(clips) == 72 and sum(s == "test" for s in splits.values()) == 3
    assert sum(1 for s in splits if s.startswith("proc")) == 3
    assert all(not c["recipe"] for c in clips if c["clip"].endswith("_00"))
    mixes = [c["recipe"] for c in clips if not c["clip"].endswith("_00")]
    assert all(1 <= len(m) <= 3 and all(0 <= s["severity"] <= 1 for s in m) for m in mixes)
    assert {s["name"] for m in mixes for s in m} == set(DISTORTIONS)
    assert plan_corpus(0, DemoKnobs()) == (splits, clips) and plan_corpus(1, DemoKnobs())[1] != clips
    for bad in ({"width": 95}, {"scenes": 1}, {"frames": 4}, {"test_fraction": 1.0}):
        with pytest.raises(QasaVqaError):
            plan_corpus(0, DemoKnobs(**bad))


def _rows(manifest: Path) -> list[dict[str, str]]:
    with manifest.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_corpus_is_reproducible_and_well_formed(tmp_path: Path) -> None:
    one = generate_demo_corpus(tmp_path / "a", seed=7, workers=1, build_tree=False, **TINY)
    two = generate_demo_corpus(tmp_path / "b", seed=7, workers=2, build_tree=False, **TINY)
    other = generate_demo_corpus(tmp_path / "c", seed=8, workers=2, build_tree=False, **TINY)
    assert one.manifest.read_bytes() == two.manifest.read_bytes()  # whatever the number of workers
    assert (one.root / "corpus.json").read_bytes() == (two.root / "corpus.json").read_bytes()
    assert one.manifest.read_bytes() != other.manifest.read_bytes()
    assert one.manifest.read_text().startswith("path,mos,split\n")
    assert (one.num_scenes, one.num_clips, one.num_train + one.num_test, one.tree_dir) == (3, 9, 9, None)

    rows = _rows(one.manifest)
    record = json.loads((one.root / "corpus.json").read_text())
    scene_of = {f"videos/{c['clip']}.mp4": c["scene"] for c in record["clips"]}
    train = {scene_of[r["path"]] for r in rows if r["split"] == "train"}
    test = {scene_of[r["path"]] for r in rows if r["split"] == "test"}
    assert train and test and not train & test
    assert record["seed"] == 7 and record["knobs"]["width"] == 96 and "MOS" in record["formula"]
    for row in rows:
        assert 0 <= float(row["mos"]) <= 100 and row["mos"] == f"{float(row['mos']):.4f}"
        info = probe(one.root / row["path"])
        assert (info.num_frames, info.width, info.height, info.codec) == (16, 96, 72, "h264")
        assert read_frames(one.root / row["path"], [0, 15]).shape == (2, 72, 96, 3)
    for scene in train | test:
        assert probe(one.pristine_dir / f"{scene}.mp4").num_frames == 16
    clean = [float(r["mos"]) for r in rows if r["path"].endswith("_00.mp4")]  # no distortion: near-pristine
    assert min(clean) > np.median([float(r["mos"]) for r in rows])


def test_existing_corpus_is_reused_resumed_or_refused(tmp_path: Path) -> None:
    out = tmp_path / "corpus"
    first = generate_demo_corpus(out, seed=2, workers=1, build_tree=False, **TINY)
    manifest, stamp = first.manifest.read_bytes(), first.manifest.stat().st_mtime_ns
    assert generate_demo_corpus(out, seed=2, build_tree=False, **TINY) == first
    assert first.manifest.stat().st_mtime_ns == stamp  # returned without work

    # interrupted before the manifest, one clip missing: resumed to the same bytes
    first.manifest.unlink()
    victim = out / _rows_from(manifest)[1]
    victim.unlink()
    assert generate_demo_corpus(out, seed=2, workers=1, build_tree=False, **TINY) == first
    assert first.manifest.read_bytes() == manifest and victim.exists()
    assert not [p for p in out.rglob(".*") if p.is_file()]  # no temporary or marker files left

    with pytest.raises(QasaVqaError, match="seed 3"):
        generate_demo_corpus(out, seed=3, build_tree=False, **TINY)
    with pytest.raises(QasaVqaError, match="not empty"):
        generate_demo_corpus(out, seed=2, build_tree=False, **(TINY | {"frames": 24}))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(QasaVqaError, match="not empty"):
        generate_demo_corpus(foreign, seed=2, build_tree=False, **TINY)
    assert os.listdir(foreign) == ["notes.txt"]


def _rows_from(manifest: bytes) -> list[str]:
    return [line.split(",")[0] for line in manifest.decode().splitlines()[1:]]
