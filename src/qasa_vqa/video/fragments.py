"""Spatial views of a clip: fragment grids, the resized view, normalisation, and all four at once.

Ported from the QASA-VQA paper (ICASSP 2025) as specified in docs/method.md sections 4.2, 4.3 and 5.1:

* **Fragments** (FAST-VQA's grid-mini-patch sampling): a ``grid x grid`` grid of cells over the frame;
  from each cell one ``patch x patch`` crop, spliced into a ``grid*patch`` square. The crop offset
  ``r`` inside the cell (per axis, per cell, per set of ``aligned`` frames) follows one of three rules
  for a cell of length ``L`` (a side of ``S`` px has ``L = S // grid``):

  - ``"full"`` (base FAST rule, used at test time and by ST-VQRL): ``r in 0 .. L - patch - 1`` when
    ``L > patch``, else 0.
  - ``"first"`` (T', the first half of each cell) and ``"second"`` (T'', the second half): with
    ``a = 0`` or ``a = S // (2 * grid)``, ``r in a .. a + L//2 - patch - 1`` when ``L//2 > patch``;
    otherwise **both views use 0**, so they coincide on that axis (the reference's behaviour on sides
    under 462 px; docs/differences.md item 8). ``clamp_halves=True`` instead keeps them apart where the
    cell allows: T' at 0 and T'' at ``L - patch`` (the end of the cell).

  Cells start at ``min(i * L, S - patch)``. Videos whose shorter side is under ``grid * patch`` are
  first upsampled bilinearly so that it reaches ``grid * patch`` (the reference's upsampling path
  raised on 5-D input, docs/differences.md item 22; the output size here is rounded, never floored
  below ``grid * patch``).
* **Resized view** S: every frame resized to ``size x size`` (bilinear, aspect ratio not kept, no
  crop), antialiasing explicit (default off, as the reference's torchvision 0.14 did on tensors,
  docs/differences.md item 10). S^F is every ``sparse_stride``-th frame of S (``S[:-1:4]``).
* **Normalisation** with ImageNet statistics on the 0-255 scale, as the reference does for both
  models; CLIP's statistics are an option.

Everything crops before converting to float, so a 1080p clip costs little more than its output.
:class:`IncrementalTestViews` makes the inference views one decoded frame at a time, identical to
:func:`make_test_views`, so that scoring a 4K video never holds more than one source frame.
Random offsets come only from the ``torch.Generator`` passed in; ``centre=True`` gives deterministic
offsets in the middle of each range.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "FragmentLayout",
    "IncrementalTestViews",
    "View",
    "apply_fragments",
    "fragment_layout",
    "make_test_views",
    "make_views",
    "normalise",
    "offset_range",
    "resize_frames",
    "spatial_fragments",
    "upsample_for_fragments",
]

View = Literal["full", "first", "second"]
Stats = Literal["imagenet", "clip"]

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
CLIP_MEAN = (0.48145466 * 255, 0.4578275 * 255, 0.40821073 * 255)
CLIP_STD = (0.26862954 * 255, 0.26130258 * 255, 0.27577711 * 255)
_STATS = {"imagenet": (IMAGENET_MEAN, IMAGENET_STD), "clip": (CLIP_MEAN, CLIP_STD)}


@dataclass(frozen=True)
class FragmentLayout:
    """Where every patch comes from: ``top[c, i, j]`` and ``left[c, i, j]`` are the source corner of
    grid cell ``(i, j)`` for frames ``c * aligned .. (c + 1) * aligned - 1``."""

    top: torch.Tensor
    left: torch.Tensor
    patch: int
    aligned: int

    @property
    def grid(self) -> int:
        return int(self.top.shape[1])


def offset_range(
    side: int, *, view: View = "full", grid: int = 7, patch: int = 32, clamp_halves: bool = False
):
    """Inclusive range ``(low, high)`` of the in-cell offset along a side of ``side`` pixels."""
    if view not in ("full", "first", "second"):
        raise ValueError(f"view must be 'full', 'first' or 'second', got {view!r}")
    cell = side // grid
    if view == "full":
        return (0, cell - patch - 1) if cell > patch else (0, 0)
    half = cell // 2
    if half > patch:
        start = 0 if view == "first" else side // (2 * grid)
        return (start, start + half - patch - 1)
    if clamp_halves and view == "second" and cell > patch:
        return (cell - patch, cell - patch)
    return (0, 0)


def fragment_layout(
    height: int,
    width: int,
    num_frames: int,
    *,
    view: View = "full",
    grid: int = 7,
    patch: int = 32,
    aligned: int = 32,
    clamp_halves: bool = False,
    generator: torch.Generator | None = None,
    centre: bool = False,
) -> FragmentLayout:
    """Draw the patch corners for a ``height x width`` video of ``num_frames`` frames.

    One set of offsets per ``aligned`` frames (``ceil(num_frames / aligned)`` sets), drawn
    independently per cell and per axis from ``generator``, or the middle of each range with
    ``centre=True``. The video must already be at least ``grid * patch`` on each side.
    """
    size = grid * patch
    if min(height, width) < size:
        raise ValueError(
            f"a {height}x{width} video is smaller than the {size}px fragment grid; upsample it first"
        )
    if aligned < 1 or num_frames < 1:
        raise ValueError(f"aligned and num_frames must be positive, got {aligned}, {num_frames}")
    if generator is None and not centre:
        raise ValueError(
            "random fragment offsets need generator=torch.Generator().manual_seed(seed), or centre=True"
        )
    chunks = -(-num_frames // aligned)
    corners = []
    for side in (height, width):
        low, high = offset_range(side, view=view, grid=grid, patch=patch, clamp_halves=clamp_halves)
        if centre or high == low:
            offsets = torch.full((chunks, grid, grid), (low + high) // 2, dtype=torch.int64)
        else:
            offsets = torch.randint(low, high + 1, (chunks, grid, grid), generator=generator)
        cell = side // grid
        starts = torch.clamp(torch.arange(grid) * cell, max=side - patch)
        corners.append(offsets + (starts[None, :, None] if not corners else starts[None, None, :]))
    return FragmentLayout(top=corners[0], left=corners[1], patch=patch, aligned=aligned)


def apply_fragments(video: torch.Tensor, layout: FragmentLayout) -> torch.Tensor:
    """Splice the patches of ``layout`` out of ``video [C, T, H, W]`` into ``[C, T, grid*patch, grid*patch]``.

    Works on any dtype and on strided views (e.g. a permuted ``[T, H, W, C]`` array), copying only the
    patches.
    """
    channels, frames = video.shape[:2]
    patch, grid = layout.patch, layout.grid
    out = video.new_empty((channels, frames, grid * patch, grid * patch))
    tops, lefts = layout.top.tolist(), layout.left.tolist()
    for chunk, (chunk_tops, chunk_lefts) in enumerate(zip(tops, lefts, strict=True)):
        t0, t1 = chunk * layout.aligned, min(frames, (chunk + 1) * layout.aligned)
        for i in range(grid):
            for j in range(grid):
                y, x = chunk_tops[i][j], chunk_lefts[i][j]
                out[:, t0:t1, i * patch : (i + 1) * patch, j * patch : (j + 1) * patch] = video[
                    :, t0:t1, y : y + patch, x : x + patch
                ]
    return out


def upsample_for_fragments(video: torch.Tensor, size: int) -> torch.Tensor:
    """Upsample ``video [C, T, H, W]`` (bilinear, as float32) so its shorter side is at least ``size``.

    Returns the input unchanged when it is already large enough.
    """
    height, width = video.shape[-2:]
    ratio = min(height / size, width / size)
    if ratio >= 1:
        return video
    out_size = (max(size, round(height / ratio)), max(size, round(width / ratio)))
    return F.interpolate(video.float(), size=out_size, mode="bilinear", align_corners=False)


def spatial_fragments(
    video: torch.Tensor,
    *,
    view: View = "full",
    grid: int = 7,
    patch: int = 32,
    aligned: int = 32,
    clamp_halves: bool = False,
    generator: torch.Generator | None = None,
    centre: bool = False,
) -> torch.Tensor:
    """Fragments of ``video [C, T, H, W]`` as ``[C, T, grid*patch, grid*patch]`` (see the module doc).

    Small videos are upsampled first (and come back as float32); otherwise the dtype is kept.
    """
    video = upsample_for_fragments(video, grid * patch)
    layout = fragment_layout(
        video.shape[-2],
        video.shape[-1],
        video.shape[1],
        view=view,
        grid=grid,
        patch=patch,
        aligned=aligned,
        clamp_halves=clamp_halves,
        generator=generator,
        centre=centre,
    )
    return apply_fragments(video, layout)


def normalise(x: torch.Tensor, stats: Stats = "imagenet", *, channel_dim: int = 0) -> torch.Tensor:
    """``(x - mean) / std`` per RGB channel on the 0-255 scale, as float32."""
    if stats not in _STATS:
        raise ValueError(f"stats must be one of {sorted(_STATS)}, got {stats!r}")
    mean, std = _STATS[stats]
    shape = [1] * x.dim()
    shape[channel_dim] = 3
    mean_t = torch.tensor(mean, dtype=torch.float32).view(shape)
    std_t = torch.tensor(std, dtype=torch.float32).view(shape)
    return (x.float() - mean_t) / std_t


def resize_frames(frames: torch.Tensor, size: int = 224, *, antialias: bool = False) -> torch.Tensor:
    """Resize ``frames [T, H, W, C]`` (any dtype) to float32 ``[T, C, size, size]``, bilinear, aspect not kept.

    Without antialiasing this gathers only the 2x2 source pixels each output pixel reads (the same
    arithmetic as ``torch.nn.functional.interpolate(..., mode="bilinear", align_corners=False)``), so a
    1080p frame is never converted to float in full. With antialiasing the frames go through
    ``interpolate`` a few at a time.
    """
    if frames.dim() != 4:
        raise ValueError(f"expected frames [T, H, W, C], got shape {tuple(frames.shape)}")
    if antialias:
        chunks = [
            F.interpolate(
                frames[i : i + 8].permute(0, 3, 1, 2).float(),
                size=(size, size),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )
            for i in range(0, frames.shape[0], 8)
        ]
        return torch.cat(chunks)
    count, height, width, channels = frames.shape
    y0, y1, wy0, wy1 = _bilinear_taps(height, size)
    x0, x1, wx0, wx1 = _bilinear_taps(width, size)
    flat = frames.reshape(count, height * width, channels)

    def gather(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        index = (rows[:, None] * width + cols[None, :]).reshape(-1)
        return flat.index_select(1, index).float().view(count, size, size, channels)

    top = gather(y0, x0) * wx0[:, None] + gather(y0, x1) * wx1[:, None]
    bottom = gather(y1, x0) * wx0[:, None] + gather(y1, x1) * wx1[:, None]
    out = top * wy0[:, None, None] + bottom * wy1[:, None, None]
    return out.permute(0, 3, 1, 2).contiguous()


def _bilinear_taps(in_size: int, out_size: int):
    """Source indices and weights of half-pixel-centre bilinear resampling (PyTorch's convention)."""
    scale = torch.tensor(in_size / out_size, dtype=torch.float32)
    source = ((torch.arange(out_size, dtype=torch.float32) + 0.5) * scale - 0.5).clamp(min=0)
    index0 = source.to(torch.int64).clamp(max=in_size - 1)
    index1 = torch.clamp(index0 + 1, max=in_size - 1)
    weight1 = source - index0.float()
    return index0, index1, 1.0 - weight1, weight1


def _as_frames_tensor(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    tensor = torch.from_numpy(np.asarray(frames)) if not isinstance(frames, torch.Tensor) else frames
    if tensor.dim() != 4 or tensor.shape[-1] != 3:
        raise ValueError(f"expected RGB frames [T, H, W, 3], got shape {tuple(tensor.shape)}")
    return tensor


def make_views(
    frames: np.ndarray | torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    grid: int = 7,
    patch: int = 32,
    aligned: int = 32,
    clamp_halves: bool = False,
    centre: bool = False,
    size: int = 224,
    antialias: bool = False,
    sparse_stride: int = 4,
    fragment_stats: Stats = "imagenet",
    resize_stats: Stats = "imagenet",
    return_layouts: bool = False,
) -> dict[str, torch.Tensor] | tuple[dict[str, torch.Tensor], dict[str, FragmentLayout]]:
    """The four training views of QASA-VQA from one decode (docs/method.md section 4.2 item 3).

    ``frames`` are the sampled RGB frames ``[T, H, W, 3]`` (uint8, T = 32 in training). Returns
    ``frag_v`` = T'(x) and ``frag_a`` = T''(x), each ``[3, T, grid*patch, grid*patch]``; ``resize_v``
    = S(x) ``[T, 3, size, size]``; ``resize_a`` = S^F(x) = ``S(x)[:-1:sparse_stride]`` (``[8, 3, size,
    size]`` for T = 32). All normalised. With ``return_layouts`` also returns the fragment layouts
    (``{"frag_v": ..., "frag_a": ...}``, in the coordinates of the possibly upsampled video).
    """
    tensor = _as_frames_tensor(frames)
    video = upsample_for_fragments(tensor.permute(3, 0, 1, 2), grid * patch)
    height, width, count = video.shape[-2], video.shape[-1], video.shape[1]
    options = {"grid": grid, "patch": patch, "aligned": aligned, "clamp_halves": clamp_halves}
    views: dict[str, torch.Tensor] = {}
    layouts: dict[str, FragmentLayout] = {}
    for key, view in (("frag_v", "first"), ("frag_a", "second")):
        layouts[key] = fragment_layout(
            height, width, count, view=view, generator=generator, centre=centre, **options
        )
        views[key] = normalise(apply_fragments(video, layouts[key]), fragment_stats, channel_dim=0)
    resized = normalise(resize_frames(tensor, size, antialias=antialias), resize_stats, channel_dim=1)
    views["resize_v"] = resized
    views["resize_a"] = (resized[:-1:sparse_stride] if count > 1 else resized[::sparse_stride]).contiguous()
    return (views, layouts) if return_layouts else views


def _check_parts(parts: tuple[str, ...]) -> None:
    if set(parts) - {"frag", "resize"} or not parts:
        raise ValueError(f"parts must be a non-empty subset of ('frag', 'resize'), got {parts!r}")


def make_test_views(
    frames: np.ndarray | torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    centre: bool = False,
    grid: int = 7,
    patch: int = 32,
    aligned: int = 32,
    size: int = 224,
    antialias: bool = False,
    fragment_stats: Stats = "imagenet",
    resize_stats: Stats = "imagenet",
    parts: tuple[str, ...] = ("frag", "resize"),
    return_layout: bool = False,
) -> dict[str, torch.Tensor] | tuple[dict[str, torch.Tensor], FragmentLayout, tuple[int, int]]:
    """The inference views of docs/method.md section 5.1 from the 64 test frames ``[T, H, W, 3]``.

    ``frag`` uses the base FAST rule (``"full"``; one offset set per ``aligned`` frames, so 64 frames get
    two), ``[3, T, grid*patch, grid*patch]``; ``resize`` is every frame resized, ``[T, 3, size, size]``.
    ``parts`` chooses which of the two to make (a CLIP-only scorer needs no fragments). With
    ``return_layout`` also returns the fragment layout and the ``(height, width)`` of the (possibly
    upsampled) video its corners refer to, so that a quality map can be laid back over the frames.
    """
    _check_parts(parts)
    if return_layout and "frag" not in parts:
        raise ValueError("return_layout needs the 'frag' part")
    tensor = _as_frames_tensor(frames)
    views: dict[str, torch.Tensor] = {}
    layout, upsampled = None, (0, 0)
    if "frag" in parts:
        video = upsample_for_fragments(tensor.permute(3, 0, 1, 2), grid * patch)
        upsampled = (int(video.shape[-2]), int(video.shape[-1]))
        layout = fragment_layout(
            *upsampled,
            video.shape[1],
            view="full",
            grid=grid,
            patch=patch,
            aligned=aligned,
            generator=generator,
            centre=centre,
        )
        views["frag"] = normalise(apply_fragments(video, layout), fragment_stats, channel_dim=0)
    if "resize" in parts:
        views["resize"] = normalise(
            resize_frames(tensor, size, antialias=antialias), resize_stats, channel_dim=1
        )
    if return_layout:
        assert layout is not None
        return views, layout, upsampled
    return views


class IncrementalTestViews:
    """:func:`make_test_views` fed one frame at a time: the same views, bit for bit, while the caller holds
    one source frame instead of all of them (64 frames of a 4K video are 1.6 GB).

    ``height`` x ``width`` is the frame size (for fragments each side at least ``grid * patch``: smaller
    videos are upsampled as a whole by :func:`make_test_views`; :meth:`fits` tells), ``num_frames`` the
    number of views' frames. The fragment layout is drawn at construction exactly as :func:`make_test_views` draws
    it (same ``generator`` use). :meth:`add` takes frame ``t`` (``[H, W, 3]`` uint8); :meth:`views`
    returns the views once every frame was added, plus the layout and the frame size when
    ``return_layout``.
    """

    def __init__(
        self,
        height: int,
        width: int,
        num_frames: int,
        *,
        generator: torch.Generator | None = None,
        centre: bool = False,
        grid: int = 7,
        patch: int = 32,
        aligned: int = 32,
        size: int = 224,
        antialias: bool = False,
        fragment_stats: Stats = "imagenet",
        resize_stats: Stats = "imagenet",
        parts: tuple[str, ...] = ("frag", "resize"),
    ) -> None:
        _check_parts(parts)
        if not self.fits(height, width, grid=grid, patch=patch, parts=parts):
            raise ValueError(f"a {height}x{width} video needs upsampling: use make_test_views")
        self.shape, self.parts, self.size, self.antialias = (height, width), tuple(parts), size, antialias
        self.stats = {"frag": fragment_stats, "resize": resize_stats}
        self.layout: FragmentLayout | None = None
        self.frag: torch.Tensor | None = None
        self.resize: torch.Tensor | None = None
        if "frag" in parts:
            self.layout = fragment_layout(
                height, width, num_frames, view="full", grid=grid, patch=patch, aligned=aligned,
                generator=generator, centre=centre,
            )  # fmt: skip
            self.frag = torch.empty((3, num_frames, grid * patch, grid * patch), dtype=torch.uint8)
        if "resize" in parts:
            self.resize = torch.empty((num_frames, 3, size, size), dtype=torch.float32)
        self.added = torch.zeros(num_frames, dtype=torch.bool)

    @staticmethod
    def fits(
        height: int,
        width: int,
        *,
        grid: int = 7,
        patch: int = 32,
        parts: tuple[str, ...] = ("frag", "resize"),
    ) -> bool:
        """Whether the ``parts`` of a ``height x width`` video can be built frame by frame: always without
        fragments, else when no upsampling is needed."""
        return "frag" not in parts or min(height, width) >= grid * patch

    def add(self, t: int, frame: np.ndarray | torch.Tensor) -> None:
        """Cut frame ``t``'s patches and resize it (``frame``: ``[H, W, 3]`` uint8, the frame size given)."""
        tensor = frame if isinstance(frame, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(frame))
        if tuple(tensor.shape) != (*self.shape, 3) or tensor.dtype != torch.uint8:
            raise ValueError(
                f"frame {t}: expected uint8 {(*self.shape, 3)}, got {tensor.dtype} {tuple(tensor.shape)}"
            )
        if self.layout is not None and self.frag is not None:
            chunk = t // self.layout.aligned
            one = FragmentLayout(
                top=self.layout.top[chunk : chunk + 1],
                left=self.layout.left[chunk : chunk + 1],
                patch=self.layout.patch,
                aligned=1,
            )
            self.frag[:, t] = apply_fragments(tensor.permute(2, 0, 1)[:, None], one)[:, 0]
        if self.resize is not None:
            self.resize[t] = resize_frames(tensor[None], self.size, antialias=self.antialias)[0]
        self.added[t] = True

    def views(
        self, *, return_layout: bool = False
    ) -> dict[str, torch.Tensor] | tuple[dict[str, torch.Tensor], FragmentLayout, tuple[int, int]]:
        """The views (as :func:`make_test_views` returns them); every frame must have been added."""
        missing = (~self.added).nonzero().flatten().tolist()
        if missing:
            raise ValueError(f"frames {missing[:8]} were never added")
        views = {}
        if self.frag is not None:
            views["frag"] = normalise(self.frag, self.stats["frag"], channel_dim=0)
        if self.resize is not None:
            views["resize"] = normalise(self.resize, self.stats["resize"], channel_dim=1)
        if return_layout:
            if self.layout is None:
                raise ValueError("return_layout needs the 'frag' part")
            return views, self.layout, self.shape
        return views
