"""The ST-VQRL distortions: OpenCV's pyramid by hand, every version on even and odd clips, and errors."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from scipy import ndimage

from qasa_vqa.errors import QasaVqaError, VideoDecodeError
from qasa_vqa.video.distortions import (
    DISTORTIONS,
    distort_video,
    find_videos,
    parse_versions,
    pyr_down,
    pyr_up,
    pyramid_blur,
    synthesize_tree,
)
from qasa_vqa.video.reader import probe, read_frames
from qasa_vqa.video.writer import synthetic_frames, write_video

KERNEL = np.array([1, 4, 6, 4, 1], dtype=np.float64) / 16
FRAMES = 16


def _by_hand(image: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per channel 2-D convolution with reflect-101 borders (scipy's 'mirror'), in float."""
    planes = image.reshape(*image.shape[:2], -1).astype(np.float64)
    out = np.stack(
        [ndimage.convolve(planes[..., c], weights, mode="mirror") for c in range(planes.shape[2])], -1
    )
    return out.reshape(*out.shape[:2], *image.shape[2:])


def _round_half_up(x: np.ndarray) -> np.ndarray:
    return np.floor(x + 0.5).astype(np.uint8)


SHAPES = [(48, 64, 3), (47, 63, 3), (9, 5), (3, 4, 3), (2, 7), (33, 17, 1)]


@pytest.mark.parametrize("shape", SHAPES)
def test_pyr_down_matches_a_hand_computation(shape: tuple[int, ...]) -> None:
    image = np.random.default_rng(sum(shape)).integers(0, 256, size=shape, dtype=np.uint8)
    expected = _round_half_up(_by_hand(image, np.outer(KERNEL, KERNEL))[::2, ::2])
    down = pyr_down(image)
    assert down.shape[:2] == ((shape[0] + 1) // 2, (shape[1] + 1) // 2)
    np.testing.assert_array_equal(down, expected)


@pytest.mark.parametrize("shape", SHAPES)
def test_pyr_up_matches_a_hand_computation(shape: tuple[int, ...]) -> None:
    image = np.random.default_rng(sum(shape) + 1).integers(0, 256, size=shape, dtype=np.uint8)
    stuffed = np.zeros((2 * shape[0], 2 * shape[1], *shape[2:]))
    stuffed[::2, ::2] = image  # zero-stuffing, then the kernel times 4 (OpenCV's pyrUp)
    expected = _round_half_up(_by_hand(stuffed, 4 * np.outer(KERNEL, KERNEL)))
    np.testing.assert_array_equal(pyr_up(image), expected)


@pytest.mark.parametrize("levels", [2, 3, 4])
@pytest.mark.parametrize("size", [(48, 64), (47, 63), (71, 95)])
def test_pyramid_blur_keeps_the_size_and_blurs_more_with_levels(levels: int, size: tuple[int, int]) -> None:
    image = np.random.default_rng(levels).integers(0, 256, size=(*size, 3), dtype=np.uint8)
    out = pyramid_blur(image, levels)
    assert out.shape == image.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(pyramid_blur(np.full_like(image, 77), levels), np.full_like(image, 77))
    if levels > 2:  # more levels remove more detail: the result drifts further from the input
        assert (
            np.abs(out.astype(int) - image).mean()
            > np.abs(pyramid_blur(image, levels - 1).astype(int) - image).mean()
        )


def test_the_table_lists_thirteen_versions_in_families_of_three() -> None:
    assert [d.version for d in DISTORTIONS] == list(range(13))
    assert DISTORTIONS[0].name == "reference" and len({d.name for d in DISTORTIONS}) == 13
    kinds = [d.kind for d in DISTORTIONS[1:]]
    assert kinds == [k for k in ("mpeg2", "h264", "pyramid", "framerate") for _ in range(3)]
    assert [d.level for d in DISTORTIONS[1:]] == [1, 2, 3] * 4
    assert [DISTORTIONS[v].params.get(key) for v, key in [(1, "qscale"), (3, "qscale"), (6, "crf"), (9, "levels"), (12, "divisor")]] == [1, 30, 50, 4, 4]  # fmt: skip


# --------------------------------------------------------------------------------- every version


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict[int, Path]]]:
    """An even (64x48, .mp4) and an odd (63x47, .mkv) moving clip, and all 13 versions of each."""
    root = tmp_path_factory.mktemp("distortions")
    out: dict[str, tuple[Path, dict[int, Path]]] = {}
    for name, (h, w), pix_fmt in [("even.mp4", (48, 64), "yuv420p"), ("odd.mkv", (47, 63), "yuv444p")]:
        source = write_video(root / name, synthetic_frames(FRAMES, h, w, seed=h), pix_fmt=pix_fmt, crf=8)
        out[name] = (source, {v: distort_video(source, root / str(v) / name, v) for v in range(13)})
    return out


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


