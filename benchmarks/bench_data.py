"""Benchmark: training items per second per DataLoader worker, and how it scales from 1 to 2 workers.

On generated 10 s clips (H.264, 30 fps, 300 frames; 960x540 and 1920x1080, seeded, written once into
``--cache``, default ``.bench_cache/``), a ``SemiSupervisedDataset`` with the paper's views
(``ViewSpec()``: 32 frames, the four views ``frag_v`` / ``frag_a`` ``[3,32,224,224]``, ``resize_v``
``[32,3,224,224]``, ``resize_a`` ``[8,3,224,224]``, float32) is read through a ``torch`` DataLoader
set up as the training data module does (persistent workers, a seeded generator, no pinned memory on
CPU) with ``num_workers`` 0 (the main process: the baseline), 1 and 2. Batches hold one item, so the
items spread evenly over the workers whatever ``--items`` is (even); training batches of 6 do the same
work per item.

Every item is a different file name (a link to the clip), so that each item probes its video as in a
first epoch over a real dataset (the dataset caches ``probe`` per path). Per run:

* **warm-up** (not timed): one epoch of one item per worker, on videos the timed epoch does not use:
  worker start-up and every worker's first item. ``first batch`` is the time from ``iter(loader)`` to
  the first batch;
* **timed**: the next epoch, ``--items`` items served by the same (persistent) workers, from
  ``iter(loader)`` to the last batch: items per second, items per second per worker (the main process
  counts as one for ``workers=0``), the scaling ratio 2 workers / 1 worker, and the ratio against the
  ``workers=0`` baseline measured in the same run; CPU seconds per item (the workers' from
  ``/proc/<pid>/stat`` plus the main process's) and ``util``, CPU seconds / (wall time x cores).

Runs alternate their order between repeats (0, 1, 2 workers, then 2, 1, 0) so that a change of load
hits every setting; the table gives medians over ``--repeats``. Checks: no item was skipped as
undecodable; with the same seeds a run gives the same items in every repeat (a fingerprint of the four
views); and two workers draw different random offsets: a loader of 2 workers that is asked for every
video index twice in a row gives each index to both workers, and their four views must differ.

Run with ``python benchmarks/bench_data.py [--items N] [--repeats N] [--quick] [--cache DIR]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import torch
from torch.utils.data import DataLoader, Sampler, default_collate, get_worker_info

from qasa_vqa.data.datasets import SemiSupervisedDataset, ViewSpec
from qasa_vqa.data.manifests import VideoRecord
from qasa_vqa.video.writer import synthetic_frames, write_video

CLIPS = {"540p": (540, 960), "1080p": (1080, 1920)}  # name -> (height, width)
FPS, SECONDS = 30, 10
CLIP_SEED = 7  # the generated scene
SEED = 0  # the dataset's offsets and the loader's generator (hence the workers' seeds)
WORKERS = (0, 1, 2)
VIEWS = ("frag_v", "frag_a", "resize_v", "resize_a")
SHAPES = {
    "frag_v": (1, 3, 32, 224, 224),
    "frag_a": (1, 3, 32, 224, 224),
    "resize_v": (1, 32, 3, 224, 224),
    "resize_a": (1, 8, 3, 224, 224),
}
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    """One loader run: a warm-up epoch (one item per worker), then a timed epoch of ``items`` items."""

    workers: int
    first_batch_s: float
    warm_up_s: float
    wall_s: float
    cpu_s: float | None  # main process + workers during the timed epoch; None if unreadable
    fingerprints: list[tuple[float, ...]] = field(default_factory=list)
    worker_ids: set[int] = field(default_factory=set)


class Schedule(Sampler[int]):
    """The indices of the next epoch, set from outside between epochs (the loader's workers persist)."""

    def __init__(self, indices: Sequence[int]) -> None:
        self.indices = list(indices)

    def __iter__(self) -> Iterator[int]:
        return iter(list(self.indices))

    def __len__(self) -> int:
        return len(self.indices)


def collate_tagged(items: list[dict[str, Any]]) -> dict[str, Any]:
    """``default_collate``, plus the id of the worker that made the batch (-1: the main process)."""
    batch = default_collate(items)
    worker = get_worker_info()
    batch["worker"] = worker.id if worker is not None else -1
    return batch


def make_clip(folder: Path, name: str) -> Path:
    height, width = CLIPS[name]
    path = folder / f"data_{name}_{FPS}fps_{SECONDS}s.mp4"
    if not path.exists():
        print(f"writing {path} ...", flush=True)
        partial = path.with_name(path.stem + ".partial.mp4")
        frames = synthetic_frames(FPS * SECONDS, height, width, seed=CLIP_SEED)
        write_video(partial, frames, codec="h264", fps=FPS, options={"preset": "veryfast"})
        partial.replace(path)
    return path


def link_videos(clip: Path, count: int) -> Path:
    """A folder of ``count`` links ``v000.mp4``, ... to ``clip``: distinct paths, the same video."""
    folder = clip.parent / f"{clip.stem}_links"
    folder.mkdir(exist_ok=True)
    for index in range(count):
        link = folder / f"v{index:03d}.mp4"
        if link.exists():
            continue
        try:
            link.symlink_to(os.path.relpath(clip, folder))
        except OSError:
            os.link(clip, link)
    return folder


def make_dataset(root: Path, count: int) -> SemiSupervisedDataset:
    records = [VideoRecord(f"v{index:03d}.mp4", None) for index in range(count)]
    return SemiSupervisedDataset(records, root, labelled=False, views=ViewSpec(), seed=SEED, on_error="raise")


def make_loader(dataset: SemiSupervisedDataset, sampler: Schedule, workers: int) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=1,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=False,
        generator=torch.Generator().manual_seed(SEED),
        collate_fn=collate_tagged,
    )


