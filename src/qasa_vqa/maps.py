"""Quality maps: where in a video the quality-aware branch sees good and bad quality.

The VQA head gives a local quality map ``[T', h, w]`` of the fragment image (docs/method.md section 1.5):
cell ``(t, a, b)`` summarises fragment pixels ``[a*s, (a+1)*s) x [b*s, (b+1)*s)`` (``s`` is the
backbone's stride, 32 for Video Swin-T) of sampled frames ``[t*r, (t+1)*r)`` (``r = T / T'``, 2). Each
fragment patch ``(i, j)`` of the ``grid x grid`` fragment image was cut from grid cell ``(i, j)`` of the
frame, so :func:`cell_values` gives each patch the mean of the map over its pixels and
:func:`cell_boxes` says which frame region that patch stands for (its grid cell, in the coordinates of
the original frame, undoing the upsampling of small videos). :func:`paint` lays the values over a frame;
:func:`save_quality_map` draws the picture (a row of frames with the map over them, a colour scale, the
map's mean along the time axis) and writes the raw arrays next to it (``.npz``, no pickles).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from qasa_vqa.storage import atomic_save

__all__ = ["cell_boxes", "cell_values", "paint", "save_quality_map"]


def cell_values(quality_map: np.ndarray, *, grid: int, patch: int, stride: int) -> np.ndarray:
    """The map's value for each fragment patch: ``[T', h, w] -> [T', grid, grid]`` (mean over the
    patch's pixels of the map cell each pixel falls in)."""
    quality_map = np.asarray(quality_map, dtype=np.float64)
    if quality_map.ndim != 3:
        raise ValueError(f"expected a map [T', h, w], got shape {quality_map.shape}")
    steps, height, width = quality_map.shape
    out = np.empty((steps, grid, grid))
    for i in range(grid):
        rows = np.minimum(np.arange(i * patch, (i + 1) * patch) // stride, height - 1)
        for j in range(grid):
            cols = np.minimum(np.arange(j * patch, (j + 1) * patch) // stride, width - 1)
            out[:, i, j] = quality_map[:, rows][:, :, cols].mean(axis=(1, 2))
    return out


def cell_boxes(source: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Frame regions of the fragment patches, in original frame pixels: ``(cells, patches)``, each
    ``[grid, grid, 4]`` as ``(top, left, bottom, right)``. ``cells`` are the grid cells the patches were
    cut from (the last row and column reach the frame's edge); ``patches`` the patches themselves."""
    top, left = np.asarray(source["top"])[0], np.asarray(source["left"])[0]
    grid, patch = top.shape[0], int(source["patch"])
    up_h, up_w = source["upsampled"]
    frame_h, frame_w = source["frame_size"]
    sy, sx = frame_h / up_h, frame_w / up_w
    cell_h, cell_w = up_h // grid, up_w // grid
    cells = np.empty((grid, grid, 4))
    for i in range(grid):
        for j in range(grid):
            bottom = up_h if i == grid - 1 else (i + 1) * cell_h
            right = up_w if j == grid - 1 else (j + 1) * cell_w
            cells[i, j] = (i * cell_h * sy, j * cell_w * sx, bottom * sy, right * sx)
    patches = np.stack([top * sy, left * sx, (top + patch) * sy, (left + patch) * sx], axis=-1)
    return cells, patches


def paint(values: np.ndarray, cells: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A ``size = (height, width)`` image whose pixels carry the value of the grid cell they lie in
    (``values [grid, grid]``, boxes from :func:`cell_boxes` in that image's pixels); NaN elsewhere."""
    out = np.full(size, np.nan)
    grid = values.shape[0]
    for i in range(grid):
        for j in range(grid):
            t, left, b, r = (round(float(v)) for v in cells[i, j])
            out[t:b, left:r] = values[i, j]
    return out


def save_quality_map(
    quality_map: np.ndarray,
    source: Mapping[str, Any],
    stem: str | Path,
    *,
    stride: int | None = None,
    frames: int = 8,
    title: str = "",
) -> Path:
    """Write ``<stem>.png`` (the picture) and ``<stem>.npz`` (``map``, ``cell_values``, ``frame_indices``,
    ``times``, ``cell_boxes``, ``patch_boxes``); returns the picture's path. ``quality_map`` is ``[T', h,
    w]``, ``source`` what the scorer kept of the frames (thumbnails, indices, times, layout)."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend (e.g. a notebook's) is left alone
    from matplotlib.patches import Rectangle

    stem = Path(stem)
    quality_map = np.asarray(quality_map, dtype=np.float64)
    grid, patch = np.asarray(source["top"]).shape[1], int(source["patch"])
    stride = stride or max(1, -(-grid * patch // quality_map.shape[1]))
    values = cell_values(quality_map, grid=grid, patch=patch, stride=stride)
    cells, patches = cell_boxes(source)
    thumbs, times = source["thumbs"], np.asarray(source["times"], dtype=np.float64)
    steps, sampled = values.shape[0], len(thumbs)
    per_step = max(1, sampled // steps)
    step_times = times[np.minimum(np.arange(steps) * per_step, sampled - 1)]
    scale = thumbs.shape[2] / source["frame_size"][1]
    chosen = np.unique(np.round(np.linspace(0, steps - 1, min(frames, steps))).astype(int))
    low, high = float(values.min()), float(values.max())
    if high <= low:
        high = low + 1e-6

    figure = Figure(figsize=(2.2 * len(chosen) + 1.2, 4.2), layout="constrained")
    panels = figure.subfigures(2, 1, height_ratios=[2.2, 1.0])
    axes = np.atleast_1d(panels[0].subplots(1, len(chosen)))
    image = None
    for ax, step in zip(axes, chosen, strict=True):
        thumb = thumbs[min(step * per_step, sampled - 1)]
        ax.imshow(thumb)
        overlay = paint(values[step], cells * scale, thumb.shape[:2])
        image = ax.imshow(overlay, cmap="RdYlGn", vmin=low, vmax=high, alpha=0.5, interpolation="nearest")
        for top, left, bottom, right in patches.reshape(-1, 4) * scale:
            ax.add_patch(Rectangle((left, top), right - left, bottom - top, fill=False, lw=0.4, ec="white"))
        ax.set_title(f"t = {step_times[step]:.2f} s", fontsize=8)
        ax.set_axis_off()
    panels[0].colorbar(image, ax=list(axes), shrink=0.8, label="local quality (head output)")
    if title:
        panels[0].suptitle(title, fontsize=9)
    timeline = panels[1].subplots()
    timeline.plot(step_times, values.reshape(steps, -1).mean(axis=1), marker=".", lw=1)
    timeline.fill_between(
        step_times, values.reshape(steps, -1).min(axis=1), values.reshape(steps, -1).max(axis=1), alpha=0.2
    )
    timeline.set_xlabel("time (s)")
    timeline.set_ylabel("map mean, range", fontsize=8)
    picture = atomic_save(stem.with_suffix(".png"), lambda path: figure.savefig(path, dpi=110, format="png"))
    arrays = {
        "map": quality_map.astype(np.float32),
        "cell_values": values.astype(np.float32),
        "frame_indices": np.asarray(source["frame_indices"]),
        "times": times,
        "cell_boxes": cells,
        "patch_boxes": patches,
    }
    atomic_save(stem.with_suffix(".npz"), lambda path: np.savez_compressed(path, **arrays))
    return picture
