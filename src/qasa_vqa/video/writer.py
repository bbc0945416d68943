"""Write videos with PyAV, and generate deterministic synthetic clips to write.

Tests, benchmarks and the demo need real encoded videos (H.264 with B-frames, HEVC, VP9, AV1, MPEG-4,
MPEG-2, odd sizes, rotation tags, variable frame rate) and nothing may be downloaded, so this module
makes them: :func:`synthetic_frames` yields a seeded moving scene (a textured background panned by a
virtual camera plus moving shapes), and :func:`write_video` encodes any frame iterator with the
chosen codec, GOP, B-frames, rotation tag and timestamps.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw

__all__ = ["synthetic_frames", "write_video"]

# Short codec names -> the PyAV encoder used for them.
_ENCODER_ALIASES = {"h264": "libx264", "hevc": "libx265", "vp9": "libvpx-vp9", "av1": "libsvtav1"}


def synthetic_frames(
    num_frames: int,
    height: int,
    width: int,
    *,
    seed: int = 0,
    speed: float = 3.0,
    grain: float = 4.0,
) -> Iterator[np.ndarray]:
    """Yield ``num_frames`` RGB uint8 frames ``[height, width, 3]`` of a seeded moving scene.

    The scene is a smooth random texture with sharp shapes, panned diagonally by ``speed`` pixels per
    frame, with a bright disc crossing it and per-frame film grain of standard deviation ``grain``.
    The same arguments give the same frames. Memory stays at a few frames, whatever the length.
    """
    if num_frames < 1 or height < 2 or width < 2:
        raise ValueError(
            f"need num_frames >= 1 and a size of at least 2x2, got {num_frames}, {height}x{width}"
        )
    rng = np.random.default_rng(seed)
    margin = int(np.ceil(abs(speed) * num_frames)) + 1
    tex_h, tex_w = height + margin, width + margin
    low = rng.integers(0, 256, size=(max(2, tex_h // 24), max(2, tex_w // 24), 3), dtype=np.uint8)
    texture = Image.fromarray(low).resize((tex_w, tex_h), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(texture)
    for _ in range(12 + (tex_h * tex_w) // 20000):
        x0, y0 = int(rng.integers(0, tex_w)), int(rng.integers(0, tex_h))
        size = int(rng.integers(4, max(5, min(tex_h, tex_w) // 4)))
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        if rng.random() < 0.5:
            draw.rectangle((x0, y0, x0 + size, y0 + size // 2), fill=colour)
        else:
            draw.ellipse((x0, y0, x0 + size, y0 + size), outline=colour, width=max(1, size // 8))
    background = np.asarray(texture, dtype=np.uint8)
    radius = max(2, min(height, width) // 8)
    yy, xx = np.ogrid[:height, :width]
    # A small bank of grain fields, re-used with random shifts: per-frame Gaussian noise at 1080p would
    # dominate the generation time.
    grain_bank = (
        np.clip(rng.normal(0.0, grain, size=(4, height, width, 3)), -127, 127).astype(np.int16)
        if grain > 0
        else None
    )
    for t in range(num_frames):
        shift = round(abs(speed) * t)
        frame = background[shift : shift + height, shift : shift + width].copy()
        cy = height // 2 + int((height // 3) * np.sin(2 * np.pi * t / max(num_frames, 2)))
        cx = int((t * max(1.0, width / max(num_frames, 1))) % width)
        frame[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = (250, 240, 60)
        if grain_bank is not None:
            noise = np.roll(grain_bank[t % 4], int(rng.integers(0, width)), axis=1)
            frame = np.clip(frame + noise, 0, 255).astype(np.uint8)
        yield frame


def write_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    *,
    codec: str = "libx264",
    fps: int | Fraction = 30,
    pix_fmt: str = "yuv420p",
    gop: int | None = None,
    bframes: int | None = None,
    crf: int | None = None,
    bitrate: int | None = None,
    options: Mapping[str, str] | None = None,
    rotation: int = 0,
    timestamps: Sequence[int] | None = None,
    time_base: Fraction | None = None,
    container_format: str | None = None,
) -> Path:
    """Encode RGB uint8 ``frames`` (``[H, W, 3]`` each, all the same size) into ``path``.

    ``codec`` is a PyAV encoder name (short names ``h264``, ``hevc``, ``vp9``, ``av1`` map to libx264,
    libx265, libvpx-vp9 and libsvtav1). ``gop`` sets the keyframe interval, ``bframes`` the number of
    B-frames. ``rotation`` writes a display-matrix rotation tag (degrees counter-clockwise, as phones
    do; the encoded pixels are not touched). ``timestamps`` gives each frame's presentation time in
    ``time_base`` units, for variable frame rate; by default frames are evenly spaced at ``fps``.
    Returns the path.
    """
    path = Path(path)
    codec = _ENCODER_ALIASES.get(codec, codec)
    if codec == "libsvtav1":
        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its banner to stderr unless told not to
    rate = Fraction(fps)
    frame_iter = iter(frames)
    try:
        first = next(frame_iter)
    except StopIteration:
        raise ValueError(f"no frames to write to {path}") from None
    height, width = first.shape[:2]
    with av.open(str(path), mode="w", format=container_format) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if time_base is not None:
            stream.time_base = time_base
            stream.codec_context.time_base = time_base
        codec_options = dict(options or {})
        if gop is not None:
            stream.codec_context.gop_size = gop
            if codec == "libx264":
                codec_options.setdefault("x264-params", f"keyint={gop}:min-keyint={gop}:scenecut=0")
            elif codec == "libx265":
                codec_options.setdefault(
                    "x265-params", f"keyint={gop}:min-keyint={gop}:scenecut=0:log-level=error"
                )
            elif codec == "libsvtav1":
                codec_options.setdefault("svtav1-params", f"keyint={gop}")
        if bframes is not None:
            stream.codec_context.max_b_frames = bframes
            if codec == "libx264":
                codec_options.setdefault("bf", str(bframes))
        if crf is not None:
            codec_options.setdefault("crf", str(crf))
        if bitrate is not None:
            stream.codec_context.bit_rate = bitrate
        if codec == "libx265":
            codec_options.setdefault("x265-params", "log-level=error")
        stream.codec_context.options = codec_options
        if rotation:
            stream.set_display_rotation(rotation)
        for index, array in enumerate(_chain(first, frame_iter)):
            if array.shape != first.shape or array.dtype != np.uint8:
                raise ValueError(
                    f"frame {index} for {path} is {array.dtype} {array.shape}; expected uint8 {first.shape}"
                )
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
            if timestamps is not None:
                frame.pts = int(timestamps[index])
                if time_base is not None:
                    frame.time_base = time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def _chain(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest
