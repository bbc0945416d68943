"""``python -m qasa_vqa.pretrain``: configs compose, a tiny run writes loadable backbones, a killed run
resumes at its checkpoint's step, the paper preset takes a step on CPU, and missing data is explained."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from corpora import write_version_tree
from qasa_vqa.models.checkpoints import load_stvqrl_backbone
from qasa_vqa.pretrain import run

CONF = Path(__file__).resolve().parents[2] / "conf"
TINY = [
    "model.backbone.embed_dim=8",
    "model.backbone.depths=[1,1,1,1]",
    "model.backbone.num_heads=[1,1,2,2]",
    "model.backbone.window_size=[2,7,7]",
    "model.projection_dim=4",
    "data.versions=4",
    "data.clip_len=4",
    "data.batch_size=2",
    "data.num_workers=0",
    "retrieval_draws=1",
    "logger=csv",
]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_version_tree(tmp_path_factory.mktemp("tree"), scenes=3, frames=24)


def _config(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="pretrain", overrides=overrides)


def test_presets_compose() -> None:
    demo = _config([])
    assert demo.name == "pretrain_demo" and demo.data.clip_len == 8 and demo.model.backbone.embed_dim == 24
    assert demo.data.root == "demo_data/tree" and demo.trainer.accelerator == "cpu"
    paper = _config(["experiment=pretrain_paper", "trainer=gpu"])
    assert paper.data.clip_len == 32 and paper.data.patch == 32 and paper.data.versions == 10
    assert paper.model.backbone.embed_dim == 96 and list(paper.model.backbone.depths) == [2, 2, 6, 2]
    assert paper.optim.lr == 1e-4 and paper.optim.weight_decay == 0.05 and paper.optim.min_lr == 1e-5
    assert paper.epochs == 30 and paper.trainer.accelerator == "gpu"


def test_tiny_run_writes_backbones_both_ways(tree: Path, tmp_path: Path, capsys) -> None:
    cfg = _config([*TINY, f"data.root={tree}", "epochs=2"])
    result = run(cfg, tmp_path)
    assert result["global_step"] == 4  # 3 scenes in batches of 2, 2 epochs
    printed = capsys.readouterr().out
    assert re.search(r"version retrieval accuracy \(chance 0\.25\): before \d\.\d+ -> after \d\.\d+", printed)
    ours = load_stvqrl_backbone(tmp_path / "stvqrl_backbone.pt")
    assert ours.config["embed_dim"] == 8 and not ours.training
    official = load_stvqrl_backbone(tmp_path / "stvqrl_backbone_official.pth", architecture=ours.config)
    assert all(
        torch.equal(a, b)
        for a, b in zip(ours.state_dict().values(), official.state_dict().values(), strict=True)
    )
    assert set(torch.load(tmp_path / "stvqrl_backbone_official.pth", weights_only=True)) == {"model"}
    assert (tmp_path / "checkpoints" / "last.ckpt").exists() and (tmp_path / "config.yaml").exists()
    assert list((tmp_path / "logs").rglob("metrics.csv"))


def test_paper_preset_takes_one_step_on_cpu(tree: Path, tmp_path: Path) -> None:
    overrides = ["experiment=pretrain_paper", f"data.root={tree}", "data.versions=2", "data.batch_size=1"]
    cfg = _config(
        [*overrides, "data.num_workers=0", "+trainer.fast_dev_run=1", "retrieval=false", "logger=csv"]
    )
    assert run(cfg, tmp_path)["global_step"] == 1
    assert load_stvqrl_backbone(tmp_path / "stvqrl_backbone.pt").config["embed_dim"] == 96


def _command(tree: Path, run_dir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "qasa_vqa.pretrain",
        *TINY,
        f"data.root={tree}",
        "epochs=6",
        "retrieval=false",
        f"hydra.run.dir={run_dir}",
    ]


def test_a_killed_run_resumes_at_its_checkpoint_step(tree: Path, tmp_path: Path) -> None:
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    process = subprocess.Popen(
        _command(tree, tmp_path / "run"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline, step = time.monotonic() + 240, 0
    while process.poll() is None and time.monotonic() < deadline:
        if last.exists():
            try:
                step = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
            except Exception:
                step = 0
            if step >= 3:
                break
        time.sleep(0.05)
    assert process.poll() is None, (
        f"the run ended before it could be killed: {process.stderr.read().decode()[-2000:]}"
    )
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    saved = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    assert 3 <= saved < 12
    rerun = subprocess.run(_command(tree, tmp_path / "run"), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resumed at global step {saved} " in rerun.stdout
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 12


def test_without_data_the_run_explains_what_to_do(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "qasa_vqa.pretrain",
            f"data.root={tmp_path / 'nothing'}",
            f"hydra.run.dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "no distortion tree at" in result.stderr
    assert "qasa-vqa demo-data" in result.stderr and "qasa-vqa synth" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_demo_preset_on_the_demo_corpus_separates_versions_better(tmp_path: Path) -> None:
    # make test-all: about 1 minute for the corpus and 3 for the run on 2 cores
    from qasa_vqa.data.synthetic import generate_demo_corpus

    corpus = generate_demo_corpus(tmp_path / "demo_data", progress=False)
    result = run(_config([f"data.root={corpus.tree_dir}", "logger=csv"]), tmp_path / "run")
    assert result["retrieval_after"] > result["retrieval_before"]
