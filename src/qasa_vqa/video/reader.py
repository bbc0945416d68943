"""Probe videos and decode chosen frames with PyAV, frame-accurately and cheaply.

Decoding dominates the wall time of NR-VQA (FAST-VQA's own measurements), so :func:`read_frames` decodes as
little as it can while returning exactly the frames a full sequential decode would give:

* :func:`probe` demuxes the file once (no decoding beyond the first frame) and records every frame's
  presentation timestamp and the keyframe positions. The first keyframe is drained out of the decoder
  at once rather than after the frames its reordering delay waits for, and files are opened without
  the frame decode of FFmpeg's stream analysis (the container header has what the reader needs). Frame ``i`` is the frame with the ``i``-th
  smallest timestamp, which is the ``i``-th frame that a sequential decode outputs.
* :func:`read_frames` plans the decode with a cost model counted in decoded frames: it decodes
  sequentially from the start and stops after the last wanted frame, except where jumping to the
  keyframe before a wanted frame decodes fewer frames (sparse frames in long videos), in which case it
  seeks. Decoded frames are identified by their timestamps, so a seek can never shift the indexing.
  Only the wanted frames are converted to RGB and kept; everything else is dropped as it is decoded.
  For codecs that mark non-reference frames (H.264, HEVC, MPEG-2/4), unwanted frames that no other
  frame references are not decoded at all (``skip_frame=NONREF`` per packet).
* Rotation tags (display matrices written by phones) are applied so frames are upright.
* Threads (``threads``): inside a DataLoader worker everything runs on the worker's one thread (many
  workers share the cores; extra decoder threads there only add switching). A reader in the main
  process decodes with FFmpeg's frame and slice threads, so one video comes back sooner: frame threads
  are what speed up streams written with one slice per frame, as most encoders write them. Frames
  below about 400x300 are too small to share and stay on one thread. FFmpeg hands
  each packet's ``skip_frame`` to the thread that decodes it, and each run drains the decoder right
  after its last wanted packet, so threading changes neither the frames nor which frames are decoded.
  One colour converter serves the whole call.
* :func:`stream_frames` is the same decode handing each frame to a callback as it comes, so that a
  caller that reduces frames (the scorer cuts fragments and resizes) holds one frame, not all of them.

Containers whose packets lack unique timestamps (e.g. some AVI or raw streams) are read by counting
decoded frames from the start, which is always exact but never seeks.

Every failure is a :class:`~qasa_vqa.errors.VideoDecodeError` that names the file and the reason.
"""

from __future__ import annotations

import bisect
import mmap
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from qasa_vqa.errors import VideoDecodeError

__all__ = [
    "THREADED_MIN_PIXELS",
    "VIDEO_SUFFIXES",
    "Strategy",
    "ThreadType",
    "VideoInfo",
    "decoder_threads",
    "plan_decode",
    "probe",
    "read_frames",
    "stream_frames",
]

Strategy = Literal["auto", "sequential", "seek"]
ThreadType = Literal["auto", "frame", "slice"]

_THREAD_TYPES = {"auto": "AUTO", "frame": "FRAME", "slice": "SLICE"}

# File name endings taken for videos when a folder is searched (synth, distortion trees, scoring).
VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".mpg", ".mpeg", ".m4v", ".ts")

# Containers with a real frame index, where seeking to a keyframe timestamp lands on that keyframe.
# Others (MPEG program/transport streams, raw streams) seek by bisecting byte positions; they are read
# sequentially.
_INDEXED_FORMATS = ("mov", "mp4", "matroska", "webm", "avi")

# Codecs whose decoders skip exactly the frames no other frame references under skip_frame=NONREF
# (H.264/HEVC nal_ref_idc / sub-layer non-reference pictures, MPEG B-frames). AV1 and VP9 can show a
# hidden or earlier frame later, so they are always decoded in full.
_NONREF_SKIP_CODECS = frozenset({"h264", "hevc", "mpeg2video", "mpeg4"})

