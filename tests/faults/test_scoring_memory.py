"""Scoring's memory (issue 14, resources): a 60 s 4K video stays under 1.5 GB, and a 1,000-file
``qasa-vqa score`` run holds steady memory (no growth per file).

The 4K test scores a generated 60 s 3840 x 2160 H.264 clip with ``qasa-vqa score`` (a subprocess, its
default decoding worker) and a model of the demo's size sampling as the paper does (64 test frames),
and reads the resident memory of the whole run every 20 ms: the command's RSS (every resident page it
maps, libraries included) plus its worker's private pages (the pages the worker shares with the command,
inherited through fork, are counted once, and no page is discounted for being shared with unrelated
processes, as PSS would). The peak must stay under 1.5 GB, and under a 320 x 240 clip's peak plus
256 MB (memory must not follow the frame size).

Ten small generated clips (H.264 and MPEG-4, 64x64 to 96x128, 20 to 40 frames) are hard-linked or
copied to 1,000 paths under different names, some in subfolders, 8 of them broken (empty, random bytes,
truncated, text), so error rows are part of the run. ``qasa-vqa score`` runs on the folder as a user
runs it (a subprocess, its default decoding worker, a CSV) with a tiny random QASA model. Every 0.2 s
the test reads the memory of the whole process tree (the command and its DataLoader worker) and how
many rows the CSV holds. After a warm-up of ``WARM_UP`` rows, memory against rows must be flat: the
slope of a line fitted over the rest of the run stays under ``MAX_SLOPE_KB`` per file, and the peak
stays within ``MAX_RISE_MB`` of the memory at the warm-up point. A scorer that kept ~100 KB per file
(each row's arrays, say) would rise by ~80 MB over the 800 files after warm-up and break both bounds;
so would a decoding worker that kept each video's views (~2.7 MB per file). Trial runs without a leak
fitted slopes of +2 to +22 KB per file (the allocator's pools settle in steps of 10-20 MB) and rose by
at most ~25 MB; with 50 and 100 KB per file kept on purpose they fitted +59 and +110 KB per file.

Memory is the anonymous and shared-memory part of PSS (proportional set size: ``Pss_Anon`` +
``Pss_Shmem`` of ``/proc/<pid>/smaps_rollup``), summed over the tree. The worker is forked from the
command after the model is loaded, so both hold the same copy-on-write heap pages (the weights, the
interpreter's objects); summing RSS would count each of those pages twice, and the sum would move
whenever the worker is replaced or a shared page is written. PSS splits each shared page between its
sharers, so the sum is the tree's own footprint. File-backed pages (``Pss_File``: torch's and FFmpeg's
libraries, the page cache of the videos) are left out: they do not grow per file, and their PSS
depends on how many *other* processes on the machine map the same libraries (another torch job
starting or ending moved the command's PSS by 50-80 MB in trial runs). A leak is heap, ``mmap`` or
shared-memory tensors, which is what is counted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from qasa_vqa.data.datasets import ViewSpec
from qasa_vqa.models.checkpoints import save_qasa
from qasa_vqa.models.clip_quality import build_clip_quality
from qasa_vqa.models.factory import build_qasa_model
from qasa_vqa.score_files import read_rows, row_key
from qasa_vqa.video.writer import synthetic_frames, write_video

FILES = 1000
WARM_UP = 200  # rows before memory is expected to be flat (allocator pools, lazy imports, first calls)
MAX_SLOPE_KB = 40.0  # per file, fitted over the rows after warm-up (module docstring: noise and leaks)
MAX_RISE_MB = 48.0  # peak after warm-up minus memory at the warm-up point
SAMPLE_SECONDS = 0.2

TINY_BACKBONE = {"embed_dim": 24, "depths": [1, 1, 2, 1], "num_heads": [1, 2, 2, 4], "window_size": [4, 7, 7]}
# Few, small views (2 segments x 2 frames, 56 x 56 fragments): every stage runs, in milliseconds.
SMALL_VIEWS = ViewSpec(segments=2, frames_per_segment=2, test_frames_per_segment=2, patch=8)
# (frames, height, width, write_video options) of the distinct clips.
CLIPS = [
    (20, 64, 64, {"codec": "h264"}),
    (24, 72, 96, {"codec": "h264", "bframes": 2, "gop": 10}),
    (30, 96, 128, {"codec": "h264"}),
    (40, 64, 64, {"codec": "h264", "gop": 8}),
    (32, 96, 128, {"codec": "mpeg4", "bframes": 2, "gop": 10}),
    (20, 72, 96, {"codec": "mpeg4"}),
    (36, 64, 96, {"codec": "h264", "pix_fmt": "yuv444p"}),
    (28, 96, 128, {"codec": "h264", "bframes": 3, "gop": 12}),
    (24, 64, 64, {"codec": "mpeg4", "gop": 6}),
    (40, 72, 96, {"codec": "h264", "crf": 30}),
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random QASA model (as in tests/integration/test_scoring.py) with small views."""
    torch.manual_seed(0)
    model = build_qasa_model(
        TINY_BACKBONE, build_clip_quality("tiny", pretrained=None), head={"hidden_channels": 16}, seed=0
    )
    path = tmp_path_factory.mktemp("model") / "qasa_model.pt"
    return save_qasa(model.eval(), path, views=dataclasses.asdict(SMALL_VIEWS))


