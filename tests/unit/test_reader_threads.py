"""Decoder threads in the reader: frames identical to a full single-threaded decode, whatever the threads.

Frame threading, slice threading, skipping unwanted non-reference frames and draining the decoder
after the last wanted packet are checked together, on clips with one and with four slices per frame,
short and long GOPs, with and without B-frames; plus the default thread count (one thread inside a
DataLoader worker), and the two places where draining meets a random-access point that shows no
frame at once (an intra-refresh recovery point): a seek to one, and a file that starts with one.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from qasa_vqa.video import reader
from qasa_vqa.video.reader import decoder_threads, probe, read_frames
from qasa_vqa.video.writer import synthetic_frames, write_video
from videos import make_fixture

FRAMES, HEIGHT, WIDTH = 32, 96, 128

# name -> x264 settings: slices per frame (x264 frame threads, so the count is exact), GOP, B-frames
CLIPS = {
    "s1_gop12_b3": (1, 12, 3),
    "s4_gop12_b3": (4, 12, 3),
    "s1_gop250_b2": (1, 250, 2),
    "s4_gop250_b0": (4, 250, 0),
}
OTHER_CODECS = ("h264_mkv", "hevc", "mpeg4", "vp9_webm", "mpeg2")  # fixtures of tests/videos.py

# (threads, thread_type); one thread is what tests/unit/test_reader.py checks (its clips are small)
THREADINGS = [(0, "auto"), (3, "frame"), (2, "slice")]


def _write(folder: Path, name: str) -> Path:
    slices, gop, bframes = CLIPS[name]
    params = f"keyint={gop}:min-keyint={gop}:scenecut=0:sliced-threads=0:slices={slices}:bframes={bframes}"
    if bframes:
        params += ":b-pyramid=normal"  # the middle B-frame is a reference, the others are not
    return write_video(
        folder / f"{name}.mp4",
        synthetic_frames(FRAMES, HEIGHT, WIDTH, seed=5),
        codec="h264",
        gop=gop,
        bframes=bframes,
        options={"preset": "veryfast", "x264-params": params},
    )


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("thread_clips")
    return {name: _write(folder, name) for name in CLIPS}


@pytest.fixture(scope="module")
def other_codecs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("thread_codecs")
    return {name: make_fixture(name, folder) for name in OTHER_CODECS}


_REFERENCES: dict[Path, np.ndarray] = {}


def _single_threaded_decode(path: Path) -> np.ndarray:
    """Every frame, decoded and converted on one thread by plain PyAV (kept per file)."""
    if path not in _REFERENCES:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1
            _REFERENCES[path] = np.stack(
                [frame.to_ndarray(format="rgb24", threads=1) for frame in container.decode(stream)]
            )
    return _REFERENCES[path]


def _slices(path: Path) -> int:
    """Coded slices (VCL NAL units) in the first packet of an MP4 H.264 file."""
    with av.open(str(path)) as container:
        data = bytes(next(p for p in container.demux(video=0) if p.size))
    position, count = 0, 0
    while position + 5 <= len(data):
        count += (data[position + 4] & 0x1F) in (1, 5)
        position += 4 + int.from_bytes(data[position : position + 4], "big")
    return count


def _index_sets(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [
        np.arange(n),  # everything
        np.sort(rng.choice(n, size=7, replace=False)),  # sparse: most frames unwanted (skipped if non-ref)
        np.array([n - 1, 2, n // 2, n // 2]),  # unsorted, duplicated
        np.array([n - 1]),  # the last frame alone
    ]


def _check(path: Path, threads: int, thread_type: str, strategy: str) -> None:
    info = probe(path)
    reference = _single_threaded_decode(path)
    for indices in _index_sets(info.num_frames):
        got = read_frames(
            path, indices, info=info, threads=threads, thread_type=thread_type, strategy=strategy
        )
        np.testing.assert_array_equal(got, reference[indices])


def test_the_clips_have_the_slices_they_claim(clips: dict[str, Path]) -> None:
    for name, path in clips.items():
        assert _slices(path) == CLIPS[name][0], name


@pytest.mark.parametrize("strategy", ["auto", "seek"])
@pytest.mark.parametrize(("threads", "thread_type"), THREADINGS)
@pytest.mark.parametrize("name", sorted(CLIPS))
def test_threaded_frames_equal_a_single_threaded_full_decode(
    clips: dict[str, Path], name: str, threads: int, thread_type: str, strategy: str
) -> None:
    _check(clips[name], threads, thread_type, strategy)


@pytest.mark.parametrize(("threads", "thread_type"), THREADINGS)
@pytest.mark.parametrize("name", OTHER_CODECS)
def test_threaded_frames_are_exact_for_other_codecs(
    other_codecs: dict[str, Path], name: str, threads: int, thread_type: str
) -> None:
    _check(other_codecs[name], threads, thread_type, "auto")


@pytest.mark.parametrize("threads", [1, 3])
def test_no_packet_after_the_last_wanted_one_is_decoded(
    clips: dict[str, Path], monkeypatch: pytest.MonkeyPatch, threads: int
) -> None:
    # With B-frames and frame threads the decoder holds frames back; draining hands them over at once.
    path = clips["s1_gop250_b2"]
    info = probe(path)
    with av.open(str(path)) as container:
        decode_order = [p.pts for p in container.demux(video=0) if p.size]
    sent: list[int | None] = []
    original = reader._decode

    def counting(stream, packet, drain):
        sent.append(packet.pts)
        return original(stream, packet, drain)

    monkeypatch.setattr(reader, "_decode", counting)
    wanted = [3, 9, 20]
    got = read_frames(path, wanted, info=info, threads=threads, thread_type="frame")
    np.testing.assert_array_equal(got, _single_threaded_decode(path)[wanted])
    last = max(decode_order.index(info.frame_pts[i]) for i in wanted)
    assert sent == decode_order[: last + 1]


def test_default_threads_outside_and_inside_a_loader_worker(clips: dict[str, Path]) -> None:
    assert decoder_threads() == 0  # main process: FFmpeg's own count
    assert decoder_threads(pixels=1920 * 1080) == 0
    assert decoder_threads(pixels=320 * 240) == 1  # too small to share
    assert decoder_threads(1) == 1 and decoder_threads(4) == 4 and decoder_threads(np.int64(2)) == 2
    assert decoder_threads(0, pixels=320 * 240) == 0  # an explicit count wins
    path = clips["s1_gop12_b3"]
    loader = DataLoader(_ThreadsSeen(path), batch_size=None, num_workers=1)
    (threads, frames) = next(iter(loader))
    assert int(threads) == 1
    np.testing.assert_array_equal(frames.numpy(), _single_threaded_decode(path)[[1, 30]])


class _ThreadsSeen(Dataset):
    def __init__(self, path: Path) -> None:
        self.path = path

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor]:
        return decoder_threads(), torch.from_numpy(read_frames(self.path, [1, 30]))


@pytest.mark.parametrize(
    ("threads", "thread_type"), [(-1, "auto"), (1.5, "auto"), (True, "auto"), (1, "both")]
)
def test_bad_thread_settings_are_refused(clips: dict[str, Path], threads, thread_type: str) -> None:
    with pytest.raises(ValueError, match="thread"):
        read_frames(clips["s1_gop12_b3"], [0], threads=threads, thread_type=thread_type)


@pytest.mark.parametrize("threads", [1, 0])
def test_a_seek_to_a_recovery_point_that_shows_nothing_falls_back(tmp_path: Path, threads: int) -> None:
    # x264's periodic intra refresh marks recovery points as sync samples; after a seek to one the
    # decoder shows no frame until the refresh completes, so the reader decodes from the start instead.
    path = write_video(
        tmp_path / "refresh.mp4",
        synthetic_frames(60, 64, 96, seed=2),
        codec="h264",
        options={"x264-params": "intra-refresh=1:keyint=20"},
    )
    info = probe(path)
    assert len(info.keyframes) > 1
    wanted = [info.num_frames - 1, info.keyframes[-1] + 1]
    got = read_frames(path, wanted, info=info, threads=threads, strategy="seek")
    np.testing.assert_array_equal(got, _single_threaded_decode(path)[wanted])


def test_probe_of_a_file_that_starts_at_a_recovery_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # probe drains the first keyframe out of the decoder; a recovery point shows nothing that way, so
    # probe then decodes on until the first frame comes out, as it did before the shortcut
    source = write_video(
        tmp_path / "refresh.mp4",
        synthetic_frames(60, 64, 96, seed=2),
        codec="h264",
        options={"x264-params": "intra-refresh=1:keyint=20"},
    )
    cut = tmp_path / "cut.mp4"
    with av.open(str(source)) as inp, av.open(str(cut), "w") as out:
        stream = inp.streams.video[0]
        copy = out.add_stream_from_template(stream)
        start = None
        for packet in inp.demux(stream):
            if packet.size and start is None and packet.is_keyframe and packet.pts > 0:
                start = packet.dts
            if packet.size and start is not None:
                packet.pts, packet.dts, packet.stream = packet.pts - start, packet.dts - start, copy
                out.mux(packet)
    calls = []
    original = reader._first_frame_rotation

    def spy(path):
        calls.append(path)
        return original(path)

    monkeypatch.setattr(reader, "_first_frame_rotation", spy)
    info = probe(cut)
    assert calls == [cut] and info.rotation == 0 and info.num_frames > 30


def test_large_outputs_are_ordinary_writable_arrays() -> None:
    frames = reader._frame_array((2, 1080, 1920, 3))  # over 4 MiB: an anonymous mapping
    assert frames.dtype == np.uint8 and frames.flags.writeable and frames.flags.c_contiguous
    frames[:] = 7
    tensor = torch.from_numpy(frames)  # shares the memory, as a DataLoader collate does
    tensor[1] = 9
    assert int(frames[0].sum()) == 7 * frames[0].size and int(frames[1, 5, 5, 2]) == 9
    assert reader._frame_array((1, 8, 8, 3)).shape == (1, 8, 8, 3)  # small: a plain NumPy array