def cpu_seconds(pids: Sequence[int]) -> float | None:
    """CPU seconds (user + system) of this process and of the processes ``pids`` (None: unreadable)."""
    total = time.process_time()
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        total += (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14 and 15)
    return total


def fingerprint(batch: dict[str, Any]) -> tuple[float, ...]:
    """A cheap, exact summary of the four views (a strided sample of each), to compare runs."""
    return tuple(float(batch[key].flatten()[::4099].double().sum()) for key in VIEWS)


def check_batch(batch: dict[str, Any]) -> None:
    for key, shape in SHAPES.items():
        assert tuple(batch[key].shape) == shape, f"{key}: {tuple(batch[key].shape)}, expected {shape}"
    assert int(batch["decode_failures"].sum()) == 0, f"an item was skipped: {batch['path']}"


def run_loader(root: Path, items: int, workers: int) -> Run:
    """Warm-up epoch on videos ``items ..`` (one per worker), then the timed epoch on videos ``0 .. items-1``."""
    warm = max(1, workers)
    dataset = make_dataset(root, items + warm)
    sampler = Schedule(range(items, items + warm))
    loader = make_loader(dataset, sampler, workers)
    start = time.perf_counter()
    iterator = iter(loader)
    check_batch(next(iterator))
    first = time.perf_counter() - start
    for batch in iterator:
        check_batch(batch)
    warm_up = time.perf_counter() - start
    pids = [process.pid for process in getattr(iterator, "_workers", [])]
    readable = workers == 0 or len(pids) == workers

    sampler.indices = list(range(items))
    before = cpu_seconds(pids)
    start = time.perf_counter()
    run = Run(workers, first, warm_up, 0.0, None)
    for batch in iter(loader):  # persistent workers: the same processes, no start-up
        run.fingerprints.append(fingerprint(batch))
        run.worker_ids.add(int(batch["worker"]))
        check_batch(batch)
    run.wall_s = time.perf_counter() - start
    after = cpu_seconds(pids)
    if readable and before is not None and after is not None:
        run.cpu_s = after - before
    assert len(run.fingerprints) == items, f"{len(run.fingerprints)} items served, expected {items}"
    del iterator, loader  # shuts the workers down
    return run


