"""``python -m qasa_vqa.train``: QASA-VQA's CLIP-guided semi-supervised training (Hydra).

Configuration: ``conf/train.yaml`` and its groups (``data``, ``split``, ``model``, ``clip``, ``loss``,
``optim``, ``trainer``, ``logger``, ``callbacks``, ``paths``, ``debug``, ``experiment``, ``ablation``,
``sweep``); the objects are built from their ``_target_`` nodes. ``experiment=demo`` (the default) runs
the whole method on the demo corpus on CPU in minutes; ``experiment=500lab_1500unlab`` is the paper's
recipe. An experiment lists what it ``needs`` (a setting and how to get it); each missing one is reported
in one message before anything is built.

The run directory (``outputs/<name>/seed<seed>``, or ``hydra.run.dir``) holds the resolved config, the
logs, ``checkpoints/`` (``last.ckpt`` for resuming, the best by ``monitor``, the authors' layout every
few epochs), ``skipped_videos.json`` (the videos ``data.on_error=skip`` left out, and why) and, at the
end, ``qasa_model.pt`` (our format) and ``qasa_model_official.pth`` (``{'primary', 'auxillary', 'epoch'}``). Rerunning into it resumes from ``last.ckpt`` at its global
step, continuing the data draws. With ``sweep_csv`` set (``sweep=label_budget``), the run appends one
row of results to that CSV. :func:`main` returns the ``monitor`` metric, for sweepers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch import seed_everything
from omegaconf import DictConfig, OmegaConf

from qasa_vqa.errors import QasaVqaError
from qasa_vqa.lit.callbacks import SkippedVideos
from qasa_vqa.lit.qasa import QASASemiSupervisedModule
from qasa_vqa.lit.run import (
    build_trainer,
    exit_on_error,
    instantiate_callbacks,
    resume_checkpoint,
    root_hint,
    save_config,
)
from qasa_vqa.lit.schedule import trained_epochs
from qasa_vqa.models.checkpoints import save_qasa
from qasa_vqa.storage import atomic_save
from qasa_vqa.sweeps import append_row

__all__ = ["build_module", "check_needs", "main", "run"]


def check_needs(cfg: DictConfig) -> None:
    """Every path the experiment ``needs`` exists; otherwise one error listing each missing one with
    how to get it."""
    if "_target_" not in (cfg.get("data") or {}):
        raise QasaVqaError(
            "data= chooses the training data (demo, lsvq); test sets such as konvid are for python -m "
            "qasa_vqa.evaluate, or add them to training with data/test@data.test_sets.NAME=NAME"
        )
    missing = []
    for key, hint in (cfg.get("needs") or {}).items():
        value = OmegaConf.select(cfg, key)
        if value in (None, "") or not Path(str(value)).exists():
            where = root_hint(cfg, value) if value not in (None, "") else ""  # a data root that is not there
            missing.append(f"  {key} = {value}: {hint}{where}")
    if missing:
        raise QasaVqaError(f"experiment {cfg.name} is missing what it needs:\n" + "\n".join(missing))


def build_module(cfg: DictConfig) -> QASASemiSupervisedModule:
    """The model (``model`` node, with its ``clip``) in the training system of ``optim`` and ``loss``."""
    model = instantiate(cfg.model, _convert_="all")
    return QASASemiSupervisedModule(
        model,
        primary_optimizer=instantiate(cfg.optim.primary),
        head_lr=cfg.optim.head_lr,
        backbone_lr=cfg.optim.backbone_lr,
        clip_optimizer=instantiate(cfg.optim.clip),
        schedule=instantiate(cfg.optim.schedule),
        epochs=cfg.epochs,
        w_cons=cfg.loss.w_cons,
        w_stab=cfg.loss.w_stab,
        mask_mode=cfg.loss.mask_mode,
        plcc_scope=cfg.loss.get("plcc_scope", "global"),
        branches=list(cfg.branches),
        gradient_clip_val=cfg.optim.gradient_clip_val,
        gradient_checkpointing=cfg.optim.gradient_checkpointing,
        nonfinite=cfg.loss.get("nonfinite", "skip"),
    )


def _metrics(values: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if k.startswith(("val/", "test/"))}


def run(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """Train (or resume) as ``cfg`` says, writing into ``output_dir``; returns the final metrics and paths."""
    check_needs(cfg)
    seed_everything(cfg.seed, workers=True)
    save_config(cfg, output_dir)
    datamodule = instantiate(cfg.data, _convert_="all")
    module = build_module(cfg)
    epochs = trained_epochs(cfg.epochs, cfg.optim.schedule.extra_epoch)
    trainer = build_trainer(
        cfg.trainer,
        output_dir,
        logger=cfg.logger,
        callbacks=[
            *instantiate_callbacks(cfg.callbacks),
            # data.on_error=skip: count and name the skipped videos, stop past data.max_failed_fraction
            SkippedVideos(output_dir, max_failed_fraction=getattr(datamodule, "max_failed_fraction", None)),
        ],
        max_epochs=epochs,
        check_val_every_n_epoch=cfg.check_val_every_n_epoch,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,  # the datamodule's samplers are already rank-aware
    )
    checkpoint = resume_checkpoint(cfg.resume, output_dir)
    result: dict[str, Any] = {"metrics": {}}
    if checkpoint is None and cfg.validate_before_training:  # the starting point, logged at step 0
        for values in trainer.validate(module, datamodule=datamodule, verbose=False):
            result["metrics"] |= {f"start/{k}": v for k, v in _metrics(values).items()}
    if checkpoint is None and cfg.get("test_before_training"):  # e.g. the zero-shot CLIP branch on test
        for values in trainer.test(module, datamodule=datamodule, verbose=False):
            result["metrics"] |= {f"start/{k}": v for k, v in _metrics(values).items()}
    trainer.fit(module, datamodule=datamodule, ckpt_path=checkpoint, weights_only=True)
    result["global_step"] = trainer.global_step
    if trainer.is_global_zero and Path(datamodule.split_file).is_file():  # the run says which videos it used
        split_file = datamodule.split_file
        atomic_save(output_dir / "split.json", lambda partial: shutil.copyfile(split_file, partial))
    result["metrics"] |= _metrics(trainer.callback_metrics)
    if cfg.test_after_training and not trainer.fast_dev_run:
        for values in trainer.test(module, datamodule=datamodule, verbose=False):
            result["metrics"] |= _metrics(values)
    if trainer.is_global_zero and not trainer.fast_dev_run:
        epoch = max(0, trainer.current_epoch - 1)
        views = dataclasses.asdict(datamodule.views)  # how the model saw its videos, for scorers
        result["model"] = save_qasa(module.model, output_dir / "qasa_model.pt", views=views)
        result["official"] = save_qasa(
            module.model, output_dir / "qasa_model_official.pth", official=True, epoch=epoch
        )
        if cfg.sweep_csv:
            append_row(cfg.sweep_csv, _sweep_row(cfg, datamodule, result))
    return result


def _sweep_row(cfg: DictConfig, datamodule: Any, result: dict[str, Any]) -> dict[str, Any]:
    split = datamodule.split
    split_file = Path(datamodule.split_file)
    return {
        "experiment": cfg.name,
        "ablation": HydraConfig.get().runtime.choices.get("ablation") if HydraConfig.initialized() else None,
        "n_labelled": len(split.labelled) if split is not None else None,
        "n_unlabelled": len(split.unlabelled) if split is not None else None,
        "seed": cfg.seed,
        "split_file": str(split_file),
        "split_sha256": hashlib.sha256(split_file.read_bytes()).hexdigest() if split_file.is_file() else "",
        "global_step": result["global_step"],
        "checkpoint": str(result.get("model", "")),
        **result["metrics"],
    }


@hydra.main(version_base="1.3", config_path="../../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    result = exit_on_error("qasa-vqa train", lambda: run(cfg, Path(HydraConfig.get().runtime.output_dir)))
    value = result["metrics"].get(cfg.monitor)
    return None if value is None else float(value)


if __name__ == "__main__":
    main()
