"""Test videos written with PyAV: every codec, container and oddity the reader must handle.

``FIXTURES`` maps a fixture name to how it is made; :func:`make_fixture` writes one into a folder.
They are tiny (at most 176x144, at most 40 frames) so the whole set takes a few seconds.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from qasa_vqa.video.writer import synthetic_frames, write_video

# Irregular frame durations in milliseconds: variable frame rate (e.g. a phone under low light).
VFR_DURATIONS_MS = [33, 40, 25, 60, 33, 17, 50, 33, 90, 20]


def _vfr_timestamps(count: int) -> list[int]:
    steps = [VFR_DURATIONS_MS[i % len(VFR_DURATIONS_MS)] for i in range(count - 1)]
    return [0, *np.cumsum(steps).tolist()]


# name -> (file name, frames, height, width, write_video keyword arguments)
FIXTURES: dict[str, tuple[str, int, int, int, dict]] = {
    "h264_bframes": ("h264_bframes.mp4", 40, 144, 176, {"codec": "h264", "bframes": 3, "gop": 12}),
    "h264_mkv": ("h264.mkv", 30, 96, 128, {"codec": "h264", "bframes": 2, "gop": 10}),
    "hevc": ("hevc.mp4", 30, 96, 128, {"codec": "hevc", "gop": 10}),
    "vp9_webm": ("vp9.webm", 30, 96, 128, {"codec": "vp9", "gop": 10}),
    "av1": ("av1.mkv", 24, 96, 128, {"codec": "av1", "gop": 10}),
    "mpeg4": ("mpeg4.avi", 30, 96, 128, {"codec": "mpeg4", "bframes": 2, "gop": 10}),
    "mpeg2": ("mpeg2.mpg", 30, 96, 128, {"codec": "mpeg2video", "bframes": 2, "gop": 10}),
    "odd_size_h264": ("odd_h264.mp4", 20, 207, 333, {"codec": "h264", "pix_fmt": "yuv444p", "bframes": 2}),
    "odd_size_vp9": ("odd_vp9.webm", 20, 207, 333, {"codec": "vp9"}),
    "rotated_phone": ("rotated.mp4", 20, 128, 96, {"codec": "h264", "rotation": 90, "crf": 8}),
    "vfr_mp4": (
        "vfr.mp4",
        30,
        96,
        128,
        {"codec": "h264", "bframes": 2, "time_base": Fraction(1, 1000), "timestamps": _vfr_timestamps(30)},
    ),
    "vfr_mkv": (
        "vfr.mkv",
        30,
        96,
        128,
        {"codec": "h264", "time_base": Fraction(1, 1000), "timestamps": _vfr_timestamps(30)},
    ),
    "five_frames": ("five.mp4", 5, 96, 128, {"codec": "h264", "bframes": 2}),
}


def upright_pattern(height: int, width: int) -> np.ndarray:
    """An image whose orientation is unmistakable: red top band, blue left band, green bottom-right."""
    image = np.full((height, width, 3), 128, dtype=np.uint8)
    image[: height // 4] = (230, 30, 30)
    image[:, : width // 5] = (30, 30, 230)
    image[height // 2 :, width // 2 :] = (30, 220, 30)
    return image


def make_fixture(name: str, folder: Path) -> Path:
    """Write fixture ``name`` into ``folder`` (once) and return its path."""
    file_name, frames, height, width, options = FIXTURES[name]
    path = folder / file_name
    if path.exists():
        return path
    if name == "rotated_phone":
        # The phone stores the picture turned clockwise and tags it "rotate 90 degrees counter-clockwise".
        stored = np.ascontiguousarray(np.rot90(upright_pattern(height, width), k=-1))
        source = (stored for _ in range(frames))
    else:
        source = synthetic_frames(frames, height, width, seed=len(file_name))
    return write_video(path, source, **options)


def full_decode(path: Path) -> np.ndarray:
    """Every frame of ``path``, decoded sequentially by plain PyAV (no rotation applied)."""
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
