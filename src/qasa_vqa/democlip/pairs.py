"""Image-caption pairs for the demo CLIP, generated offline from a seed.

Each sample is a short clip filmed by a seeded virtual camera (a small pan, zoom and rotation; the
source pre-filtered when the camera zooms out, so the clean picture is sharp and free of aliasing) over
one of the photographs shipped in scikit-image's wheel or a procedural texture, at a size of user video
(320 x 240 most often). The clip is degraded by a random mix of 0-3 distortions of uniform random
severity (:mod:`~qasa_vqa.democlip.degrade`; codecs on the whole clip), then frames 2 and 4 of each
version (frame 0 is an intra frame) become training pictures: resized to 224 x 224 exactly as the CLIP branch resizes
video frames (bilinear, aspect not kept; :func:`~qasa_vqa.video.fragments.resize_frames`) and stored as
uint8; the ImageNet normalisation of the branch is applied when batches are drawn. Each picture gets
its own caption, full and short (:mod:`~qasa_vqa.democlip.captions`). A shot is filmed once and
degraded into several versions, each by its own mix, so training can contrast one content at several
qualities.

The photographs of the default demo corpus's test split are never used (nor those of a corpus whose
test split is given), so the zero-shot figure on that split is measured on unseen pictures; the
corpus's MOS and its MOS formula are never read. Sample ``i`` is a pure function of ``(seed, i)``: the
pool does not depend on the number of worker processes.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.resources import files
from multiprocessing import get_context

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from PIL import Image, ImageDraw
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

from qasa_vqa.democlip.captions import compose_caption, overall_quality, quality_level, short_caption
from qasa_vqa.democlip.degrade import DISTORTIONS, GROUPS, apply_mix
from qasa_vqa.video.fragments import resize_frames
from qasa_vqa.video.writer import synthetic_frames

__all__ = [
    "PHOTO_CONTENT",
    "TEXTURE_CONTENT",
    "PairPool",
    "SamplePlan",
    "build_pool",
    "plan_sample",
    "render_sample",
    "usable_photos",
]

# Photographs in skimage/data (part of the wheel) and what they show. Graphics, microscope images
# that are soft by nature and the motion-blurred clock are left out: they cannot stand for clean video.
PHOTO_CONTENT: dict[str, tuple[str, ...]] = {
    "astronaut.png": ("an astronaut", "a woman in a space suit", "a person"),
    "brick.png": ("a brick wall", "bricks", "a wall"),
    "camera.png": ("a man with a camera", "a photographer", "a person"),
    "chelsea.png": ("a cat", "a tabby cat", "an animal"),
    "coffee.png": ("a cup of coffee", "coffee", "a cup"),
    "coins.png": ("coins", "old coins"),
    "grass.png": ("grass", "a lawn"),
    "gravel.png": ("gravel", "stones", "pebbles"),
    "hubble_deep_field.jpg": ("galaxies", "the night sky", "space"),
    "ihc.png": ("stained tissue", "a microscope slide"),
    "moon.png": ("the moon", "craters"),
    "motorcycle_left.png": ("a motorcycle", "a motorbike"),
    "motorcycle_right.png": ("a motorcycle", "a motorbike"),
    "page.png": ("a page of text", "a book page", "text"),
    "retina.jpg": ("a retina", "an eye"),
    "rocket.jpg": ("a rocket", "a launch pad"),
    "text.png": ("handwritten formulas", "a blackboard", "handwriting"),
}
TEXTURE_CONTENT: dict[str, tuple[str, ...]] = {
    "leaves": ("overlapping shapes", "a collage", "shapes"),
    "shapes": ("colored shapes", "a pattern", "shapes"),
    "clouds": ("clouds", "a texture", "an abstract pattern"),
}
_SOURCE_P = {"photo": 0.6, "leaves": 0.28, "shapes": 0.05, "clouds": 0.07}
FRAMES_PER_CLIP = 5
KEPT_FRAMES = (2, 4)  # pictures taken from each version (frame 0 is an intra frame under the codecs)
VERSIONS = 4  # versions of each shot, each degraded by its own mix
_SIZES = ((320, 240), (256, 192), (384, 288), (320, 180), (426, 240), (288, 288), (240, 320))
_SIZE_P = (0.4, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1)
_MIX_SIZE_P = (0.16, 0.38, 0.30, 0.16)  # 0, 1, 2 or 3 distortions
_GROUP_WEIGHT = {"codec": 2.0, "sharpness": 1.6, "noise": 1.2, "scaling": 1.2, "exposure": 1.0,
                 "contrast": 0.8, "colour": 0.6, "saturation": 0.5, "banding": 0.4}  # fmt: skip
_MAX_SOURCE_SIDE = 900


def usable_photos(excluded_scenes: Collection[str] = ()) -> tuple[str, ...]:
    """The photographs of :data:`PHOTO_CONTENT` whose stem is not in ``excluded_scenes``."""
    return tuple(p for p in PHOTO_CONTENT if p.split(".")[0] not in set(excluded_scenes))


@dataclass(frozen=True)
class SamplePlan:
    """Everything about sample ``index`` before any pixel: source, camera, size and distortion mix."""

    index: int
    source: str  # a photo file name or "texture:<kind>"
    width: int
    height: int
    zoom: float  # source pixels per output pixel at the first frame
    angle: float  # degrees
    velocity: tuple[float, float]  # output pixels per frame
    centre: tuple[float, float]  # in [0, 1] of the room the camera has
    mixes: tuple[tuple[tuple[str, float], ...], ...]  # one distortion mix per version of the shot
    seed: tuple[int, ...] = field(repr=False)
    photos: tuple[str, ...] = field(default=(), repr=False)  # what dead-leaves scenes fill shapes with

    @property
    def content(self) -> tuple[str, ...]:
        if self.source.startswith("texture:"):
            return TEXTURE_CONTENT[self.source.split(":", 1)[1]]
        return PHOTO_CONTENT[self.source]


def _draw_mix(rng: np.random.Generator) -> tuple[tuple[str, float], ...]:
    groups = sorted(GROUPS)
    weights = np.array([_GROUP_WEIGHT[g] for g in groups])
    count = int(rng.choice(len(_MIX_SIZE_P), p=_MIX_SIZE_P))
    mix = []
    for g in sorted(rng.choice(len(groups), count, replace=False, p=weights / weights.sum())):
        members = GROUPS[groups[g]]
        mix.append((members[int(rng.integers(len(members)))], round(float(rng.uniform(0, 1)), 4)))
    return tuple(sorted(mix, key=lambda m: list(DISTORTIONS).index(m[0])))


def plan_sample(seed: int, index: int, photos: Sequence[str], versions: int = VERSIONS) -> SamplePlan:
    """The plan of sample ``index``: a pure function of ``(seed, index)``, the photo list and the number
    of versions (each with its own distortion mix)."""
    if not photos:
        raise ValueError("no photographs to draw samples from")
    rng = np.random.default_rng([seed, 1, index])
    kind = str(rng.choice(list(_SOURCE_P), p=list(_SOURCE_P.values())))
    source = photos[int(rng.integers(len(photos)))] if kind == "photo" else f"texture:{kind}"
    width, height = _SIZES[int(rng.choice(len(_SIZES), p=_SIZE_P))]
    speed, direction = rng.uniform(0.3, 3.0), rng.uniform(0, 2 * np.pi)
    return SamplePlan(
        index=index,
        source=source,
        width=width,
        height=height,
        zoom=float(np.exp(rng.uniform(np.log(0.8), np.log(2.5)))),
        angle=float(rng.uniform(-4, 4)),
        velocity=(float(speed * np.cos(direction)), float(speed * np.sin(direction))),
        centre=(float(rng.uniform(0, 1)), float(rng.uniform(0, 1))),
        mixes=tuple(_draw_mix(rng) for _ in range(versions)),
        seed=(seed, 2, index),
        photos=tuple(photos),
    )


@lru_cache(maxsize=32)
def _photo(name: str) -> Image.Image:
    with Image.open(files("skimage") / "data" / name) as image:
        photo = image.convert("RGB")
    scale = _MAX_SOURCE_SIDE / max(photo.size)
    if scale < 1:
        photo = photo.resize(
            (round(photo.width * scale), round(photo.height * scale)), Image.Resampling.LANCZOS
        )
    return photo


def _dead_leaves(width: int, height: int, photos: Sequence[str], rng: np.random.Generator) -> Image.Image:
    """A dead-leaves scene: opaque discs, rectangles and polygons of power-law sizes occluding each other
    (a model whose statistics resemble natural images'), each flat-shaded or filled with a patch of a
    photograph (the virtual camera films it zoomed out, through its antialiasing pre-filter)."""
    big_w, big_h = width, height
    canvas = Image.new("RGB", (big_w, big_h), tuple(int(c) for c in rng.integers(0, 256, 3)))
    # radii with density r^-3 between 5 px and a third of the side (scale invariance), until their
    # areas add up to four canvases; drawn in random order, each occluding those before it
    low, high = 5.0, max(big_w, big_h) / 3
    radii = (low**-2 - rng.uniform(0, 1, 4000) * (low**-2 - high**-2)) ** -0.5
    count = int(np.searchsorted(np.cumsum(np.pi * radii**2), 4 * big_w * big_h)) + 1
    for r in radii[:count].astype(int).tolist():
        x, y = int(rng.integers(-r, big_w - r)), int(rng.integers(-r, big_h - r))
        mask = Image.new("L", (2 * r, 2 * r), 0)
        draw = ImageDraw.Draw(mask)
        shape = int(rng.integers(3))
        if shape == 0:
            draw.ellipse((0, 0, 2 * r - 1, 2 * r - 1), fill=255)
        elif shape == 1:
            draw.rectangle((0, int(r * rng.uniform(0, 0.7)), 2 * r - 1, 2 * r - 1), fill=255)
        else:
            angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(3, 7))))
            draw.polygon([(r + r * np.cos(a), r + r * np.sin(a)) for a in angles], fill=255)
        photo = _photo(photos[int(rng.integers(len(photos)))]) if photos and rng.random() < 0.5 else None
        if photo is not None and min(photo.size) > 2 * r:
            x0, y0 = int(rng.integers(0, photo.width - 2 * r)), int(rng.integers(0, photo.height - 2 * r))
            fill = photo.crop((x0, y0, x0 + 2 * r, y0 + 2 * r))
        else:  # a flat colour under a soft linear shade
            colour = rng.integers(0, 256, 3).astype(np.float32)
            ramp = np.linspace(1 - rng.uniform(0, 0.4), 1, 2 * r, dtype=np.float32)
            shade = colour * ramp[None, :, None] * np.ones((2 * r, 1, 1), np.float32)
            fill = Image.fromarray(np.clip(shade, 0, 255).astype(np.uint8))
        canvas.paste(fill, (x, y), mask)
    return canvas


def _texture(
    kind: str, width: int, height: int, rng: np.random.Generator, photos: Sequence[str] = ()
) -> Image.Image:
    seed = int(rng.integers(2**31))
    if kind == "leaves":
        return _dead_leaves(width, height, photos, rng)
    if kind == "shapes":
        return Image.fromarray(next(synthetic_frames(1, height, width, seed=seed, speed=0.0, grain=0.0)))
    # clouds: fractal noise (octaves of upsampled random fields) through a random two-colour palette
    field_ = np.zeros((height, width), np.float32)
    for octave in range(1, 7):
        cells = 2**octave
        low = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
        up = Image.fromarray(low, mode="F").resize((width, height), Image.Resampling.BICUBIC)
        field_ += np.asarray(up) / 1.6**octave
    field_ = (field_ - field_.min()) / max(float(np.ptp(field_)), 1e-6)
    dark, light = rng.uniform(0, 110, 3), rng.uniform(150, 255, 3)
    rgb = dark + field_[..., None] * (light - dark)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def _film(plan: SamplePlan, rng: np.random.Generator) -> np.ndarray:
    """The clean clip ``[FRAMES_PER_CLIP, H, W, 3]`` uint8 that the virtual camera films."""
    w, h, n = plan.width, plan.height, FRAMES_PER_CLIP
    travel = max(abs(plan.velocity[0]), abs(plan.velocity[1])) * n
    if plan.source.startswith("texture:"):
        source = _texture(plan.source.split(":", 1)[1], 2 * w + 64, 2 * h + 64, rng, plan.photos)
    else:
        source = _photo(plan.source)
    # the largest zoom that keeps the rotated, moving window inside the source
    a = np.deg2rad(abs(plan.angle))
    need_w = w * np.cos(a) + h * np.sin(a) + 2 * travel + 4
    need_h = w * np.sin(a) + h * np.cos(a) + 2 * travel + 4
    zoom = min(plan.zoom, source.width / need_w, source.height / need_h)
    if zoom > 1:  # zooming out: pre-filter, then film at one source pixel per output pixel
        source = source.resize(
            (round(source.width / zoom), round(source.height / zoom)), Image.Resampling.LANCZOS
        )
        zoom = min(1.0, source.width / need_w, source.height / need_h)
    src = torch.from_numpy(np.array(source)).permute(2, 0, 1)[None].float()
    src_h, src_w = src.shape[-2:]
    cos, sin = np.cos(np.deg2rad(plan.angle)), np.sin(np.deg2rad(plan.angle))
    room_x, room_y = max(0.0, src_w - zoom * need_w), max(0.0, src_h - zoom * need_h)
    theta = []
    for t in range(n):
        cx = zoom * need_w / 2 + plan.centre[0] * room_x + zoom * plan.velocity[0] * (t - n / 2)
        cy = zoom * need_h / 2 + plan.centre[1] * room_y + zoom * plan.velocity[1] * (t - n / 2)
        theta.append(
            [
                [zoom * w * cos / src_w, -zoom * h * sin / src_w, 2 * cx / src_w - 1],
                [zoom * w * sin / src_h, zoom * h * cos / src_h, 2 * cy / src_h - 1],
            ]
        )
    grid = F.affine_grid(torch.tensor(theta, dtype=torch.float32), [n, 3, h, w], align_corners=False)
    frames = F.grid_sample(src.expand(n, -1, -1, -1), grid, align_corners=False, padding_mode="border")
    return frames.round().clamp(0, 255).byte().permute(0, 2, 3, 1).contiguous().numpy()


def render_sample(
    plan: SamplePlan, size: int = 224
) -> tuple[np.ndarray, list[list[tuple[str, str]]], list[float]]:
    """The pictures of every version (uint8 ``[versions, len(KEPT_FRAMES), size, size, 3]``), their
    captions as ``(full, short)`` pairs of one quality level, and each version's quality ``Q``
    (:func:`~qasa_vqa.democlip.captions.overall_quality`)."""
    rng = np.random.default_rng(list(plan.seed))
    clean = _film(plan, rng)
    grey = np.abs(clean.astype(np.int16) - clean[..., :1]).max() <= 2
    pictures, captions, qualities = [], [], []
    for mix in plan.mixes:
        if grey:  # saturation changes nothing in a grey picture: it must not be described
            mix = tuple(m for m in mix if DISTORTIONS[m[0]].group != "saturation")
        degraded, applied = apply_mix(clean, mix, rng)
        kept = torch.from_numpy(degraded[list(KEPT_FRAMES)])
        pictures.append(resize_frames(kept, size).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy())
        quality = overall_quality(applied)
        pairs = []
        for _ in KEPT_FRAMES:
            level = quality_level(quality, rng)  # one rater's verdict per picture, said two ways
            pairs.append(
                (compose_caption(applied, plan.content, rng, level=level), short_caption(level, rng))
            )
        captions.append(pairs)
        qualities.append(quality)
    return np.stack(pictures), captions, qualities


@dataclass
class PairPool:
    """Pictures ``images`` (uint8 ``[shots, versions, pictures, 224, 224, 3]``), their full ``captions``
    and ``short_captions`` (nested the same way), and each version's quality ``Q`` (``quality``
    ``[shots, versions]``, for reports; never a training target)."""

    images: np.ndarray
    captions: list[list[list[str]]]
    short_captions: list[list[list[str]]]
    quality: np.ndarray
    photos: tuple[str, ...]

    @property
    def shots(self) -> int:
        return self.images.shape[0]

    @property
    def versions(self) -> int:
        return self.images.shape[1]

    def __len__(self) -> int:
        return int(np.prod(self.images.shape[:3]))


def _render_many(seed: int, indices: Sequence[int], photos: Sequence[str], versions: int, size: int) -> list:
    """Render on one thread (in a worker or in this process: the same pixels either way), then give the
    process its thread count back, so that training after an in-process pool runs as it would otherwise."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return [render_sample(plan_sample(seed, i, photos, versions), size) for i in indices]
    finally:
        torch.set_num_threads(threads)