@pytest.mark.parametrize("name", ["even.mp4", "odd.mkv"])
def test_every_version_decodes_at_the_source_size_length_and_rate(trees, name: str) -> None:
    source, versions = trees[name]
    info = probe(source)
    assert versions[0].read_bytes() == source.read_bytes()
    for version, path in versions.items():
        out = probe(path)
        assert (out.width, out.height) == (info.width, info.height), version
        assert abs(out.num_frames - info.num_frames) <= 1, version
        assert out.fps == pytest.approx(info.fps), version
        assert read_frames(path, range(out.num_frames)).shape[1:] == (info.height, info.width, 3)
        assert path.name == source.name and not list(path.parent.glob(".*partial*"))


@pytest.mark.parametrize("name", ["even.mp4", "odd.mkv"])
def test_severity_grows_with_the_level_in_every_family(trees, name: str) -> None:
    source, versions = trees[name]
    pristine = read_frames(source, range(FRAMES))
    psnr = {v: _psnr(read_frames(p, range(FRAMES)), pristine) for v, p in versions.items()}
    assert psnr[0] == float("inf")
    for first in (1, 4, 7, 10):
        assert psnr[first] > psnr[first + 1] > psnr[first + 2], (first, psnr)
    assert psnr[1] > 25 and psnr[4] > 35  # near-lossless levels
    # frame rate: kept frames (every k-th) stay close to the pristine ones, interpolated ones do not
    for version, k in [(10, 2), (11, 3), (12, 4)]:
        frames = read_frames(versions[version], range(FRAMES))
        kept = [i for i in range(FRAMES - k) if i % k == 0]
        made = [i for i in range(FRAMES - k) if i % k]
        assert _psnr(frames[kept], pristine[kept]) > _psnr(frames[made], pristine[made]) + 3


def _stream(path: Path) -> tuple[str, str, bytes]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        data = b"".join(bytes(p) for p in container.demux(stream) if p.size)
        return stream.codec_context.name, stream.codec_context.pix_fmt, data


@pytest.mark.parametrize("name", ["even.mp4", "odd.mkv"])
def test_mpeg2_codes_every_slice_at_the_ffmpeg_qscale(trees, name: str) -> None:
    """``-qscale:v 1/20/30``: quantiser_scale_code of every slice header; FFmpeg clamps 1 to qmin = 2."""
    _, versions = trees[name]
    sizes = []
    for version, expected in [(1, 2), (2, 20), (3, 30)]:
        codec, pix_fmt, data = _stream(versions[version])
        codes = {data[m.end()] >> 3 for m in re.finditer(rb"\x00\x00\x01[\x01-\xaf]", data)}
        assert (codec, pix_fmt, codes) == ("mpeg2video", "yuv420p", {expected})
        sizes.append(versions[version].stat().st_size)
    assert sizes[0] > 3 * sizes[1] and sizes[1] > sizes[2]  # bytes fall strongly from q1 to q20, then on


@pytest.mark.parametrize("name", ["even.mp4", "odd.mkv"])
def test_h264_versions_carry_their_crf_and_pixel_format(trees, name: str) -> None:
    _, versions = trees[name]
    even = name == "even.mp4"
    for version, crf, pix_fmt in [(4, 5, None), (5, 35, None), (6, 50, None), (7, 23, "yuv444p"), (10, 23, "yuv444p")]:  # fmt: skip
        codec, actual, data = _stream(versions[version])
        assert codec == "h264" and f" crf={crf}.0 ".encode() in data  # x264's settings SEI
        assert actual == (pix_fmt or ("yuv420p" if even else "yuv444p"))


def test_rotated_sources_come_out_upright(tmp_path: Path) -> None:
    source = write_video(tmp_path / "phone.mp4", synthetic_frames(8, 48, 32, seed=1), rotation=90, crf=5)
    out = distort_video(source, tmp_path / "4" / "phone.mp4", 4)
    assert probe(out).rotation == 0 and (probe(out).width, probe(out).height) == (48, 32)
    assert _psnr(read_frames(out, range(8)), read_frames(source, range(8))) > 35


def test_other_extensions_hold_matroska_under_the_same_name(tmp_path: Path) -> None:
    source = write_video(tmp_path / "a.webm", synthetic_frames(8, 32, 48), codec="vp9")
    out = distort_video(source, tmp_path / "5" / "a.webm", 5)
    with av.open(str(out)) as container:
        assert "matroska" in container.format.name and probe(out).num_frames == 8


