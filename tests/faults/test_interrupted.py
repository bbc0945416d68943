"""Interrupted work: SIGKILL part way through a command, then the same command again.

The contract (issue 14): a kill never leaves a corrupt file under a final name (every file is written
through :mod:`qasa_vqa.storage`: a ``.<name>.<host>-<pid>-<random>.partial<suffix>`` temporary, renamed
when complete), and the rerun completes with the outputs an uninterrupted run makes. The kill tests of
the fault suite, all sending SIGKILL to the whole process group (the command and its workers):

* training -- ``tests/integration/test_train_runs.py::test_sigkill_then_resume_at_the_same_step``:
  ``python -m qasa_vqa.train`` killed after ``last.ckpt`` reaches step 3 resumes at that global step
  and its metrics go on;
* pretraining -- ``tests/integration/test_pretrain.py::test_a_killed_run_resumes_at_its_checkpoint_step``:
  ST-VQRL pretraining resumes at its checkpoint step;
* ``synth`` -- ``tests/integration/test_synth_cli.py::
  test_synth_resumes_after_being_killed_without_redoing_finished_files``: no half-written video under a
  final name, the rerun writes only what is missing;
* scoring -- ``tests/integration/test_scoring.py::test_sigkill_then_resume_scores_each_video_exactly_once``:
  ``--resume`` gives each video exactly one row, none lost or duplicated;
* ``demo-data`` and ``demo-clip`` -- this file, below, and :func:`assert_no_corrupt_outputs`, the
  check that every file under a final name in a folder is whole.

``demo-data`` has no size options on its command line (its default corpus takes over a minute on two
cores), so the generator behind it (:func:`qasa_vqa.data.synthetic.generate_demo_corpus`, which
``qasa-vqa demo-data`` calls as is) runs in a ``python -c`` subprocess with small knobs; it is killed
while it writes the rated clips and, separately, while it writes the ST-VQRL tree, and the resumed corpus
must be the same bytes as an uninterrupted one. ``demo-clip`` (no resume: a rerun starts over) is killed
mid-training and then mid-measurement (while its weights file is about to be rewritten with the zero-shot
figures), and the run that completes must give the same tensors.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from qasa_vqa.data.synthetic import generate_demo_corpus
from qasa_vqa.models.checkpoints import load_torch_file
from qasa_vqa.models.clip_quality import build_clip_quality
from qasa_vqa.models.clip_weights import read_clip_file, read_clip_header
from qasa_vqa.video.distortions import MANIFEST_NAME
from qasa_vqa.video.reader import probe, read_frames

# ``.<name>.<host>-<pid>-<12 hex>.partial<suffix>`` (storage.atomic_save) or ``...partial`` (create_once)
_PARTIAL = re.compile(r"^\..+\.[A-Za-z0-9_-]+-\d+-[0-9a-f]{12}\.partial(\.[^.]+)?$")
_VIDEO_SUFFIXES = {".mp4", ".mkv", ".mov", ".webm", ".avi"}
_TORCH_SUFFIXES = {".pt", ".pth", ".ckpt"}


def is_partial(path: Path) -> bool:
    """Whether ``path`` is a temporary of :mod:`qasa_vqa.storage` (allowed to remain after a kill)."""
    return bool(_PARTIAL.match(path.name))


def _check_csv(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n"), f"{path}: does not end with a newline (cut short?)"
    rows = list(csv.reader(text.splitlines()))
    assert rows and rows[0], f"{path}: no header"
    widths = {len(row) for row in rows}
    assert widths == {len(rows[0])}, (
        f"{path}: rows of {sorted(widths)} fields under a header of {len(rows[0])}"
    )


def _check_video(path: Path) -> None:
    info = probe(path)  # raises on a missing moov atom, truncated data, zero frames
    frames = read_frames(path, np.arange(info.num_frames))
    assert frames.shape[0] == info.num_frames > 0, f"{path}: {frames.shape[0]} of {info.num_frames} frames"


def _check_safetensors(path: Path) -> None:
    read_clip_header(path)  # raises QasaVqaError on damaged bytes
    state = read_clip_file(path)
    assert state and all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), path


def _check_image(path: Path) -> None:
    with Image.open(path) as image:
        image.load()  # a truncated PNG raises here


CHECKS: dict[str, Callable[[Path], object]] = {
    ".json": lambda p: json.loads(p.read_text(encoding="utf-8")),
    ".csv": _check_csv,
    ".safetensors": _check_safetensors,
    ".png": _check_image,
    **dict.fromkeys(_VIDEO_SUFFIXES, _check_video),
    **dict.fromkeys(_TORCH_SUFFIXES, load_torch_file),
}


def assert_no_corrupt_outputs(root: Path, *, scratch: Sequence[str] = ()) -> list[Path]:
    """Assert that every file under ``root`` that lies under its final name is whole, and return them.

    Temporaries of :mod:`qasa_vqa.storage` (:func:`is_partial`) are skipped: they may remain after a
    kill. ``scratch`` names further glob patterns of a command's own scratch files, which are not
    outputs. Videos must probe and decode every frame; JSON must parse; CSV must end in a newline with
    every row as wide as the header; safetensors must load with the project's reader; PNGs must decode;
    ``.pt``/``.pth``/``.ckpt`` must load with :func:`qasa_vqa.models.checkpoints.load_torch_file`. Any
    other kind of file fails the check: this helper must be told how to judge it.
    """
    checked = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if is_partial(path) or any(fnmatch(path.name, pattern) for pattern in scratch):
            continue
        check = CHECKS.get(path.suffix.lower())
        assert check is not None, f"{path}: no check for {path.suffix!r} files; add one to CHECKS"
        assert path.stat().st_size > 0, f"{path}: empty file under a final name"
        try:
            check(path)
        except AssertionError:
            raise
        except Exception as error:
            pytest.fail(
                f"{path}: corrupt file under a final name after a kill: {type(error).__name__}: {error}"
            )
        checked.append(path)
    return checked


def _finals(root: Path, scratch: Sequence[str] = ()) -> dict[str, bytes]:
    """Relative path -> bytes of every file under its final name (temporaries and scratch left out)."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not is_partial(p) and not any(fnmatch(p.name, s) for s in scratch)
    }


