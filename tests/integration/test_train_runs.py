"""Training runs end to end on a small generated corpus: a 2 x 2 label-budget sweep and its report, and a
run killed with SIGKILL that resumes at the same global step."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import open_clip
import pytest
import torch

from qasa_vqa.cli import main as cli
from qasa_vqa.data.synthetic import generate_demo_corpus
from qasa_vqa.models.checkpoints import save_stvqrl_backbone
from qasa_vqa.models.clip_quality import LOCAL_CLIP_CONFIGS
from qasa_vqa.models.swin3d import VideoSwinBackbone

TINY_BACKBONE = {"embed_dim": 24, "depths": [1, 1, 2, 1], "num_heads": [1, 2, 2, 4], "window_size": [4, 7, 7]}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("train")
    corpus = generate_demo_corpus(
        root / "demo",
        seed=3,
        progress=False,
        scenes=4,
        variants=4,
        frames=16,
        width=96,
        height=72,
        tree_scenes=0,
    )
    torch.manual_seed(0)
    clip = root / "tiny_clip.pt"
    torch.save(open_clip.CLIP(**LOCAL_CLIP_CONFIGS["tiny"]).state_dict(), clip)
    backbone = save_stvqrl_backbone(VideoSwinBackbone(**TINY_BACKBONE), root / "stvqrl_tiny.pt")
    return {"root": root, "corpus": corpus.root, "clip": clip, "backbone": backbone}


def _overrides(setup: dict[str, Path], out: Path) -> list[str]:
    return [
        "experiment=demo",
        "clip=local",
        "clip.model_name=tiny",
        f"clip.pretrained={setup['clip']}",
        f"paths.demo_root={setup['corpus']}",
        f"paths.output_root={out}",
        f"model.stvqrl_checkpoint={setup['backbone']}",
        "data.n_labelled=4",
        "data.n_validation=3",
        "data.batch_size=2",
        "data.num_workers=0",
        "logger=csv",
        "~callbacks.progress",
    ]


def _train(args: list[str], **options) -> subprocess.Popen:
    env = os.environ | {"PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "1"}
    return subprocess.Popen([sys.executable, "-m", "qasa_vqa.train", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **options)  # fmt: skip


def test_label_budget_sweep_and_report(
    setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [*_overrides(setup, tmp_path), "sweep=label_budget", "data.n_labelled=2,4", "seed=0,1",
            "epochs=1", "validate_before_training=false"]  # fmt: skip
    process = _train(args)
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-3000:]
    results = tmp_path / "sweeps" / "demo" / "results.csv"
    with open(results, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted((int(r["n_labelled"]), int(r["seed"])) for r in rows) == [(2, 0), (2, 1), (4, 0), (4, 1)]
    assert all(r["split_sha256"] and Path(r["checkpoint"]).is_file() for r in rows)
    assert len({r["split_sha256"] for r in rows}) == 4  # each budget and seed its own draw
    for row in rows:
        for score in ("stvqrl", "clip", "qasa"):
            assert -1 <= float(row[f"test/demo-test/{score}/srcc"]) <= 1
    assert cli(["report", str(results.parent)]) == 0
    printed = capsys.readouterr().out
    assert "4 runs" in printed and printed.count("demo ") >= 2 and "+-" in printed
    assert (results.parent / "label_budget.png").stat().st_size > 1000


def _step_of(checkpoint: Path) -> int:
    return int(torch.load(checkpoint, map_location="cpu", weights_only=True)["global_step"])


def test_sigkill_then_resume_at_the_same_step(setup: dict[str, Path], tmp_path: Path) -> None:
    args = [*_overrides(setup, tmp_path), "epochs=3", "callbacks.last.every_n_train_steps=1",
            "validate_before_training=false", "test_after_training=false", "hydra.run.dir=" + str(tmp_path / "run")]  # fmt: skip
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    process = _train(args, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (last.exists() and _safe_step(last) >= 3):
        if process.poll() is not None:
            pytest.fail("the run ended before it could be killed: " + process.stdout.read()[-2000:])
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    step = _step_of(last)
    assert step >= 3
    resumed = _train(args)
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output[-3000:]
    assert f"resumed at global step {step}" in output
    assert _step_of(last) == 4 * 2  # 4 epochs (3 + the reference's extra one) of 2 labelled batches
    metrics = (tmp_path / "run" / "logs").rglob("metrics.csv")
    assert any(path.stat().st_size for path in metrics)


def _safe_step(path: Path) -> int:
    try:
        return _step_of(path)
    except Exception:  # being written
        return -1
