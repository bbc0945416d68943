"""The PyAV reader: exact frame counts, pixel-exact sparse decoding, rotation, and clear errors."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from qasa_vqa.errors import QasaVqaError, VideoDecodeError
from qasa_vqa.video import reader
from qasa_vqa.video.reader import plan_decode, probe, read_frames, stream_frames
from qasa_vqa.video.writer import synthetic_frames, write_video
from videos import FIXTURES, VFR_DURATIONS_MS, full_decode, upright_pattern

ALL = sorted(FIXTURES)
EXPECTED_CODEC = {
    "h264_bframes": "h264",
    "h264_mkv": "h264",
    "hevc": "hevc",
    "vp9_webm": "vp9",
    "av1": "av1",
    "mpeg4": "mpeg4",
    "mpeg2": "mpeg2video",
    "odd_size_h264": "h264",
    "odd_size_vp9": "vp9",
    "rotated_phone": "h264",
    "vfr_mp4": "h264",
    "vfr_mkv": "h264",
    "five_frames": "h264",
}


@pytest.mark.parametrize("name", ALL)
def test_probe_counts_and_describes_every_fixture(videos: dict[str, Path], name: str) -> None:
    _, frames, height, width, options = FIXTURES[name]
    info = probe(videos[name])
    assert info.num_frames == frames == full_decode(videos[name]).shape[0]
    assert info.codec == EXPECTED_CODEC[name]
    if name == "rotated_phone":
        # stored turned clockwise: coded size is the transposed picture, display size the upright one
        assert (info.width, info.height, info.rotation) == (height, width, 90)
        assert (info.display_width, info.display_height) == (width, height)
    else:
        assert (info.width, info.height, info.rotation) == (width, height, 0)
    assert info.keyframes[0] == 0
    if "gop" in options:  # several random-access points, in order (x264 places them exactly)
        assert len(info.keyframes) >= frames // options["gop"]
        assert list(info.keyframes) == sorted(set(info.keyframes))
        if options["codec"] == "h264":
            assert info.keyframes == tuple(range(0, frames, options["gop"]))
    assert info.duration > 0 and info.fps > 0


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("strategy", ["auto", "sequential", "seek"])
def test_read_frames_is_pixel_exact_against_a_full_decode(
    videos: dict[str, Path], name: str, strategy: str
) -> None:
    path = videos[name]
    info = probe(path)
    reference = full_decode(path)
    if info.rotation:
        reference = np.stack([np.rot90(frame, k=info.rotation // 90) for frame in reference])
    rng = np.random.default_rng(7)
    n = info.num_frames
    index_sets = [
        np.arange(n),  # everything
        np.array([n - 1, 0, n // 2, n // 2, 1]),  # unsorted, duplicated, both ends
        rng.integers(0, n, size=9),  # random
        np.array([n - 1]),  # the last frame alone (a seek into the last GOP)
    ]
    for indices in index_sets:
        got = read_frames(path, indices, info=info, strategy=strategy)
        assert got.dtype == np.uint8 and got.shape == (len(indices), *reference.shape[1:])
        np.testing.assert_array_equal(got, reference[indices])


def test_read_frames_without_info_and_empty_indices(videos: dict[str, Path]) -> None:
    path = videos["h264_bframes"]
    frames = read_frames(path, [3, 1])
    np.testing.assert_array_equal(frames, full_decode(path)[[3, 1]])
    empty = read_frames(path, [])
    assert empty.shape == (0, 144, 176, 3)


@pytest.mark.parametrize("name", ["h264_bframes", "rotated_phone", "vfr_mkv"])
def test_stream_frames_hands_over_each_position_once_in_decoding_order(
    videos: dict[str, Path], name: str
) -> None:
    path = videos[name]
    indices = [9, 2, 9, 0, 17, 2]
    expected = read_frames(path, indices)
    calls: list[tuple[int, np.ndarray]] = []
    stream_frames(path, indices, lambda position, frame: calls.append((position, frame.copy())))
    assert sorted(position for position, _ in calls) == list(range(len(indices)))
    order = [indices[position] for position, _ in calls]
    assert order == sorted(order), "frames come in decoding order"
    for position, frame in calls:
        np.testing.assert_array_equal(frame, expected[position])
    seen: list[int] = []
    stream_frames(path, [], lambda position, frame: seen.append(position))
    assert not seen


def test_rotation_tag_makes_frames_upright(videos: dict[str, Path]) -> None:
    _, _, height, width, _ = FIXTURES["rotated_phone"]
    expected = upright_pattern(height, width).astype(np.float64)
    frames = read_frames(videos["rotated_phone"], [0, 10])
    assert frames.shape == (2, height, width, 3)
    error_upright = np.abs(frames[0] - expected).mean()
    assert error_upright < 6.0  # near-lossless encode of the upright picture
    stored = read_frames(videos["rotated_phone"], [0], upright=False)[0]
    assert stored.shape == (width, height, 3)
    for k in (1, 2, 3):  # every other orientation is far off
        turned = np.rot90(frames[0], k=k)
        if turned.shape == expected.shape:
            assert np.abs(turned - expected).mean() > 30


def test_variable_frame_rate_keeps_every_frame_in_order(videos: dict[str, Path]) -> None:
    info = probe(videos["vfr_mp4"])
    steps_ms = np.diff(np.array(info.frame_pts) * float(info.time_base) * 1000)
    expected = [VFR_DURATIONS_MS[i % len(VFR_DURATIONS_MS)] for i in range(info.num_frames - 1)]
    np.testing.assert_allclose(steps_ms, expected, atol=1.0)
    assert abs(info.fps - 1000 * info.num_frames / (sum(expected) + expected[-1])) < 3


def test_sparse_frames_of_a_long_gop_video_seek_and_decode_less(tmp_path: Path, monkeypatch) -> None:
    path = write_video(tmp_path / "long.mp4", synthetic_frames(240, 64, 96, seed=1), codec="h264", gop=20)
    info = probe(path)
    wanted = [5, 6, 100, 101, 230]
    plan = plan_decode(wanted, info.keyframes)
    assert [start for start, _ in plan] == [None, 100, 220]
    decoded = []
    original = reader._indexed_frames

    def counting(*args, **kwargs):
        for index, frame in original(*args, **kwargs):
            decoded.append(index)
            yield index, frame

    monkeypatch.setattr(reader, "_indexed_frames", counting)
    frames = read_frames(path, wanted, info=info)
    np.testing.assert_array_equal(frames, full_decode(path)[wanted])
    # at most frames 0-6, 100-101 and 220-230 (unwanted B-frames that nothing references are skipped)
    assert set(wanted) <= set(decoded)
    assert len(decoded) <= 7 + 2 + 11
    decoded.clear()
    read_frames(path, wanted, info=info, strategy="sequential")
    assert set(wanted) <= set(decoded) <= set(range(231))  # stops right after the last wanted frame
    assert len(decoded) < 231  # non-reference frames nobody asked for were not decoded


def test_plan_decode_hand_cases() -> None:
    # dense frames in one long GOP: a single sequential run from the start
    assert plan_decode([10, 12, 240], [0, 250], seek_cost=8) == [(None, (10, 12, 240))]
    # from frame 12, decoding on to 290 costs 278 frames; seeking to keyframe 250 costs 8 + 41
    assert plan_decode([10, 12, 290], [0, 250], seek_cost=8) == [(None, (10, 12)), (250, (290,))]
    # the jump to keyframe 250 saves 240 - 8 frames: seek there
    assert plan_decode([2, 260], [0, 250], seek_cost=8) == [(None, (2,)), (250, (260,))]
    # keyframe already behind the decoder: keep decoding
    assert plan_decode([251, 255], [0, 250], seek_cost=8) == [(250, (251, 255))]
    assert plan_decode([], [0]) == []


# ------------------------------------------------------------------------------------------------
# bad input


def _silent_audio(path: Path, *, with_video_stream: bool) -> Path:
    """0.1 s of silence; with ``with_video_stream`` also a declared video stream that gets no frames."""
    with av.open(str(path), "w") as container:
        if with_video_stream:
            video = container.add_stream("mpeg4", rate=25)
            video.width, video.height, video.pix_fmt = 64, 64, "yuv420p"
        audio = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in audio.encode(frame):
            container.mux(packet)
    return path


def _clip(path: Path, **options) -> Path:
    return write_video(path, synthetic_frames(40, 64, 96, seed=3), codec="h264", gop=10, **options)


def _damage(source: Path, target: Path, *, keep: float | None = None, noise_at: float | None = None) -> Path:
    data = bytearray(source.read_bytes())
    if keep is not None:
        data = data[: int(len(data) * keep)]
    if noise_at is not None:
        start = int(len(data) * noise_at)
        data[start : start + 2000] = np.random.default_rng(0).integers(0, 256, 2000, dtype=np.uint8).tobytes()
    target.write_bytes(bytes(data))
    return target


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


BAD_INPUTS = {
    "missing": (lambda d: d / "nope.mp4", "no such file"),
    "directory": (lambda d: _folder(d / "folder.mp4"), "not a regular file"),
    "empty": (lambda d: _write(d / "empty.mp4", b""), "empty"),
    "text": (lambda d: _write(d / "notes.mp4", b"not a video\n" * 50), "not a readable video"),
    "random_bytes": (
        lambda d: _write(d / "noise.mkv", np.random.default_rng(1).bytes(4096)),
        "not a readable video",
    ),
    "audio_only": (lambda d: _silent_audio(d / "sound.wav", with_video_stream=False), "no video stream"),
    "zero_frames": (lambda d: _silent_audio(d / "zero.mkv", with_video_stream=True), "no video frames"),
    "truncated_mp4": (lambda d: _damage(_clip(d / "a.mp4"), d / "cut.mp4", keep=0.5), "not a readable video"),
    "truncated_faststart_mp4": (
        lambda d: _damage(_clip(d / "b.mp4", options={"movflags": "faststart"}), d / "cut_fs.mp4", keep=0.6),
        "",
    ),
    "truncated_mkv": (lambda d: _damage(_clip(d / "c.mkv"), d / "cut.mkv", keep=0.5), "truncated"),
    "corrupt_mp4": (
        lambda d: _damage(_clip(d / "e.mp4", options={"movflags": "faststart"}), d / "bad.mp4", noise_at=0.4),
        "corrupt",
    ),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_inputs_raise_a_decode_error_naming_the_file(tmp_path: Path, case: str) -> None:
    make, reason = BAD_INPUTS[case]
    path = make(tmp_path)
    with pytest.raises(VideoDecodeError) as caught:
        info = probe(path)
        read_frames(path, np.arange(info.num_frames), info=info)
    assert str(path) in str(caught.value)
    assert reason in str(caught.value)
    assert isinstance(caught.value, QasaVqaError)


@pytest.mark.parametrize(
    ("indices", "message"),
    [
        ([0, 40], "frame index 40 is out of range"),
        ([-1], "frame index -1 is out of range"),
        ([[1, 2]], "one-dimensional"),
        ([0.5], "integers"),
    ],
)
def test_bad_indices_raise(videos: dict[str, Path], indices, message: str) -> None:
    path = videos["h264_bframes"]
    with pytest.raises(VideoDecodeError, match=message) as caught:
        read_frames(path, indices)
    assert str(path) in str(caught.value)


def test_only_indexed_containers_are_seekable(videos: dict[str, Path]) -> None:
    assert probe(videos["mpeg2"]).seekable is False  # MPEG program stream: byte-bisection seeks
    for name in ("h264_bframes", "h264_mkv", "vp9_webm", "mpeg4"):
        assert probe(videos[name]).seekable is True


def test_a_seek_that_lands_late_falls_back_to_exact_sequential_decoding(tmp_path: Path, monkeypatch) -> None:
    path = write_video(
        tmp_path / "long.mp4", synthetic_frames(120, 64, 96, seed=2), codec="h264", gop=20, bframes=2
    )
    info = probe(path)
    original = reader._seek

    def late_seek(container, stream, path_, timestamp):  # lands one GOP after the keyframe asked for
        original(container, stream, path_, info.frame_pts[min(info.frame_pts.index(timestamp) + 20, 100)])

    monkeypatch.setattr(reader, "_seek", late_seek)
    wanted = [3, 65, 66, 110]
    np.testing.assert_array_equal(read_frames(path, wanted, info=info), full_decode(path)[wanted])


def test_unknown_strategy_is_refused(videos: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="strategy"):
        read_frames(videos["h264_bframes"], [0], strategy="fast")