def make_inputs(root: Path, count: int = FILES) -> tuple[Path, dict[str, str]]:
    """``count`` video paths under ``root / 'inputs'`` (hard links to, or copies of, the distinct clips;
    a third of them in nested subfolders) and 8 broken files spread through the sorted order. Returns
    the folder and ``{row_key(path): 'ok' | 'error'}`` of every file."""
    sources = root / "sources"
    sources.mkdir(parents=True)
    clips = []
    for i, (frames, height, width, options) in enumerate(CLIPS):
        path = sources / f"clip{i}.mp4"
        clips.append(write_video(path, synthetic_frames(frames, height, width, seed=i), **options))
    rng = np.random.default_rng(14)
    data = clips[2].read_bytes()
    broken = {
        "empty": b"",
        "random": rng.bytes(40_000),
        "truncated": data[: len(data) // 2],
        "text": b"path,mos\nclip.mp4,3.2\n",
    }
    folder = root / "inputs"
    expected: dict[str, str] = {}
    bad_at = np.linspace(60, count - 40, 8).astype(int).tolist()
    for n in range(count):
        sub = folder if n % 3 else folder / f"d{n % 7}" / ("deeper" if n % 2 else "")
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"v{n:04d}_{'x' * (n % 5)}.mp4"
        if n in bad_at:
            kind = sorted(broken)[bad_at.index(n) % len(broken)]
            path.write_bytes(broken[kind])
            expected[row_key(path)] = "error"
            continue
        source = clips[n % len(clips)]
        if n % 10 == 9:
            shutil.copyfile(source, path)
        else:
            os.link(source, path)
        expected[row_key(path)] = "ok"
    return folder, expected


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (DataLoader workers and anything they start)."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            with contextlib.suppress(OSError):  # the task or the process ended meanwhile
                todo += [int(child) for child in (task / "children").read_text().split()]
    return tree


def tree_pss_kb(pid: int) -> tuple[int, int]:
    """(summed anonymous + shared-memory PSS in kB, number of processes) of ``pid``'s tree (module
    docstring); processes that end meanwhile count 0."""
    total, alive = 0, 0
    for member in process_tree(pid):
        try:
            text = Path(f"/proc/{member}/smaps_rollup").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines()[1:])
        total += sum(int(fields[key].split()[0]) for key in ("Pss_Anon", "Pss_Shmem"))
        alive += 1
    return total, alive


def csv_rows(path: Path) -> int:
    """Complete rows in the CSV being written (header and a torn last line left out)."""
    try:
        return max(0, path.read_bytes().count(b"\n") - 1)
    except FileNotFoundError:
        return 0


def run_sampled(command: list[str], out: Path, timeout: float) -> tuple[np.ndarray, float, str]:
    """Run ``command`` (which writes the CSV ``out``), sampling (seconds, rows, PSS kB, processes) every
    ``SAMPLE_SECONDS`` while it runs. Returns the samples, the wall time and the command's stderr."""
    env = os.environ | {
        # 2 shared cores: torch's spinning intra-op threads compete with the decoding worker and the
        # other jobs and make the run many times slower; memory per file does not depend on it.
        "OMP_NUM_THREADS": "1",
    }
    log = out.with_suffix(".log")
    started = time.perf_counter()
    with open(log, "wb") as stderr:
        process = subprocess.Popen(command, stdout=stderr, stderr=stderr, env=env)
        samples = []
        try:
            while process.poll() is None:
                rows = csv_rows(out)
                pss, alive = tree_pss_kb(process.pid)
                if process.poll() is None and alive:
                    samples.append((time.perf_counter() - started, rows, pss, alive))
                if time.perf_counter() - started > timeout:
                    raise TimeoutError(f"the scoring run took over {timeout:.0f} s")
                time.sleep(SAMPLE_SECONDS)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
    wall = time.perf_counter() - started
    text = log.read_text(errors="replace")
    assert process.returncode == 0, f"qasa-vqa score exited with {process.returncode}:\n{text[-3000:]}"
    return np.array(samples, dtype=float), wall, text


