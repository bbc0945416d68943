"""Benchmark: videos per second when scoring on CPU, split into decode, views and model.

On generated 10 s clips (H.264, 25 fps, 250 frames; 960x540 and 1920x1080) and a model with random
weights (no downloads; ``--model paper``: Video Swin-T with GRPB + CLIP ViT-B/32 on the paper's 64 test
frames, the default; ``--model tiny``: the tests' tiny preset), measures per clip:

* **end to end**: ``Scorer.score_many`` over ``--videos`` copies of the clip with one DataLoader worker
  (``--workers``; decoding and views in the worker, overlapped with the model in the main process): videos per
  second, and the mean ``decode_ms`` / ``views_ms`` / ``model_ms`` of the rows (times measured while
  the two processes share the CPU); with ``--sequential`` also ``workers=0`` (no overlap);
* **model only**: the same forward (``model.stvqrl`` + ``model.clip.video_quality``, as
  ``Scorer._run`` does) on views already in memory, median of ``--repeats`` runs made before and after
  the end-to-end ones (so that a change of load hits both); its scores must match the rows' (checked);
* **ratio** end-to-end time per video / model-only time: 1.00 means decoding is entirely hidden
  behind the model. The first video's decode and views cannot overlap anything (the pipeline fill);
  ``steady`` is the ratio without it, what a long list of videos tends to;
* **decode + views alone**, one thread as in a loader worker: wall times, CPU seconds, and their
  ``share`` of the CPU seconds of one model-only forward. When the model keeps every core busy the
  worker's CPU time is taken from it, so 1 + share is the steady ratio to expect then; when the
  single worker is the bottleneck instead (a small model), it is its CPU time / model-only time:
  ``expect`` is the larger of the two (CPU seconds, unlike wall times, hardly change when other
  processes load the machine);
* **model-only forward**: its CPU seconds (user, system) and minor page faults.

The model's large temporaries (attention matrices of hundreds of MB) are fresh memory from the kernel
on every forward, a minor page fault per 4 KiB: ``--hugepages`` reruns the script with
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (glibc >= 2.35 asks for transparent huge pages), to compare;
the scores do not change. By default the benchmark measures what ``qasa-vqa score`` gets.

CPU seconds of the end-to-end run: the main process (model) and the loader worker (decode + views,
counted when the worker exits) from ``os.times()``; ``util`` is their sum over wall time x cores.
torch threads are set explicitly (``--threads``, default: all cores); loader workers use one.
The clips are written once into ``--cache`` (default ``.bench_cache/``). Run with ``make bench`` or
``python benchmarks/bench_score.py [--model tiny] [--quick] [--threads N] [--sequential] [--hugepages]``.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qasa_vqa.data.datasets import ViewSpec
from qasa_vqa.models.clip_quality import build_clip_quality
from qasa_vqa.models.factory import build_qasa_model
from qasa_vqa.models.qasa import QASAModel
from qasa_vqa.scoring import ScoreSettings, scorer_from_model
from qasa_vqa.video.fragments import make_test_views
from qasa_vqa.video.reader import probe, read_frames
from qasa_vqa.video.sampling import fragment_frame_indices
from qasa_vqa.video.writer import synthetic_frames, write_video

CLIPS = {"540p": (540, 960), "1080p": (1080, 1920)}  # name -> (height, width)
FPS, SECONDS = 25, 10
PAGE = os.sysconf("SC_PAGE_SIZE")
TARGET_RATIO = 1.15  # the bar for 1080p: total at most 1.15x model-only

# conf/model/stvqrl.yaml (the paper's) and conf/model/tiny.yaml: backbone, CLIP architecture, test views
MODELS: dict[str, dict[str, Any]] = {
    "paper": {
        "backbone": {
            "embed_dim": 96,
            "depths": [2, 2, 6, 2],
            "num_heads": [3, 6, 12, 24],
            "window_size": [8, 7, 7],
            "drop_path": 0.1,
            "grpb": [True, True, True, False],
        },
        "head": {"hidden_channels": 64, "dropout": 0.5},
        "clip": "ViT-B-32-quickgelu",
        "views": ViewSpec(),
    },
    "tiny": {
        "backbone": {
            "embed_dim": 24,
            "depths": [1, 1, 2, 1],
            "num_heads": [1, 2, 2, 4],
            "window_size": [4, 7, 7],
            "drop_path": 0.0,
            "grpb": [True, True, True, False],
        },
        "head": {"hidden_channels": 16, "dropout": 0.5},
        "clip": "tiny",
        "views": ViewSpec(segments=4, frames_per_segment=2, test_frames_per_segment=4, patch=16),
    },
}


@dataclass
class Alone:
    """Decode and views of one clip in the main process, one torch thread (as in a loader worker)."""

    views: dict[str, torch.Tensor]
    decode_s: float
    views_s: float
    cpu_s: float


@dataclass
class EndToEnd:
    """One ``score_many`` run over ``videos`` copies of a clip."""

    workers: int
    wall_s: float
    rows: list[dict[str, Any]]
    main_cpu_s: float
    worker_cpu_s: float


def make_clip(folder: Path, name: str) -> Path:
    height, width = CLIPS[name]
    path = folder / f"score_{name}_{FPS}fps_{SECONDS}s.mp4"
    if not path.exists():
        print(f"writing {path} ...", flush=True)
        partial = path.with_name(path.stem + ".partial.mp4")
        frames = synthetic_frames(FPS * SECONDS, height, width, seed=7)
        write_video(partial, frames, codec="h264", fps=FPS, options={"preset": "veryfast"})
        partial.replace(path)
    return path


def build_model(name: str) -> QASAModel:
    preset = MODELS[name]
    clip = build_clip_quality(preset["clip"], pretrained=None)
    return build_qasa_model(preset["backbone"], clip, head=preset["head"]).eval()


def decode_and_views(path: Path, spec: ViewSpec) -> Alone:
    """What a scoring work unit does for one video (``clips=1``: centred, deterministic)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cpu, start = time.process_time(), time.perf_counter()
        info = probe(path)
        indices = fragment_frame_indices(
            info.num_frames,
            segments=spec.segments,
            frames_per_segment=spec.test_frames_per_segment,
            frame_interval=spec.frame_interval,
            rng=None,
            train=False,
        )
        wanted, positions = np.unique(indices, return_inverse=True)
        frames = read_frames(path, wanted, info=info)
        decoded = time.perf_counter()
        views = make_test_views(
            frames[positions],
            centre=True,
            grid=spec.grid,
            patch=spec.patch,
            aligned=len(indices),
            size=spec.size,
            antialias=spec.antialias,
            fragment_stats=spec.fragment_stats,
            resize_stats=spec.resize_stats,
        )
        done = time.perf_counter()
        assert isinstance(views, dict)
        return Alone(views, decoded - start, done - decoded, time.process_time() - cpu)
    finally:
        torch.set_num_threads(threads)


