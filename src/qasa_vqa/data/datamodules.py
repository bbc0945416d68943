"""LightningDataModules: the semi-supervised QASA-VQA data and the ST-VQRL pretraining tree.

:class:`SemiSupervisedDataModule` follows Lightning's contract: ``prepare_data`` reads the training
manifest and writes the split file (labelled / validation / unlabelled, docs/method.md section 4.9) once,
keeping no state on the module; ``setup`` reads it back on every process. Its train loader is a
``CombinedLoader`` in ``max_size_cycle`` mode over ``{"labelled": ..., "unlabelled": ...}``: the
labelled loader (shuffled, ``drop_last``) drives the epoch, and the unlabelled one draws exactly as
many batches from an endless stream of seeded permutations that continues from epoch to epoch, as the
authors' cyclic iterator does (section 4.8). Validation and test loaders serve the validation split and
any number of named test manifests with deterministic 64-frame views.

:class:`PretrainDataModule` serves scenes of a distortion tree ``root/{0..12}/<name>`` (section 2.2).

Under DDP (docs/method.md section 4.11): training samplers are ``DistributedSampler`` subclasses built
with the trainer's world size and rank (Lightning calls their ``set_epoch`` every epoch) and the datasets
know their rank, so no two ranks or workers draw the same offsets; evaluation sets are split over the
ranks by :class:`EvaluationSampler`, each video scored exactly once (no padded repeats, which would bias
every correlation), and the metrics gather all ranks' predictions; the split file is written once, by
global rank 0 (``prepare_data_per_node = False``: one shared filesystem), and read by every process.
``pin_memory="auto"`` pins host memory when CUDA is available.

Unusable videos (docs/configuration.md, "Bad videos and bad numbers"): ``on_error`` ``"skip"`` (default) or ``"raise"``;
training videos under ``min_frames`` frames or ``min_side`` pixels a side count as unusable;
``max_failed_fraction`` is the largest share of a training set that may fail before the run stops (read
by :class:`~qasa_vqa.lit.callbacks.SkippedVideos`, which the entry points attach). Evaluation loaders
carry each batch's skipped videos (``batch["skipped"]``, :func:`~qasa_vqa.data.datasets.collate_evaluation`)
so they are counted too.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from qasa_vqa.data.datasets import (
    MIN_FRAMES,
    MIN_SIDE,
    EvaluationDataset,
    OnError,
    PretrainDataset,
    SemiSupervisedDataset,
    ViewSpec,
    collate_evaluation,
    find_distortion_tree,
)
from qasa_vqa.data.manifests import Manifest, read_manifest
from qasa_vqa.data.splits import (
    STRATEGIES,
    Split,
    SplitError,
    budget_split,
    ensure_split_file,
    official_qasa_split,
    read_split_file,
)

__all__ = [
    "CyclingSampler",
    "EvaluationSampler",
    "ManifestSource",
    "PretrainDataModule",
    "ResumableLoader",
    "ResumableSampler",
    "SemiSupervisedDataModule",
]

Strategy = Literal["random", "mos-stratified", "linspace", "official"]


@dataclass(frozen=True)
class ManifestSource:
    """Where a label file is and how to read it (see :func:`~qasa_vqa.data.manifests.read_manifest`)."""

    manifest: str | Path
    root: str | Path | None = None
    format: str = "auto"
    scale: tuple[float, float] | str | None = None
    missing: Literal["error", "drop", "keep"] = "error"
    split: str | None = None  # keep only the entries of this split (plain CSV's ``split`` column)

    def read(self) -> Manifest:
        scale = tuple(self.scale) if isinstance(self.scale, list | tuple) else self.scale
        manifest = read_manifest(self.manifest, self.format, self.root, scale=scale, missing=self.missing)
        return manifest.only(self.split) if self.split is not None else manifest

    @property
    def video_root(self) -> Path:
        return Path(self.root) if self.root is not None else Path(self.manifest).parent


class CyclingSampler(DistributedSampler):
    """``per_epoch`` indices per epoch (per replica) from an endless stream of seeded permutations.

    Pass ``p`` of the stream is ``default_rng([seed, p]).permutation(n)`` cut to whole batches: its first
    ``(n // (batch_size * num_replicas)) * batch_size * num_replicas`` items, so, as with the authors'
    cyclic iterator over a ``drop_last`` loader (docs/method.md 4.8), no batch mixes the end of one pass with
    the start of the next (and none holds a video twice). Epoch ``e`` takes the next
    ``per_epoch * num_replicas`` items after epoch ``e - 1``'s, so the stream does not restart with the
    epoch. Stateless given the epoch, hence resumable. ``batch_size=1`` uses every item of every pass.
    """

    def __init__(
        self,
        size: int,
        per_epoch: int,
        *,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        batch_size: int = 1,
    ):
        if size < 1:
            raise ValueError("CyclingSampler needs at least one item")
        if batch_size < 1 or size < batch_size * num_replicas:
            raise ValueError(
                f"{size} items cannot fill one batch of {batch_size} on each of {num_replicas} process(es)"
            )
        super().__init__(range(size), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.size, self.per_epoch, self.batch_size = size, per_epoch, batch_size
        step = batch_size * num_replicas
        self.usable = (size // step) * step  # items used from each pass

    def __iter__(self) -> Iterator[int]:
        total = self.per_epoch * self.num_replicas
        position, picked = self.epoch * total, []
        while len(picked) < total:
            epoch_pass, offset = divmod(position, self.usable)
            order = np.random.default_rng([self.seed, epoch_pass]).permutation(self.size)[: self.usable]
            chunk = order[offset : offset + total - len(picked)].tolist()
            picked.extend(chunk)
            position += len(chunk)
        return iter(picked[self.rank :: self.num_replicas])

    def __len__(self) -> int:
        return self.per_epoch


class EvaluationSampler(Sampler[int]):
    """Every index once over all ranks, in order: rank ``r`` of ``W`` takes ``r, r + W, r + 2W, ...``.

    Unlike ``DistributedSampler`` it never pads a rank with repeated items, so the ranks' shares may differ
    by one and a rank may hold none (a set smaller than the world); the metrics gather every rank's
    predictions, so each video counts exactly once.
    """

    def __init__(self, size: int, *, num_replicas: int = 1, rank: int = 0) -> None:
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not one of {num_replicas} replica(s)")
        self.size, self.num_replicas, self.rank = size, num_replicas, rank

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.size, self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.num_replicas))


class ResumableSampler(Sampler[int]):
    """A sampler that can start its next pass ``skip`` items in (then forgets it): how a loader resumed in
    the middle of an epoch continues the epoch's draws instead of replaying them. ``set_epoch`` and
    ``len`` are those of the wrapped sampler."""

    def __init__(self, inner: Sampler[int]) -> None:
        self.inner, self.skip = inner, 0

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        skip, self.skip = self.skip, 0
        return itertools.islice(iter(self.inner), skip, None)

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]


class ResumableLoader(DataLoader):
    """A ``DataLoader`` over a :class:`ResumableSampler` with Lightning's ``state_dict`` /
    ``load_state_dict`` interface: the state is the number of batches served in the current pass, and a
    loaded state makes the next pass skip them (their videos are never decoded)."""

    def __init__(self, dataset: Dataset, *, sampler: Sampler[int], **options: Any) -> None:
        super().__init__(dataset, sampler=ResumableSampler(sampler), **options)
        self.served = 0

    def __iter__(self) -> Iterator[Any]:
        start = self.sampler.skip // max(1, self.batch_size or 1)
        self.served = start
        for batch in super().__iter__():
            self.served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"served": self.served}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.sampler.skip = int(state.get("served", 0)) * (self.batch_size or 1)


class _DataModule(LightningDataModule):
    def __init__(
        self,
        *,
        batch_size: int,
        num_workers: int,
        seed: int,
        pin_memory: bool | str,
        on_error: OnError = "skip",
        max_failed_fraction: float | None = None,
        min_frames: int = MIN_FRAMES,
        min_side: int = MIN_SIDE,
    ) -> None:
        super().__init__()
        self.prepare_data_per_node = False  # the split file: written once, by global rank 0
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"batch_size must be >= 1 and num_workers >= 0, got {batch_size}, {num_workers}")
        if on_error not in ("skip", "raise"):
            raise ValueError(f"data.on_error must be skip or raise, got {on_error!r}")
        if max_failed_fraction is not None and not 0 <= max_failed_fraction <= 1:
            raise ValueError(
                f"data.max_failed_fraction must lie in [0, 1] (or be null: no limit), got {max_failed_fraction}"
            )
        if min_frames < 1 or min_side < 1:
            raise ValueError(f"data.min_frames and data.min_side must be >= 1, got {min_frames}, {min_side}")
        self.on_error, self.max_failed_fraction = on_error, max_failed_fraction
        self.min_frames, self.min_side = min_frames, min_side
        if pin_memory == "auto":
            pin_memory = torch.cuda.is_available()
        elif not isinstance(pin_memory, bool):
            raise ValueError(f"pin_memory must be true, false or auto, got {pin_memory!r}")
        self.batch_size, self.num_workers, self.seed, self.pin_memory = (
            batch_size,
            num_workers,
            seed,
            pin_memory,
        )

    def _replicas(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def _loader(self, dataset: Dataset, *, batch_size: int, **options: Any) -> DataLoader:
        workers = self.num_workers
        kind = ResumableLoader if "sampler" in options else DataLoader
        return kind(
            dataset,
            batch_size=batch_size,
            num_workers=workers,
            pin_memory=self.pin_memory,
            persistent_workers=workers > 0,
            generator=torch.Generator().manual_seed(self.seed),
            **options,
        )


class SemiSupervisedDataModule(_DataModule):
    """Labelled + cycling unlabelled training batches, validation and named test sets.

    ``train`` is the training manifest. The split is ``strategy`` ``"official"`` (the paper's; needs the
    QASA pool JSON or the LSVQ train list) or a seeded budget (``n_labelled``, ``n_unlabelled`` (None:
    all the rest), ``n_validation``, ``split_seed``, ``strategy`` random / mos-stratified / linspace),
    written to ``split_file`` (default ``split_dir/<manifest>_<strategy>_<budget>_seed<s>.json``).
    ``val_sets`` / ``test_sets`` map names to :class:`ManifestSource` (or dicts of its fields).
    ``on_error``, ``max_failed_fraction``, ``min_frames``, ``min_side``: what becomes of unusable videos
    (module docstring).
    """

    def __init__(
        self,
        train: ManifestSource | Mapping[str, Any],
        *,
        strategy: Strategy = "random",
        n_labelled: int | None = None,
        n_unlabelled: int | None = None,
        n_validation: int | None = None,
        split_seed: int = 0,
        split_file: str | Path | None = None,
        split_dir: str | Path = "splits",
        val_sets: Mapping[str, ManifestSource | Mapping[str, Any]] | None = None,
        test_sets: Mapping[str, ManifestSource | Mapping[str, Any]] | None = None,
        views: ViewSpec | Mapping[str, Any] | None = None,
        batch_size: int = 6,
        eval_batch_size: int = 1,
        num_workers: int = 0,
        seed: int = 0,
        pin_memory: bool | str = "auto",
        on_error: OnError = "skip",
        max_failed_fraction: float | None = 0.2,
        min_frames: int = MIN_FRAMES,
        min_side: int = MIN_SIDE,
    ) -> None:
        super().__init__(
            batch_size=batch_size, num_workers=num_workers, seed=seed, pin_memory=pin_memory,
            on_error=on_error, max_failed_fraction=max_failed_fraction, min_frames=min_frames, min_side=min_side,
        )  # fmt: skip
        if strategy not in (*STRATEGIES, "official"):
            raise SplitError(
                f"unknown split strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}, official"
            )
        self.train_source = _source(train)
        self.strategy = strategy
        given = {k: v for k, v in (("n_labelled", n_labelled), ("n_unlabelled", n_unlabelled),
                                   ("n_validation", n_validation)) if v is not None}  # fmt: skip
        if strategy == "official" and given:
            raise SplitError(
                "the official split is the paper's fixed 500 labelled / 1,499 unlabelled videos; it takes no "
                f"budget, but {', '.join(f'{k}={v}' for k, v in given.items())} was set: remove it, or use a "
                "budget split (strategy random, mos-stratified or linspace)"
            )
        if strategy != "official" and n_labelled is None:
            raise SplitError(f"a {strategy} split needs n_labelled, the number of labelled videos")
        n_validation = n_validation or 0
        self.budget = {"n_labelled": n_labelled, "n_unlabelled": n_unlabelled, "n_validation": n_validation}
        self.split_seed = split_seed
        self.split_file = Path(split_file) if split_file is not None else Path(split_dir) / self._split_name()
        self.val_sources = {name: _source(source) for name, source in (val_sets or {}).items()}
        self.test_sources = {name: _source(source) for name, source in (test_sets or {}).items()}
        self.views = views if isinstance(views, ViewSpec) else ViewSpec(**(views or {}))
        self.eval_batch_size = eval_batch_size
        self.split: Split | None = None
        self.datasets: dict[str, Dataset] = {}
        self.val_names: list[str] = []
        self.test_names: list[str] = []

    def _split_name(self) -> str:
        stem = Path(self.train_source.manifest).stem
        if self.train_source.split is not None:
            stem = f"{stem}-{self.train_source.split}"
        if self.strategy == "official":
            return f"{stem}_official-qasa.json"
        unlabelled = "all" if self.budget["n_unlabelled"] is None else self.budget["n_unlabelled"]
        budget = f"{self.budget['n_labelled']}lab_{self.budget['n_validation']}val_{unlabelled}unlab"
        return f"{stem}_{self.strategy}_{budget}_seed{self.split_seed}.json"

    def _make_split(self, manifest: Manifest) -> Split:
        if self.strategy == "official":
            return official_qasa_split(manifest)
        return budget_split(manifest, seed=self.split_seed, strategy=self.strategy, **self.budget)

    def prepare_data(self) -> None:
        """Write the split file (once; an existing one made from the same inputs is kept)."""
        ensure_split_file(self.split_file, self._make_split(self.train_source.read()))

    def setup(self, stage: str | None = None) -> None:
        if not self.split_file.exists():
            raise SplitError(f"{self.split_file}: no split file yet; call prepare_data() first")
        manifest = self.train_source.read()
        split = read_split_file(self.split_file)
        if split.inputs.get("manifest_sha256") not in (None, manifest.sha256):
            raise SplitError(
                f"{self.split_file} was made from another version of {self.train_source.manifest} "
                "(its SHA-256 differs); delete the split file to make a new one"
            )
        self.split = split
        root, scale = self.train_source.video_root, manifest.scale
        common = {"views": self.views, "on_error": self.on_error}
        rank = self._replicas()[1]
        minimum = {"min_frames": self.min_frames, "min_side": self.min_side}
        if stage in (None, "fit"):
            self.datasets["labelled"] = SemiSupervisedDataset(
                split.labelled, root, labelled=True, mos_scale=scale, seed=self.seed, rank=rank, **common,
                **minimum,
            )  # fmt: skip
            if split.unlabelled:
                self.datasets["unlabelled"] = SemiSupervisedDataset(
                    split.unlabelled, root, labelled=False, mos_scale=scale, seed=self.seed + 1, rank=rank,
                    **common, **minimum,
                )  # fmt: skip
        if stage in (None, "fit", "validate"):
            self.val_names = (["validation"] if split.validation else []) + list(self.val_sources)
            if split.validation:
                self.datasets["val/validation"] = EvaluationDataset(
                    split.validation, root, mos_scale=scale, mark_skipped=True, **common
                )
            for name, source in self.val_sources.items():
                self.datasets[f"val/{name}"] = _evaluation_set(source, common)
        if stage in (None, "test", "predict"):
            self.test_names = list(self.test_sources)
            for name, source in self.test_sources.items():
                self.datasets[f"test/{name}"] = _evaluation_set(source, common)

    def train_dataloader(self) -> CombinedLoader:
        labelled = self.datasets["labelled"]
        replicas, rank = self._replicas()
        per_replica = len(labelled) // replicas
        batches = per_replica // self.batch_size
        if batches == 0:
            raise SplitError(
                f"{len(labelled)} labelled videos over {replicas} process(es) do not fill one batch of "
                f"{self.batch_size}; lower the batch size or label more videos"
            )
        sampler = DistributedSampler(
            labelled, num_replicas=replicas, rank=rank, shuffle=True, seed=self.seed, drop_last=True
        )
        loaders = {
            "labelled": self._loader(labelled, batch_size=self.batch_size, sampler=sampler, drop_last=True)
        }
        if "unlabelled" in self.datasets:
            unlabelled = self.datasets["unlabelled"]
            if len(unlabelled) < self.batch_size * replicas:
                raise SplitError(
                    f"{len(unlabelled)} unlabelled videos over {replicas} process(es) do not fill one batch of "
                    f"{self.batch_size}; lower the batch size, add unlabelled videos, or train supervised-only"
                )
            cycling = CyclingSampler(
                len(unlabelled),
                batches * self.batch_size,
                num_replicas=replicas,
                rank=rank,
                seed=self.seed,
                batch_size=self.batch_size,
            )
            loaders["unlabelled"] = self._loader(
                unlabelled, batch_size=self.batch_size, sampler=cycling, drop_last=True
            )
        return CombinedLoader(loaders, mode="max_size_cycle")

    def val_dataloader(self) -> list[DataLoader]:
        return [self._eval_loader(f"val/{name}") for name in self.val_names]

    def test_dataloader(self) -> list[DataLoader]:
        return [self._eval_loader(f"test/{name}") for name in self.test_names]

    def _eval_loader(self, key: str) -> DataLoader:
        dataset = self.datasets[key]
        replicas, rank = self._replicas()
        return DataLoader(  # not resumable: evaluation always covers the whole set
            dataset,
            batch_size=self.eval_batch_size,
            sampler=EvaluationSampler(len(dataset), num_replicas=replicas, rank=rank),  # type: ignore[arg-type]
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate_evaluation,  # the decoded items, and which videos were left out
        )


class PretrainDataModule(_DataModule):
    """Scenes of an ST-VQRL distortion tree, ``versions`` versions each (see :class:`PretrainDataset`)."""

    def __init__(
        self,
        root: str | Path,
        *,
        versions: int = 10,
        clip_len: int = 32,
        frame_interval: int = 2,
        grid: int = 7,
        patch: int = 32,
        batch_size: int = 6,
        num_workers: int = 0,
        seed: int = 0,
        pin_memory: bool | str = "auto",
        on_error: OnError = "skip",
        max_failed_fraction: float | None = 0.2,
        min_frames: int = MIN_FRAMES,
        min_side: int = MIN_SIDE,
    ) -> None:
        super().__init__(
            batch_size=batch_size, num_workers=num_workers, seed=seed, pin_memory=pin_memory,
            on_error=on_error, max_failed_fraction=max_failed_fraction, min_frames=min_frames, min_side=min_side,
        )  # fmt: skip
        self.root = Path(root)
        self.options = {
            "versions": versions,
            "clip_len": clip_len,
            "frame_interval": frame_interval,
            "grid": grid,
            "patch": patch,
            "on_error": on_error,
            "min_frames": min_frames,
            "min_side": min_side,
        }
        self.dataset: PretrainDataset | None = None

    def prepare_data(self) -> None:
        """Check the tree exists and holds usable scenes (nothing is written or kept)."""
        find_distortion_tree(self.root, min_distortions=self.options["versions"] - 1)

    def setup(self, stage: str | None = None) -> None:
        self.dataset = PretrainDataset(self.root, seed=self.seed, rank=self._replicas()[1], **self.options)

    def train_dataloader(self) -> DataLoader:
        if self.dataset is None:
            raise RuntimeError("call setup() before train_dataloader()")
        replicas, rank = self._replicas()
        sampler = DistributedSampler(
            self.dataset, num_replicas=replicas, rank=rank, shuffle=True, seed=self.seed
        )
        return self._loader(self.dataset, batch_size=self.batch_size, sampler=sampler)


def _source(source: ManifestSource | Mapping[str, Any]) -> ManifestSource:
    return source if isinstance(source, ManifestSource) else ManifestSource(**source)


def _evaluation_set(source: ManifestSource, common: dict[str, Any]) -> EvaluationDataset:
    manifest = source.read()
    return EvaluationDataset(
        manifest.records, source.video_root, mos_scale=manifest.scale, mark_skipped=True, **common
    )
