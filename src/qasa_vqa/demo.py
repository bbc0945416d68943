"""``python -m qasa_vqa.demo`` (``make demo``): the whole method, offline, on CPU, in one folder.

Stages, each skipped when its output is already there (so a rerun only redraws the report):

1. **data**: the generated demo corpus (rated clips from real photographs, and the ST-VQRL distortion
   tree of its train scenes), ``<out>/data``;
2. **pretrain**: ST-VQRL pretraining of the tiny backbone on that tree, ``<out>/pretrain``;
3. **train**: QASA-VQA (``experiment=demo``: 18 labelled, 27 unlabelled videos, guided by the shipped
   demo CLIP) and its supervised-only ablation (``experiment=demo_supervised``), ``<out>/train/<method>``;
4. **evaluate**: both models and the zero-shot demo CLIP on the test split (scenes never seen in
   training), through the same harness, ``<out>/eval/<method>``;
5. **score**: ``qasa-vqa score --maps`` on a few test videos, ``<out>/scores.csv`` and ``<out>/maps``;
6. **report**: one table (SRCC and PLCC with 95% bootstrap intervals per method) printed and written
   with the scatter plots, the training curves and two quality maps to ``<out>/report.md``.

The stages run the project's own commands (the Hydra entry points as subprocesses, so each shows its
own progress), exactly as a user would type them; ``<out>/commands.txt`` lists them.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qasa_vqa.errors import QasaVqaError
from qasa_vqa.storage import atomic_save, atomic_write_text

__all__ = ["METHODS", "main", "run_demo"]

# method -> (experiment or model, label in the table)
METHODS: dict[str, str] = {
    "full": "QASA-VQA (demo CLIP guide), combined score",
    "supervised": "supervised only (same labels, no unlabelled videos)",
    "zeroshot": "zero-shot demo CLIP (no training)",
}
TINY_VIEWS = "{segments: 4, frames_per_segment: 2, test_frames_per_segment: 4, patch: 16}"


class Stages:
    """Runs and times the stages, printing one header per stage."""

    def __init__(self, out: Path, total: int) -> None:
        self.out = out
        self.total = total
        self.number = 0
        self.commands: list[str] = []
        self.timings: dict[str, float] = {}

    def start(self, name: str, what: str) -> float:
        self.number += 1
        print(f"\n[{self.number}/{self.total}] {name}: {what}", flush=True)
        return time.perf_counter()

    def done(self, name: str, started: float, reused: bool = False) -> None:
        elapsed = time.perf_counter() - started
        self.timings[name] = elapsed
        print(
            f"[{self.number}/{self.total}] {name}: {'reused' if reused else 'done'} in {elapsed:.0f} s",
            flush=True,
        )

    def run(self, args: Sequence[str]) -> None:
        command = [sys.executable, "-m", *args]
        self.commands.append(shlex.join(["python", "-m", *args]))
        result = subprocess.run(command, check=False)
        if result.returncode != 0:
            raise QasaVqaError(
                f"stage {self.number} failed (exit {result.returncode}): {shlex.join(command)}"
            )


def _newer(path: Path, *sources: Path) -> bool:
    return path.is_file() and all(path.stat().st_mtime >= s.stat().st_mtime for s in sources if s.exists())


def run_demo(out: Path, *, seed: int = 0, workers: int = 2) -> dict[str, Any]:
    """Run (or finish) the demo in ``out``; returns the results table and the report's path."""
    from qasa_vqa.data.synthetic import generate_demo_corpus

    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    stages = Stages(out, 6)
    began = time.perf_counter()
    data = out / "data"
    common = [f"paths.output_root={out}", f"paths.split_dir={out / 'splits'}", f"paths.demo_root={data}"]

    started = stages.start("data", f"the demo corpus in {data}")
    reused = (data / "corpus.json").is_file()
    generate_demo_corpus(data, seed=seed, progress=True)
    stages.done("data", started, reused)

    backbone = out / "pretrain" / "stvqrl_backbone.pt"
    started = stages.start("pretrain", f"ST-VQRL on {data / 'tree'} (tiny backbone, about 3 minutes)")
    if not backbone.is_file():
        stages.run(["qasa_vqa.pretrain", f"data.root={data / 'tree'}", "logger=csv", f"seed={seed}",
                    f"hydra.run.dir={out / 'pretrain'}"])  # fmt: skip
    stages.done("pretrain", started, reused=not stages.commands)

    checkpoints = {}
    started = stages.start("train", "QASA-VQA and its supervised-only ablation (about 2 minutes each)")
    count = len(stages.commands)
    for method, experiment in (("full", "demo"), ("supervised", "demo_supervised")):
        run_dir = out / "train" / method
        checkpoints[method] = run_dir / "qasa_model.pt"
        if not checkpoints[method].is_file():
            print(f"  {method}: python -m qasa_vqa.train experiment={experiment}", flush=True)
            stages.run(["qasa_vqa.train", f"experiment={experiment}", *common, f"seed={seed}",
                        f"paths.stvqrl_checkpoint={backbone}", "logger=csv", f"hydra.run.dir={run_dir}"])  # fmt: skip
    stages.done("train", started, reused=len(stages.commands) == count)

    started = stages.start("evaluate", "the three methods on the test split (scenes never seen in training)")
    count = len(stages.commands)
    for method in METHODS:
        run_dir = out / "eval" / method
        sources = [checkpoints[method]] if method in checkpoints else []
        if _newer(run_dir / "metrics.json", *sources):
            continue
        model = [f"checkpoint={checkpoints[method]}"] if method in checkpoints else [
            "model=clip_zeroshot", "clip=demo", f"views={TINY_VIEWS}"]  # fmt: skip
        stages.run(["qasa_vqa.evaluate", *model, "data=[demo_test]", *common, f"workers={workers}",
                    f"name={method}", f"hydra.run.dir={run_dir}"])  # fmt: skip
    stages.done("evaluate", started, reused=len(stages.commands) == count)

    started = stages.start("score", "qasa-vqa score --maps on four test videos")
    videos = _test_videos(data, 4)
    scores = out / "scores.csv"
    done = scores.is_file() and _newer(scores, checkpoints["full"]) and len(_rows(scores)) == len(videos)
    if not done:
        stages.run(["qasa_vqa", "score", *map(str, videos), "--checkpoint", str(checkpoints["full"]),
                    "--out", str(scores), "--maps", str(out / "maps"), "--overwrite", "--workers", "1",
                    "--calibration", str(out / "eval" / "full" / "calibration_demo_test.json")])  # fmt: skip
    stages.done("score", started, reused=done)

    started = stages.start("report", f"{out / 'report.md'}")
    table = _results(out)
    curves = _training_curves(out)
    report = _write_report(out, table, curves, _rows(scores))
    stages.done("report", started)
    if stages.commands:
        atomic_write_text(out / "commands.txt", "\n".join(stages.commands) + "\n")
    print("\n" + _table_text(table))
    print(f"\nwrote {report} (open it in a Markdown viewer); everything is under {out}")
    print(f"the whole demo took {time.perf_counter() - began:.0f} s")
    return {"table": table, "report": report, "timings": stages.timings}


