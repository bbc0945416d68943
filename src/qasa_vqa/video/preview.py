"""Draw what the two models see of a video: one PNG with the four training views.

Rows, top to bottom: the source frame with the T' (green) and T'' (magenta) patch positions outlined;
the fragment mosaics T'(x) and T''(x) of a few frames, with the patch grid drawn faintly; the resized
view S(x) of the same frames; and the sparse view S^F(x). It uses exactly the sampling and view code of
training (:func:`~qasa_vqa.video.sampling.fragment_frame_indices`,
:func:`~qasa_vqa.video.fragments.make_views`), so the picture shows the real inputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from qasa_vqa.storage import atomic_save
from qasa_vqa.video.fragments import IMAGENET_MEAN, IMAGENET_STD, FragmentLayout, make_views
from qasa_vqa.video.reader import probe, read_frames
from qasa_vqa.video.sampling import fragment_frame_indices

__all__ = ["draw_views"]

_LABEL_WIDTH = 170
_TILE = 224
_GAP = 6
_COLOURS = {"frag_v": (40, 220, 90), "frag_a": (230, 60, 220)}


def draw_views(
    video_path: str | Path,
    out_path: str | Path,
    *,
    seed: int = 0,
    num_shown: int = 4,
    clamp_halves: bool = False,
) -> Path:
    """Sample the 32 training frames of ``video_path``, build the views and write a PNG to ``out_path``."""
    info = probe(video_path)
    indices = fragment_frame_indices(info.num_frames, rng=np.random.default_rng(seed), train=True)
    frames = read_frames(video_path, indices, info=info)
    generator = torch.Generator().manual_seed(seed)
    views, layouts = make_views(frames, generator=generator, clamp_halves=clamp_halves, return_layouts=True)
    count = frames.shape[0]
    shown = np.linspace(0, count - 1, num=min(num_shown, count)).round().astype(int).tolist()
    columns = max(len(shown), 1)
    width = _LABEL_WIDTH + columns * (_TILE + _GAP)
    sparse_tile = (columns * (_TILE + _GAP) - _GAP) // max(views["resize_a"].shape[0], 1) - 2
    rows = [("source frame + patches", _TILE), ("T' fragments", _TILE), ("T'' fragments", _TILE)]
    rows += [("S resized", _TILE), ("S^F sparse", sparse_tile)]
    height = sum(h + _GAP for _, h in rows) + 40
    canvas = Image.new("RGB", (width, height), (24, 24, 28))
    draw = ImageDraw.Draw(canvas)
    draw.text(
        (8, 8),
        f"{Path(video_path).name}: {info.display_width}x{info.display_height}, {info.num_frames} frames, "
        f"{info.fps:.2f} fps, {info.codec}; frames {', '.join(str(int(indices[i])) for i in shown)}; seed {seed}",
        fill=(230, 230, 230),
    )
    y = 32
    for label, row_height in rows:
        draw.text((8, y + row_height // 2 - 6), label, fill=(230, 230, 230))
        y += row_height + _GAP
    y = 32
    source = Image.fromarray(frames[shown[0]])
    scale = _TILE / max(source.height, 1)
    upsampled_scale = min(
        1.0, min(source.height, source.width) / (layouts["frag_v"].grid * layouts["frag_v"].patch)
    )
    shown_source = source.resize((max(1, round(source.width * scale)), _TILE), Image.Resampling.BILINEAR)
    shown_source = shown_source.crop((0, 0, min(shown_source.width, columns * (_TILE + _GAP) - _GAP), _TILE))
    overlay = ImageDraw.Draw(shown_source)
    for key, layout in layouts.items():
        _outline_patches(overlay, layout, scale * upsampled_scale, _COLOURS[key])
    canvas.paste(shown_source, (_LABEL_WIDTH, y))
    y += _TILE + _GAP
    for key in ("frag_v", "frag_a"):
        for column, t in enumerate(shown):
            tile = _to_image(views[key][:, t].permute(1, 2, 0))
            _draw_grid(ImageDraw.Draw(tile), layouts[key].patch, _COLOURS[key])
            canvas.paste(tile.resize((_TILE, _TILE)), (_LABEL_WIDTH + column * (_TILE + _GAP), y))
        y += _TILE + _GAP
    for column, t in enumerate(shown):
        tile = _to_image(views["resize_v"][t].permute(1, 2, 0)).resize((_TILE, _TILE))
        canvas.paste(tile, (_LABEL_WIDTH + column * (_TILE + _GAP), y))
    y += _TILE + _GAP
    for column in range(views["resize_a"].shape[0]):
        tile = _to_image(views["resize_a"][column].permute(1, 2, 0)).resize((sparse_tile, sparse_tile))
        canvas.paste(tile, (_LABEL_WIDTH + column * (sparse_tile + 2), y))
    out_path = Path(out_path)
    return atomic_save(out_path, canvas.save)


def _to_image(normalised_hwc: torch.Tensor) -> Image.Image:
    mean = torch.tensor(IMAGENET_MEAN)
    std = torch.tensor(IMAGENET_STD)
    pixels = (normalised_hwc * std + mean).clamp(0, 255).round().to(torch.uint8).numpy()
    return Image.fromarray(np.ascontiguousarray(pixels))


def _draw_grid(draw: ImageDraw.ImageDraw, patch: int, colour: tuple[int, int, int]) -> None:
    size = draw.im.size[0]
    faint = tuple(c // 2 for c in colour)
    for position in range(patch, size, patch):
        draw.line((position, 0, position, size), fill=faint)
        draw.line((0, position, size, position), fill=faint)


def _outline_patches(draw: ImageDraw.ImageDraw, layout: FragmentLayout, scale: float, colour) -> None:
    side = layout.patch * scale
    for top, left in zip(layout.top[0].flatten().tolist(), layout.left[0].flatten().tolist(), strict=True):
        x, y = left * scale, top * scale
        draw.rectangle((x, y, x + side, y + side), outline=colour)