def _start(command: list[str], log: Path) -> subprocess.Popen:
    """Start ``command`` as the leader of a new process group (its workers join it), output to ``log``."""
    with log.open("wb") as handle:
        return subprocess.Popen(command, start_new_session=True, stdout=handle, stderr=subprocess.STDOUT)


def _kill_when(process: subprocess.Popen, ready: Callable[[], bool], log: Path, deadline_s: float) -> None:
    """Poll ``ready()`` every 5 ms; once it holds, SIGKILL the whole process group and reap the leader.
    Fails if the process ends first (the kill point was missed) or the deadline passes."""
    deadline = time.monotonic() + deadline_s
    while not ready():
        if process.poll() is not None:
            pytest.fail(
                f"the run ended (exit {process.returncode}) before it could be killed: "
                f"{log.read_text(errors='replace')[-3000:]}"
            )
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
            pytest.fail(
                f"the kill point was not reached in {deadline_s} s: {log.read_text(errors='replace')[-3000:]}"
            )
        time.sleep(0.005)
    os.killpg(process.pid, signal.SIGKILL)  # the command and its worker processes, mid-write
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, log.read_text(errors="replace")[-3000:]


# ------------------------------------------------------------------------------------------ demo-data
# 6 scenes x 4 variants of 24 frames at 160 x 120 and a tree of 3 scenes x 13 versions: about 4 s on two
# cores, long enough to be caught in either phase.
_KNOBS = {"scenes": 6, "variants": 4, "frames": 24, "width": 160, "height": 120, "tree_scenes": 3}
_SEED = 7
_CLIPS, _TREE = 6 * 4, 3 * 13
_GENERATE = (
    "import json, sys\n"
    "from qasa_vqa.data.synthetic import generate_demo_corpus\n"
    "knobs = json.loads(sys.argv[3])\n"
    "generate_demo_corpus(sys.argv[1], seed=int(sys.argv[2]), workers=2, progress=False, **knobs)\n"
)


