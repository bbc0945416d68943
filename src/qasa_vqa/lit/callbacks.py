"""Callbacks of the QASA-VQA training run: the model in the authors' checkpoint layout every N epochs.

:class:`OfficialCheckpoints` writes ``clip2stvqrl_<epoch>.pth`` = ``{'primary', 'auxillary', 'epoch'}``
(docs/method.md section 4.10), loadable by the authors' test script, at the end of every ``every_n_epochs``-th
training epoch, as the reference does (``epoch and epoch % 5 == 0``). Epochs are counted from 0 like the
reference's loop, so with ``every_n_epochs=5`` the files are those of epochs 5, 10, ...
"""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer

from qasa_vqa.models.checkpoints import save_qasa

__all__ = ["OfficialCheckpoints"]


class OfficialCheckpoints(Callback):
    """Write the model in the authors' layout after every ``every_n_epochs``-th epoch (module docstring)."""

    def __init__(self, dirpath: str | Path, every_n_epochs: int = 5, prefix: str = "clip2stvqrl") -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.dirpath, self.every_n_epochs, self.prefix = Path(dirpath), every_n_epochs, prefix

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch
        if (
            epoch
            and epoch % self.every_n_epochs == 0
            and trainer.is_global_zero
            and not trainer.sanity_checking
        ):
            save_qasa(
                pl_module.model, self.dirpath / f"{self.prefix}_{epoch}.pth", official=True, epoch=epoch
            )
