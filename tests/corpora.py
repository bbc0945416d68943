"""Small generated datasets for the data tests: a labelled clip folder and a distortion-like tree.

The tree's versions are made so a test can see what a dataset did: frame ``t`` of every version shows
the same texture shifted ``3 * t`` pixels, and version ``k`` adds ``4 * k`` to every pixel. Equal
frame indices and equal patches across versions therefore leave only that constant between them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qasa_vqa.video.writer import synthetic_frames, write_video

VERSION_STEP = 4  # brightness added per version number in the tree
SHIFT = 3  # pixels the texture moves per frame


def write_labelled_clips(
    folder: Path, count: int, *, frames: int = 96, height: int = 120, width: int = 160, seed: int = 0
) -> Path:
    """``count`` H.264 clips ``clips/c<i>.mp4`` and a plain CSV ``manifest.csv`` (MOS ``10 + 7 i``)."""
    clips = folder / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    rows = ["path,mos"]
    for i in range(count):
        write_video(clips / f"c{i}.mp4", synthetic_frames(frames, height, width, seed=seed + i), codec="h264")
        rows.append(f"clips/c{i}.mp4,{10 + 7 * i}")
    manifest = folder / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def version_frames(scene_seed: int, version: int, frames: int, height: int, width: int) -> list[np.ndarray]:
    rng = np.random.default_rng(scene_seed)
    base = rng.uniform(40, 200, size=(height, width + SHIFT * frames, 3))
    out = []
    for t in range(frames):
        frame = base[:, SHIFT * t : SHIFT * t + width] + VERSION_STEP * version
        out.append(np.clip(frame, 0, 255).astype(np.uint8))
    return out


def write_version_tree(
    root: Path,
    scenes: int,
    *,
    versions: int = 13,
    frames: int = 40,
    height: int = 64,
    width: int = 80,
) -> Path:
    """``root/<k>/s<j>.mp4`` for k < ``versions``: near-lossless H.264 4:4:4 of :func:`version_frames`."""
    for k in range(versions):
        folder = root / str(k)
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(scenes):
            write_video(
                folder / f"s{j}.mp4",
                version_frames(100 + j, k, frames, height, width),
                codec="h264",
                pix_fmt="yuv444p",
                crf=0,
            )
    return root
