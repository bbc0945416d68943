"""Benchmark: time to get the 32 training frames of a clip and its four views.

Compares, on generated 10 s clips (1080p H.264 with GOP 250 and GOP 30; 540p):

* **ours**: ``probe`` + ``fragment_frame_indices`` + ``read_frames`` (planned decode) + ``make_views``;
* **(a) decode-all**: decode and convert every frame to RGB, then index, then ``make_views``;
* **(b) naive seek**: for each wanted frame, seek to it and decode forward to it, then ``make_views``;
* **(c) lower bound**: a decode-only sequential pass up to the last wanted frame, no RGB conversion
  and no views.

Prints the median of several repetitions and the ratios ``(a) / ours``, ``(b) / ours`` and
``ours / (c)``. The clips are written once into ``--cache`` (default ``.bench_cache/``).
Run with ``make bench`` or ``python benchmarks/bench_decode.py [--repeats N]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="repetitions per method (median reported)")
    parser.add_argument("--naive-repeats", type=int, default=2, help="repetitions of the slow naive seeker")
    parser.add_argument("--cache", type=Path, default=Path(".bench_cache"))
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    print(f"torch threads {torch.get_num_threads()}, PyAV {av.__version__}, {FRAMES} frames per clip\n")
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
    print("\nmedians of wall time for the 32 training frames and the four views ((c): decode only)")


if __name__ == "__main__":
    main()
