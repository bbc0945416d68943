"""Spatial views: a coordinate test of the fragment rules (docs/method.md section 4.3), resize, views."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from qasa_vqa.video.fragments import (
    CLIP_MEAN,
    IMAGENET_MEAN,
    IMAGENET_STD,
    IncrementalTestViews,
    apply_fragments,
    fragment_layout,
    make_test_views,
    make_views,
    normalise,
    offset_range,
    resize_frames,
    spatial_fragments,
)

# Offset ranges worked by hand from the rule (cell L = side // 7; half-cell start side // 14).
# side: {view: (low, high)}
HAND_RANGES = {
    360: {"full": (0, 18), "first": (0, 0), "second": (0, 0)},  # L = 51, L // 2 = 25 <= 32
    480: {"full": (0, 35), "first": (0, 1), "second": (34, 35)},  # L = 68
    640: {"full": (0, 58), "first": (0, 12), "second": (45, 57)},  # L = 91
    720: {"full": (0, 69), "first": (0, 18), "second": (51, 69)},  # L = 102
    854: {"full": (0, 89), "first": (0, 28), "second": (61, 89)},  # L = 122
    1080: {"full": (0, 121), "first": (0, 44), "second": (77, 121)},  # L = 154
    1280: {"full": (0, 149), "first": (0, 58), "second": (91, 149)},  # L = 182
    1920: {"full": (0, 241), "first": (0, 104), "second": (137, 241)},  # L = 274
}
RESOLUTIONS = {"360p": (360, 640), "480p": (480, 854), "720p": (720, 1280), "1080p": (1080, 1920)}


@pytest.mark.parametrize("side", sorted(HAND_RANGES))
@pytest.mark.parametrize("view", ["full", "first", "second"])
def test_offset_ranges_match_the_worked_values(side: int, view: str) -> None:
    assert offset_range(side, view=view) == HAND_RANGES[side][view]


def _coordinate_channels(height: int, width: int, frames: int) -> tuple[torch.Tensor, ...]:
    """Videos [1, T, H, W] whose pixels hold their own y, x and t (broadcast views: no memory)."""
    y = torch.arange(height, dtype=torch.int32).view(1, 1, height, 1).expand(1, frames, height, width)
    x = torch.arange(width, dtype=torch.int32).view(1, 1, 1, width).expand(1, frames, height, width)
    t = torch.arange(frames, dtype=torch.int32).view(1, frames, 1, 1).expand(1, frames, height, width)
    return y, x, t


@pytest.mark.parametrize("resolution", sorted(RESOLUTIONS))
@pytest.mark.parametrize("view", ["full", "first", "second"])
def test_every_patch_is_a_contiguous_crop_from_its_own_cell(resolution: str, view: str) -> None:
    height, width = RESOLUTIONS[resolution]
    frames, aligned, grid, patch = 64, 32, 7, 32
    generator = torch.Generator().manual_seed(11)
    y, x, t = _coordinate_channels(height, width, frames)
    seen_offsets: dict[str, set[int]] = {"y": set(), "x": set()}
    for _ in range(6):
        layout = fragment_layout(height, width, frames, view=view, aligned=aligned, generator=generator)
        out_y, out_x, out_t = (apply_fragments(c, layout)[0] for c in (y, x, t))
        assert out_y.shape == (frames, 224, 224)
        # frames are not shuffled
        assert (out_t == torch.arange(frames).view(frames, 1, 1)).all()
        for axis, out, side in (("y", out_y, height), ("x", out_x, width)):
            cell = side // grid
            low, high = HAND_RANGES[side][view]
            for i in range(grid):
                for j in range(grid):
                    block = out[:, i * patch : (i + 1) * patch, j * patch : (j + 1) * patch]
                    index = i if axis == "y" else j
                    line = block[:, :, 0] if axis == "y" else block[:, 0, :]  # [T, 32] coordinates
                    start = line[:, :1]
                    # contiguous: consecutive coordinates along the axis, constant along the other
                    assert (line == start + torch.arange(patch)).all()
                    constant = block - (block[:, :, :1] if axis == "y" else block[:, :1, :])
                    assert (constant == 0).all()
                    # the same offset for every frame of an offset set
                    for chunk in range(frames // aligned):
                        chunk_starts = start[chunk * aligned : (chunk + 1) * aligned]
                        assert (chunk_starts == chunk_starts[0]).all()
                    offsets = (start[:, 0] - min(index * cell, side - patch)).tolist()
                    assert all(low <= r <= high for r in offsets), (axis, i, j, offsets)
                    # inside its own cell
                    assert all(
                        index * cell <= s and s + patch <= (index + 1) * cell for s in start[:, 0].tolist()
                    )
                    seen_offsets[axis].update(offsets)
    # random draws reach both ends of the range (6 layouts x 49 cells x 2 sets per axis)
    for axis, side in (("y", height), ("x", width)):
        low, high = HAND_RANGES[side][view]
        if high - low <= 50:
            assert seen_offsets[axis] >= {low, high}


def test_offset_sets_change_between_aligned_chunks_and_with_the_seed() -> None:
    a = fragment_layout(1080, 1920, 64, generator=torch.Generator().manual_seed(0))
    b = fragment_layout(1080, 1920, 64, generator=torch.Generator().manual_seed(0))
    c = fragment_layout(1080, 1920, 64, generator=torch.Generator().manual_seed(1))
    assert a.top.shape == (2, 7, 7)
    assert torch.equal(a.top, b.top) and torch.equal(a.left, b.left)
    assert not torch.equal(a.top, c.top)
    assert not torch.equal(a.top[0], a.top[1])


def test_halves_coincide_below_462_px_unless_clamped() -> None:
    generator = torch.Generator().manual_seed(0)
    first = fragment_layout(360, 640, 32, view="first", generator=generator)
    second = fragment_layout(360, 640, 32, view="second", generator=generator)
    assert torch.equal(first.top, second.top)  # the reference: both at offset 0 along the 360 px side
    assert (second.left - first.left >= 33).all()  # 640 px: the halves are apart
    clamped = fragment_layout(360, 640, 32, view="second", clamp_halves=True, generator=generator)
    cells = torch.arange(7).view(1, 7, 1) * (360 // 7)
    assert ((clamped.top - cells) == 51 - 32).all()  # T'' pushed to the end of each 51 px cell
    assert offset_range(461, view="second") == (0, 0) and offset_range(462, view="second") == (33, 33)


def test_small_videos_are_upsampled_to_the_grid() -> None:
    video = torch.randint(0, 256, (3, 5, 207, 333), dtype=torch.uint8)
    out = spatial_fragments(video, generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 5, 224, 224) and out.dtype == torch.float32
    # upsampled to 224 x 360: along the 224 px side L = 32, so each cell row is copied whole, and
    # along the 360 px side the first cell's crop starts somewhere in 0..18
    expected = F.interpolate(video.float(), size=(224, 360), mode="bilinear", align_corners=False)
    for i in range(7):
        rows = slice(32 * i, 32 * (i + 1))
        assert any(torch.allclose(out[:, :, rows, :32], expected[:, :, rows, c : c + 32]) for c in range(19))


def test_random_offsets_need_a_generator() -> None:
    with pytest.raises(ValueError, match="generator"):
        fragment_layout(720, 1280, 32)
    centred = fragment_layout(720, 1280, 32, centre=True)
    assert (centred.top[0, 0, 0] == (0 + 69) // 2).item()


@pytest.mark.parametrize(("height", "width"), [(1080, 1920), (207, 333), (100, 50), (224, 224)])
@pytest.mark.parametrize("antialias", [False, True])
def test_resize_matches_torch_interpolate(height: int, width: int, antialias: bool) -> None:
    frames = torch.randint(0, 256, (3, height, width, 3), dtype=torch.uint8)
    got = resize_frames(frames, 224, antialias=antialias)
    expected = F.interpolate(
        frames.permute(0, 3, 1, 2).float(),
        size=(224, 224),
        mode="bilinear",
        align_corners=False,
        antialias=antialias,
    )
    assert got.shape == (3, 3, 224, 224)
    torch.testing.assert_close(got, expected, atol=0.05, rtol=0)


def test_normalisation_statistics() -> None:
    pixel = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    assert torch.allclose(normalise(pixel), torch.zeros(3, 1, 1))
    white = torch.full((1, 3, 2, 2), 255.0)
    expected = (255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(normalise(white, channel_dim=1)[0, :, 0, 0], expected)
    assert torch.allclose(normalise(torch.tensor(CLIP_MEAN).view(3, 1), "clip"), torch.zeros(3, 1), atol=1e-6)
    with pytest.raises(ValueError, match="stats"):
        normalise(pixel, "nope")


def test_make_views_shapes_and_consistency() -> None:
    frames = np.random.default_rng(0).integers(0, 256, (32, 480, 854, 3), dtype=np.uint8)
    views = make_views(frames, generator=torch.Generator().manual_seed(5))
    assert views["frag_v"].shape == (3, 32, 224, 224) and views["frag_a"].shape == (3, 32, 224, 224)
    assert views["resize_v"].shape == (32, 3, 224, 224) and views["resize_a"].shape == (8, 3, 224, 224)
    torch.testing.assert_close(views["resize_a"], views["resize_v"][[0, 4, 8, 12, 16, 20, 24, 28]])
    # the fragment views are crops of the normalised frames
    crop = normalise(torch.from_numpy(frames).permute(3, 0, 1, 2).float())
    patch = views["frag_v"][:, :, :32, :32]
    assert any(torch.allclose(patch, crop[:, :, r : r + 32, c : c + 32]) for r in range(2) for c in range(29))
    again = make_views(frames, generator=torch.Generator().manual_seed(5))
    assert all(torch.equal(views[k], again[k]) for k in views)
    other = make_views(frames, generator=torch.Generator().manual_seed(6))
    assert not torch.equal(views["frag_a"], other["frag_a"])


def test_make_test_views_shapes_and_determinism() -> None:
    frames = np.random.default_rng(1).integers(0, 256, (64, 360, 640, 3), dtype=np.uint8)
    views = make_test_views(frames, centre=True)
    assert views["frag"].shape == (3, 64, 224, 224) and views["resize"].shape == (64, 3, 224, 224)
    again = make_test_views(frames, centre=True)
    assert torch.equal(views["frag"], again["frag"])


@pytest.mark.parametrize("antialias", [False, True])
@pytest.mark.parametrize("centre", [True, False])
def test_view_builder_frame_by_frame_equals_make_test_views(centre: bool, antialias: bool) -> None:
    frames = np.random.default_rng(3).integers(0, 256, size=(10, 240, 330, 3), dtype=np.uint8)
    options = {"grid": 7, "patch": 32, "aligned": 4, "size": 96, "antialias": antialias, "centre": centre}
    expected = make_test_views(frames, generator=torch.Generator().manual_seed(5), **options)
    builder = IncrementalTestViews(240, 330, 10, generator=torch.Generator().manual_seed(5), **options)
    for t in reversed(range(10)):  # any order: frames arrive in decode order
        builder.add(t, frames[t])
    views, layout, shape = builder.views(return_layout=True)
    assert views.keys() == expected.keys() == {"frag", "resize"}
    for part in views:
        assert torch.equal(views[part], expected[part]), part
    assert shape == (240, 330) and layout.top.shape == (3, 7, 7)  # ceil(10 / 4) offset sets


def test_view_builder_refuses_what_it_cannot_build() -> None:
    assert not IncrementalTestViews.fits(200, 400) and IncrementalTestViews.fits(224, 224)
    with pytest.raises(ValueError, match="upsampling"):
        IncrementalTestViews(200, 400, 4, centre=True)
    builder = IncrementalTestViews(224, 224, 2, centre=True, parts=("resize",))
    builder.add(0, np.zeros((224, 224, 3), np.uint8))
    with pytest.raises(ValueError, match=r"frames \[1\] were never added"):
        builder.views()
    with pytest.raises(ValueError, match="expected uint8"):
        builder.add(1, np.zeros((224, 225, 3), np.uint8))
