"""The demo corpus: real photographs -> moving clips -> distortions -> pseudo-MOS, made offline.

Every command must run on a fresh machine where no dataset can be downloaded, so this module makes a
small rated video corpus from what is installed: the photographs shipped inside scikit-image's wheel
(read from its ``data`` folder, never fetched) are filmed by a seeded virtual camera (smooth pan, zoom
and a small rotation; an affine warp with bilinear sampling), and a quarter of the scenes are
procedural (:func:`~qasa_vqa.video.writer.synthetic_frames`). Each rated clip is one scene degraded by
a seeded mix of k = 1, 2 or 3 distortions (chances 0.4, 0.4, 0.2) of continuous severity ``s`` drawn
uniformly in [0, k^-1/4], applied in this order, then encoded as ordinary H.264 (CRF 18, or the mix's
own CRF when it holds ``h264``). The first clip of every scene gets no distortion (near-pristine).

===============  ==============================================================================
overexposure     ``+(0.25 + 2 s)`` stops in linear light (gamma 2.2), clipped
underexposure    ``-(0.25 + 2 s)`` stops in linear light
contrast         pixel values pulled towards the frame mean by ``0.04 + 0.5 s``
blur             Gaussian, sigma ``0.4 + 2.1 s`` pixels
noise            Gaussian, sigma ``2 + 16 s`` grey levels, new every frame
rescale          down by ``1.25 * 4^s`` (bilinear, antialiased), back up (bicubic)
frame_drop       each frame dropped (the last kept one shown instead) with chance ``0.05 + 0.55 s``
stutter          3 irregular freezes (playback catches up after each) holding ``0.05 + 0.45 s`` of it
vp9              libvpx-vp9 at ``500 * (10/500)^s`` kbit/s, decoded before the final encode
h264             x264 CRF ``22 + 24 s`` (as the final encode)
===============  ==============================================================================

Pseudo-MOS (full reference, against the decoded pristine clip; luma ``Y = 0.299 R + 0.587 G + 0.114 B``
on 0-255; frames t = 1, 3, 5, ..., i.e. the pairs (0, 1), (2, 3), ...)::

    S   = mean_t SSIM(Y_dis[t], Y_ref[t])
    T   = mean_t max(0, SSIM(Y_dis[t] - Y_dis[t-1], Y_ref[t] - Y_ref[t-1]))
    D   = -(3 ln S + 1.5 ln T)            (a distortion energy: 0 for the pristine clip itself)
    MOS = 100 exp(-(D / 2)^0.75)          (100 for the pristine clip, 82-91 for the clean encodes)

SSIM is Wang et al.'s: 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, L = 255, population
statistics, averaged over the pixels whose window lies inside the image (as scikit-image's
``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``). The temporal
term compares frame differences, so frame drops and stutter, whose frames are all copies of pristine
frames, still lose quality. Scoring every other pair halves the cost and still sees every repeated
frame: a repeat inside a pair zeroes its difference, one at a pair's start doubles its step.

Layout under ``out``: ``pristine/<scene>.mp4`` (H.264 CRF 12), ``videos/<clip>.mp4``, ``manifest.csv``
(``path,mos,split``; no test scene in the train pool), ``pristine-subset/`` and ``tree/<k>/<scene>.mp4``
(the ST-VQRL pretraining tree of a few train scenes, by :func:`qasa_vqa.video.distortions.synthesize_tree`)
and ``corpus.json`` (seed, recipe version, knobs, per-clip recipes and scores, the formula). Every random
draw comes from a generator seeded by ``(seed, scene or clip index)``: the corpus does not depend on
the number of workers, and the same seed gives the same bytes in ``manifest.csv`` and ``corpus.json``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from functools import partial
from importlib.resources import files
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from scipy import ndimage

from qasa_vqa.errors import QasaVqaError
from qasa_vqa.storage import atomic_save, atomic_write_text
from qasa_vqa.video.reader import read_frames
from qasa_vqa.video.writer import synthetic_frames, write_video

__all__ = [
    "DISTORTIONS", "PHOTOS", "DemoCorpus", "DemoKnobs", "distort", "generate_demo_corpus", "plan_corpus",
    "pseudo_mos", "render_scene", "ssim", "write_clip",
]  # fmt: skip

RECIPE_VERSION = 1
FORMULA = (
    "MOS = 100 exp(-(D/2)^0.75), D = -(3 ln S + 1.5 ln T); S = mean SSIM(luma), T = mean max(0, SSIM(luma "
    "frame differences)), over the frame pairs (2i, 2i+1)"
)
# The distortions, in the order a mix applies them.
DISTORTIONS = ("overexposure", "underexposure", "contrast", "blur", "noise", "rescale", "frame_drop", "stutter",
               "vp9", "h264")  # fmt: skip
# A mix draws 1-3 groups without replacement; a two-member group then picks one member.
_GROUPS = (("overexposure", "underexposure"), ("contrast",), ("blur",), ("noise",), ("rescale",),
           ("frame_drop",), ("stutter",), ("vp9", "h264"))  # fmt: skip
# Natural photographs in skimage/data, part of the wheel (grey ones become grey RGB).
PHOTOS = (
    "astronaut.png", "coffee.png", "chelsea.png", "rocket.jpg", "hubble_deep_field.jpg", "ihc.png",
    "motorcycle_left.png", "retina.jpg", "camera.png", "coins.png", "moon.png", "brick.png", "grass.png",
    "gravel.png",
)  # fmt: skip
_FINAL_CRF, _PRISTINE_CRF = 18, 12
# mbtree=0: with x264's macroblock tree the same frames encode differently from one process to the next
# (threads=1, no address randomisation either), and the corpus must be the same bytes for the same seed.
_X264 = {"preset": "veryfast", "threads": "1", "x264-params": "mbtree=0"}


@dataclass(frozen=True)
class DemoKnobs:
    """Sizes of the demo corpus: ``scenes`` x ``variants`` rated clips of ``frames`` frames."""

    scenes: int = 12
    variants: int = 6
    frames: int = 64
    width: int = 320
    height: int = 240
    fps: int = 25
    tree_scenes: int = 6
    test_fraction: float = 0.25


@dataclass(frozen=True)
class DemoCorpus:
    """Where a generated demo corpus lies, and how much it holds."""

    root: Path
    manifest: Path
    pristine_dir: Path
    tree_dir: Path | None
    num_scenes: int
    num_clips: int
    num_train: int
    num_test: int
    tree_scenes: tuple[str, ...]


# ------------------------------------------------------------------------------------------ pseudo-MOS
_WINDOW = np.exp(-0.5 * (np.arange(-5, 6) / 1.5) ** 2)
_WINDOW /= _WINDOW.sum()  # 11 taps, sigma 1.5: scipy's gaussian_filter(truncate=3.5), as skimage uses


def _blur(z: np.ndarray) -> np.ndarray:
    """Gaussian-window local means over the last two axes, 'valid' part only (the 5-pixel border cut)."""
    z = ndimage.correlate1d(ndimage.correlate1d(z, _WINDOW, axis=-1), _WINDOW, axis=-2)
    return z[..., 5:-5, 5:-5]


def _moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return _blur(x), _blur(x * x)


def _ssim_maps(x: np.ndarray, y: np.ndarray, y_moments: tuple, shift: float = 0.0) -> np.ndarray:
    """SSIM maps of images ``x`` and ``y`` given less ``shift`` (centring keeps float32 variances exact)."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    (mx, xx), (my, yy), xy = _moments(x), y_moments, _blur(x * y)
    num = (2 * (mx + shift) * (my + shift) + c1) * (2 * (xy - mx * my) + c2)
    return num / (((mx + shift) ** 2 + (my + shift) ** 2 + c1) * (xx - mx * mx + yy - my * my + c2))


