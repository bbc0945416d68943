"""``qasa-vqa score``: score files, folders, globs or label files into a CSV / JSONL file.

A thin shell over :func:`qasa_vqa.load_scorer` and :class:`~qasa_vqa.score_files.RowWriter`: it
collects the videos, skips those already in the output with ``--resume``, shows a progress bar with an
ETA on stderr, writes each row as soon as it is done, and ends with a one-line summary. A video that
cannot be scored gets an ``error`` row and the run goes on; the exit status is 0 once every video has
its row (``--fail-on-error`` makes it 1 if any row is an error).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from qasa_vqa.errors import QasaVqaError

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="video files, folders, globs or label files"
    )
    parser.add_argument(
        "--checkpoint", required=True, type=Path, help="qasa_model.pt (ours) or the authors' QASA .pth"
    )
    parser.add_argument(
        "--clip-text",
        default=None,
        help="prompt features for the authors' checkpoint (no text tower): 'openai' or a local CLIP file",
    )
    parser.add_argument("--out", type=Path, default=Path("scores.csv"), help="scores file, .csv or .jsonl")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument(
        "--clips",
        type=int,
        default=1,
        help="1: centred, deterministic; K > 1: mean and spread of K seeded draws",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the draws with --clips K > 1 (default: 0)"
    )
    parser.add_argument("--batch-size", type=int, default=1, help="videos per model call (default: 1)")
    parser.add_argument("--workers", type=int, default=1, help="decoding processes (default: 1; 0: inline)")
    parser.add_argument(
        "--resume", action="store_true", help="continue an existing output, skipping its videos"
    )
    parser.add_argument("--overwrite", action="store_true", help="start an existing output again")
    parser.add_argument(
        "--segment-seconds",
        type=float,
        default=None,
        help="also score every S seconds (a timeline per video)",
    )
    parser.add_argument(
        "--maps", type=Path, default=None, metavar="DIR", help="write quality-map pictures here"
    )
    parser.add_argument(
        "--calibration", type=Path, default=None, help="a calibration file from evaluate: adds mos_pred"
    )
    parser.add_argument(
        "--root", type=Path, default=None, help="folder the paths of label files are relative to"
    )
    parser.add_argument("--fail-on-error", action="store_true", help="exit with status 1 if any video failed")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from qasa_vqa.score_files import RowWriter, collect_videos, row_key
    from qasa_vqa.scoring import ROW_FIELDS, load_scorer

    if args.resume and args.overwrite:
        raise QasaVqaError("--resume and --overwrite contradict each other; choose one")
    videos = collect_videos(args.inputs, root=args.root)
    console = Console(stderr=True)
    with RowWriter(args.out, ROW_FIELDS, resume=args.resume, overwrite=args.overwrite) as writer:
        todo = [path for path in videos if row_key(path) not in writer.done]
        if len(todo) < len(videos):
            console.print(
                f"resuming {args.out}: {len(videos) - len(todo)} of {len(videos)} videos already scored"
            )
        if not todo:
            console.print(f"nothing to do: every video is in {args.out}")
            return 0
        scorer = load_scorer(
            args.checkpoint,
            device=args.device,
            clip_text=args.clip_text,
            clips=args.clips,
            seed=args.seed,
            segment_seconds=args.segment_seconds,
            batch_size=args.batch_size,
            workers=args.workers,
            calibration=args.calibration,
        )
        counts = {"ok": 0, "error": 0}
        started = time.perf_counter()
        columns = (
            TextColumn("scoring"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[errors]} errors"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=console, disable=args.quiet) as progress:
            task = progress.add_task("score", total=len(todo), errors=0)
            for row in scorer.score_many(todo, maps_dir=args.maps):
                writer.write(row)
                counts[row["status"]] += 1
                if row["status"] == "error":
                    console.print(f"[yellow]error[/yellow] {row['error']}", highlight=False)
                progress.update(task, advance=1, errors=counts["error"])
    elapsed = time.perf_counter() - started
    print(
        f"scored {counts['ok']} videos ({counts['error']} errors) in {elapsed:.1f} s "
        f"({len(todo) / elapsed:.2f} videos/s) -> {args.out}"
        + (f"; maps in {args.maps}" if args.maps else ""),
        file=sys.stderr,
    )
    return 1 if args.fail_on_error and counts["error"] else 0