def test_stale_partial_files_are_removed_and_the_output_replaced(tmp_path: Path) -> None:
    source = write_video(tmp_path / "a.mp4", synthetic_frames(4, 32, 48))
    stale = tmp_path / "4" / ".a.mp4.99999.partial.mp4"
    stale.parent.mkdir()
    stale.write_bytes(b"half")
    out = distort_video(source, tmp_path / "4" / "a.mp4", 4)
    assert not stale.exists() and [p.name for p in out.parent.iterdir()] == ["a.mp4"]


def test_linear_blend_fallback(tmp_path: Path) -> None:
    source = write_video(tmp_path / "a.mp4", synthetic_frames(12, 32, 48), crf=5)
    out = distort_video(source, tmp_path / "b.mp4", 11, minterpolate=None)
    frames, pristine = read_frames(out, range(12)), read_frames(source, range(12))
    assert probe(out).num_frames == 12 and _psnr(frames[::3], pristine[::3]) > 28


# ------------------------------------------------------------------------------------------ errors


def test_bad_versions_and_inputs_raise_clear_errors(tmp_path: Path) -> None:
    source = write_video(tmp_path / "a.mp4", synthetic_frames(4, 32, 48))
    for version in (-1, 13):
        with pytest.raises(QasaVqaError, match="out of range"):
            distort_video(source, tmp_path / "x.mp4", version)
    bogus = tmp_path / "bogus.mp4"
    bogus.write_bytes(b"not a video" * 10)
    with pytest.raises(VideoDecodeError, match=r"bogus\.mp4"):
        distort_video(bogus, tmp_path / "y.mp4", 4)
    assert not (tmp_path / "y.mp4").exists() and not list(tmp_path.glob(".*partial*"))
    with pytest.raises(QasaVqaError, match="no such directory"):
        find_videos(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(QasaVqaError, match="no videos found"):
        find_videos(tmp_path / "empty")
    assert parse_versions("0,1,5") == [0, 1, 5] and parse_versions("3-5,1") == [1, 3, 4, 5]
    for text in ("1,x", "12-14", ""):
        with pytest.raises(QasaVqaError):
            parse_versions(text)


def test_tree_collects_failures_and_keeps_the_manifest_right_across_runs(tmp_path: Path) -> None:
    pristine = tmp_path / "in"
    (pristine / "sub").mkdir(parents=True)
    write_video(pristine / "sub" / "good.mp4", synthetic_frames(6, 32, 48))
    (pristine / "bad.mp4").write_bytes(b"\x00" * 100)
    out = tmp_path / "out"
    first = synthesize_tree(pristine, out, versions=[0, 5], workers=1, progress=False)
    assert first.written == [out / "0" / "sub" / "good.mp4", out / "5" / "sub" / "good.mp4"]
    assert sorted((f.source.name, f.version) for f in first.failed) == [("bad.mp4", 0), ("bad.mp4", 5)]
    assert all("bad.mp4" in f.reason for f in first.failed) and not (out / "0" / "bad.mp4").exists()
    second = synthesize_tree(pristine, out, versions=[2], workers=2, progress=False)
    assert second.written == [out / "2" / "sub" / "good.mp4"] and len(second.failed) == 1
    with second.manifest.open(newline="") as handle:
        rows = {(r["path"], r["status"]): r for r in csv.DictReader(handle)}
    assert set(rows) == {
        ("0/sub/good.mp4", "written"),
        ("5/sub/good.mp4", "written"),
        ("2/sub/good.mp4", "written"),
        ("2/bad.mp4", "failed"),
    }
    row = rows[("5/sub/good.mp4", "written")]
    assert (row["name"], row["width"], row["height"], row["frames"]) == ("h264_crf35", "48", "32", "6")
    third = synthesize_tree(pristine, out, versions=[0, 2, 5], workers=1, progress=False)
    assert third.written == [] and len(third.skipped) == 3 and len(third.failed) == 3


def test_the_same_source_gives_the_same_bytes_in_separate_processes(tmp_path: Path) -> None:
    # x264's macroblock tree made this version differ in about 2 of 3 runs (X264_PARAMS turns it off)
    source = write_video(tmp_path / "src.mp4", synthetic_frames(64, 240, 320, seed=11), codec="h264")
    script = (
        "import sys\nfrom qasa_vqa.video.distortions import distort_video\n"
        "for k in (7,):\n    distort_video(sys.argv[1], f'{sys.argv[2]}/{k}.mp4', k)\n"
    )
    runs = []
    for run in range(2):
        out = tmp_path / f"run{run}"
        out.mkdir()
        subprocess.run([sys.executable, "-c", script, str(source), str(out)], check=True, timeout=120)
        runs.append({k: (out / f"{k}.mp4").read_bytes() for k in (7,)})
    assert runs[0] == runs[1]
