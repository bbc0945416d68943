"""Benchmark: time to get the 32 training frames of a clip, against other methods and other decoders.

Part 1, **methods** (generated 10 s clips: 1080p H.264 with GOP 250 and GOP 30; 540p):

* **ours**: ``probe`` + ``fragment_frame_indices`` + ``read_frames`` (planned decode) + ``make_views``;
* **(a) decode-all**: decode and convert every frame to RGB, then index, then ``make_views``;
* **(b) naive seek**: for each wanted frame, seek to it and decode forward to it, then ``make_views``;
* **(c) lower bound**: a decode-only sequential pass up to the last wanted frame, no RGB conversion
  and no views.

It prints the median of several repetitions and the ratios ``(a) / ours``, ``(b) / ours`` and
``ours / (c)``.

Part 2, **peers**: the decoders users would pick instead, for the same task (the 32 wanted frames of
a clip as RGB uint8 arrays, opening the file included): torchcodec (``seek_mode="exact"``) and
decord. They are optional: each is imported only here, and skipped with a notice when it is not
installed (they are not dependencies of the project). Every tool runs with one decoder thread (what
a DataLoader worker should use: per-core efficiency) and with its automatic thread count (what one
video in the main process gets: wall time); ours with ``threads=1`` and with its default. Clips:
320x240 to 3840x2160 written with one slice per frame (what most encoders write), at 320x240, 1080p
and 4K also with four, plus the clips of part 1 (written with x264's sliced threads, so their slice
count follows the cores of the machine that wrote them). Each tool's frames of the first repetition
are checked against a full single-threaded decode (``exact``, or the largest absolute difference and
the share of pixels that differ). The tools take turns within each repetition, so a change of machine
load hits them alike; the table gives the medians of wall time and of CPU time (process time, all
threads), and each peer's ratios to ours with the same threads (above 1: ours is faster).

The clips are written once into ``--cache`` (default ``.bench_cache/``). Run with ``make bench`` or
``python benchmarks/bench_decode.py [--quick] [--part methods|peers] [--repeats N]``; ``--quick``
times the peers alone on four clips.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch

from qasa_vqa.video.fragments import make_views
from qasa_vqa.video.reader import probe, read_frames
from qasa_vqa.video.sampling import fragment_frame_indices
from qasa_vqa.video.writer import synthetic_frames, write_video

CLIPS = {
    "1080p_gop250": dict(height=1080, width=1920, gop=250),
    "1080p_gop30": dict(height=1080, width=1920, gop=30),
    "540p_gop250": dict(height=540, width=960, gop=250),
}
FRAMES = 300  # 10 s at 30 fps

# Peer clips: size -> (height, width, frames), GOP 250 (x264's default keyint); the 4K clips are short
# so that the whole benchmark stays within a few minutes. Each size is written with one slice per frame
# and the smallest, 1080p and 4K also with four.
PEER_SIZES = {
    "240p": (240, 320, 300),
    "360p": (360, 640, 300),
    "720p": (720, 1280, 150),
    "1080p": (1080, 1920, 150),
    "2160p": (2160, 3840, 36),
}
PEER_CLIPS = [
    ("240p", 1),
    ("240p", 4),
    ("360p", 1),
    ("720p", 1),
    ("1080p", 1),
    ("1080p", 4),
    ("2160p", 1),
    ("2160p", 4),
]
QUICK_CLIPS = [("240p", 1), ("1080p", 1), ("1080p", 4), ("2160p", 1)]
PEER_GOP = 250


def make_clip(folder: Path, name: str) -> Path:
    spec = CLIPS[name]
    path = folder / f"{name}.mp4"
    if not path.exists():
        print(f"writing {path} ...", flush=True)
        partial = path.with_name(path.stem + ".partial.mp4")
        frames = synthetic_frames(FRAMES, spec["height"], spec["width"], seed=7)
        write_video(partial, frames, codec="h264", gop=spec["gop"], options={"preset": "veryfast"})
        partial.replace(path)
    return path


def make_peer_clip(folder: Path, size: str, slices: int) -> Path:
    """An H.264 clip with exactly ``slices`` slices per frame (x264 frame threads, so the count is the
    same on every machine)."""
    height, width, frames = PEER_SIZES[size]
    path = folder / f"{size}_{slices}slice.mp4"
    if not path.exists():
        print(f"writing {path} ...", flush=True)
        partial = path.with_name(path.stem + ".partial.mp4")
        params = f"keyint={PEER_GOP}:min-keyint={PEER_GOP}:scenecut=0:sliced-threads=0:slices={slices}"
        write_video(
            partial,
            synthetic_frames(frames, height, width, seed=11),
            codec="h264",
            gop=PEER_GOP,
            options={"preset": "veryfast", "x264-params": params},
        )
        partial.replace(path)
    return path


def slices_per_frame(path: Path, packets: int = 8) -> int:
    """Median count of coded slices (H.264 VCL NAL units) in the first packets of an MP4 H.264 clip."""
    counts = []
    with av.open(str(path)) as container:
        for packet in container.demux(video=0):
            data = bytes(packet)
            if not data:
                continue
            position, count = 0, 0
            while position + 5 <= len(data):  # length-prefixed NAL units (4-byte lengths, as x264 writes)
                length = int.from_bytes(data[position : position + 4], "big")
                count += (data[position + 4] & 0x1F) in (1, 5)
                position += 4 + length
            counts.append(count)
            if len(counts) == packets:
                break
    return int(statistics.median(counts))


# --------------------------------------------------------------------------------------------------
# part 1: methods


def views_of(frames: np.ndarray, seed: int) -> dict[str, torch.Tensor]:
    return make_views(frames, generator=torch.Generator().manual_seed(seed))


def ours(path: Path, seed: int) -> dict[str, torch.Tensor]:
    info = probe(path)
    indices = fragment_frame_indices(info.num_frames, rng=np.random.default_rng(seed))
    return views_of(read_frames(path, indices, info=info), seed)


def decode_all(path: Path, seed: int) -> dict[str, torch.Tensor]:
    with av.open(str(path)) as container:
        every = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    indices = fragment_frame_indices(len(every), rng=np.random.default_rng(seed))
    return views_of(np.stack([every[i] for i in indices]), seed)


def naive_seek(path: Path, seed: int) -> dict[str, torch.Tensor]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        count = stream.frames
        step = round(1 / (stream.average_rate * stream.time_base))
        indices = fragment_frame_indices(count, rng=np.random.default_rng(seed))
        frames = []
        for index in indices:
            target = int(index) * step
            container.seek(target, stream=stream, backward=True)
            for frame in container.decode(stream):
                if frame.pts >= target:
                    frames.append(frame.to_ndarray(format="rgb24"))
                    break
    return views_of(np.stack(frames), seed)


def lower_bound(path: Path, seed: int) -> None:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        indices = fragment_frame_indices(stream.frames, rng=np.random.default_rng(seed))
        last = int(indices.max())
        for position, _frame in enumerate(container.decode(stream)):
            if position >= last:
                break


def median_time(function: Callable[[Path, int], object], path: Path, repeats: int) -> float:
    times = []
    for seed in range(repeats):
        start = time.perf_counter()
        function(path, seed)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_methods(args: argparse.Namespace) -> None:
    header = f"{'clip':<14}{'ours':>9}{'(a) all':>10}{'(b) seek':>10}{'(c) bound':>11}{'a/ours':>9}{'b/ours':>9}{'ours/c':>9}"
    rows = []
    for name in CLIPS:
        path = make_clip(args.cache, name)
        # correctness first: ours gives the same views as decoding everything
        reference, candidate = decode_all(path, 0), ours(path, 0)
        assert all(torch.equal(reference[k], candidate[k]) for k in reference), f"{name}: views differ"
        ours_t = median_time(ours, path, args.repeats)
        all_t = median_time(decode_all, path, args.repeats)
        seek_t = median_time(naive_seek, path, args.naive_repeats)
        bound_t = median_time(lower_bound, path, args.repeats)
        rows.append(
            f"{name:<14}{ours_t:>8.3f}s{all_t:>9.3f}s{seek_t:>9.3f}s{bound_t:>10.3f}s"
            f"{all_t / ours_t:>8.2f}x{seek_t / ours_t:>8.2f}x{ours_t / bound_t:>8.2f}x"
        )
        print(rows[-1] if len(rows) > 1 else header + "\n" + rows[-1], flush=True)
    print("\nmedians of wall time for the 32 training frames and the four views ((c): decode only)\n")


# --------------------------------------------------------------------------------------------------
# part 2: peers


@dataclass(frozen=True)
class Tool:
    """One decoder in one thread setting: ``read(path, indices)`` gives the frames ``[N, H, W, 3]``."""

    name: str
    threads: str  # "1" or "auto"
    read: Callable[[Path, np.ndarray], np.ndarray]


def _ours(threads: int | None) -> Callable[[Path, np.ndarray], np.ndarray]:
    def read(path: Path, indices: np.ndarray) -> np.ndarray:
        return read_frames(path, indices, info=probe(path), threads=threads)

    return read


def _torchcodec(threads: int) -> Callable[[Path, np.ndarray], np.ndarray]:
    from torchcodec.decoders import VideoDecoder

    def read(path: Path, indices: np.ndarray) -> np.ndarray:
        decoder = VideoDecoder(
            str(path), seek_mode="exact", num_ffmpeg_threads=threads, dimension_order="NHWC"
        )
        return decoder.get_frames_at(indices.tolist()).data.numpy()

    return read


def _decord(threads: int) -> Callable[[Path, np.ndarray], np.ndarray]:
    import decord

    def read(path: Path, indices: np.ndarray) -> np.ndarray:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=threads)
        return reader.get_batch(indices.tolist()).asnumpy()

    return read


def peer_tools(probe_clip: Path) -> list[Tool]:
    """Ours and every installed peer, in both thread settings; a peer that fails to load is skipped
    with a notice (not installed, or its FFmpeg libraries missing)."""
    tools = [Tool("ours", "1", _ours(1)), Tool("ours", "auto", _ours(None))]
    peers = {
        "torchcodec": (_torchcodec, 0, "pip install torchcodec (needs FFmpeg's shared libraries)"),
        "decord": (_decord, 0, "pip install decord"),
    }
    for name, (factory, auto, hint) in peers.items():
        try:
            candidates = [Tool(name, "1", factory(1)), Tool(name, "auto", factory(auto))]
            candidates[0].read(probe_clip, np.array([0]))
        except Exception as error:  # ImportError, or a library that is there but cannot load FFmpeg
            reason = str(error).strip().splitlines()[0][:120] if str(error).strip() else type(error).__name__
            print(f"notice: {name} skipped ({type(error).__name__}: {reason}); to compare: {hint}")
            continue
        version = getattr(__import__(name), "__version__", "?")
        print(f"peer: {name} {version}")
        tools += candidates
    return tools


def wanted_frames(path: Path, indices: np.ndarray) -> np.ndarray:
    """The reference: a full single-threaded PyAV decode, keeping the frames at ``indices``."""
    keep = {int(i) for i in indices}
    kept: dict[int, np.ndarray] = {}
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        for position, frame in enumerate(container.decode(stream)):
            if position in keep:
                kept[position] = frame.to_ndarray(format="rgb24", threads=1)
    return np.stack([kept[int(i)] for i in indices])


def exactness(frames: np.ndarray, reference: np.ndarray) -> str:
    frames = np.asarray(frames)
    if frames.shape != reference.shape:
        return f"shape {tuple(frames.shape)}"
    if np.array_equal(frames, reference):
        return "exact"
    difference = np.abs(frames.astype(np.int16) - reference.astype(np.int16))
    return f"max|d|={int(difference.max())} ({100 * np.mean(difference > 0):.1f}% px)"


def run_peers(args: argparse.Namespace) -> None:
    chosen = QUICK_CLIPS if args.quick else PEER_CLIPS
    clips = [(f"{size}_{s}slice", make_peer_clip(args.cache, size, s)) for size, s in chosen]
    if not args.quick:
        clips += [(name, make_clip(args.cache, name)) for name in CLIPS]
    tools = peer_tools(clips[0][1])
    print(
        "\nthe 32 wanted frames as RGB uint8 arrays, file opening included; medians over "
        f"{args.repeats} repetitions; ratios: peer / ours with the same threads (above 1: ours is faster)"
    )
    header = (
        f"{'clip':<15}{'size':>10}{'n':>5}{'sl':>4}  {'tool':<11}{'thr':>5}{'wall':>9}{'cpu':>9}"
        f"{'wall/ours':>11}{'cpu/ours':>10}  frames"
    )
    print(header)
    print("-" * len(header))
    for name, path in clips:
        info = probe(path)
        draws = [
            fragment_frame_indices(info.num_frames, rng=np.random.default_rng(seed))
            for seed in range(args.repeats)
        ]
        reference = wanted_frames(path, draws[0])
        checks = ["" for _ in tools]
        walls: list[list[float]] = [[] for _ in tools]
        cpus: list[list[float]] = [[] for _ in tools]
        for draw, indices in enumerate(draws):
            for number, tool in enumerate(tools):
                if draw and sum(walls[number]) > args.tool_budget:
                    continue  # a slow tool on this clip: fewer repetitions keep the benchmark short
                wall, cpu = time.perf_counter(), time.process_time()
                frames = tool.read(path, indices)
                walls[number].append(time.perf_counter() - wall)
                cpus[number].append(time.process_time() - cpu)
                if draw == 0:  # the first draw's frames are checked against the full decode
                    checks[number] = exactness(frames, reference)
        wall_med = [statistics.median(w) for w in walls]
        cpu_med = [statistics.median(c) for c in cpus]
        ours_at = {tool.threads: k for k, tool in enumerate(tools) if tool.name == "ours"}
        size = f"{info.width}x{info.height}"
        slices = slices_per_frame(path)
        for k, tool in enumerate(tools):
            base = ours_at[tool.threads]
            ratios = (
                f"{wall_med[k] / wall_med[base]:>10.2f}x{cpu_med[k] / cpu_med[base]:>9.2f}x"
                if tool.name != "ours"
                else f"{'':>11}{'':>10}"
            )
            print(
                f"{name if k == 0 else '':<15}{size if k == 0 else '':>10}"
                f"{info.num_frames if k == 0 else '':>5}{slices if k == 0 else '':>4}  "
                f"{tool.name:<11}{tool.threads:>5}{wall_med[k]:>8.3f}s{cpu_med[k]:>8.3f}s{ratios}  {checks[k]}"
                f"{'' if len(walls[k]) == args.repeats else f' ({len(walls[k])} of {args.repeats} runs)'}",
                flush=True,
            )
    print(
        "\nn: frames in the clip; sl: slices per frame; thr 1: one decoder thread (a loader worker), "
        "auto: the tool's own thread count (ours: read_frames' default outside a worker); "
        f"a tool that took over {args.tool_budget:g} s on a clip is not repeated there"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="repetitions per method (median reported)")
    parser.add_argument("--naive-repeats", type=int, default=1, help="repetitions of the slow naive seeker")
    parser.add_argument("--part", choices=("all", "methods", "peers"), default="all")
    parser.add_argument(
        "--quick", action="store_true", help="the peers alone, on four clips (240p, 1080p, 4K)"
    )
    parser.add_argument(
        "--tool-budget",
        type=float,
        default=3.0,
        help="peers: seconds after which a tool is not repeated on a clip",
    )
    parser.add_argument("--cache", type=Path, default=Path(".bench_cache"))
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    print(f"torch threads {torch.get_num_threads()}, PyAV {av.__version__}\n")
    started = time.perf_counter()
    if args.part in ("all", "methods") and not args.quick:
        print(f"methods, {FRAMES} frames per clip")
        run_methods(args)
    if args.part in ("all", "peers"):
        run_peers(args)
    print(f"\nbenchmark took {time.perf_counter() - started:.0f} s (load average {_load()})")


def _load() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "unknown"


if __name__ == "__main__":
    main()
