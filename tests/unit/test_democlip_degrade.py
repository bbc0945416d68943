"""The demo CLIP's distortions: each degrades more with severity, mixes are checked and reproducible."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from qasa_vqa.democlip.degrade import CODECS, DISTORTIONS, GROUPS, apply_mix, codec_round_trip
from qasa_vqa.video.writer import synthetic_frames


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return np.stack(list(synthetic_frames(3, 64, 96, seed=3, speed=2.0, grain=0.0)))


def _change(clean: np.ndarray, name: str, severity: float, seed: int = 0) -> float:
    out, applied = apply_mix(clean, [(name, severity)], np.random.default_rng(seed), transparent_encode=False)
    assert out.dtype == np.uint8 and out.shape == clean.shape
    assert [a.name for a in applied] == [name] and applied[0].words
    return float(np.abs(out.astype(np.float64) - clean).mean())


@pytest.mark.parametrize("name", sorted(DISTORTIONS))
def test_severity_orders_the_damage(clip: np.ndarray, name: str) -> None:
    low, mid, high = (_change(clip, name, s) for s in (0.05, 0.5, 1.0))
    assert low < mid < high, (name, low, mid, high)
    assert high > 4.0  # severity 1 is plainly visible on the 0-255 scale


def test_blur_matches_its_gaussian(clip: np.ndarray) -> None:
    out, _ = apply_mix(clip, [("blur", 0.5)], np.random.default_rng(0), transparent_encode=False)
    sigma = 0.3 + 3.2 * 0.5**1.2
    expected = ndimage.gaussian_filter(
        clip.astype(np.float32), (0, sigma, sigma, 0), mode="nearest", truncate=3.0
    )
    assert np.abs(out.astype(np.float64) - expected).max() <= 0.5 + 1e-4


def test_codecs_are_real_and_reproducible(clip: np.ndarray) -> None:
    for encoder, options in (
        ("libx264", {"crf": "40", "preset": "veryfast", "threads": "1", "x264-params": "mbtree=0"}),
        ("libvpx-vp9", {"crf": "50", "b": "0", "deadline": "realtime", "cpu-used": "8", "threads": "1"}),
    ):
        first = codec_round_trip(clip, encoder, options, bit_rate=0 if "vpx" in encoder else None)
        again = codec_round_trip(clip, encoder, options, bit_rate=0 if "vpx" in encoder else None)
        assert first.shape == clip.shape and np.array_equal(first, again)
        assert 1.0 < np.abs(first.astype(np.float64) - clip).mean() < 40.0
    assert set(CODECS) == {"h264", "vp9", "jpeg"}


def test_mix_rules_and_reproducibility(clip: np.ndarray) -> None:
    mix = [("noise", 0.4), ("blur", 0.3), ("h264", 0.5)]
    a, applied = apply_mix(clip, mix, np.random.default_rng(7))
    b, _ = apply_mix(clip, mix, np.random.default_rng(7))
    c, _ = apply_mix(clip, mix, np.random.default_rng(8))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert [x.name for x in applied] == ["blur", "noise", "h264"]  # canonical order: optics, sensor, codec
    with pytest.raises(ValueError, match="two distortions of group 'sharpness'"):
        apply_mix(clip, [("blur", 0.3), ("motion_blur", 0.3)], np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown distortion"):
        apply_mix(clip, [("sepia", 0.3)], np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"severity of noise must lie in \[0, 1\]"):
        apply_mix(clip, [("noise", 1.5)], np.random.default_rng(0))
    assert sorted(n for members in GROUPS.values() for n in members) == sorted(DISTORTIONS)


def test_transparent_encode_is_nearly_invisible(clip: np.ndarray) -> None:
    out, applied = apply_mix(clip, [], np.random.default_rng(0))
    assert applied == []
    luma = np.array([0.299, 0.587, 0.114])
    mse = np.mean((out.astype(np.float64) @ luma - clip.astype(np.float64) @ luma) ** 2)
    assert 10 * np.log10(255**2 / mse) > 38.0  # luma PSNR of a near-transparent encode (4:2:0 chroma aside)
