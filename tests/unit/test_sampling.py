"""Temporal samplers against hand-computed indices (docs/method.md sections 2.2 and 4.2 item 1)."""

from __future__ import annotations

import numpy as np
import pytest

from qasa_vqa.video.sampling import contiguous_clip_indices, fragment_frame_indices


def test_test_time_indices_are_centred_and_hand_computed() -> None:
    # N = 300: segment length 37, span 8 * 2 = 16, offsets 0..20 -> middle 10; frames 37 s + 10 + 2 m
    got = fragment_frame_indices(300, train=False)
    expected = [37 * s + 10 + 2 * m for s in range(8) for m in range(8)]
    assert got.tolist() == expected
    assert len(got) == 64


def test_training_offsets_follow_the_reference_rule() -> None:
    rng = np.random.default_rng(0)
    got = fragment_frame_indices(300, rng=rng).reshape(8, 4)
    offsets = got[:, 0] - 37 * np.arange(8)
    assert ((offsets >= 0) & (offsets <= 28)).all()  # 0 .. L - 4 * 2 - 1
    np.testing.assert_array_equal(np.diff(got, axis=1), 2)
    # one independent offset per segment: over many draws every value 0..28 appears
    seen = {int(o) for _ in range(200) for o in fragment_frame_indices(300, rng=rng).reshape(8, 4)[:, 0] % 37}
    assert seen == set(range(29))


def test_short_segments_use_offset_zero_and_wrap_around() -> None:
    # N = 64: L = 8 is not above the span 8, so r = 0
    assert fragment_frame_indices(64, rng=np.random.default_rng(1)).tolist() == [
        8 * s + 2 * m for s in range(8) for m in range(4)
    ]
    # N = 5: L = 0, every segment starts at 0; 0, 2, 4, 6 -> 6 mod 5 = 1
    assert fragment_frame_indices(5, rng=np.random.default_rng(1)).tolist() == [0, 2, 4, 1] * 8
    assert fragment_frame_indices(5, train=False).tolist() == [0, 2, 4, 1, 3, 0, 2, 4] * 8


def test_same_seed_same_indices_and_seeds_matter() -> None:
    a = fragment_frame_indices(1000, rng=np.random.default_rng(42))
    b = fragment_frame_indices(1000, rng=np.random.default_rng(42))
    c = fragment_frame_indices(1000, rng=np.random.default_rng(43))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_test_time_with_rng_draws_like_the_reference() -> None:
    got = fragment_frame_indices(300, train=False, rng=np.random.default_rng(3)).reshape(8, 8)
    offsets = got[:, 0] - 37 * np.arange(8)
    assert ((offsets >= 0) & (offsets <= 20)).all()
    assert len(set(offsets.tolist())) > 1


def test_training_without_rng_is_refused() -> None:
    with pytest.raises(ValueError, match="rng"):
        fragment_frame_indices(300)
    with pytest.raises(ValueError, match="num_frames"):
        fragment_frame_indices(0, train=False)


def test_contiguous_clips_cover_their_halves() -> None:
    # N = 200: n = 195, span 64, avg = (195 - 64 + 1) // 2 = 66
    rng = np.random.default_rng(0)
    for _ in range(50):
        clips = contiguous_clip_indices(200, rng=rng)
        assert clips.shape == (2, 32)
        np.testing.assert_array_equal(np.diff(clips, axis=1), 2)
        assert 0 <= clips[0, 0] <= 65 and 66 <= clips[1, 0] <= 131
        assert clips.max() < 195


def test_contiguous_clip_fallbacks_by_hand() -> None:
    rng = np.random.default_rng(0)
    # N = 69: n = 64, avg = (64 - 63) // 2 = 0 -> starts round([0, 0.5]) = [0, 0]
    expected = (np.arange(32) * 2) % 64
    np.testing.assert_array_equal(contiguous_clip_indices(69, rng=rng), np.stack([expected, expected]))
    # N = 10: n = 5, avg < 0 -> both clips start at 0 and wrap modulo 5
    np.testing.assert_array_equal(contiguous_clip_indices(10, rng=rng)[0], (np.arange(32) * 2) % 5)
    # 4 frames, fewer than the margin: sampling runs over all 4 (indices modulo 4, not modulo -1)
    assert contiguous_clip_indices(4, rng=rng)[1].tolist() == [0, 2] * 16
    a = contiguous_clip_indices(500, rng=np.random.default_rng(9))
    np.testing.assert_array_equal(a, contiguous_clip_indices(500, rng=np.random.default_rng(9)))