def ssim(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mean SSIM (data range 255) of each image pair of ``x`` and ``y`` (``[..., H, W]``, H, W >= 11)."""
    if x.shape != y.shape or len(x.shape) < 2 or min(x.shape[-2:]) < 11:
        raise ValueError(f"need equal shapes of at least 11x11, got {x.shape} and {y.shape}")
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return _ssim_maps(x, y, _moments(y)).mean(axis=(-2, -1))


def _luma_pairs(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Luma less 128 (float32) of frames 1, 3, 5, ... and its differences from frames 0, 2, 4, ..."""
    frames = frames[: len(frames) // 2 * 2].astype(np.float32)
    luma = frames @ np.array([0.299, 0.587, 0.114], np.float32) - np.float32(128)
    return luma[1::2], luma[1::2] - luma[0::2]


class _Reference:
    """A pristine clip's luma and the local moments its SSIMs need, computed once for all its variants."""

    def __init__(self, frames: np.ndarray, chunk: int = 8) -> None:
        if frames.ndim != 4 or frames.shape[0] < 2 or min(frames.shape[1:3]) < 11:
            raise ValueError(f"need [T >= 2, H >= 11, W >= 11, 3] frames, got {frames.shape}")
        self.shape, self.chunk = frames.shape, chunk
        self.luma, self.diff = _luma_pairs(frames)
        self.moments, self.diff_moments = _moments(self.luma), _moments(self.diff)

    def score(self, distorted: np.ndarray) -> dict[str, float]:
        if distorted.shape != self.shape:
            raise ValueError(f"distorted clip is {distorted.shape}, reference {self.shape}")
        spatial, temporal = [], []
        for a in range(0, len(self.luma), self.chunk):  # small arrays: they stay in cache
            y, d = _luma_pairs(distorted[2 * a : 2 * (a + self.chunk)])
            sl = slice(a, a + self.chunk)
            ref = (self.moments[0][sl], self.moments[1][sl])
            spatial.append(_ssim_maps(y, self.luma[sl], ref, 128.0).mean(axis=(-2, -1)))
            ref = (self.diff_moments[0][sl], self.diff_moments[1][sl])
            temporal.append(_ssim_maps(d, self.diff[sl], ref).mean(axis=(-2, -1)))
        s = max(0.0, float(np.concatenate(spatial).mean(dtype=np.float64)))
        t = float(np.maximum(np.concatenate(temporal), 0).mean(dtype=np.float64))
        energy = -(3 * math.log(s) + 1.5 * math.log(t)) if min(s, t) > 0 else math.inf
        return {"spatial": s, "temporal": t, "mos": 100 * math.exp(-((energy / 2) ** 0.75))}


def pseudo_mos(reference: np.ndarray, distorted: np.ndarray) -> dict[str, float]:
    """Full-reference pseudo-MOS of ``distorted`` against ``reference`` (uint8 ``[T, H, W, 3]``, T >= 2).

    Returns ``{"spatial": S, "temporal": T, "mos": MOS}`` (the formula is in the module docstring).
    """
    return _Reference(reference).score(distorted)


# ---------------------------------------------------------------------------------------------- scenes
def render_scene(name: str, knobs: DemoKnobs, seed: int) -> np.ndarray:
    """The pristine frames (uint8 ``[T, H, W, 3]``) of scene ``name``: a photo's stem or ``procNN``."""
    rng = np.random.default_rng(seed)
    n, h, w = knobs.frames, knobs.height, knobs.width
    if name.startswith("proc"):
        speed = float(rng.uniform(0.8, 2.0))
        return np.stack(list(synthetic_frames(n, h, w, seed=seed, speed=speed, grain=1.0)))
    with Image.open(files("skimage") / "data" / next(p for p in PHOTOS if p.split(".")[0] == name)) as image:
        photo = image.convert("RGB")
    cover = 1.8 * max(h / photo.height, w / photo.width)  # the frame at zoom 1 covers 1/1.8 of the photo
    src_w, src_h = round(photo.width * cover), round(photo.height * cover)
    src = np.array(photo.resize((src_w, src_h), Image.Resampling.LANCZOS))
    ease = np.linspace(0.0, 1.0, n) ** 2 * (3 - 2 * np.linspace(0.0, 1.0, n))
    k_max, r_max = 1.35, np.deg2rad(3.0)
    zoom = np.interp(ease, [0, 1], rng.uniform(0.9, k_max, 2))  # source pixels per output pixel
    angle = np.interp(ease, [0, 1], rng.uniform(-r_max, r_max, 2))
    # room for the centre: the window rotated and zoomed the most stays inside the source
    ex = k_max * (w / 2 * np.cos(r_max) + h / 2 * np.sin(r_max))
    ey = k_max * (w / 2 * np.sin(r_max) + h / 2 * np.cos(r_max))
    centre = []
    for lo, hi in ((ex, src_w - ex), (ey, src_h - ey)):  # pan from near one side to near the other
        a, b = lo + rng.uniform(0, 0.3, 2) * (hi - lo)
        ends = (a, hi - (b - lo)) if rng.random() < 0.5 else (hi - (b - lo), a)
        jitter = 0.6 * np.sin(np.arange(n) * rng.uniform(0.2, 0.35) + rng.uniform(0, 2 * np.pi))  # hand-held
        centre.append(np.interp(ease, [0, 1], ends) + jitter)
    cx, cy, cos, sin = *centre, np.cos(angle), np.sin(angle)
    row_x = np.stack([zoom * w * cos / src_w, -zoom * h * sin / src_w, 2 * cx / src_w - 1], -1)
    row_y = np.stack([zoom * w * sin / src_h, zoom * h * cos / src_h, 2 * cy / src_h - 1], -1)
    theta = np.stack([row_x, row_y], 1)  # output [-1, 1] coordinates -> source [-1, 1] coordinates
    image = torch.from_numpy(src).permute(2, 0, 1)[None].float()
    grid = F.affine_grid(torch.from_numpy(theta).float(), [n, 3, h, w], align_corners=False)
    out = torch.cat([F.grid_sample(image, g[None], align_corners=False, padding_mode="border") for g in grid])
    return out.round().clamp(0, 255).byte().permute(0, 2, 3, 1).contiguous().numpy()


# ----------------------------------------------------------------------------------------- distortions
def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def distort(
    frames: np.ndarray, recipe: Sequence[dict[str, Any]], *, seed: int, fps: int, tmp: Path | None = None
) -> np.ndarray:
    """Apply ``recipe`` (``[{"name": ..., "severity": s}, ...]``, in order) to uint8 ``[T, H, W, 3]`` frames.

    ``h264`` is left to the final encode (:func:`write_clip`); ``vp9`` is an encode/decode round trip
    through a scratch file in ``tmp`` (default: a private temporary folder, so a run killed mid-encode
    leaves nothing among the outputs). Each distortion draws from ``(seed, distortion)`` whatever the severity,
    so a larger severity degrades the same clip further (frame drops and freezes are nested).
    """
    x, n = frames.astype(np.float32), len(frames)
    for step in recipe:
        name, s = step["name"], float(step["severity"])
        if name not in DISTORTIONS:
            raise ValueError(f"unknown distortion {name!r}; known: {', '.join(DISTORTIONS)}")
        rng = np.random.default_rng([seed, DISTORTIONS.index(name)])
        if name in ("overexposure", "underexposure"):
            stops = (0.25 + 2 * s) * (1 if name == "overexposure" else -1)
            x = 255 * np.clip((np.clip(x, 0, 255) / 255) ** 2.2 * np.float32(2**stops), 0, 1) ** (1 / 2.2)
        elif name == "contrast":
            x = x + np.float32(0.04 + 0.5 * s) * (x.mean(axis=(1, 2, 3), keepdims=True) - x)
        elif name == "blur":
            sigma = 0.4 + 2.1 * s
            x = ndimage.gaussian_filter(x, (0, sigma, sigma, 0), mode="nearest", truncate=3.0)
        elif name == "noise":
            x = x + np.float32(2 + 16 * s) * rng.standard_normal(x.shape, dtype=np.float32)
        elif name == "rescale":
            t = torch.from_numpy(x).permute(0, 3, 1, 2)
            small = [max(2, round(side / (1.25 * 4**s))) for side in x.shape[1:3]]
            t = F.interpolate(t, size=small, mode="bilinear", antialias=True, align_corners=False)
            t = F.interpolate(t, size=x.shape[1:3], mode="bicubic", align_corners=False)
            x = t.permute(0, 2, 3, 1).contiguous().numpy()
        elif name in ("frame_drop", "stutter"):
            index = np.arange(n)
            if name == "frame_drop":
                holds = [(t - 1, 1) for t in np.flatnonzero(rng.random(n) < 0.05 + 0.55 * s) if t > 0]
            else:  # irregular freezes: 3 start frames and the split of the frozen time drawn per clip
                starts = np.sort(rng.choice(np.arange(1, max(2, n - 1)), size=min(3, n - 2), replace=False))
                lengths = np.round((0.05 + 0.45 * s) * n * rng.dirichlet(np.ones(len(starts)))).astype(int)
                holds = list(zip(starts, lengths, strict=True))
            for start, length in holds:
                index[start + 1 : start + 1 + length] = index[start]
            x = x[index]
        elif name == "vp9":
            opts = {"deadline": "good", "cpu-used": "4", "threads": "1"}
            with tempfile.TemporaryDirectory(prefix="qasa-vp9-", dir=tmp) as scratch:
                path = Path(scratch) / f"{seed}.webm"
                bitrate = round(500_000 * (10 / 500) ** s)
                write_video(path, _u8(x), codec="vp9", fps=fps, bitrate=bitrate, options=opts)
                x = read_frames(path, np.arange(n)).astype(np.float32)
    return _u8(x)  # h264: the final encode's CRF (write_clip)


def _encode(path: Path, frames: np.ndarray, fps: int, crf: float) -> None:
    atomic_save(
        path, lambda tmp: write_video(tmp, frames, codec="h264", fps=fps, options=_X264 | {"crf": f"{crf:g}"})
    )


def write_clip(
    path: Path, reference: np.ndarray, recipe: Sequence[dict[str, Any]], *, seed: int, fps: int
) -> Path:
    """Distort ``reference`` by ``recipe`` and write it, atomically, as the final H.264 ``path``."""
    h264 = [step["severity"] for step in recipe if step["name"] == "h264"]
    frames = distort(reference, recipe, seed=seed, fps=fps)
    _encode(path, frames, fps, round(22 + 24 * h264[0], 2) if h264 else _FINAL_CRF)
    return path


# -------------------------------------------------------------------------------------------- planning
def _seed(*key: int) -> int:
    return int(np.random.SeedSequence(list(key)).generate_state(1)[0])


def plan_corpus(seed: int, knobs: DemoKnobs) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """The corpus before any pixel, a pure function of the seed: ``({scene: split}, [clip records])``."""
    if knobs.scenes < 2 or knobs.variants < 1 or knobs.frames < 8 or knobs.width % 2 or knobs.height % 2:
        raise QasaVqaError(f"demo corpus knobs out of range (>= 2 scenes, >= 8 frames, even sizes): {knobs}")
    if min(knobs.width, knobs.height) < 16 or not 0 < knobs.test_fraction < 1:
        raise QasaVqaError(f"demo clips need at least 16x16 pixels and 0 < test_fraction < 1: {knobs}")
    rng = np.random.default_rng([seed, 0])
    n_proc = max(knobs.scenes // 4, knobs.scenes - len(PHOTOS))
    photos = rng.choice(len(PHOTOS), knobs.scenes - n_proc, replace=False)
    names = sorted([PHOTOS[i].split(".")[0] for i in photos] + [f"proc{i:02d}" for i in range(n_proc)])
    test = rng.choice(
        names, min(knobs.scenes - 1, math.ceil(knobs.test_fraction * knobs.scenes)), replace=False
    )
    splits = {name: "test" if name in set(test.tolist()) else "train" for name in names}
    clips = []
    for i, scene in enumerate(names):
        for v in range(knobs.variants):
            index = i * knobs.variants + v
            crng, recipe = np.random.default_rng([seed, 2, index]), []
            if v > 0:  # variant 0 of every scene is clean: only the near-transparent final encode
                k = int(crng.choice([1, 2, 3], p=[0.4, 0.4, 0.2]))
                for g in sorted(crng.choice(len(_GROUPS), k, replace=False)):
                    name = _GROUPS[g][int(crng.integers(len(_GROUPS[g])))]
                    severity = crng.uniform(0, k**-0.25)  # each of several is milder
                    recipe.append({"name": name, "severity": round(float(severity), 4)})
                recipe.sort(key=lambda step: DISTORTIONS.index(step["name"]))
            clip = {"clip": f"{scene}_{v:02d}", "scene": scene, "split": splits[scene], "recipe": recipe}
            clips.append(clip | {"clip_seed": _seed(seed, 2, index)})
    return splits, clips


# ------------------------------------------------------------------------------------------ generation
def _scene_task(
    name: str, knobs: DemoKnobs, seed: int, pristine: Path, clips: list[tuple[dict[str, Any], Path]]
) -> dict[str, dict[str, float]]:
    """Make one scene's pristine clip and all its rated clips (unless present); return their scores."""
    if not pristine.exists():
        _encode(pristine, render_scene(name, knobs, seed), knobs.fps, _PRISTINE_CRF)
    frames = read_frames(pristine, np.arange(knobs.frames))
    reference, scores = _Reference(frames), {}
    for clip, path in clips:
        if not path.exists():
            write_clip(path, frames, clip["recipe"], seed=clip["clip_seed"], fps=knobs.fps)
        scores[clip["clip"]] = reference.score(read_frames(path, np.arange(knobs.frames)))
    return scores


def _init_worker() -> None:
    torch.set_num_threads(1)


def _run_tasks(tasks: list[tuple], workers: int, progress: bool) -> dict[str, dict[str, float]]:
    """Run the scene tasks on ``workers`` processes (inline for 1) under a progress bar counting clips."""
    scores: dict[str, dict[str, float]] = {}
    pool, futures = None, []
    if workers > 1 and len(tasks) > 1:  # fork (workers set torch to one thread) before rich starts a thread
        pool = ProcessPoolExecutor(min(workers, len(tasks)), get_context("fork"), initializer=_init_worker)
        futures = [pool.submit(_scene_task, *args) for args in tasks]
    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=Console(stderr=True), disable=not progress) as bar:
            job = bar.add_task("demo corpus", total=sum(len(t[-1]) for t in tasks))
            results = (
                (f.result() for f in as_completed(futures)) if pool else (_scene_task(*t) for t in tasks)
            )
            for result in results:
                scores |= result
                bar.advance(job, len(result))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return scores


def _write_text(path: Path, text: str) -> None:
    atomic_write_text(path, text)


def _load_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def generate_demo_corpus(
    out: Path,
    *,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
    build_tree: bool = True,
    scenes: int = DemoKnobs.scenes,
    variants: int = DemoKnobs.variants,
    frames: int = DemoKnobs.frames,
    width: int = DemoKnobs.width,
    height: int = DemoKnobs.height,
    fps: int = DemoKnobs.fps,
    tree_scenes: int = DemoKnobs.tree_scenes,
    test_fraction: float = DemoKnobs.test_fraction,
) -> DemoCorpus:
    """Write the demo corpus into ``out`` (module docstring) and return where it lies.

    ``scenes`` x ``variants`` rated clips of ``frames`` frames at ``width`` x ``height`` and ``fps``; the
    tree is made from ``tree_scenes`` train scenes when ``build_tree``. ``workers`` processes (default:
    all cores). A complete corpus of the same seed and knobs in ``out`` is returned as is (its tree
    added if missing), a partial one is resumed, and anything else raises ``QasaVqaError``.
    """
    out = Path(out)
    knobs = DemoKnobs(scenes, variants, frames, width, height, fps, tree_scenes, test_fraction)
    splits, clip_plan = plan_corpus(seed, knobs)
    plan = {"recipe_version": RECIPE_VERSION, "seed": seed, "knobs": asdict(knobs)}
    marker, record_path, manifest = out / ".demo-plan.json", out / "corpus.json", out / "manifest.csv"
    if out.exists() and not out.is_dir():
        raise QasaVqaError(f"{out} is a file, not a folder for the demo corpus")
    record = _load_json(record_path)
    if out.exists() and any(out.iterdir()):
        found = {k: record.get(k) for k in plan} if record else _load_json(marker)
        if found != plan:
            raise QasaVqaError(
                f"{out} is not empty and holds no demo corpus of seed {seed} with {knobs} (found {found}); "
                "pass an empty or new folder, or the seed and knobs it was made with"
            )
    workers = max(1, workers or os.cpu_count() or 1)
    if not (record and manifest.exists()):
        for sub in ("pristine", "videos"):
            (out / sub).mkdir(parents=True, exist_ok=True)
        _write_text(marker, json.dumps(plan, indent=2, sort_keys=True) + "\n")
        tasks = []
        for i, scene in enumerate(splits):
            mine = [(c, out / "videos" / f"{c['clip']}.mp4") for c in clip_plan if c["scene"] == scene]
            tasks.append((scene, knobs, _seed(seed, 1, i), out / "pristine" / f"{scene}.mp4", mine))
        scores = _run_tasks(tasks, workers, progress)
        clips = [c | {k: round(v, 6) for k, v in scores[c["clip"]].items()} for c in clip_plan]
        record = plan | {"formula": FORMULA, "scenes": splits, "clips": clips, "tree": None}
    train = [s for s, split in splits.items() if split == "train"]
    tree = [train[i] for i in np.random.default_rng([seed, 3]).permutation(len(train))][: max(0, tree_scenes)]
    if build_tree and tree and record["tree"] != tree:
        _build_tree(out, tree, workers, progress)
        record["tree"] = tree
    _write_text(record_path, json.dumps(record, indent=2, sort_keys=True) + "\n")
    if not manifest.exists():  # last: its presence marks a complete corpus
        rows = [
            f"videos/{c['clip']}.mp4,{min(100.0, max(0.0, c['mos'])):.4f},{c['split']}"
            for c in record["clips"]
        ]
        _write_text(manifest, "path,mos,split\n" + "\n".join(rows) + "\n")
    marker.unlink(missing_ok=True)
    n_train = sum(c["split"] == "train" for c in record["clips"])
    return DemoCorpus(
        root=out,
        manifest=manifest,
        pristine_dir=out / "pristine",
        tree_dir=out / "tree" if record["tree"] else None,
        num_scenes=len(splits),
        num_clips=len(record["clips"]),
        num_train=n_train,
        num_test=len(record["clips"]) - n_train,
        tree_scenes=tuple(record["tree"] or ()),
    )


def _build_tree(out: Path, names: list[str], workers: int, progress: bool) -> None:
    from qasa_vqa.video.distortions import synthesize_tree

    subset = out / "pristine-subset"
    subset.mkdir(exist_ok=True)
    for name in names:
        target = subset / f"{name}.mp4"
        if not target.exists():
            atomic_save(target, partial(shutil.copyfile, out / "pristine" / f"{name}.mp4"))
    report = synthesize_tree(subset, out / "tree", workers=workers, progress=progress)
    if report.failed:
        first = report.failed[0]
        raise QasaVqaError(
            f"{len(report.failed)} tree videos failed; {first.source} v{first.version}: {first.reason}"
        )