def offsets_differ(root: Path, videos: int) -> tuple[bool, str]:
    """Ask a 2-worker loader for each video index twice in a row: worker 0 and 1 each get every index."""
    dataset = make_dataset(root, videos)
    sampler = Schedule([index for index in range(videos) for _ in range(2)])
    loader = make_loader(dataset, sampler, 2)
    seen: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for batch in loader:
        check_batch(batch)
        seen[(int(batch["worker"]), batch["path"][0])] = {key: batch[key] for key in VIEWS}
    del loader
    paths = sorted({path for _, path in seen})
    missing = [path for path in paths if (0, path) not in seen or (1, path) not in seen]
    if missing:
        return False, f"not every index reached both workers ({missing})"
    same = [
        f"{path}:{key}"
        for path in paths
        for key in VIEWS
        if torch.equal(seen[(0, path)][key], seen[(1, path)][key])
    ]
    if same:
        return False, f"identical views from workers 0 and 1: {', '.join(same)}"
    return True, f"{len(paths)} of {len(paths)} indices, all four views differ"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=12, help="timed items per run (even)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per setting (median reported)")
    parser.add_argument("--quick", action="store_true", help="4 items, 1 repeat")
    parser.add_argument("--cache", type=Path, default=Path(".bench_cache"))
    args = parser.parse_args()
    if args.quick:
        args.items, args.repeats = 4, 1
    if args.items < 2 or args.items % 2 or args.repeats < 1:
        parser.error("--items must be even and at least 2, --repeats at least 1")
    cores = os.cpu_count() or 1
    args.cache.mkdir(parents=True, exist_ok=True)
    roots = {name: link_videos(make_clip(args.cache, name), args.items + max(WORKERS)) for name in CLIPS}
    load = os.getloadavg()[0]
    print(
        f"SemiSupervisedDataset, ViewSpec() (32 frames, 4 views); {FPS * SECONDS}-frame H.264 clips; "
        f"{args.items} timed items per run, median of {args.repeats}; batch size 1; workers=0 uses "
        f"{torch.get_num_threads()} torch threads, loader workers 1; {cores} cores; PyAV {av.__version__}; "
        f"load average {load:.1f}"
    )
    if load > cores:
        print(f"warning: load average {load:.1f} > {cores} cores; other processes share the CPU")
    print(flush=True)

    header = (
        f"{'clip':<7}{'workers':>8}{'items/s':>9}{'(min-max)':>13}{'/worker':>9}{'2w/1w':>8}{'vs w0':>8}"
        f"{'CPU/item':>10}{'util':>6}{'first batch':>13}{'warm-up':>9}"
    )
    print(header + "\n" + "-" * len(header), flush=True)
    unstable: list[str] = []
    for name, root in roots.items():
        runs: dict[int, list[Run]] = {workers: [] for workers in WORKERS}
        for repeat in range(args.repeats):
            for workers in WORKERS if repeat % 2 == 0 else WORKERS[::-1]:
                runs[workers].append(run_loader(root, args.items, workers))
        rates = {w: [args.items / run.wall_s for run in runs[w]] for w in WORKERS}
        median = {w: statistics.median(rates[w]) for w in WORKERS}
        for workers in WORKERS:
            done = runs[workers]
            if any(run.fingerprints != done[0].fingerprints for run in done[1:]):
                unstable.append(f"{name} workers={workers}")
            expected = set(range(workers)) if workers else {-1}
            assert all(run.worker_ids == expected for run in done), f"{name}: items from {done[0].worker_ids}"
            measured = [run for run in done if run.cpu_s is not None]
            cpu = f"{'-':>10}{'-':>6}"
            if measured:
                per_item = statistics.median(run.cpu_s or 0.0 for run in measured) / args.items
                util = statistics.median((run.cpu_s or 0.0) / (run.wall_s * cores) for run in measured)
                cpu = f"{per_item:>9.2f}s{util:>6.0%}"
            scaling = f"{median[2] / median[1]:.2f}x" if workers == 2 else "-"
            spread = f"{min(rates[workers]):.2f}-{max(rates[workers]):.2f}"
            print(
                f"{name:<7}{workers:>8}{median[workers]:>9.2f}{spread:>13}"
                f"{median[workers] / max(1, workers):>9.2f}{scaling:>8}{median[workers] / median[0]:>7.2f}x"
                f"{cpu}{statistics.median(run.first_batch_s for run in done):>12.2f}s"
                f"{statistics.median(run.warm_up_s for run in done):>8.2f}s",
                flush=True,
            )
    print(
        "\nitems/s = timed items / wall time of the timed epoch (median over repeats; min-max across them);\n"
        "/worker = items/s / workers (workers=0: the main process counts as one); 2w/1w = items/s with 2\n"
        "workers / with 1; vs w0 = items/s / items/s of workers=0 (the baseline, same run); CPU/item = CPU\n"
        f"seconds of the main process and the workers per timed item; util = CPU seconds / (wall x {cores} cores);\n"
        "first batch = iter(loader) to the first batch (worker start-up + the first item); warm-up = the\n"
        "whole warm-up epoch (one item per worker); both medians, neither is in the timed part"
    )
    print(f"load average at the end {os.getloadavg()[0]:.1f}\n")

    ok, detail = offsets_differ(next(iter(roots.values())), 2)
    answer = "yes" if ok else "NO"
    print(f"sanity: workers 0 and 1 drew different offsets for the same video index: {answer} ({detail})")
    if args.repeats < 2:
        print("sanity: the same items in every repeat: not checked (--repeats 1)")
    else:
        verdict = "NO, " + ", ".join(unstable) if unstable else f"yes ({len(CLIPS) * len(WORKERS)} settings)"
        print(f"sanity: the same items in every repeat (fingerprints of the four views): {verdict}")
    if not ok or unstable:
        sys.exit(1)


if __name__ == "__main__":
    main()
