"""Callbacks of the training runs: the authors' checkpoint layout every N epochs, and the skipped videos.

:class:`OfficialCheckpoints` writes ``clip2stvqrl_<epoch>.pth`` = ``{'primary', 'auxillary', 'epoch'}``
(docs/method.md section 4.10), loadable by the authors' test script, at the end of every ``every_n_epochs``-th
training epoch, as the reference does (``epoch and epoch % 5 == 0``). Epochs are counted from 0 like the
reference's loop, so with ``every_n_epochs=5`` the files are those of epochs 5, 10, ...

:class:`SkippedVideos` collects the videos the datasets skipped (``data.on_error=skip``). The datasets run
in loader worker processes, so each batch carries what was skipped to make it (``skipped``, see
:mod:`qasa_vqa.data.datasets`); the callback reads that in the main process, gathers it from every DDP
rank, and keeps one record per distinct video. It logs ``train/skipped_videos`` (distinct training
videos skipped in the epoch) and ``<val|test>/<set>/skipped_videos`` (videos an evaluation set left out),
warns with their names, writes ``skipped_videos.json`` in the run directory (atomically: every video with
its set, file, reason, first epoch and step, and how often it was skipped), keeps the record in checkpoints
so a resumed run continues it, and stops the run with :class:`TooManyBadVideosError` as soon as more than
``max_failed_fraction`` of a training set (labelled, unlabelled, the pretraining scenes) has failed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.data import DataLoader

from qasa_vqa.data.datasets import skipped_entries
from qasa_vqa.distributed import is_distributed, mean_across_ranks
from qasa_vqa.errors import QasaVqaError
from qasa_vqa.models.checkpoints import save_qasa
from qasa_vqa.storage import atomic_write_text

__all__ = ["OfficialCheckpoints", "SkippedVideos", "TooManyBadVideosError"]

log = logging.getLogger(__name__)

Entry = tuple[str, str, str, str]  # set, video, file, reason


class TooManyBadVideosError(QasaVqaError):
    """More than ``data.max_failed_fraction`` of a training set could not be used."""


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


def _from_all_ranks(local: list[Entry], device: torch.device) -> list[Entry]:
    """Every rank's entries, on every rank (each rank must call it); one small all-reduce when none has
    any, an object all-gather only when some rank has."""
    if not is_distributed():
        return list(local)
    if not mean_across_ranks(torch.tensor(float(len(local)), device=device)) > 0:
        return []
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, list(local))
    return [tuple(entry) for part in parts for entry in part]  # type: ignore[misc]


def _batch_entries(batch: Any, default_set: str) -> list[Entry]:
    """``(set, video, file, reason)`` of what a batch skipped: a combined batch's parts are named by their
    keys (``labelled``, ``unlabelled``), a plain batch is ``default_set``."""
    if not isinstance(batch, Mapping):
        return []
    entries = [(default_set, *entry) for entry in skipped_entries({"skipped": batch.get("skipped", [])})]
    for key, value in batch.items():
        if isinstance(value, Mapping):
            entries += [(str(key), *entry) for entry in skipped_entries(value)]
    return entries  # type: ignore[return-value]


def _loader_sizes(loaders: Any, default_set: str) -> dict[str, int]:
    """Videos (items) per training set: ``{"labelled": n, "unlabelled": m}`` or ``{default_set: n}``."""
    loaders = getattr(loaders, "iterables", loaders)  # a CombinedLoader's loaders
    named: Iterable[tuple[str, Any]]
    if isinstance(loaders, Mapping):
        named = loaders.items()
    elif isinstance(loaders, list | tuple):
        named = ((str(i), loader) for i, loader in enumerate(loaders))
    else:
        named = [(default_set, loaders)]
    sizes = {}
    for name, loader in named:
        dataset = getattr(loader, "dataset", None) if isinstance(loader, DataLoader) else None
        if dataset is not None and hasattr(dataset, "__len__"):
            sizes[str(name)] = len(dataset)
    return sizes


class SkippedVideos(Callback):
    """Count, name, record and limit the videos the datasets skipped (module docstring).

    ``dirpath``: where ``skipped_videos.json`` goes (``None``: no file). ``max_failed_fraction``: the
    largest share of a training set that may fail (``None``: no limit); ``setting`` is what the error
    tells the user to change. ``default_set``: the name of a training set that is not one of a combined
    loader's parts (the pretraining scenes).
    """

    def __init__(
        self,
        dirpath: str | Path | None = None,
        *,
        max_failed_fraction: float | None = 0.2,
        filename: str = "skipped_videos.json",
        default_set: str = "train",
        setting: str = "data.max_failed_fraction",
    ) -> None:
        if max_failed_fraction is not None and not 0 <= max_failed_fraction <= 1:
            raise ValueError(f"max_failed_fraction must lie in [0, 1] or be None, got {max_failed_fraction}")
        self.path = Path(dirpath) / filename if dirpath is not None else None
        self.max_failed_fraction, self.default_set, self.setting = max_failed_fraction, default_set, setting
        self.training: dict[tuple[str, str], dict[str, Any]] = {}  # (set, video) -> record, over the run
        self.evaluation: dict[str, list[dict[str, str]]] = {}  # "<val|test>/<set>" -> its latest pass
        self.sizes: dict[str, int] = {}
        self._epoch: set[tuple[str, str]] = set()
        self._eval_local: list[Entry] = []

    # ------------------------------------------------------------------ training

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.sizes = _loader_sizes(trainer.train_dataloader, self.default_set)
        self._epoch = set()

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        entries = _from_all_ranks(_batch_entries(batch, self.default_set), pl_module.device)
        new = False
        for set_name, video, file, reason in entries:
            key = (set_name, video)
            self._epoch.add(key)
            if key in self.training:
                self.training[key]["times"] += 1
                continue
            new = True
            self.training[key] = {
                "set": set_name, "video": video, "file": file, "reason": reason,
                "first_epoch": trainer.current_epoch, "first_step": trainer.global_step, "times": 1,
            }  # fmt: skip
        if new:
            self._write(trainer)
            self._check_fraction()

    def _check_fraction(self) -> None:
        if self.max_failed_fraction is None:
            return
        for set_name, size in self.sizes.items():
            failed = [record for record in self.training.values() if record["set"] == set_name]
            if size and len(failed) > self.max_failed_fraction * size:
                listed = "; ".join(f"{r['file']} ({r['reason']})" for r in failed[:5])
                more = f"; and {len(failed) - 5} more" if len(failed) > 5 else ""
                where = f", all listed in {self.path}" if self.path is not None else ""
                raise TooManyBadVideosError(
                    f"{len(failed)} of the {size} videos of training set '{set_name}' could not be used "
                    f"({len(failed) / size:.0%}, more than {self.setting}={self.max_failed_fraction} allows){where}: "
                    f"{listed}{more}. Fix or remove these files, or raise {self.setting} (null: no limit)"
                )

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        count = len(self._epoch)
        pl_module.log("train/skipped_videos", float(count), on_step=False, on_epoch=True, batch_size=1)
        if count and trainer.is_global_zero:
            names = sorted(self._epoch)
            listed = ", ".join(f"{s}/{v} ({self.training[(s, v)]['reason']})" for s, v in names[:5])
            more = f" and {count - 5} more" if count > 5 else ""
            where = f"; all in {self.path}" if self.path is not None else ""
            log.warning(
                "epoch %d: %d training video(s) skipped (%d in the run so far%s): %s%s",
                trainer.current_epoch, count, len(self.training), where, listed, more,
            )  # fmt: skip
        self._epoch = set()
        self._write(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write(trainer)

    # ------------------------------------------------------------------ evaluation

    def _eval_batch(self, kind: str, pl_module: LightningModule, batch: Any, dataloader_idx: int) -> None:
        names = list(getattr(pl_module, f"{kind}_names", []) or [])
        name = names[dataloader_idx] if dataloader_idx < len(names) else str(dataloader_idx)
        self._eval_local += _batch_entries(batch, f"{kind}/{name}")

    def _eval_end(self, kind: str, trainer: Trainer, pl_module: LightningModule) -> None:
        local, self._eval_local = self._eval_local, []
        if trainer.sanity_checking:
            return
        entries = _from_all_ranks(local, pl_module.device)
        names = list(getattr(pl_module, f"{kind}_names", []) or [])
        sets = [f"{kind}/{name}" for name in names] or sorted({entry[0] for entry in entries})
        for set_name in sets:
            records = {video: {"video": video, "file": file, "reason": reason}
                       for s, video, file, reason in entries if s == set_name}  # fmt: skip
            self.evaluation[set_name] = list(records.values())
            pl_module.log(f"{set_name}/skipped_videos", float(len(records)), sync_dist=False, batch_size=1)
            if records and trainer.is_global_zero:
                listed = ", ".join(f"{r['video']} ({r['reason']})" for r in list(records.values())[:5])
                log.warning(
                    "%s: %d video(s) could not be decoded and are left out of its metrics: %s",
                    set_name, len(records), listed,
                )  # fmt: skip
        self._write(trainer)  # the sets' counts, zeros included

    def on_validation_batch_start(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._eval_batch("val", pl_module, batch, dataloader_idx)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._eval_end("val", trainer, pl_module)

    def on_test_batch_start(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._eval_batch("test", pl_module, batch, dataloader_idx)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._eval_end("test", trainer, pl_module)

    # ------------------------------------------------------------------ record

    def report(self) -> dict[str, Any]:
        """What ``skipped_videos.json`` holds."""
        records = sorted(self.training.values(), key=lambda r: (r["first_step"], r["set"], r["video"]))
        sets = {
            name: {"videos": size, "skipped": sum(1 for r in records if r["set"] == name)}
            for name, size in self.sizes.items()
        }
        return {
            "skipped": len(records),
            "max_failed_fraction": self.max_failed_fraction,
            "sets": sets,
            "videos": records,
            "evaluation": self.evaluation,
        }

    def _write(self, trainer: Trainer) -> None:
        if self.path is not None and trainer.is_global_zero:
            atomic_write_text(self.path, json.dumps(self.report(), indent=2) + "\n")

    def state_dict(self) -> dict[str, Any]:
        return {"videos": [dict(record) for record in self.training.values()]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.training = {(r["set"], r["video"]): dict(r) for r in state_dict.get("videos", [])}
