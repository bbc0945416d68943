"""Degrade short clips the way video degrades, each distortion at a chosen perceived severity.

The demo CLIP (:mod:`qasa_vqa.democlip`) learns quality words from pictures whose faults it was told
in words. This module makes those faults. A :class:`Distortion` turns a clip (float32 ``[T, H, W, 3]``
on the 0-255 scale) into a worse one at a severity ``s`` in [0, 1], where ``s`` is meant as the
*perceived* impairment: 0 is invisible, about 0.15 is where a careful viewer starts to notice, 0.5 is
plainly visible and 1 ruins the picture. Each distortion maps ``s`` to its physical parameter by a
curve chosen by eye for that purpose (blur sigma ``0.3 + 3.2 s^1.2`` px, x264 CRF ``20 + 31 s``, ...);
nothing here measures a picture against its reference (no SSIM, no PSNR).

The families are those of user video: capture (over / under exposure, low contrast or haze, colour
cast, dull or garish colours), optics and motion (blur, motion blur, over-sharpening), the sensor
(noise), the pipeline (down-up scaling, banding) and the codec (real H.264 and VP9 encodes through
PyAV, and JPEG). Codecs run on the whole clip, so later frames carry inter-frame artefacts as in video.
:func:`apply_mix` applies a mix in the canonical order (capture, optics, sensor, scaling, codec). Every
random draw comes from the ``numpy.random.Generator`` passed in; x264 runs with one thread and without
its macroblock tree, so the same clip and generator give the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from io import BytesIO

import av
import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from PIL import Image
from scipy import ndimage

__all__ = [
    "CODECS",
    "DISTORTIONS",
    "GROUPS",
    "Applied",
    "Distortion",
    "apply_mix",
    "codec_round_trip",
    "to_uint8",
]

Clip = np.ndarray  # float32 [T, H, W, 3], 0-255 (values may leave the range until the next clip)


@dataclass(frozen=True)
class Applied:
    """One distortion as applied: its name, severity, and the words that describe this instance."""

    name: str
    severity: float
    words: tuple[str, ...]


@dataclass(frozen=True)
class Distortion:
    """A fault of video: ``apply(clip, s, rng)`` returns the clip and the words for what it did.

    ``group``: distortions of one group exclude each other in a mix (a clip is not both over- and
    under-exposed). ``weight``: how much of the picture's quality a severity of 1 takes away, for the
    overall quality word (a colour cast spoils a picture less than heavy blocking does).
    """

    name: str
    group: str
    weight: float
    apply: Callable[[Clip, float, np.random.Generator], tuple[Clip, tuple[str, ...]]]


def to_uint8(clip: Clip) -> np.ndarray:
    """Round and clip to uint8."""
    return np.clip(np.rint(clip), 0, 255).astype(np.uint8)


def _pick(rng: np.random.Generator, words: Sequence[str]) -> str:
    return words[int(rng.integers(len(words)))]


# ------------------------------------------------------------------------------------------- capture
def _exposure(sign: int) -> Callable:
    words = ("overexposed", "too bright", "washed out") if sign > 0 else ("underexposed", "too dark", "dim")

    def apply(x: Clip, s: float, rng: np.random.Generator) -> tuple[Clip, tuple[str, ...]]:
        gamma = rng.uniform(2.0, 2.4)
        stops = sign * (0.2 + 2.6 * s)
        linear = (np.clip(x, 0, 255) / 255) ** gamma * np.float32(2.0**stops)
        return 255 * np.clip(linear, 0, 1) ** (1 / gamma), words

    return apply


def _contrast(x: Clip, s: float, rng: np.random.Generator) -> tuple[Clip, tuple[str, ...]]:
    amount = np.float32(0.05 + 0.75 * s)
    if rng.random() < 0.5:  # flat: towards each frame's mean
        target, words = x.mean(axis=(1, 2, 3), keepdims=True), ("low contrast", "flat", "faded")
    else:  # haze: towards a light grey veil
        target, words = np.float32(rng.uniform(170, 220)), ("hazy", "foggy", "low contrast")
    return x + amount * (target - x), words


_HUES = ("reddish", "yellowish", "greenish", "cyan", "bluish", "purplish")


def _colour_cast(x: Clip, s: float, rng: np.random.Generator) -> tuple[Clip, tuple[str, ...]]:
    hue = rng.uniform(0, 2 * np.pi)
    phases = np.array([0.0, -2 * np.pi / 3, 2 * np.pi / 3])
    gains = 1 + (0.05 + 0.4 * s) * np.cos(hue + phases)  # hue 0: red up; pi/3: yellow; ...
    name = _HUES[round(hue / (np.pi / 3)) % 6]
    return x * gains.astype(np.float32), (name, f"{name} tinted", "off-color")


def _grey(x: Clip) -> Clip:
    return x @ np.array([0.299, 0.587, 0.114], np.float32)[:, None]


def _desaturate(x: Clip, s: float, rng: np.random.Generator) -> tuple[Clip, tuple[str, ...]]:
    keep = np.float32(1 - (0.1 + 0.85 * s))
    grey = _grey(x)
    return grey + keep * (x - grey), ("desaturated", "colorless", "dull-colored")


def _oversaturate(x: Clip, s: float, rng: np.random.Generator) -> tuple[Clip, tuple[str, ...]]:
    grey = _grey(x)
    return grey + np.float32(1.2 + 1.8 * s) * (x - grey), ("oversaturated", "garish", "overly colorful")


# ------------------------------------------------------------------------------------ optics, motion
def _blur(x: Clip, s: float, rng: np.random.Generator) -> tuple[Clip, tuple[str, ...]]:
    sigma = 0.3 + 3.2 * s**1.2
    out = ndimage.gaussian_filter(x, (0, sigma, sigma, 0), mode="nearest", truncate=3.0)
    return out, ("blurry", "out of focus", "soft")


def _motion_blur(x: Clip, s: float, rng: np.random.Generator) -> tuple[Clip, tuple[str, ...]]:
    length = 2 + 16 * s
    angle = rng.uniform(0, np.pi)
    taps = max(2, int(np.ceil(length)))
    steps = np.linspace(-length / 2, length / 2, taps)
    dy, dx = np.rint(steps * np.sin(angle)).astype(int), np.rint(steps * np.cos(angle)).astype(int)
    pad = int(np.ceil(length / 2)) + 1
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    h, w = x.shape[1:3]
    out = np.zeros_like(x)
    for oy, ox in zip(dy, dx, strict=True):
        out += padded[:, pad + oy : pad + oy + h, pad + ox : pad + ox + w]
    return out / np.float32(taps), ("motion blurred", "shaky", "blurry")


def _oversharpen(x: Clip, s: float, rng: np.random.Generator) -> tuple[Clip, tuple[str, ...]]:
    amount = np.float32(0.8 + 4.5 * s)
    soft = ndimage.gaussian_filter(x, (0, 1.4, 1.4, 0), mode="nearest", truncate=3.0)
    return x + amount * (x - soft), ("oversharpened", "harsh", "haloed")


# ------------------------------------------------------------------------------------------- sensor
def _noise(x: Clip, s: float, rng: np.random.Generator) -> tuple[Clip, tuple[str, ...]]:
    sigma = np.float32(1.5 + 28 * s**1.3)
    if rng.random() < 0.5:  # luma grain, the same in the three channels
        grain = rng.standard_normal((*x.shape[:3], 1), dtype=np.float32)
    else:
        grain = rng.standard_normal(x.shape, dtype=np.float32)
    return x + sigma * grain, ("noisy", "grainy", "speckled")


# ------------------------------------------------------------------------------------------ scaling
_DOWN = ("area", "bilinear", "nearest")
_UP = ("bilinear", "bicubic", "nearest")


def _rescale(x: Clip, s: float, rng: np.random.Generator) -> tuple[Clip, tuple[str, ...]]:
    factor = 1.15 * 4.5**s
    h, w = x.shape[1:3]
    small = (max(4, round(h / factor)), max(4, round(w / factor)))
    down, up = _pick(rng, _DOWN), _pick(rng, _UP)
    t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)
    kwargs = {"antialias": True, "align_corners": False} if down == "bilinear" else {}
    t = F.interpolate(t, size=small, mode=down, **kwargs)
    t = F.interpolate(t, size=(h, w), mode=up, **({} if up == "nearest" else {"align_corners": False}))
    words = (
        ("pixelated", "blocky", "low resolution")
        if up == "nearest"
        else ("low resolution", "upscaled", "soft")
    )
    return t.permute(0, 2, 3, 1).contiguous().numpy(), words


def _banding(x: Clip, s: float, rng: np.random.Generator) -> tuple[Clip, tuple[str, ...]]:
    levels = np.float32(max(3, round(2 ** (6.5 - 4.5 * s))))
    step = 255 / (levels - 1)
    return np.rint(np.clip(x, 0, 255) / step) * step, ("banded", "posterized", "blotchy")


# -------------------------------------------------------------------------------------------- codecs
_DECODERS = {"libx264": "h264", "libvpx-vp9": "vp9"}


def codec_round_trip(
    frames: np.ndarray, encoder: str, options: dict[str, str], *, fps: int = 25, bit_rate: int | None = None
) -> np.ndarray:
    """Encode uint8 ``[T, H, W, 3]`` frames (even H, W) with PyAV's ``encoder`` in memory and decode them."""
    t, h, w, _ = frames.shape
    encoder_context = av.CodecContext.create(encoder, "w")
    encoder_context.width, encoder_context.height, encoder_context.pix_fmt = w, h, "yuv420p"
    encoder_context.time_base, encoder_context.framerate = Fraction(1, fps), Fraction(fps)
    if bit_rate is not None:
        encoder_context.bit_rate = bit_rate
    encoder_context.options = options
    packets = []
    for index, array in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
        frame.pts = index
        packets.extend(encoder_context.encode(frame))
    packets.extend(encoder_context.encode(None))
    decoder = av.CodecContext.create(_DECODERS.get(encoder, encoder), "r")
    decoded = [f.to_ndarray(format="rgb24") for p in packets for f in decoder.decode(p)]
    decoded += [f.to_ndarray(format="rgb24") for f in decoder.decode(None)]
    if len(decoded) != t:
        raise RuntimeError(f"{encoder} round trip returned {len(decoded)} of {t} frames")
    return np.stack(decoded)