@dataclass
class Forward:
    """One model-only forward: wall and CPU seconds (all threads), minor page faults, the scores."""

    wall_s: float
    user_s: float
    system_s: float
    faults: int
    scores: dict[str, float]


@torch.inference_mode()
def model_only(model: QASAModel, views: dict[str, torch.Tensor]) -> Forward:
    """The scorer's forward (``Scorer._run``) on views in memory."""
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    clip = model.clip.video_quality(views["resize"][None]).float()
    raw = model.stvqrl(views["frag"][None]).float().flatten(1).mean(dim=1)
    elapsed, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    scores = {
        "score": float(model.combine(raw, clip)[0]),
        "stvqrl": float(torch.sigmoid(model.score_scale * raw)[0]),
        "clip": float(clip[0]),
    }
    return Forward(
        elapsed,
        after.ru_utime - before.ru_utime,
        after.ru_stime - before.ru_stime,
        after.ru_minflt - before.ru_minflt,
        scores,
    )


@torch.inference_mode()
def warm_up(model: QASAModel, views: dict[str, torch.Tensor]) -> None:
    """A short forward (16 frames) so that one-off kernel set-up is not timed."""
    model.clip.video_quality(views["resize"][None, :16])
    model.stvqrl(views["frag"][None, :, :16])