# Opening a file runs FFmpeg's stream analysis, which decodes the first frame only to learn codec
# parameters: for indexed containers the header already holds the size and timing, and the decoder
# works out the pixel format itself when it decodes. Skipping that decode saves a keyframe decode per
# open (about 20 ms at 1080p, 70 ms at 4K; the reader opens a file twice: probe, then decode). The
# decoder itself is untouched (its own skip_frame stays at the default), so no frame changes. A file
# whose header leaves the size unknown is opened again with the full analysis.
_LIGHT_OPEN = {"skip_frame": "all"}

# Frames smaller than this are decoded on one thread when read_frames picks the threads: a 320x240
# frame decodes in about 0.15 ms, too little work to share (frame threads then cost a third more CPU
# and return no sooner). From 640x360 on, frame threads return the frames sooner.
THREADED_MIN_PIXELS = 400 * 300

# NumPy's threshold for asking for transparent huge pages (see _frame_array).
_HUGE_PAGE_ARRAY_BYTES = 4 << 20

# What one keyframe seek costs, in decoded-frame equivalents (demuxer seek, decoder flush, and the
# decoder's reordering delay refilling). Measured on 1080p H.264: a seek costs about as much as
# decoding 4-8 frames, so 8 keeps seeks for the cases where they clearly win.
SEEK_COST_FRAMES = 8


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe` learns about a video's first video stream.

    ``width`` and ``height`` are the stored (coded) frame size; ``rotation`` is the counter-clockwise
    rotation, in degrees (a multiple of 90), that makes stored frames upright. ``display_width`` and
    ``display_height`` give the size after that rotation, i.e. the size :func:`read_frames` returns
    by default. ``keyframes`` lists the indices of keyframes (random-access points). ``seekable`` is
    False when timestamps cannot identify frames, and then :func:`read_frames` never seeks.
    """

    path: str
    num_frames: int
    fps: float
    width: int
    height: int
    duration: float
    codec: str
    rotation: int
    keyframes: tuple[int, ...]
    seekable: bool
    time_base: Fraction | None = field(default=None, repr=False)
    frame_pts: tuple[int, ...] = field(default=(), repr=False)

    @property
    def display_width(self) -> int:
        return self.height if self.rotation % 180 else self.width

    @property
    def display_height(self) -> int:
        return self.width if self.rotation % 180 else self.height


@dataclass(frozen=True)
class _Run:
    """Frames decoded in one go: optionally seek to keyframe number ``seek_to`` first."""

    seek_to: int | None
    targets: tuple[int, ...]


def probe(path: str | Path) -> VideoInfo:
    """Describe the first video stream of ``path``, counting frames exactly.

    The frame count is the number of frames a full decode outputs: the demuxed packets of the stream
    (discarded packets excluded) when every packet has a unique timestamp, otherwise a full decode.
    Raises :class:`VideoDecodeError` for a missing path, a file that is not a video, no video stream,
    zero frames, or truncated/corrupt data.
    """
    path = _check_path(path)
    with _open(path) as container:
        stream = _video_stream(container, path)
        stream.codec_context.thread_count = 1  # one frame is decoded: threads would only cost start-up
        codec = stream.codec_context.codec.canonical_name
        declared = stream.frames
        pts_list: list[int] = []
        keyframe_pts: list[int] = []
        packets = 0
        clean = True
        rotation: int | None = None
        first_error: str | None = None
        drained = False
        try:
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                packets += 1
                if packet.is_discard:
                    continue
                if packet.pts is None:
                    clean = False
                else:
                    pts_list.append(packet.pts)
                    if packet.is_keyframe:
                        keyframe_pts.append(packet.pts)
                if rotation is None and first_error is None and not drained:
                    try:
                        frames = stream.decode(packet)
                        if not frames and packet.is_keyframe:
                            # A keyframe decodes on its own: drain it out now instead of also decoding
                            # the frames after it that the decoder's reordering delay waits for.
                            frames, drained = stream.decode(None), True
                        if frames:
                            rotation = _upright_rotation(frames[0])
                    except av.FFmpegError as error:
                        first_error = _reason(error)
            if rotation is None and first_error is None and packets and not drained:
                for frame in stream.decode(None):
                    rotation = _upright_rotation(frame)
                    break
        except av.FFmpegError as error:
            raise VideoDecodeError(
                path, f"truncated or corrupt data after {packets} packets ({_reason(error)})"
            ) from error
        if packets == 0:
            raise VideoDecodeError(path, "contains no video frames")
        if rotation is None and first_error is None and drained:
            rotation, first_error = _first_frame_rotation(path)  # the keyframe alone showed nothing
        if rotation is None:
            reason = first_error or "no packet decoded to a frame"
            raise VideoDecodeError(path, f"corrupt data: the first frame cannot be decoded ({reason})")
        if declared and packets < declared:
            raise VideoDecodeError(
                path, f"truncated: the container declares {declared} frames but only {packets} can be read"
            )
        _check_declared_duration(path, container, stream, pts_list)
        if clean and len(set(pts_list)) != len(pts_list):
            clean = False
        num_frames = len(pts_list) if clean else _count_by_decoding(path)
        indexed_format = any(name in container.format.name for name in _INDEXED_FORMATS)
        width, height = stream.codec_context.width, stream.codec_context.height
        time_base = stream.time_base
        fps = _frame_rate(stream, pts_list, time_base)
        duration = _duration(stream, container, num_frames, fps)
    frame_pts = tuple(sorted(pts_list)) if clean else ()
    keyframes: tuple[int, ...] = ()
    if clean:
        order = {pts: i for i, pts in enumerate(frame_pts)}
        keyframes = tuple(sorted(order[p] for p in keyframe_pts))
    return VideoInfo(
        path=str(path),
        num_frames=num_frames,
        fps=fps,
        width=width,
        height=height,
        duration=duration,
        codec=codec,
        rotation=rotation,
        keyframes=keyframes,
        seekable=clean and indexed_format and bool(keyframes) and keyframes[0] == 0,
        time_base=time_base,
        frame_pts=frame_pts,
    )


def plan_decode(
    wanted: Sequence[int], keyframes: Sequence[int], *, seek_cost: int = SEEK_COST_FRAMES
) -> list[tuple[int | None, tuple[int, ...]]]:
    """Split sorted unique frame indices into decode runs, each optionally starting with a seek.

    Returns ``[(keyframe_index or None, targets), ...]``: a run with ``None`` continues decoding where
    the previous one stopped (the first such run starts at frame 0). A run seeks to the keyframe before
    its first target only when that decodes fewer frames, counting a seek as ``seek_cost`` frames.
    """
    runs: list[tuple[int | None, list[int]]] = []
    position = -1  # index of the last frame decoded so far
    for target in wanted:
        k = bisect.bisect_right(keyframes, target) - 1
        keyframe = keyframes[k] if k >= 0 else 0
        continue_cost = target - position
        seek_cost_total = seek_cost + (target - keyframe + 1)
        if keyframe > position + 1 and seek_cost_total < continue_cost:
            runs.append((keyframe, [target]))
        elif runs:
            runs[-1][1].append(target)
        else:
            runs.append((None, [target]))
        position = target
    return [(start, tuple(targets)) for start, targets in runs]


def read_frames(
    path: str | Path,
    indices: Sequence[int] | np.ndarray,
    *,
    info: VideoInfo | None = None,
    upright: bool = True,
    strategy: Strategy = "auto",
    corrupt: Literal["raise", "keep"] = "raise",
    threads: int | None = None,
    thread_type: ThreadType = "auto",
) -> np.ndarray:
    """Decode the frames at ``indices`` and return them as uint8 RGB ``[len(indices), H, W, 3]``.

    Frames come back in the order of ``indices`` (duplicates allowed), pixel-identical to the same
    frames of a full sequential decode. ``info`` (from :func:`probe`) saves a second probe. With
    ``upright`` the rotation tag is applied. ``strategy`` forces ``"sequential"`` (decode from the
    start, stop after the last wanted frame) or ``"seek"`` (always jump to the keyframe before each
    group of wanted frames); ``"auto"`` picks per group by the decoded-frame cost. A frame the decoder
    flags as corrupt raises, unless ``corrupt="keep"``.

    ``threads`` is how many threads decode and convert: ``1`` runs everything on the calling thread,
    ``0`` lets FFmpeg pick from the CPUs this process may use, ``None`` (default) is
    :func:`decoder_threads`: 1 inside a DataLoader worker and for frames smaller than
    ``THREADED_MIN_PIXELS`` (about 400x300), 0 elsewhere. ``thread_type`` says how the
    decoder uses more than one thread: ``"frame"`` (several frames at once; works on every stream),
    ``"slice"`` (the slices of one frame; only streams written with several slices per frame gain) or
    ``"auto"`` (frame threads where the codec has them, else slice threads). The frames are the same
    whatever the threads.

    :func:`stream_frames` hands the same frames over one at a time instead of holding them all.
    """
    _check_options(strategy, thread_type, threads)
    path = Path(path)
    info = info or probe(path)
    wanted = _check_indices(path, indices, info.num_frames)
    height, width = (info.display_height, info.display_width) if upright else (info.height, info.width)
    if wanted.size == 0:
        return np.empty((0, height, width, 3), dtype=np.uint8)
    out = _frame_array((wanted.size, height, width, 3))

    def keep(position: int, frame: np.ndarray) -> None:
        out[position] = frame

    stream_frames(
        path, wanted, keep, info=info, upright=upright, strategy=strategy, corrupt=corrupt,
        threads=threads, thread_type=thread_type,
    )  # fmt: skip
    return out


def stream_frames(
    path: str | Path,
    indices: Sequence[int] | np.ndarray,
    sink: Callable[[int, np.ndarray], None],
    *,
    info: VideoInfo | None = None,
    upright: bool = True,
    strategy: Strategy = "auto",
    corrupt: Literal["raise", "keep"] = "raise",
    threads: int | None = None,
    thread_type: ThreadType = "auto",
) -> None:
    """Decode the frames at ``indices`` as :func:`read_frames` does, handing each to ``sink`` as it comes.

    ``sink(position, frame)`` is called once per position of ``indices`` (a frame wanted twice is
    handed over twice), in decoding order (ascending frame index), with ``frame`` a uint8 RGB
    ``[H, W, 3]`` array that is only valid during the call (copy what you keep). Memory then holds one
    frame plus the decoder's reference frames, whatever the number of frames: 64 frames of a 4K video
    are 1.6 GB as one array. The other arguments are :func:`read_frames`'s; the frames are the same.
    """
    _check_options(strategy, thread_type, threads)
    path = Path(path)
    info = info or probe(path)
    threads = decoder_threads(threads, pixels=info.width * info.height)
    wanted_array = _check_indices(path, indices, info.num_frames)
    if wanted_array.size == 0:
        return
    positions: dict[int, list[int]] = {}
    for position, index in enumerate(wanted_array.tolist()):
        positions.setdefault(index, []).append(position)
    unique = sorted(positions)
    if info.seekable and strategy != "sequential":
        cost = SEEK_COST_FRAMES if strategy == "auto" else -(10**9)
        runs = [
            _Run(start, targets) for start, targets in plan_decode(unique, info.keyframes, seek_cost=cost)
        ]
    else:
        runs = [_Run(None, tuple(unique))]
    turns = (info.rotation // 90) if upright else 0
    converter = VideoReformatter()  # one colour converter for every frame, not one per frame

    def store(index: int, frame: av.VideoFrame) -> None:
        rgb = converter.reformat(frame, format="rgb24", threads=threads).to_ndarray()
        if rgb.shape[:2] != (info.height, info.width):
            raise VideoDecodeError(
                path,
                f"frame {index} is {rgb.shape[1]}x{rgb.shape[0]} but the stream starts at "
                f"{info.width}x{info.height}; resolution changes within a video are not supported",
            )
        upright_rgb = np.rot90(rgb, k=turns) if turns else rgb
        for position in positions[index]:
            sink(position, upright_rgb)

    _decode_runs(path, info, runs, corrupt, store, _Threads(threads, _THREAD_TYPES[thread_type]))


def decoder_threads(threads: int | None = None, *, pixels: int | None = None) -> int:
    """The thread count :func:`read_frames` uses for ``threads`` on frames of ``pixels`` pixels.

    ``None`` gives 1 in a DataLoader worker and for frames smaller than ``THREADED_MIN_PIXELS``,
    else 0: FFmpeg's choice from the CPUs this process may use. An explicit count is returned as it
    is; a negative one raises ``ValueError``.
    """
    if threads is None:
        small = pixels is not None and pixels < THREADED_MIN_PIXELS
        return 1 if small or _in_loader_worker() else 0
    if isinstance(threads, bool) or not isinstance(threads, int | np.integer) or threads < 0:
        raise ValueError(f"threads must be None or an integer >= 0, got {threads!r}")
    return int(threads)


# --------------------------------------------------------------------------------------------------
# internals


def _check_options(strategy: str, thread_type: str, threads: int | None) -> None:
    """Refuse bad reading options before any work."""
    if strategy not in ("auto", "sequential", "seek"):
        raise ValueError(f"strategy must be 'auto', 'sequential' or 'seek', got {strategy!r}")
    if thread_type not in _THREAD_TYPES:
        raise ValueError(f"thread_type must be 'auto', 'frame' or 'slice', got {thread_type!r}")
    decoder_threads(threads)


@dataclass(frozen=True)
class _Threads:
    """How the decoder threads: ``count`` for ``AVCodecContext.thread_count`` (0: FFmpeg's choice),
    ``kind`` a PyAV thread type name."""

    count: int = 1
    kind: str = "AUTO"


def _frame_array(shape: tuple[int, int, int, int]) -> np.ndarray:
    """An uninitialised uint8 array for the output frames, in ordinary 4 KiB pages.

    NumPy asks the kernel for transparent huge pages for any array of 4 MiB or more. On virtual
    machines that hand freed memory back to the host (balloon free-page reporting, as on this
    project's machines) a huge page touched again after other work is slow to fault in: a 4K read of
    32 frames spent a median 0.8-1.5 s in the kernel with huge pages (0.2 s at best, back to back)
    against 0.4-0.5 s with 4 KiB pages, every time. An anonymous private mapping gets ordinary pages;
    it is unmapped when the array is freed.
    """
    size = int(np.prod(shape))
    if size < _HUGE_PAGE_ARRAY_BYTES:
        return np.empty(shape, dtype=np.uint8)
    return np.frombuffer(mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE), dtype=np.uint8).reshape(shape)


def _in_loader_worker() -> bool:
    """True inside a PyTorch DataLoader worker process (torch is never imported just to ask)."""
    data = sys.modules.get("torch.utils.data")
    get_worker_info = getattr(data, "get_worker_info", None)
    return get_worker_info is not None and get_worker_info() is not None


def _decode_runs(
    path: Path,
    info: VideoInfo,
    runs: list[_Run],
    corrupt: str,
    store: Callable[[int, av.VideoFrame], None],
    threads: _Threads = _Threads(),
) -> None:
    """Execute the planned runs, handing each target frame to ``store`` as soon as it is decoded.

    Nothing else is kept, so memory holds the output plus the decoder's own reference frames. If a seek
    lands after the keyframe it aimed at (an inconsistent index), the remaining targets are decoded
    sequentially from a freshly opened file instead: a bad index costs time, never correctness.
    """
    done: set[int] = set()
    wanted = {index for run in runs for index in run.targets}
    pts_to_index = {pts: i for i, pts in enumerate(info.frame_pts)} if info.seekable else None
    skip_unwanted = wanted if info.codec in _NONREF_SKIP_CODECS else None
    with _open(path) as container:
        stream = _video_stream(container, path)
        stream.codec_context.thread_count = threads.count
        stream.codec_context.thread_type = threads.kind
        source: Iterator[tuple[int, av.VideoFrame]] | None = None
        for number, run in enumerate(runs):
            if run.seek_to is not None:
                _seek(container, stream, path, info.frame_pts[run.seek_to])
                source = None
            if source is None:
                # the targets this source serves: this run and the runs that continue it without a seek
                following = runs[number + 1 :]
                ends = next((k for k, later in enumerate(following) if later.seek_to is not None), None)
                served = [run, *following[:ends]]
                last_pts = (
                    {info.frame_pts[i] for later in served for i in later.targets}
                    if pts_to_index is not None
                    else None
                )
                source = _indexed_frames(container, stream, path, pts_to_index, skip_unwanted, last_pts)
            if not _collect(source, run, done, path, corrupt, store):
                if run.seek_to is None:
                    missing = next(index for index in run.targets if index not in done)
                    raise VideoDecodeError(path, f"the decoder skipped frame {missing}")
                rest = tuple(i for later in runs[number:] for i in later.targets if i not in done)
                _decode_runs(path, info, [_Run(None, rest)], corrupt, store, threads)
                return


def _collect(
    source: Iterator[tuple[int, av.VideoFrame]],
    run: _Run,
    done: set[int],
    path: Path,
    corrupt: str,
    store: Callable[[int, av.VideoFrame], None],
) -> bool:
    """Store the run's targets (sorted) as ``source`` reaches them; False if one was passed over.

    After a seek to a keyframe, the first frame at or after it must be that keyframe: a seek that
    lands later (imprecise demuxer) could hand over frames decoded without their references. A seek
    after which the stream ends before that keyframe comes out counts as one that landed late.
    """
    keyframe = run.seek_to
    targets = run.targets
    position = 0
    for index, frame in source:
        if keyframe is not None and index >= keyframe:
            if index != keyframe:
                return False
            keyframe = None
        target = targets[position]
        if index < target:
            continue
        if index > target:
            return False
        if frame.is_corrupt and corrupt == "raise":
            raise VideoDecodeError(path, f"corrupt data: frame {index} decoded with errors")
        store(index, frame)
        done.add(index)
        position += 1
        if position == len(targets):
            return True
    if keyframe is not None:
        # nothing came out at or after the keyframe sought: a random-access point that is not one for
        # this decoder (e.g. an intra-refresh recovery point, whose frames stay hidden until the
        # refresh completes). Like a late landing, this is answered by decoding from the start.
        return False
    raise VideoDecodeError(
        path, f"truncated or corrupt data: frame {targets[position]} could not be decoded (the stream ended)"
    )


def _indexed_frames(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    path: Path,
    pts_to_index: dict[int, int] | None,
    wanted: set[int] | None = None,
    last_pts: set[int] | None = None,
) -> Iterator[tuple[int, av.VideoFrame]]:
    """Yield ``(frame index, frame)`` from the current position, by timestamp or by counting.

    With ``wanted`` (and timestamps), packets of unwanted frames are decoded with
    ``skip_frame=NONREF``: a non-reference frame (e.g. most B-frames) that nobody asked for is not
    decoded at all. No other frame references it, so every other frame is decoded bit-identically.
    With ``last_pts`` (and timestamps), the decoder is drained as soon as the packets of all those
    frames are in: the frames it still holds back (B-frame reordering, frames in flight on other
    threads) come out without decoding a single packet more.
    """
    context = stream.codec_context
    counter = 0
    skipping = wanted is not None and pts_to_index is not None
    skip = "DEFAULT"  # what the context holds now: it is only written when that changes
    outstanding = set(last_pts) if last_pts is not None and pts_to_index is not None else None
    try:
        for packet in container.demux(stream):
            pts = packet.pts
            final = False
            if pts is not None:
                if skipping:
                    needed = "DEFAULT" if pts_to_index.get(pts) in wanted else "NONREF"
                    if needed != skip:
                        context.skip_frame = skip = needed
                if outstanding and pts in outstanding:
                    outstanding.discard(pts)
                    final = not outstanding
            for frame in _decode(stream, packet, final):
                if pts_to_index is None:
                    yield counter, frame
                    counter += 1
                    continue
                index = pts_to_index.get(frame.pts) if frame.pts is not None else None
                if index is None:
                    raise VideoDecodeError(
                        path, f"decoded a frame with timestamp {frame.pts} that the container does not list"
                    )
                yield index, frame
            if final:
                return
    except av.FFmpegError as error:
        raise VideoDecodeError(path, f"truncated or corrupt data ({_reason(error)})") from error
    finally:
        context.skip_frame = "DEFAULT"


def _decode(stream: av.video.stream.VideoStream, packet: av.Packet, drain: bool) -> list[av.VideoFrame]:
    """The frames that decoding ``packet`` gives, and with ``drain`` every frame the decoder still holds."""
    frames = stream.decode(packet)
    if drain:
        frames += stream.decode(None)
    return frames


def _seek(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, path: Path, timestamp: int
) -> None:
    try:
        container.seek(timestamp, stream=stream, backward=True, any_frame=False)
    except av.FFmpegError as error:
        raise VideoDecodeError(path, f"cannot seek to timestamp {timestamp} ({_reason(error)})") from error


def _check_path(path: str | Path) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise VideoDecodeError(path, "no such file")
    if not path.is_file():
        raise VideoDecodeError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise VideoDecodeError(path, "the file is empty")
    return path


def _open(path: Path, *, light: bool = True) -> av.container.InputContainer:
    """Open ``path``; ``light`` skips the frame decode of FFmpeg's stream analysis (see ``_LIGHT_OPEN``)."""
    try:
        container = av.open(str(path), mode="r", options=_LIGHT_OPEN if light else None)
    except av.FFmpegError as error:
        raise VideoDecodeError(path, f"not a readable video file ({_reason(error)})") from error
    if light and any(not (s.codec_context and s.codec_context.width) for s in container.streams.video[:1]):
        container.close()  # the header left the size to the decoder: analyse the usual way
        return _open(path, light=False)
    return container


def _video_stream(container: av.container.InputContainer, path: Path) -> av.video.stream.VideoStream:
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        raise VideoDecodeError(path, f"has no video stream (streams: {', '.join(kinds)})")
    return container.streams.video[0]


def _first_frame_rotation(path: Path) -> tuple[int | None, str | None]:
    """Decode packets until the first frame comes out: ``(its rotation, None)``, or ``(None, reason)``."""
    with _open(path) as container:
        stream = _video_stream(container, path)
        stream.codec_context.thread_count = 1
        try:
            for packet in container.demux(stream):  # its last packet is empty: the decoder is drained
                for frame in stream.decode(packet):
                    return _upright_rotation(frame), None
        except av.FFmpegError as error:
            return None, _reason(error)
    return None, None


def _upright_rotation(frame: av.VideoFrame) -> int:
    """The counter-clockwise rotation (0/90/180/270) that makes ``frame`` upright."""
    return round(frame.rotation / 90.0) % 4 * 90


def _reason(error: av.FFmpegError) -> str:
    """FFmpeg's reason without the file name it repeats (ours is already in the message)."""
    return getattr(error, "strerror", None) or str(error)


def _check_declared_duration(path: Path, container, stream, pts: list[int]) -> None:
    """Matroska/WebM write their duration in the header: a stream ending well short of it is truncated.

    (MP4/MOV/AVI declare a frame count instead, checked by the caller. Transport and program streams
    declare nothing, so a cut one is indistinguishable from a shorter video.)
    """
    if (
        "matroska" not in container.format.name
        or not container.duration
        or len(pts) < 2
        or not stream.time_base
    ):
        return
    declared = container.duration / 1_000_000
    ordered = sorted(pts)
    step = (ordered[-1] - ordered[0]) / (len(ordered) - 1)
    covered = float((ordered[-1] + step - ordered[0]) * stream.time_base)
    if covered < declared - max(2 * float(step * stream.time_base), 0.1):
        raise VideoDecodeError(
            path, f"truncated: the container declares {declared:.2f} s but the stream ends at {covered:.2f} s"
        )


def _count_by_decoding(path: Path) -> int:
    with _open(path) as container:
        stream = _video_stream(container, path)
        try:
            return sum(1 for _ in container.decode(stream))
        except av.FFmpegError as error:
            raise VideoDecodeError(
                path, f"truncated or corrupt data while counting frames ({_reason(error)})"
            ) from error


def _frame_rate(stream, pts: list[int], time_base: Fraction | None) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if rate:
        return float(rate)
    if time_base and len(pts) > 1:
        span = (max(pts) - min(pts)) * time_base
        return float((len(pts) - 1) / span) if span else 0.0
    return 0.0


def _duration(stream, container, num_frames: int, fps: float) -> float:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / 1_000_000
    return num_frames / fps if fps else 0.0


def _check_indices(path: Path, indices: Sequence[int] | np.ndarray, num_frames: int) -> np.ndarray:
    array = np.asarray(indices)
    if array.ndim != 1:
        raise VideoDecodeError(path, f"frame indices must be one-dimensional, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise VideoDecodeError(path, f"frame indices must be integers, got dtype {array.dtype}")
    array = array.astype(np.int64, copy=False)
    if array.size and (array.min() < 0 or array.max() >= num_frames):
        bad = int(array[(array < 0) | (array >= num_frames)][0])
        raise VideoDecodeError(path, f"frame index {bad} is out of range: the video has {num_frames} frames")
    return array