_CODEC_WORDS = ("blocky", "compressed", "with compression artifacts")


def _h264(x: Clip, s: float, rng: np.random.Generator) -> tuple[Clip, tuple[str, ...]]:
    crf = 20 + 31 * s
    preset = _pick(rng, ("ultrafast", "veryfast", "medium"))
    options = {"crf": f"{crf:.1f}", "preset": preset, "threads": "1", "x264-params": "mbtree=0"}
    return codec_round_trip(to_uint8(x), "libx264", options).astype(np.float32), _CODEC_WORDS


def _vp9(x: Clip, s: float, rng: np.random.Generator) -> tuple[Clip, tuple[str, ...]]:
    crf = round(22 + 41 * s)
    options = {"crf": str(crf), "b": "0", "deadline": "realtime", "cpu-used": "8", "threads": "1"}
    out = codec_round_trip(to_uint8(x), "libvpx-vp9", options, bit_rate=0)
    return out.astype(np.float32), _CODEC_WORDS


def _jpeg(x: Clip, s: float, rng: np.random.Generator) -> tuple[Clip, tuple[str, ...]]:
    quality = max(2, round(92 - 88 * s**0.8))
    out = np.empty_like(x)
    for i, frame in enumerate(to_uint8(x)):
        buffer = BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        with Image.open(buffer) as image:
            out[i] = np.asarray(image.convert("RGB"), dtype=np.float32)
    return out, ("blocky", "compressed", "with jpeg artifacts")


