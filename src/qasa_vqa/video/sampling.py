"""Temporal samplers: which frame indices of a video the models see.

* :func:`fragment_frame_indices` is the temporal-fragment sampler of QASA-VQA / FasterVQA (docs/method.md
  section 4.2 item 1): the video is cut into ``segments`` equal segments and from each a short run of
  ``frames_per_segment`` frames ``frame_interval`` apart is taken. Training draws one random offset
  per segment (8 x 4 = 32 frames); testing takes 8 x 8 = 64 frames with deterministic offsets by
  default (the reference draws them at random even at test time, docs/differences.md item 6; pass an
  ``rng`` to get that behaviour).
* :func:`contiguous_clip_indices` is ST-VQRL's two-clip sampler (docs/method.md section 2.2, MMAction2's
  ``SampleFrames`` in train mode): ``num_clips`` clips of ``clip_len`` frames ``frame_interval`` apart,
  one per equal share of the video, over the first ``num_frames - margin`` frames.

Short videos wrap around: indices are taken modulo the frame count, as in the reference. Every random
draw comes from the ``numpy.random.Generator`` passed in; random sampling without one is an error.
"""

from __future__ import annotations

import numpy as np

__all__ = ["contiguous_clip_indices", "fragment_frame_indices"]


def fragment_frame_indices(
    num_frames: int,
    *,
    segments: int = 8,
    frames_per_segment: int | None = None,
    frame_interval: int = 2,
    rng: np.random.Generator | None = None,
    train: bool = True,
) -> np.ndarray:
    """Frame indices of the temporal fragments, ``[segments * frames_per_segment]``, in temporal order.

    Segment ``s`` starts at ``s * L`` with ``L = num_frames // segments``. Its frames are
    ``s * L + r_s + frame_interval * m`` for ``m < frames_per_segment``, modulo ``num_frames``. When
    ``L > frames_per_segment * frame_interval`` the offset ``r_s`` may lie in
    ``0 .. L - frames_per_segment * frame_interval - 1`` (otherwise it is 0): training draws it
    uniformly per segment from ``rng``; at test time (``train=False``) it is the middle of that range,
    unless an ``rng`` is given, which draws it as in training (the reference's test behaviour).

    ``frames_per_segment`` defaults to 4 in training (32 frames) and 8 at test time (64 frames).
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    if segments < 1 or frame_interval < 1:
        raise ValueError(f"segments and frame_interval must be positive, got {segments}, {frame_interval}")
    if frames_per_segment is None:
        frames_per_segment = 4 if train else 8
    if frames_per_segment < 1:
        raise ValueError(f"frames_per_segment must be positive, got {frames_per_segment}")
    if train and rng is None:
        raise ValueError("training samples random offsets: pass rng=numpy.random.default_rng(seed)")
    segment_length = num_frames // segments
    span = frames_per_segment * frame_interval
    starts = np.arange(segments, dtype=np.int64) * segment_length
    if segment_length > span:
        high = segment_length - span  # offsets 0 .. high - 1
        if rng is not None:
            offsets = rng.integers(0, high, size=segments, dtype=np.int64)
        else:
            offsets = np.full(segments, (high - 1) // 2, dtype=np.int64)
    else:
        offsets = np.zeros(segments, dtype=np.int64)
    steps = np.arange(frames_per_segment, dtype=np.int64) * frame_interval
    indices = (starts + offsets)[:, None] + steps[None, :]
    return (indices % num_frames).reshape(-1)


def contiguous_clip_indices(
    num_frames: int,
    *,
    clip_len: int = 32,
    frame_interval: int = 2,
    num_clips: int = 2,
    margin: int = 5,
    rng: np.random.Generator,
) -> np.ndarray:
    """ST-VQRL's clips, ``[num_clips, clip_len]`` frame indices (docs/method.md section 2.2).

    Sampling runs over ``n = num_frames - margin`` frames (the reference keeps 5 frames clear of the
    end, so distorted versions a frame or two shorter still hold every index; videos of ``margin``
    frames or fewer use all their frames). With ``avg = (n - clip_len * frame_interval + 1) //
    num_clips``: if ``avg > 0``, clip ``c`` starts at ``c * avg + U{0 .. avg - 1}``; otherwise
    MMAction2's fallbacks apply (sorted uniform starts when ``n > max(num_clips, clip_len *
    frame_interval)``, evenly spread starts when ``avg == 0``, else all clips start at 0). Clip
    frames are ``start + frame_interval * m``, modulo ``n``.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    if clip_len < 1 or frame_interval < 1 or num_clips < 1 or margin < 0:
        raise ValueError(
            f"clip_len, frame_interval and num_clips must be positive and margin non-negative, got "
            f"{clip_len}, {frame_interval}, {num_clips}, {margin}"
        )
    usable = num_frames - margin if num_frames > margin else num_frames
    span = clip_len * frame_interval
    average = (usable - span + 1) // num_clips
    if average > 0:
        starts = np.arange(num_clips, dtype=np.int64) * average + rng.integers(0, average, size=num_clips)
    elif usable > max(num_clips, span):
        starts = np.sort(rng.integers(0, usable - span + 1, size=num_clips))
    elif average == 0:
        ratio = (usable - span + 1.0) / num_clips
        starts = np.around(np.arange(num_clips) * ratio).astype(np.int64)
    else:
        starts = np.zeros(num_clips, dtype=np.int64)
    steps = np.arange(clip_len, dtype=np.int64) * frame_interval
    return (starts.astype(np.int64)[:, None] + steps[None, :]) % usable
