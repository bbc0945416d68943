"""``python -m qasa_vqa.train``: every experiment composes and builds; the paper recipe starts; clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig

from qasa_vqa.data.datamodules import SemiSupervisedDataModule
from qasa_vqa.errors import QasaVqaError
from qasa_vqa.lit.qasa import QASASemiSupervisedModule
from qasa_vqa.lit.run import build_trainer
from qasa_vqa.models.checkpoints import save_stvqrl_backbone
from qasa_vqa.models.clip_quality import LOCAL_CLIP_CONFIGS
from qasa_vqa.models.swin3d import VideoSwinBackbone
from qasa_vqa.train import build_module, check_needs, run
from qasa_vqa.video.writer import synthetic_frames, write_video

CONF = Path(__file__).resolve().parents[2] / "conf"
TRAIN_EXPERIMENTS = sorted(
    p.stem for p in (CONF / "experiment").glob("*.yaml") if not p.stem.startswith("pretrain")
)
SWEEPS = sorted(p.stem for p in (CONF / "sweep").glob("*.yaml"))
TINY_BACKBONE = {"embed_dim": 24, "depths": [1, 1, 2, 1], "num_heads": [1, 2, 2, 4], "window_size": [4, 7, 7]}


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny CLIP file (stands for a local ViT-B-32.pt) and a tiny-twin ST-VQRL backbone file."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    clip = folder / "tiny_clip.pt"
    torch.save(open_clip.CLIP(**LOCAL_CLIP_CONFIGS["tiny"]).state_dict(), clip)
    backbone = save_stvqrl_backbone(VideoSwinBackbone(**TINY_BACKBONE), folder / "stvqrl_tiny.pt")
    return {"clip": clip, "backbone": backbone}


def _compose(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def _offline(weights: dict[str, Path], tmp_path: Path) -> list[str]:
    """What every test run overrides: a CPU, a tiny local CLIP, outputs in tmp_path."""
    return [
        "trainer=cpu",
        "clip=local",
        "clip.model_name=tiny",
        f"clip.pretrained={weights['clip']}",
        f"paths.output_dir={tmp_path / 'run'}",
        f"paths.split_dir={tmp_path / 'splits'}",
        "logger=csv",
    ]


@pytest.mark.parametrize("sweep", [None, *SWEEPS])
@pytest.mark.parametrize("experiment", TRAIN_EXPERIMENTS)
def test_every_experiment_composes_and_builds(
    experiment: str, sweep: str | None, weights: dict[str, Path], tmp_path: Path
) -> None:
    raw = _compose([f"experiment={experiment}"] + ([f"sweep={sweep}"] if sweep else []))
    assert raw.name == experiment and raw.needs, "an experiment says what it needs"
    assert raw.trainer.accelerator in ("cpu", "gpu") and "max_epochs" not in raw.trainer  # hardware only
    overrides = [f"experiment={experiment}", *_offline(weights, tmp_path), "model.stvqrl_checkpoint=null"]
    cfg = _compose(overrides + ([f"sweep={sweep}"] if sweep else []))
    datamodule = instantiate(cfg.data, _convert_="all")
    assert isinstance(datamodule, SemiSupervisedDataModule)
    module = build_module(cfg)
    assert isinstance(module, QASASemiSupervisedModule) and module.branches == tuple(cfg.branches)
    trainer = build_trainer(cfg.trainer, tmp_path / "run", logger=None, max_epochs=1)
    assert trainer.max_epochs == 1


def _lsvq_like(root: Path, count: int = 12) -> Path:
    """A 1,999-entry QASA pool JSON whose videos are symlinks to ``count`` generated clips."""
    videos = root / "videos"
    videos.mkdir(parents=True)
    for i in range(count):
        write_video(videos / f"real{i}.mp4", synthetic_frames(16, 72, 96, seed=i), codec="h264")
    entries = []
    for i in range(1999):
        name = f"yfcc-batch1/{i}.mp4"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).symlink_to(videos / f"real{i % count}.mp4")
        entries.append({"filename": name, "label": 20 + (i * 37) % 60})
    pool = root / "semisupervised.json"
    pool.write_text(json.dumps(entries))
    return pool


def test_paper_recipe_fast_dev_run_with_the_tiny_twin(weights: dict[str, Path], tmp_path: Path) -> None:
    pool = _lsvq_like(tmp_path / "LSVQ")
    overrides = [
        "experiment=500lab_1500unlab",
        *_offline(weights, tmp_path),
        "model=tiny",
        "debug=fast",
        f"data.train.manifest={pool}",
        f"data.train.root={pool.parent}",
        f"model.stvqrl_checkpoint={weights['backbone']}",
        "data.num_workers=0",
        "data.pin_memory=false",
    ]
    cfg = _compose(overrides)
    assert cfg.data.strategy == "official" and cfg.epochs == 40 and cfg.data.batch_size == 6
    result = run(cfg, tmp_path / "run")
    assert result["global_step"] == 1
    split = json.loads(next((tmp_path / "splits").glob("*official*.json")).read_text())
    assert len(split["labelled"]) == 500 and len(split["unlabelled"]) == 1499


def test_missing_paths_are_named_in_one_message(weights: dict[str, Path], tmp_path: Path) -> None:
    cfg = _compose(
        ["experiment=500lab_1500unlab", *_offline(weights, tmp_path), f"paths.data_root={tmp_path}"]
    )
    with pytest.raises(QasaVqaError) as caught:
        check_needs(cfg)
    message = str(caught.value)
    assert "data.train.manifest" in message and "model.stvqrl_checkpoint" in message
    assert "labels_train.txt" in message and "QASA_STVQRL" in message
    demo = _compose(["experiment=demo", *_offline(weights, tmp_path), f"paths.output_root={tmp_path}",
                     f"paths.demo_root={tmp_path / 'none'}"])  # fmt: skip
    with pytest.raises(QasaVqaError, match=r"make demo-data[\s\S]*make pretrain"):
        check_needs(demo)


def test_official_split_refuses_a_budget(tmp_path: Path) -> None:
    with pytest.raises(QasaVqaError, match="takes no budget"):
        SemiSupervisedDataModule({"manifest": tmp_path / "x.json"}, strategy="official", n_labelled=100)
    with pytest.raises(QasaVqaError, match="needs n_labelled"):
        SemiSupervisedDataModule({"manifest": tmp_path / "x.csv"}, strategy="random")