def _invisible_encode(x: Clip, rng: np.random.Generator) -> Clip:
    """The transparent H.264 encode every video gets (CRF 14-19): part of a clean picture, no words."""
    options = {"crf": f"{rng.uniform(14, 19):.1f}", "preset": "veryfast", "threads": "1",
               "x264-params": "mbtree=0"}  # fmt: skip
    return codec_round_trip(to_uint8(x), "libx264", options).astype(np.float32)


# ------------------------------------------------------------------------------------------ registry
DISTORTIONS: dict[str, Distortion] = {
    d.name: d
    for d in (
        Distortion("overexposure", "exposure", 1.0, _exposure(+1)),
        Distortion("underexposure", "exposure", 1.0, _exposure(-1)),
        Distortion("contrast", "contrast", 0.9, _contrast),
        Distortion("colour_cast", "colour", 0.6, _colour_cast),
        Distortion("desaturation", "saturation", 0.5, _desaturate),
        Distortion("oversaturation", "saturation", 0.6, _oversaturate),
        Distortion("blur", "sharpness", 1.0, _blur),
        Distortion("motion_blur", "sharpness", 1.0, _motion_blur),
        Distortion("oversharpening", "sharpness", 0.6, _oversharpen),
        Distortion("noise", "noise", 1.0, _noise),
        Distortion("rescale", "scaling", 1.0, _rescale),
        Distortion("banding", "banding", 0.8, _banding),
        Distortion("h264", "codec", 1.0, _h264),
        Distortion("vp9", "codec", 1.0, _vp9),
        Distortion("jpeg", "codec", 1.0, _jpeg),
    )
}
GROUPS: dict[str, tuple[str, ...]] = {}
for _d in DISTORTIONS.values():
    GROUPS[_d.group] = (*GROUPS.get(_d.group, ()), _d.name)
CODECS = GROUPS["codec"]


def apply_mix(
    frames: np.ndarray,
    mix: Sequence[tuple[str, float]],
    rng: np.random.Generator,
    *,
    transparent_encode: bool = True,
) -> tuple[np.ndarray, list[Applied]]:
    """Apply ``mix`` (``[(name, severity), ...]``) to uint8 ``[T, H, W, 3]`` frames, in registry order.

    At most one distortion per group. A mix without a codec ends, if ``transparent_encode``, with the
    invisible H.264 encode that every video gets. Returns the uint8 frames and what was applied.
    """
    order = list(DISTORTIONS)
    seen: set[str] = set()
    for name, severity in mix:
        if name not in DISTORTIONS:
            raise ValueError(f"unknown distortion {name!r}; known: {', '.join(DISTORTIONS)}")
        if DISTORTIONS[name].group in seen:
            raise ValueError(f"two distortions of group {DISTORTIONS[name].group!r} in one mix: {list(mix)}")
        if not 0 <= severity <= 1:
            raise ValueError(f"severity of {name} must lie in [0, 1], got {severity}")
        seen.add(DISTORTIONS[name].group)
    x, applied = frames.astype(np.float32), []
    for name, severity in sorted(mix, key=lambda item: order.index(item[0])):
        x, words = DISTORTIONS[name].apply(x, float(severity), rng)
        applied.append(Applied(name, float(severity), tuple(words)))
    if transparent_encode and "codec" not in seen:
        x = _invisible_encode(x, rng)
    return to_uint8(x), applied