def steady_memory_figures(samples: np.ndarray, total: int = FILES) -> dict[str, float]:
    """Files/s after warm-up, PSS (MB) at warm-up, at the end (the last sample before the last row) and
    the peak after warm-up, and the slope (KB per file) of PSS against rows from the warm-up point on."""
    seconds, rows, pss = samples[:, 0], samples[:, 1], samples[:, 2]
    # From the warm-up point until the last row: after it the worker exits and the command tears down.
    after = (rows >= WARM_UP) & (rows < total)
    assert after.sum() >= 10, f"only {after.sum()} samples after warm-up: {samples[:, 1].tolist()}"
    first = int(np.argmax(after))
    slope, _ = np.polyfit(rows[after], pss[after], 1)
    last_rows = rows[after][-1]
    return {
        "files_per_s": (last_rows - rows[first]) / max(seconds[after][-1] - seconds[first], 1e-9),
        "warm_mb": pss[first] / 1024,
        "end_mb": pss[after][-1] / 1024,
        "peak_mb": pss[after].max() / 1024,
        "start_mb": pss[0] / 1024,
        "slope_kb_per_file": slope,
        "samples_after_warm_up": int(after.sum()),
        "rows_covered": float(last_rows - rows[first]),
        "processes": float(samples[after, 3].max()),
    }


def assert_steady(figures: dict[str, float]) -> None:
    assert figures["processes"] >= 2, f"the decoding worker was never seen in the process tree: {figures}"
    assert figures["rows_covered"] >= (FILES - WARM_UP) // 2, f"too few rows sampled after warm-up: {figures}"
    assert figures["slope_kb_per_file"] < MAX_SLOPE_KB, f"memory grows per file: {figures}"
    assert figures["peak_mb"] - figures["warm_mb"] < MAX_RISE_MB, f"memory rose after warm-up: {figures}"


def report(figures: dict[str, float], wall: float) -> str:
    return (
        f"\n{FILES} files in {wall:.1f} s ({figures['files_per_s']:.1f} files/s after warm-up); "
        f"tree PSS (anonymous + shmem): {figures['start_mb']:.0f} MB at the first sample, {figures['warm_mb']:.0f} MB at "
        f"row {WARM_UP}, {figures['end_mb']:.0f} MB at the end, peak {figures['peak_mb']:.0f} MB after "
        f"warm-up; slope {figures['slope_kb_per_file']:+.2f} KB/file over {figures['samples_after_warm_up']} "
        f"samples; up to {figures['processes']:.0f} processes"
    )


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_1000_file_scoring_run_holds_steady_memory(checkpoint: Path, tmp_path: Path) -> None:
    folder, expected = make_inputs(tmp_path)
    assert len(expected) == FILES and list(expected.values()).count("error") == 8
    out = tmp_path / "scores.csv"
    command = [sys.executable, "-m", "qasa_vqa", "score", str(folder), "--checkpoint", str(checkpoint)]
    samples, wall, log = run_sampled([*command, "--out", str(out), "--quiet"], out, timeout=540)

    rows = read_rows(out)
    keys = [row_key(row["path"]) for row in rows]
    assert len(keys) == FILES and len(set(keys)) == FILES, "every file exactly once"
    assert set(keys) == set(expected)
    statuses = {row_key(row["path"]): row["status"] for row in rows}
    assert statuses == expected, "error rows exactly for the broken files"
    assert all(row["error"] for row in rows if row["status"] == "error")
    assert f"scored {FILES - 8} videos (8 errors)" in log

    figures = steady_memory_figures(samples)
    print(report(figures, wall))
    assert_steady(figures)


# -- a 60 s 4K video ---------------------------------------------------------------------------------

UHD_SECONDS, UHD_FPS = 60, 30
MAX_UHD_MB = 1536  # the whole scoring run, every process, all resident pages (PSS)
MAX_UHD_OVER_SMALL_MB = 256  # 4K against a 320 x 240 clip: what the frame size may add