def _test_videos(data: Path, count: int) -> list[Path]:
    with open(data / "manifest.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("split") == "test"]
    rows.sort(key=lambda row: float(row["mos"]))  # the best and the worst, and two between
    chosen = [rows[0], rows[len(rows) // 3], rows[2 * len(rows) // 3], rows[-1]][:count]
    return [data / row["path"] for row in chosen]


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _results(out: Path) -> list[dict[str, Any]]:
    """One row per method: SRCC and PLCC of its final score with intervals, from evaluate's metrics.json."""
    table = []
    for method, label in METHODS.items():
        stored = json.loads((out / "eval" / method / "metrics.json").read_text())["results"]["demo_test"]
        branch = "qasa" if "qasa" in stored else "clip"
        table.append({"method": method, "label": label, "branch": branch, **stored[branch]})
        if branch == "qasa":
            for part, part_label in (("stvqrl", "  its ST-VQRL branch"), ("clip", "  its CLIP branch")):
                table.append(
                    {"method": f"{method}/{part}", "label": part_label, "branch": part, **stored[part]}
                )
    return table


def _interval(row: dict[str, Any], key: str) -> str:
    value, low, high = row.get(key), row.get(f"{key}_low"), row.get(f"{key}_high")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.3f} [{low:.2f}, {high:.2f}]" if low is not None and high is not None else f"{value:.3f}"


def _table_text(table: list[dict[str, Any]]) -> str:
    lines = [f"{'method':<54} {'SRCC [95% CI]':>22} {'PLCC [95% CI]':>22}"]
    lines += [
        f"{row['label']:<54} {_interval(row, 'srcc'):>22} {_interval(row, 'plcc'):>22}" for row in table
    ]
    n = int(table[0].get("n", 0))
    lines.append(f"(demo test split: {n} videos of 3 scenes never seen in training; bootstrap intervals)")
    return "\n".join(lines)


def _training_curves(out: Path) -> Path | None:
    """Validation SRCC and the training losses against steps, for both trained methods, as one PNG."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 3.6))
    left, right = figure.subplots(1, 2)
    drawn = False
    for method in ("full", "supervised"):
        logs = sorted((out / "train" / method / "logs").glob("version_*/metrics.csv"))
        if not logs:
            continue
        rows = _rows(logs[-1])
        for axes, key, style in (
            (left, "val/validation/qasa/srcc", "o-"),
            (right, "train/loss_primary_step", "-"),
            (right, "train/loss_auxiliary_step", "--"),
        ):
            points = [(int(r["step"]), float(r[key])) for r in rows if r.get(key)]
            if points:
                xs, ys = zip(*points, strict=True)
                axes.plot(xs, ys, style, label=f"{method}: {key.split('/')[-1]}", ms=3)
                drawn = True
    if not drawn:
        return None
    left.set(title="validation SRCC (combined score)", xlabel="step")
    right.set(title="training losses", xlabel="step")
    for axes in (left, right):
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
    figure.tight_layout()
    return atomic_save(out / "training_curves.png", lambda path: figure.savefig(path, dpi=110, format="png"))


def _write_report(
    out: Path, table: list[dict[str, Any]], curves: Path | None, scores: list[dict[str, str]]
) -> Path:
    lines = ["# qasa-vqa demo", "",
             "QASA-VQA trained with 18 labels and 27 unlabelled videos of the generated demo corpus, guided by the",
             "shipped demo CLIP, beside its supervised-only ablation and the zero-shot demo CLIP, all measured on",
             "the test split (scenes never seen in training). Made by `make demo` (`python -m qasa_vqa.demo`).", "",
             "## Results", "", "| method | SRCC [95% CI] | PLCC [95% CI] |", "|---|---|---|"]  # fmt: skip
    lines += [
        f"| {row['label'].strip()} | {_interval(row, 'srcc')} | {_interval(row, 'plcc')} |" for row in table
    ]
    lines += ["", f"{int(table[0].get('n', 0))} test videos; intervals are 95% bootstrap intervals (1,000 resamples).",
              "", "## Prediction against MOS", ""]  # fmt: skip
    for method in METHODS:
        picture = out / "eval" / method / "scatter_demo_test.png"
        if picture.is_file():
            lines += [f"**{METHODS[method]}**", "", f"![{method}]({picture.relative_to(out).as_posix()})", ""]
    if curves is not None:
        lines += ["## Training", "", f"![training curves]({curves.relative_to(out).as_posix()})", ""]
    maps = [row for row in scores if row.get("map")]
    if maps:
        lines += ["## Quality maps", "",
                  "The head's local quality map laid over the frames each fragment patch was cut from (green:",
                  "higher quality), for the best- and the worst-rated of the scored test videos.", ""]  # fmt: skip
        ranked = sorted(maps, key=lambda row: float(row["score"]))
        for row in (ranked[-1], ranked[0]):
            picture = Path(row["map"])
            shown = picture.relative_to(out).as_posix() if picture.is_relative_to(out) else picture.as_posix()
            lines += [f"`{Path(row['path']).name}`: score {float(row['score']):.3f}"
                      + (f", predicted MOS {float(row['mos_pred']):.1f}" if row.get("mos_pred") else ""), "",
                      f"![map]({shown})", ""]  # fmt: skip
    lines += ["## Files", "", "- `data/`: the corpus; `pretrain/`: the ST-VQRL backbone; `train/<method>/`: runs and",
              "  checkpoints; `eval/<method>/`: predictions, metrics, scatter, calibration; `scores.csv`, `maps/`:",
              "  the scorer's output; `commands.txt`: the commands the demo ran.", ""]  # fmt: skip
    return atomic_write_text(out / "report.md", "\n".join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qasa_vqa.demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path("runs/demo"), help="the demo folder (default: runs/demo)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="decoding workers for evaluation (default: 2)")
    args = parser.parse_args(argv)
    try:
        run_demo(args.out, seed=args.seed, workers=args.workers)
    except QasaVqaError as error:
        print(f"qasa-vqa demo: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
