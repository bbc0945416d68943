"""``python -m qasa_vqa.pretrain``: ST-VQRL self-supervised pretraining on a distortion tree (Hydra).

Configuration: ``conf/pretrain.yaml`` with the groups ``trainer`` (cpu, gpu, ddp), ``logger`` (wandb
offline, csv) and ``experiment`` (pretrain_demo: tiny CPU twin on the demo corpus; pretrain_paper: the
paper's setting). The run directory (``outputs/<name>`` by default) holds the resolved config,
``checkpoints/last.ckpt`` (written every ``checkpoint_every_n_steps`` steps; a rerun into the same
directory resumes from it), ``skipped_videos.json`` (scenes ``data.on_error=skip`` left out, and why),
and at the end the backbone twice: ``stvqrl_backbone.pt`` (our format) and
``stvqrl_backbone_official.pth`` (``{'model': ...}``, the layout the authors' code loads). With
``retrieval=true`` it prints the version-retrieval accuracy (:mod:`qasa_vqa.retrieval`) before and after.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch import seed_everything
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar
from omegaconf import DictConfig, OmegaConf

from qasa_vqa.data.datamodules import PretrainDataModule
from qasa_vqa.data.datasets import (
    MIN_FRAMES,
    MIN_SIDE,
    DistortionTreeError,
    PretrainDataset,
    find_distortion_tree,
)
from qasa_vqa.lit.callbacks import SkippedVideos
from qasa_vqa.lit.run import build_trainer, exit_on_error, resume_checkpoint, save_config
from qasa_vqa.lit.stvqrl import STVQRLPretrainModule
from qasa_vqa.models.checkpoints import save_stvqrl_backbone
from qasa_vqa.models.swin3d import VideoSwinBackbone
from qasa_vqa.retrieval import version_retrieval_accuracy

__all__ = ["main", "run"]

_NO_DATA = """\
qasa-vqa pretrain: no distortion tree at {root}: {reason}
  Pretraining needs <root>/0/<name> (pristine videos) and <root>/1..12/<name> (their distorted versions).
  - make the demo corpus (about a minute):   qasa-vqa demo-data --out demo_data   (or: make demo-data)
  - or distort your own pristine videos:     qasa-vqa synth PRISTINE_DIR TREE_DIR
  then point the run at it:                  python -m qasa_vqa.pretrain data.root=TREE_DIR"""


def run(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """Pretrain as ``cfg`` says, writing into ``output_dir``; returns the retrieval accuracies and paths."""
    data = cfg.data
    find_distortion_tree(data.root, min_distortions=data.versions - 1)  # fails early, with the reason
    seed_everything(cfg.seed, workers=True)
    save_config(cfg, output_dir)
    datamodule = PretrainDataModule(
        data.root,
        **_view_options(cfg),
        batch_size=data.batch_size,
        num_workers=data.num_workers,
        seed=cfg.seed,
        on_error=data.get("on_error", "skip"),
        max_failed_fraction=data.get("max_failed_fraction", 0.2),
        min_frames=data.get("min_frames", MIN_FRAMES),
        min_side=data.get("min_side", MIN_SIDE),
    )
    backbone = VideoSwinBackbone(
        **OmegaConf.to_container(cfg.model.backbone, resolve=True),
        gradient_checkpointing=cfg.model.gradient_checkpointing,
    )
    module = STVQRLPretrainModule(
        backbone,
        projection_dim=cfg.model.projection_dim,
        learn_projection=cfg.model.learn_projection,
        tau=cfg.loss.tau,
        ridge=cfg.loss.ridge,
        solver=cfg.loss.solver,
        lr=cfg.optim.lr,
        weight_decay=cfg.optim.weight_decay,
        min_lr=cfg.optim.min_lr,
        projection_seed=cfg.seed,
        nonfinite=cfg.loss.get("nonfinite", "skip"),
    )
    result: dict[str, Any] = {}
    if cfg.retrieval:
        result["retrieval_before"] = _retrieval(module, cfg)
    checkpoints = ModelCheckpoint(
        dirpath=output_dir / "checkpoints",
        save_last=True,
        save_top_k=0,
        every_n_train_steps=cfg.checkpoint_every_n_steps,
    )
    trainer = build_trainer(
        cfg.trainer,
        output_dir,
        logger=cfg.logger,
        callbacks=[
            checkpoints,
            LearningRateMonitor(logging_interval="step"),
            RichProgressBar(),
            SkippedVideos(
                output_dir, max_failed_fraction=datamodule.max_failed_fraction, default_set="scenes"
            ),
        ],
        max_epochs=cfg.epochs,
        log_every_n_steps=cfg.log_every_n_steps,
    )
    trainer.fit(
        module, datamodule=datamodule, ckpt_path=resume_checkpoint(cfg.resume, output_dir), weights_only=True
    )
    result["global_step"] = trainer.global_step
    if trainer.is_global_zero:
        result["backbone"] = save_stvqrl_backbone(module.backbone, output_dir / "stvqrl_backbone.pt")
        result["official"] = save_stvqrl_backbone(
            module.backbone, output_dir / "stvqrl_backbone_official.pth", official=True
        )
        if cfg.retrieval:
            result["retrieval_after"] = _retrieval(module, cfg)
            print(
                f"version retrieval accuracy (chance {1 / data.versions:.2f}): "
                f"before {result['retrieval_before']:.3f} -> after {result['retrieval_after']:.3f}"
            )
        print(f"backbone written to {result['backbone']} and {result['official']}")
    return result


def _view_options(cfg: DictConfig) -> dict[str, int]:
    """How items are drawn from the tree: versions per scene, clip length and stride, fragment grid."""
    names = ("versions", "clip_len", "frame_interval", "grid", "patch")
    return {name: int(cfg.data[name]) for name in names}


def _retrieval(module: STVQRLPretrainModule, cfg: DictConfig) -> float:
    """Accuracy on ``retrieval_draws`` fixed draws per scene (the same draws before and after training)."""
    data = cfg.data
    dataset = PretrainDataset(data.root, **_view_options(cfg), seed=cfg.seed + 12345)
    training = module.training
    module.eval()
    device = module.device
    try:
        items = (dataset[i] for _ in range(cfg.retrieval_draws) for i in range(len(dataset)))
        batches = ({key: item[key].unsqueeze(0).to(device) for key in ("view1", "view2")} for item in items)
        with torch.no_grad():
            return version_retrieval_accuracy(module.embed, batches, ridge=cfg.loss.ridge)
    finally:
        module.train(training)


@hydra.main(version_base="1.3", config_path="../../conf", config_name="pretrain")
def main(cfg: DictConfig) -> None:
    exit_on_error(
        "qasa-vqa pretrain",
        lambda: run(cfg, Path(HydraConfig.get().runtime.output_dir)),
        {DistortionTreeError: lambda error: _NO_DATA.format(root=cfg.data.root, reason=error)},
    )


if __name__ == "__main__":
    main()