def write_uhd_clip(path: Path, seconds: int = UHD_SECONDS, fps: int = UHD_FPS) -> Path:
    """A 3840 x 2160 H.264 clip of ``seconds`` at ``fps`` (keyframe every 2 s), quick to encode: a
    textured still with a moving block, so most of each frame is skipped by the encoder."""
    rng = np.random.default_rng(4)
    base = np.asarray(
        Image.fromarray(rng.integers(0, 256, (135, 240, 3), dtype=np.uint8)).resize(
            (3840, 2160), Image.Resampling.BICUBIC
        )
    )

    def frames():
        frame = base.copy()
        for i in range(seconds * fps):
            y, x = (i * 7) % 1900, (i * 13) % 3500
            frame[y : y + 200, x : x + 300] = (i * 37) % 256
            yield frame
            frame[y : y + 200, x : x + 300] = base[y : y + 200, x : x + 300]

    return write_video(path, frames(), codec="h264", fps=fps, gop=2 * fps, options={"preset": "ultrafast"})


@pytest.fixture(scope="module")
def paper_views_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random QASA model (the demo's size) that samples as the paper does: 8 x 8 test frames,
    7 x 7 fragments of 32 pixels, 224-pixel CLIP frames."""
    torch.manual_seed(0)
    model = build_qasa_model(
        TINY_BACKBONE, build_clip_quality("tiny", pretrained=None), head={"hidden_channels": 16}, seed=0
    )
    path = tmp_path_factory.mktemp("model") / "qasa_model.pt"
    return save_qasa(model.eval(), path, views=dataclasses.asdict(ViewSpec()))


def run_footprint_kb(pid: int) -> int:
    """Resident memory of ``pid``'s run in kB: its own RSS plus its descendants' private pages."""
    total = 0
    for member in process_tree(pid):
        try:
            text = Path(f"/proc/{member}/smaps_rollup").read_text()
        except OSError:
            continue
        fields = {
            key: int(value.split()[0])
            for key, value in (line.split(":", 1) for line in text.splitlines()[1:])
        }
        total += fields["Rss"] if member == pid else fields["Private_Clean"] + fields["Private_Dirty"]
    return total


def peak_scoring_memory(checkpoint: Path, video: Path, out: Path) -> tuple[float, dict[str, str]]:
    """Peak resident memory (MB, :func:`run_footprint_kb`) of ``qasa-vqa score`` on ``video``, as a user
    runs it (default decoding worker), and its row."""
    command = [sys.executable, "-m", "qasa_vqa", "score", str(video), "--checkpoint", str(checkpoint)]
    command += ["--out", str(out), "--quiet"]
    with open(out.with_suffix(".log"), "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=log)
        peak = 0
        try:
            while process.poll() is None:
                peak = max(peak, run_footprint_kb(process.pid))
                time.sleep(0.02)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
    text = out.with_suffix(".log").read_text(errors="replace")
    assert process.returncode == 0, f"qasa-vqa score exited with {process.returncode}:\n{text[-3000:]}"
    (row,) = read_rows(out)
    return peak / 1024, row


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_scoring_a_60_s_4k_video_stays_under_1_5_gb(paper_views_checkpoint: Path, tmp_path: Path) -> None:
    # 1,800 frames of 3840 x 2160: 45 GB as RGB, and the 64 test frames alone 1.6 GB as one array. The
    # scorer holds one decoded frame at a time (views are cut and resized as the decoder hands frames
    # over), so the run costs about what a small clip costs.
    uhd = write_uhd_clip(tmp_path / "uhd.mp4")
    small = write_video(tmp_path / "small.mp4", synthetic_frames(96, 240, 320, seed=1), codec="h264")
    uhd_mb, row = peak_scoring_memory(paper_views_checkpoint, uhd, tmp_path / "uhd.csv")
    assert row["status"] == "ok", row["error"]
    assert (row["width"], row["height"], row["num_frames"]) == ("3840", "2160", str(UHD_SECONDS * UHD_FPS))
    small_mb, small_row = peak_scoring_memory(paper_views_checkpoint, small, tmp_path / "small.csv")
    assert small_row["status"] == "ok", small_row["error"]
    print(
        f"\npeak resident memory of the scoring run: 60 s 4K {uhd_mb:.0f} MB, 320 x 240 clip {small_mb:.0f} MB"
    )
    assert uhd_mb < MAX_UHD_MB, f"scoring a 60 s 4K video peaked at {uhd_mb:.0f} MB"
    assert uhd_mb - small_mb < MAX_UHD_OVER_SMALL_MB, (
        f"4K peaked {uhd_mb - small_mb:.0f} MB above a 320 x 240 clip ({uhd_mb:.0f} vs {small_mb:.0f} MB)"
    )