def end_to_end(model: QASAModel, spec: ViewSpec, path: Path, videos: int, workers: int) -> EndToEnd:
    scorer = scorer_from_model(model, spec, settings=ScoreSettings(workers=workers, batch_size=1))
    before, cpu = os.times(), time.process_time()
    start = time.perf_counter()
    rows = list(scorer.score_many([path] * videos))
    wall = time.perf_counter() - start
    after = os.times()  # the worker has exited and been reaped: its CPU time is in children_*
    worker_cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    bad = [row["error"] for row in rows if row["status"] != "ok"]
    assert not bad, f"{path.name}: scoring failed: {bad}"
    return EndToEnd(workers, wall, rows, time.process_time() - cpu, worker_cpu)


def check_scores(name: str, rows: list[dict[str, Any]], expected: dict[str, float]) -> None:
    for row in rows:
        for key, value in expected.items():
            assert abs(row[key] - value) <= 1e-4 * max(1.0, abs(value)), (
                f"{name}: {key} {row[key]} from score_many differs from {value} on views in memory"
            )


def mean_ms(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.fmean(row[key] for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", choices=sorted(MODELS), default="paper", help="model preset (random weights)"
    )
    parser.add_argument(
        "--tiny", action="store_const", const="tiny", dest="model", help="same as --model tiny"
    )
    parser.add_argument("--videos", type=int, default=3, help="videos per end-to-end run")
    parser.add_argument("--repeats", type=int, default=2, help="model-only repetitions (median reported)")
    parser.add_argument("--quick", action="store_true", help="2 videos and 1 model-only repeat")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="torch threads (main process)"
    )
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers of the overlapped run")
    parser.add_argument("--sequential", action="store_true", help="also score with workers=0 (no overlap)")
    parser.add_argument("--clips", nargs="+", choices=list(CLIPS), default=list(CLIPS), help="resolutions")
    parser.add_argument("--cache", type=Path, default=Path(".bench_cache"))
    parser.add_argument(
        "--hugepages", action="store_true", help="rerun with GLIBC_TUNABLES=glibc.malloc.hugetlb=1"
    )
    args = parser.parse_args()
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if args.hugepages and "glibc.malloc.hugetlb" not in tunables:
        tunables = ":".join(filter(None, [tunables, "glibc.malloc.hugetlb=1"]))
        os.execve(sys.executable, [sys.executable, *sys.argv], os.environ | {"GLIBC_TUNABLES": tunables})
    if args.quick:
        args.videos, args.repeats = 2, 1
    if args.videos < 1 or args.repeats < 1 or args.threads < 1 or args.workers < 1:
        parser.error("--videos, --repeats, --threads and --workers must be at least 1")
    torch.set_num_threads(args.threads)
    cores = os.cpu_count() or 1
    spec = MODELS[args.model]["views"]
    frames = spec.segments * spec.test_frames_per_segment
    args.cache.mkdir(parents=True, exist_ok=True)
    paths = {name: make_clip(args.cache, name) for name in args.clips}
    model = build_model(args.model)
    load = os.getloadavg()[0]
    print(
        f"model {args.model} (random weights), {frames} test frames; torch threads {args.threads} of "
        f"{cores} cores, loader workers use 1; {args.videos} videos per run, model-only median of "
        f"{args.repeats}; GLIBC_TUNABLES={tunables or '(unset)'}; load average {load:.1f}"
    )
    if load > cores:
        print(f"warning: load average {load:.1f} > {cores} cores; other processes share the CPU")
    print()

    header = (
        f"{'clip':<7}{'workers':>8}{'videos/s':>10}{'decode':>9}{'views':>9}{'model':>9}{'total':>9}"
        f"{'model-only':>11}{'ratio':>8}{'steady':>8}{'util':>7}"
    )
    alone_lines, forward_lines = [], []
    ratios: dict[str, float] = {}
    print(header + "\n" + "-" * len(header), flush=True)
    for number, (name, path) in enumerate(paths.items()):
        alone = decode_and_views(path, spec)
        if number == 0:
            warm_up(model, alone.views)
        # model-only runs bracket the end-to-end runs, so that a change of load hits both
        forwards = [model_only(model, alone.views) for _ in range((args.repeats + 1) // 2)]
        expected = forwards[0].scores
        runs = [end_to_end(model, spec, path, args.videos, args.workers)]
        if args.sequential:
            runs.append(end_to_end(model, spec, path, args.videos, 0))
        forwards += [model_only(model, alone.views) for _ in range(args.repeats // 2)]
        only = statistics.median(forward.wall_s for forward in forwards)
        user, system = (statistics.fmean(getattr(f, key) for f in forwards) for key in ("user_s", "system_s"))
        faults = statistics.fmean(forward.faults for forward in forwards)
        forward_lines.append(
            f"{name:<7}{only:>8.2f}s{user:>8.2f}s{system:>8.2f}s{faults / 1e6:>9.2f}M{faults * PAGE / 2**30:>8.1f}G"
        )
        for run in runs:
            check_scores(name, run.rows, expected)
            per_video = run.wall_s / args.videos
            ratio = per_video / only
            fill = (run.rows[0]["decode_ms"] + run.rows[0]["views_ms"]) / 1000
            steady = f"{(run.wall_s - fill) / args.videos / only:.2f}x" if run.workers else "-"
            util = (run.main_cpu_s + run.worker_cpu_s) / (run.wall_s * cores)
            if run.workers:
                ratios[name] = ratio
            print(
                f"{name:<7}{run.workers:>8}{args.videos / run.wall_s:>10.3f}"
                f"{mean_ms(run.rows, 'decode_ms') / 1000:>8.2f}s{mean_ms(run.rows, 'views_ms') / 1000:>8.2f}s"
                f"{mean_ms(run.rows, 'model_ms') / 1000:>8.2f}s{per_video:>8.2f}s{only:>10.2f}s"
                f"{ratio:>7.2f}x{steady:>8}{util:>7.0%}",
                flush=True,
            )
        share = alone.cpu_s / (user + system)
        expect = max(1 + share, alone.cpu_s / only)
        alone_lines.append(
            f"{name:<7}{alone.decode_s:>8.2f}s{alone.views_s:>8.2f}s{alone.cpu_s:>8.2f}s{share:>7.0%}"
            f"{expect:>7.2f}x"
        )
    print(
        "\nper video: decode / views / model = means of the rows' decode_ms, views_ms, model_ms (measured\n"
        "while the processes share the CPU); total = wall time / videos; model-only = median forward on\n"
        "views in memory (runs before and after the end-to-end ones); ratio = total / model-only; steady =\n"
        "the same without the pipeline fill (the first video's decode + views, which nothing overlaps);\n"
        f"util = CPU seconds of the model process and the loader worker / (wall time x {cores} cores)"
    )
    print(
        f"\ndecode + views alone, 1 thread\n{'clip':<7}{'decode':>9}{'views':>9}{'CPU':>9}{'share':>7}"
        f"{'expect':>8}"
    )
    print("\n".join(alone_lines))
    print(
        "share = CPU seconds / CPU seconds of a model-only forward; expect = 1 + share, the steady ratio\n"
        "when the model leaves no core idle (the worker's CPU time is then taken from the model), or\n"
        "CPU seconds / model-only when larger (the one decode worker is the bottleneck)"
    )
    print(f"\nmodel-only forward\n{'clip':<7}{'wall':>9}{'user':>9}{'system':>9}{'faults':>10}{'fresh':>9}")
    print("\n".join(forward_lines))
    print(
        "user / system = CPU seconds (all threads; mean), faults = minor page faults and the memory they\n"
        "map (x page size): system time here is the kernel handing out zeroed pages for the model's large\n"
        "temporaries (--hugepages, GLIBC_TUNABLES=glibc.malloc.hugetlb=1, cuts them over 20x)"
    )
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    if "1080p" in ratios:
        verdict = "met" if ratios["1080p"] <= TARGET_RATIO else "NOT met"
        if max(load, os.getloadavg()[0]) > cores:
            verdict += " (on a busy machine: compare with expect)"
        print(f"\n1080p: total / model-only = {ratios['1080p']:.2f}x, target <= {TARGET_RATIO}x: {verdict}")


if __name__ == "__main__":
    main()
