"""The ``qasa-vqa`` command line (also ``python -m qasa_vqa``).

Subcommands: ``probe`` (what the reader sees in a video), ``views`` (draw the four model views of a
video as a PNG), ``demo`` (make a sample clip and draw its views), ``synth`` (the ST-VQRL distortion
tree of a folder of pristine videos), ``demo-data`` (the generated demo corpus), ``demo-clip`` (train
and measure the offline demo CLIP), ``manifest`` (read and
summarise a label file), ``split`` (write a split file of labelled / unlabelled videos) and
``convert`` (official ST-VQRL / QASA checkpoints to our format and back), ``score`` (score videos into
a CSV / JSONL file, :mod:`qasa_vqa.score_command`) and ``report`` (summarise a label-budget sweep). Errors the
library raises on purpose are printed as one line and exit with status 2; nothing here prints a
traceback for bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from qasa_vqa import __version__
from qasa_vqa.errors import QasaVqaError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qasa-vqa", description="Label-efficient no-reference video quality assessment (QASA-VQA)."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    probe = commands.add_parser(
        "probe", help="print what the reader sees in a video (frames, fps, size, ...)"
    )
    probe.add_argument("video", type=Path)
    probe.add_argument("--json", action="store_true", help="print JSON instead of text")

    views = commands.add_parser("views", help="draw the four views the models see of a video, as one PNG")
    views.add_argument("video", type=Path)
    views.add_argument("--out", type=Path, default=Path("views.png"), help="output PNG (default: views.png)")
    views.add_argument("--seed", type=int, default=0, help="seed of the frame and patch offsets (default: 0)")
    views.add_argument("--frames", type=int, default=4, help="how many sampled frames to show (default: 4)")
    views.add_argument(
        "--clamp-halves",
        action="store_true",
        help="keep T' and T'' apart on small videos (not the reference)",
    )

    demo = commands.add_parser("demo", help="generate a sample clip and draw its views")
    demo.add_argument(
        "--out", type=Path, default=Path("demo_output"), help="output folder (default: demo_output)"
    )
    demo.add_argument("--seed", type=int, default=0)

    synth = commands.add_parser(
        "synth", help="write the 12 ST-VQRL distorted versions of every video: OUT_DIR/<k>/<name>, k = 0..12"
    )
    synth.add_argument("in_dir", type=Path, metavar="IN_DIR", help="folder of pristine videos (recursive)")
    synth.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="tree to write (resumes if present)")
    synth.add_argument("--workers", type=int, default=None, help="parallel processes (default: min(4, CPUs))")
    synth.add_argument(
        "--versions", default=None, help="versions to write, e.g. 0,1,5 or 1-3 (default: 0-12)"
    )
    synth.add_argument("--no-progress", action="store_true", help="no progress bar")
    synth.add_argument(
        "--minterpolate",
        default=None,
        help="minterpolate options of versions 10-12 (default: FFmpeg's defaults, as the reference); "
        "'blend' blends neighbouring frames instead",
    )

    demo_data = commands.add_parser(
        "demo-data", help="generate the demo corpus: rated clips from real photographs + a distortion tree"
    )
    demo_data.add_argument("--out", type=Path, default=Path("demo_data"), help="folder (default: demo_data)")
    demo_data.add_argument(
        "--seed", type=int, default=0, help="the same seed gives the same corpus (default: 0)"
    )
    demo_data.add_argument("--workers", type=int, default=None, help="parallel processes (default: all CPUs)")
    demo_data.add_argument("--no-tree", action="store_true", help="skip the ST-VQRL distortion tree")
    demo_data.add_argument("--no-progress", action="store_true", help="no progress bar")

    demo_clip = commands.add_parser(
        "demo-clip",
        help="train the offline demo CLIP (a quality-aware stand-in for OpenAI's) and measure it zero-shot",
    )
    demo_clip.add_argument(
        "--out", type=Path, default=Path("runs/demo-clip"), help="output folder (default: runs/demo-clip)"
    )
    demo_clip.add_argument(
        "--seed", type=int, default=0, help="the same seed gives the same model (default: 0)"
    )
    budget = demo_clip.add_mutually_exclusive_group()
    budget.add_argument(
        "--steps", type=int, default=None, help="training steps (default: the shipped model's)"
    )
    budget.add_argument(
        "--minutes", type=float, default=None, help="wall-clock budget for making pairs and training"
    )
    demo_clip.add_argument(
        "--shots",
        type=int,
        default=None,
        help="generated shots (x4 versions x2 pictures; default: the shipped model's)",
    )
    demo_clip.add_argument(
        "--corpus",
        type=Path,
        default=Path("demo_data"),
        help="demo corpus to measure zero-shot quality on; its test photos are never trained on (default: demo_data)",
    )
    demo_clip.add_argument(
        "--evaluate-only", action="store_true", help="only measure the weights of --weights on --corpus"
    )
    demo_clip.add_argument(
        "--weights",
        default="demo",
        help="weights to measure with --evaluate-only (default: the shipped 'demo')",
    )
    demo_clip.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default: 1000)")
    demo_clip.add_argument(
        "--workers", type=int, default=None, help="processes making pairs (default: all CPUs)"
    )
    demo_clip.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo_clip.add_argument(
        "--snapshots",
        default="",
        help="comma-separated steps at which to also write the model (snapshot_<step>.safetensors)",
    )

    convert = commands.add_parser(
        "convert",
        help="convert an ST-VQRL / QASA checkpoint (official or ours) to our format or the official one",
    )
    convert.add_argument("source", type=Path, metavar="IN")
    convert.add_argument("target", type=Path, metavar="OUT")
    convert.add_argument(
        "--clip-text",
        default=None,
        help="where CLIP's prompt features come from for an official QASA checkpoint: 'openai' or a local CLIP file",
    )
    convert.add_argument("--official", action="store_true", help="write the authors' layout instead of ours")

    manifest = commands.add_parser(
        "manifest", help="read a label file (any supported format) and summarise it: format, count, MOS scale"
    )
    manifest.add_argument("file", type=Path, metavar="FILE")
    manifest.add_argument("--format", default="auto", help="label format (default: detected)")
    manifest.add_argument("--root", type=Path, default=None, help="video folder: also count missing videos")
    manifest.add_argument("--json", action="store_true", help="print JSON instead of text")

    split = commands.add_parser(
        "split", help="write a split file: labelled / validation / unlabelled videos of a label file"
    )
    split.add_argument("file", type=Path, metavar="MANIFEST")
    split.add_argument(
        "--out", type=Path, required=True, help="split file to write (JSON); kept if it exists"
    )
    split.add_argument("--official", action="store_true", help="the QASA paper's 500 / 1,499 split of LSVQ")
    split.add_argument("--labelled", type=int, default=None, help="number of labelled videos")
    split.add_argument(
        "--unlabelled", type=int, default=None, help="number of unlabelled videos (default: the rest)"
    )
    split.add_argument("--validation", type=int, default=0, help="number of held-out validation videos")
    split.add_argument("--seed", type=int, default=0)
    split.add_argument(
        "--strategy", default="random", help="random, mos-stratified or linspace (default: random)"
    )

    score = commands.add_parser(
        "score",
        help="score videos (files, folders, globs, label files) into a CSV / JSONL file, one row each",
    )
    from qasa_vqa import score_command

    score_command.add_arguments(score)

    report = commands.add_parser(
        "report", help="summarise a label-budget sweep: mean +- std per budget and method, and the curve"
    )
    report.add_argument(
        "sweep", type=Path, metavar="SWEEP_DIR", help="a sweep folder (with results.csv) or the CSV"
    )
    report.add_argument(
        "--metric", default=None, help="the metric to plot (default: the first test/<set>/qasa/srcc column)"
    )
    report.add_argument(
        "--out", type=Path, default=None, help="the plot (default: <sweep dir>/label_budget.png)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except QasaVqaError as error:
        print(f"qasa-vqa {args.command}: error: {error}", file=sys.stderr)
        return 2


def _probe(args: argparse.Namespace) -> int:
    from qasa_vqa.video.reader import probe

    info = probe(args.video)
    fields = {
        "path": info.path,
        "num_frames": info.num_frames,
        "fps": round(info.fps, 6),
        "width": info.width,
        "height": info.height,
        "rotation": info.rotation,
        "display_size": [info.display_width, info.display_height],
        "duration": round(info.duration, 6),
        "codec": info.codec,
        "keyframes": len(info.keyframes),
        "seekable": info.seekable,
    }
    if args.json:
        print(json.dumps(fields))
    else:
        for key, value in fields.items():
            print(f"{key:>13}: {value}")
    return 0


def _views(args: argparse.Namespace) -> int:
    from qasa_vqa.video.preview import draw_views

    out = draw_views(
        args.video, args.out, seed=args.seed, num_shown=args.frames, clamp_halves=args.clamp_halves
    )
    print(f"wrote {out}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from qasa_vqa.storage import atomic_save
    from qasa_vqa.video.preview import draw_views
    from qasa_vqa.video.writer import synthetic_frames, write_video

    args.out.mkdir(parents=True, exist_ok=True)
    clip = args.out / "sample_720p.mp4"
    if not clip.exists():
        print(f"writing a 720p sample clip to {clip} ...")
        frames = synthetic_frames(96, 720, 1280, seed=args.seed)
        atomic_save(clip, lambda partial: write_video(partial, frames, codec="h264", bframes=2))
    picture = draw_views(clip, args.out / "views.png", seed=args.seed)
    print(f"wrote {picture}: the source frame with T' (green) and T'' (magenta) patches, the two fragment")
    print("views, the resized view S and the sparse view S^F, exactly as training samples them.")
    return 0


def _synth(args: argparse.Namespace) -> int:
    from qasa_vqa.video.distortions import MINTERPOLATE_OPTIONS, parse_versions, synthesize_tree

    minterpolate = {None: MINTERPOLATE_OPTIONS, "blend": None}.get(args.minterpolate, args.minterpolate)
    report = synthesize_tree(
        args.in_dir,
        args.out_dir,
        versions=parse_versions(args.versions) if args.versions else range(13),
        workers=args.workers,
        progress=not args.no_progress,
        minterpolate=minterpolate,
    )
    for failure in report.failed:
        print(f"failed: {failure.source} version {failure.version}: {failure.reason}", file=sys.stderr)
    print(f"written {len(report.written)}, skipped {len(report.skipped)}, failed {len(report.failed)}")
    print(f"manifest: {report.manifest}")
    return 1 if report.failed else 0


def _demo_data(args: argparse.Namespace) -> int:
    from qasa_vqa.data.synthetic import generate_demo_corpus

    started = time.perf_counter()
    corpus = generate_demo_corpus(
        args.out,
        seed=args.seed,
        workers=args.workers,
        progress=not args.no_progress,
        build_tree=not args.no_tree,
    )
    print(
        f"demo corpus in {corpus.root} ({time.perf_counter() - started:.0f} s): {corpus.num_clips} rated clips "
        f"of {corpus.num_scenes} scenes, {corpus.num_train} train / {corpus.num_test} test (no shared scene)"
    )
    print(f"  labels:  {corpus.manifest}  (path,mos,split; MOS 0-100)")
    if corpus.tree_dir is not None:
        print(f"  ST-VQRL tree: {corpus.tree_dir}  ({len(corpus.tree_scenes)} scenes x 13 versions)")
    return 0


def _steps_list(text: str) -> list[int]:
    try:
        steps = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise QasaVqaError(
            f"--snapshots {text!r}: give comma-separated step numbers, e.g. 500,1000"
        ) from None
    if any(step < 1 for step in steps):
        raise QasaVqaError(f"--snapshots {text!r}: steps start at 1")
    return steps


def _demo_clip(args: argparse.Namespace) -> int:
    import os

    from qasa_vqa.democlip.make import Recipe, format_report, make_demo_clip, measure, record_measurement

    has_corpus = (args.corpus / "manifest.csv").is_file()
    if args.evaluate_only:
        if not has_corpus:
            raise QasaVqaError(f"{args.corpus}: no demo corpus to measure on; make one with 'make demo-data'")
        report = measure(args.weights, args.corpus, seed=args.seed, bootstrap=args.bootstrap,
                         progress=not args.no_progress)  # fmt: skip
        print(format_report(report, args.corpus))
        return 0
    defaults = Recipe()
    recipe = Recipe(
        seed=args.seed,
        shots=args.shots or defaults.shots,
        steps=args.steps or defaults.steps,
    )
    made = make_demo_clip(
        args.out,
        recipe,
        minutes=args.minutes,
        corpus=args.corpus if has_corpus else None,
        workers=args.workers or os.cpu_count() or 1,
        progress=not args.no_progress,
        snapshots=_steps_list(args.snapshots),
    )
    print(f"wrote {made.weights} ({made.weights.stat().st_size / 1e6:.1f} MB), {made.log}, {made.preview}")
    print(f"  reproduce: {made.provenance['command']}")
    if has_corpus:
        report = measure(made.weights, args.corpus, seed=args.seed, bootstrap=args.bootstrap,
                         progress=not args.no_progress)  # fmt: skip
        record_measurement(made.weights, report, args.corpus)
        print(format_report(report, args.corpus))
    else:
        print(
            f"no demo corpus at {args.corpus}: zero-shot measurement skipped (make demo-data, or --corpus DIR)"
        )
    print(f"use it: build_clip_quality(pretrained='{made.weights}'), or clip.pretrained={made.weights}")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from qasa_vqa.models.checkpoints import convert_checkpoint

    kind = convert_checkpoint(args.source, args.target, clip_text=args.clip_text, official=args.official)
    layout = "the official layout" if args.official else "qasa-vqa format"
    print(f"wrote {args.target}: {kind} in {layout}")
    return 0


def _manifest(args: argparse.Namespace) -> int:
    from qasa_vqa.data.manifests import read_manifest

    manifest = read_manifest(args.file, args.format, args.root, missing="keep")
    scores = [record.mos for record in manifest if record.mos is not None]
    fields = {
        "file": str(manifest.source),
        "format": manifest.format,
        "entries": len(manifest),
        "labelled": len(scores),
        "scale": list(manifest.scale),
        "mos_min": min(scores) if scores else None,
        "mos_mean": round(sum(scores) / len(scores), 6) if scores else None,
        "mos_max": max(scores) if scores else None,
        "missing": len(manifest.missing) if args.root is not None else None,
        "sha256": manifest.sha256,
    }
    if args.json:
        print(json.dumps(fields))
    else:
        for key, value in fields.items():
            if value is not None:
                print(f"{key:>9}: {value}")
    return 0


def _split(args: argparse.Namespace) -> int:
    from qasa_vqa.data.manifests import read_manifest
    from qasa_vqa.data.splits import budget_split, ensure_split_file, official_qasa_split

    if args.official == (args.labelled is not None):
        raise QasaVqaError("give either --official or --labelled N")
    manifest = read_manifest(args.file)
    made = (
        official_qasa_split(manifest)
        if args.official
        else budget_split(
            manifest,
            args.labelled,
            args.unlabelled,
            seed=args.seed,
            strategy=args.strategy,
            n_validation=args.validation,
        )
    )
    existed = args.out.exists()
    split = ensure_split_file(args.out, made)
    counts = ", ".join(
        f"{len(getattr(split, name))} {name}" for name in ("labelled", "validation", "unlabelled")
    )
    print(f"{'kept' if existed else 'wrote'} {args.out}: {counts}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from qasa_vqa.sweeps import RESULTS_CSV, plot_budget_curve, read_rows, rebuild_csv, rows_folder, summarise

    path = args.sweep / RESULTS_CSV if args.sweep.is_dir() else args.sweep
    if rows_folder(path).is_dir() and os.access(path.parent, os.W_OK):
        rebuild_csv(path)  # from every row file there is now, whatever a filesystem's cache showed the runs
    rows = read_rows(path)
    if not rows:
        raise QasaVqaError(f"{path}: no sweep results here (runs append to it when they finish)")
    columns = [c for c in rows[0] if c.startswith("test/") and c.endswith(("/srcc", "/plcc"))]
    if not columns:
        columns = [c for c in rows[0] if c.startswith("val/") and c.endswith(("/srcc", "/plcc"))]
    metric = args.metric or next(
        (c for c in columns if c.endswith("/qasa/srcc")), columns[0] if columns else None
    )
    if metric is None or metric not in rows[0]:
        raise QasaVqaError(f"{path}: no column {metric!r}; columns: {', '.join(rows[0])}")
    summary = summarise(rows, columns)
    names = [c.split("/", 1)[1] for c in columns]
    print(f"{path}: {len(rows)} runs; mean +- std over seeds")
    header = f"{'experiment':<24} {'ablation':<14} {'labels':>6} {'runs':>4}  " + "  ".join(
        f"{n:>24}" for n in names
    )
    print(header)
    for entry in summary:
        cells = [f"{entry[c]['mean']:.3f} +- {entry[c]['std']:.3f}".rjust(24) for c in columns]
        print(
            f"{entry['experiment']:<24} {entry['ablation']:<14} {entry['n_labelled']:>6} {entry['runs']:>4}  "
            + "  ".join(cells)
        )
    out = args.out or path.with_name("label_budget.png")
    print(f"wrote {plot_budget_curve(summary, metric, out)} ({metric})")
    return 0


def _score(args: argparse.Namespace) -> int:
    from qasa_vqa import score_command

    return score_command.run(args)


_COMMANDS = {
    "score": _score,
    "probe": _probe,
    "views": _views,
    "demo": _demo,
    "synth": _synth,
    "demo-data": _demo_data,
    "demo-clip": _demo_clip,
    "convert": _convert,
    "manifest": _manifest,
    "split": _split,
    "report": _report,
}