def build_pool(
    seed: int,
    shots: int,
    photos: Sequence[str],
    *,
    versions: int = VERSIONS,
    size: int = 224,
    workers: int = 1,
    progress: bool = True,
    chunk: int = 8,
) -> PairPool:
    """Render ``shots`` samples of ``versions`` versions each on ``workers`` processes."""
    if shots < 1 or versions < 1:
        raise ValueError(f"need at least one shot and one version, got {shots} and {versions}")
    images = np.empty((shots, versions, len(KEPT_FRAMES), size, size, 3), np.uint8)
    captions: list[list[list[str]]] = [[] for _ in range(shots)]
    shorts: list[list[list[str]]] = [[] for _ in range(shots)]
    quality = np.empty((shots, versions), np.float32)
    batches = [list(range(s, min(shots, s + chunk))) for s in range(0, shots, chunk)]
    columns = (
        "{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    pool = ProcessPoolExecutor(workers, get_context("fork")) if workers > 1 else None  # fork before rich
    try:
        with Progress(*columns, console=Console(stderr=True), disable=not progress) as bar:
            job = bar.add_task("demo CLIP pairs (shots)", total=shots)
            jobs = [(seed, b, photos, versions, size) for b in batches]
            results = (
                pool.map(_render_many, *zip(*jobs, strict=True)) if pool else (_render_many(*j) for j in jobs)
            )
            for batch, rendered in zip(batches, results, strict=True):
                for i, (pictures, texts, q) in zip(batch, rendered, strict=True):
                    images[i], quality[i] = pictures, q
                    captions[i] = [[full for full, _ in version] for version in texts]
                    shorts[i] = [[short for _, short in version] for version in texts]
                bar.advance(job, len(batch))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return PairPool(images, captions, shorts, quality, tuple(photos))