@pytest.fixture(scope="module")
def clean_corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The files of an uninterrupted run of the same seed and knobs."""
    root = tmp_path_factory.mktemp("clean") / "corpus"
    generate_demo_corpus(root, seed=_SEED, workers=2, progress=False, **_KNOBS)
    finals = _finals(root)
    assert sum(name.startswith("videos/") for name in finals) == _CLIPS
    assert sum(name.startswith("tree/") and name.endswith(".mp4") for name in finals) == _TREE
    return finals


def _mp4s(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*.mp4") if not is_partial(p)] if folder.is_dir() else []


def _partials(folder: Path) -> bool:
    return folder.is_dir() and any(is_partial(p) for p in folder.rglob(".*"))


@pytest.mark.timeout(180)
@pytest.mark.parametrize("phase", ["clips", "tree"])
def test_demo_data_killed_mid_run_resumes_to_the_same_corpus(
    phase: str, clean_corpus: dict[str, bytes], tmp_path: Path
) -> None:
    out = tmp_path / "corpus"
    command = [sys.executable, "-c", _GENERATE, str(out), str(_SEED), json.dumps(_KNOBS)]
    videos, tree = out / "videos", out / "tree"

    def ready() -> bool:  # some outputs finished and, most often, one being written
        if phase == "clips":
            done = len(_mp4s(videos))
            return (done >= 4 and _partials(videos)) or done >= _CLIPS // 2
        done = len(_mp4s(tree))
        return (done >= 4 and _partials(tree)) or done >= _TREE // 3

    _kill_when(_start(command, tmp_path / "killed.log"), ready, tmp_path / "killed.log", deadline_s=120)
    assert not (out / "manifest.csv").exists() and not (out / "corpus.json").exists()
    if phase == "clips":
        assert len(_mp4s(videos)) < _CLIPS and not _mp4s(tree)
    else:
        assert len(_mp4s(videos)) == _CLIPS and 4 <= len(_mp4s(tree)) < _TREE
    checked = assert_no_corrupt_outputs(out)
    assert out / ".demo-plan.json" in checked  # the marker that lets the rerun resume this folder
    finished = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in checked if p.suffix == ".mp4"}

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=150, check=False)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert_no_corrupt_outputs(out)
    assert not (out / ".demo-plan.json").exists()
    # resumed, not redone: what the killed run finished is left as it was
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in finished} == finished
    resumed = _finals(out)
    assert resumed.keys() == clean_corpus.keys()
    # the tree's manifest says which outputs this run wrote and which it found: all else is the same
    name = f"tree/{MANIFEST_NAME}"
    rows, clean_rows = _manifest_rows(resumed.pop(name)), _manifest_rows(clean_corpus[name])
    status = [row.pop("status") for row in rows]
    assert rows == [{k: v for k, v in row.items() if k != "status"} for row in clean_rows]
    skipped = sum(p.parent.parent == tree for p in finished)
    assert status.count("skipped") == skipped and status.count("written") == _TREE - skipped
    differ = [name for name in resumed if resumed[name] != clean_corpus[name]]
    assert not differ, f"not the bytes of an uninterrupted run: {differ}"


def _manifest_rows(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(data.decode("utf-8").splitlines()))


# ------------------------------------------------------------------------------------------ demo-clip
_STEPS = 4


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "corpus"
    knobs = {"scenes": 4, "variants": 3, "frames": 16, "width": 96, "height": 72, "tree_scenes": 0}
    generate_demo_corpus(root, seed=5, workers=1, progress=False, **knobs)
    return root


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return read_clip_file(path)


def _same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _losses(log: Path) -> list[str]:
    with log.open(newline="") as handle:
        return [row["loss"] for row in csv.DictReader(handle)]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_demo_clip_killed_in_training_and_in_measuring_then_completes(
    small_corpus: Path, tmp_path: Path
) -> None:
    out = tmp_path / "made"
    weights, snapshot = out / "demo_clip.safetensors", out / "snapshot_2.safetensors"
    command = [sys.executable, "-m", "qasa_vqa", "demo-clip", "--out", str(out),
               "--corpus", str(small_corpus),
               "--steps", str(_STEPS), "--shots", "32", "--seed", "1", "--bootstrap", "50",
               "--workers", "2", "--no-progress", "--snapshots", "2"]  # fmt: skip

    # 1. killed in training, once the step-2 snapshot is written
    log = tmp_path / "first.log"
    _kill_when(_start(command, log), snapshot.exists, log, deadline_s=300)
    assert not weights.exists() and not (out / "train_log.csv").exists() and not (out / "pairs.png").exists()
    assert snapshot in assert_no_corrupt_outputs(out)
    header = read_clip_header(snapshot)
    assert header is not None and header.provenance["snapshot_step"] == 2
    first_snapshot = _tensors(snapshot)

    # 2. killed while measuring: the weights are written, their header is about to get the zero-shot figures
    log = tmp_path / "second.log"
    _kill_when(_start(command, log), (out / "pairs.png").exists, log, deadline_s=300)
    checked = assert_no_corrupt_outputs(out)
    assert {weights, out / "train_log.csv", out / "pairs.png", snapshot} <= set(checked)
    header = read_clip_header(weights)
    assert header is not None and "zero_shot" not in header.provenance, "killed after the measurement"
    assert _same_tensors(_tensors(snapshot), first_snapshot)  # a rerun repeats the same run
    second_weights, second_losses = _tensors(weights), _losses(out / "train_log.csv")
    assert len(second_losses) == _STEPS

    # 3. the same command completes, and its files are those of the runs it repeats
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "SRCC" in done.stdout and "demo CLIP" in done.stdout
    assert_no_corrupt_outputs(out)
    header = read_clip_header(weights)
    assert header is not None and header.provenance["recipe"]["steps"] == _STEPS
    assert header.provenance["zero_shot"]["trained"]["all"]["n"] == 12
    assert _same_tensors(_tensors(weights), second_weights)
    assert _same_tensors(_tensors(snapshot), first_snapshot)
    assert _losses(out / "train_log.csv") == second_losses
    assert build_clip_quality(pretrained=weights).prompt_features.shape == (4, 128)
    print(f"demo-clip: the completing run took {time.perf_counter() - started:.0f} s")
