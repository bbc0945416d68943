"""torch Datasets: one decode per item, returning the views the models train and test on.

* :class:`SemiSupervisedDataset`: the 32 training frames of a video (docs/method.md section 4.2) as the four
  views ``frag_v`` ``[3,32,224,224]``, ``frag_a`` (same), ``resize_v`` ``[32,3,224,224]`` and
  ``resize_a`` ``[8,3,224,224]``, plus ``mos`` in [0, 1] for labelled items and ``path``.
* :class:`EvaluationDataset`: the 64 test frames (8 segments x 8, deterministic centred offsets) as
  ``frag`` ``[3,64,224,224]`` (centred patches) and ``resize`` ``[64,3,224,224]``, with ``mos``
  (normalised; NaN when unknown), ``mos_raw`` and ``path``. The same item every time.
* :class:`PretrainDataset`: one scene of the ST-VQRL distortion tree (section 2.2): the reference plus
  ``versions - 1`` distortions drawn at random, all with the same 64 frame indices (two contiguous
  32-frame clips) and the same fragment offsets, as ``view1`` / ``view2`` ``[K,3,32,224,224]``.

Randomness: every item draws from ``numpy.random.default_rng([seed, stream, draw, index])`` where
``stream`` is the DataLoader worker's seed (``get_worker_info().seed``, derived each epoch from the
loader's seeded generator; 0 in the main process) and ``draw`` counts the items this process has made.
Under DDP the process's ``rank`` is appended to the key for ranks above 0 (every rank seeds its loader
alike, so the workers' seeds coincide across ranks): no two workers or ranks draw from the same stream,
and rank 0 draws what a single process draws. So a given seed, loader generator, worker count and rank
give the same items, and epochs differ.

Decode failures: ``on_error="raise"`` re-raises the :class:`~qasa_vqa.errors.VideoDecodeError`;
``"skip"`` logs a warning naming the file, and training datasets return the next decodable item
instead (``decode_failures`` in the item counts the videos skipped for it, so the training loop can
log the total), while the evaluation dataset returns ``None``, which :func:`collate_skipping_none`
drops. A dataset never returns frames it could not decode.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate, get_worker_info

from qasa_vqa.data.manifests import VideoRecord, normalise_mos
from qasa_vqa.errors import QasaVqaError, VideoDecodeError
from qasa_vqa.video.distortions import find_videos
from qasa_vqa.video.fragments import (
    apply_fragments,
    fragment_layout,
    make_test_views,
    make_views,
    normalise,
    upsample_for_fragments,
)
from qasa_vqa.video.reader import VideoInfo, probe, read_frames
from qasa_vqa.video.sampling import contiguous_clip_indices, fragment_frame_indices

__all__ = [
    "DistortionTreeError",
    "EvaluationDataset",
    "PretrainDataset",
    "SemiSupervisedDataset",
    "ViewSpec",
    "collate_skipping_none",
    "find_distortion_tree",
]

log = logging.getLogger(__name__)

OnError = Literal["skip", "raise"]


class DistortionTreeError(QasaVqaError):
    """A folder that is not a usable ST-VQRL distortion tree ``root/{0..12}/<name>``."""


@dataclass(frozen=True)
class ViewSpec:
    """How frames are sampled and turned into views (defaults: the paper's, docs/method.md 4.2 and 5.1)."""

    segments: int = 8
    frames_per_segment: int = 4
    test_frames_per_segment: int = 8
    frame_interval: int = 2
    grid: int = 7
    patch: int = 32
    size: int = 224
    sparse_stride: int = 4
    clamp_halves: bool = False
    antialias: bool = False
    fragment_stats: Literal["imagenet", "clip"] = "imagenet"
    resize_stats: Literal["imagenet", "clip"] = "imagenet"


class _SeededItems(Dataset):
    """Per-item random generators and the skip-or-raise policy shared by the datasets."""

    def __init__(self, seed: int, on_error: OnError, rank: int = 0) -> None:
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        self.seed = int(seed)
        self.rank = int(rank)
        self.on_error = on_error
        self.failures = 0  # videos skipped by this process (workers keep their own count)
        self._draws = 0
        self._infos: dict[Path, VideoInfo] = {}

    def _rng(self, index: int) -> np.random.Generator:
        worker = get_worker_info()
        stream = worker.seed if worker is not None else 0
        self._draws += 1
        key = [self.seed, stream, self._draws, index]
        return np.random.default_rng([*key, self.rank] if self.rank else key)

    def _probe(self, path: Path) -> VideoInfo:
        if path not in self._infos:
            self._infos[path] = probe(path)
        return self._infos[path]

    def _fragment_frames(
        self, path: Path, spec: ViewSpec, *, train: bool, rng: np.random.Generator | None = None
    ) -> np.ndarray:
        """Decode the temporal fragments of ``path``: 8 x 4 random frames to train, 8 x 8 centred to test."""
        info = self._probe(path)
        indices = fragment_frame_indices(
            info.num_frames,
            segments=spec.segments,
            frames_per_segment=spec.frames_per_segment if train else spec.test_frames_per_segment,
            frame_interval=spec.frame_interval,
            rng=rng,
            train=train,
        )
        return read_frames(path, indices, info=info)

    def _first_decodable(self, index: int, load: Callable[[int], dict[str, Any]]) -> dict[str, Any]:
        failures = 0
        for attempt in range(len(self)):
            position = (index + attempt) % len(self)
            try:
                item = load(position)
            except (QasaVqaError, OSError) as error:
                if self.on_error == "raise":
                    raise
                failures += 1
                self.failures += 1
                log.warning(
                    "skipping an undecodable video (%d skipped so far here): %s", self.failures, error
                )
                continue
            item["decode_failures"] = failures
            return item
        raise VideoDecodeError(f"all {len(self)} items of the dataset", "none of the videos could be decoded")


class SemiSupervisedDataset(_SeededItems):
    """Training items of QASA-VQA: the four views of 32 sampled frames (see the module docstring).

    ``records`` are relative to ``root``; ``mos_scale`` maps their MOS to [0, 1]. With
    ``labelled=False`` items carry no ``mos``.
    """

    def __init__(
        self,
        records: Sequence[VideoRecord],
        root: str | Path,
        *,
        labelled: bool,
        mos_scale: tuple[float, float] = (0.0, 100.0),
        views: ViewSpec = ViewSpec(),
        seed: int = 0,
        on_error: OnError = "skip",
        rank: int = 0,
    ) -> None:
        super().__init__(seed, on_error, rank)
        if labelled and any(record.mos is None for record in records):
            missing = next(record.path for record in records if record.mos is None)
            raise QasaVqaError(f"labelled set holds a video without a MOS: {missing!r}")
        self.records = list(records)
        self.root = Path(root)
        self.labelled = labelled
        self.mos_scale = mos_scale
        self.views = views

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._first_decodable(index, self._load)

    def _load(self, index: int) -> dict[str, Any]:
        record, spec = self.records[index], self.views
        path = self.root / record.path
        rng = self._rng(index)
        frames = self._fragment_frames(path, spec, train=True, rng=rng)
        generator = torch.Generator().manual_seed(int(rng.integers(2**63)))
        item: dict[str, Any] = make_views(
            frames,
            generator=generator,
            grid=spec.grid,
            patch=spec.patch,
            aligned=len(frames),
            clamp_halves=spec.clamp_halves,
            size=spec.size,
            antialias=spec.antialias,
            sparse_stride=spec.sparse_stride,
            fragment_stats=spec.fragment_stats,
            resize_stats=spec.resize_stats,
        )
        if self.labelled:
            item["mos"] = torch.tensor(normalise_mos(record.mos, self.mos_scale), dtype=torch.float32)
        item["path"] = record.path
        return item


class EvaluationDataset(_SeededItems):
    """Test items: deterministic 64-frame views of each video (see the module docstring)."""

    def __init__(
        self,
        records: Sequence[VideoRecord],
        root: str | Path,
        *,
        mos_scale: tuple[float, float] = (0.0, 100.0),
        views: ViewSpec = ViewSpec(),
        on_error: OnError = "skip",
    ) -> None:
        super().__init__(0, on_error)
        self.records = list(records)
        self.root = Path(root)
        self.mos_scale = mos_scale
        self.views = views

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        try:
            return self._load(index)
        except (QasaVqaError, OSError) as error:
            if self.on_error == "raise":
                raise
            self.failures += 1
            log.warning("leaving an undecodable video out of the evaluation: %s", error)
            return None

    def _load(self, index: int) -> dict[str, Any]:
        record, spec = self.records[index], self.views
        path = self.root / record.path
        frames = self._fragment_frames(path, spec, train=False)
        item: dict[str, Any] = make_test_views(
            frames,
            centre=True,
            grid=spec.grid,
            patch=spec.patch,
            aligned=spec.segments * spec.frames_per_segment,
            size=spec.size,
            antialias=spec.antialias,
            fragment_stats=spec.fragment_stats,
            resize_stats=spec.resize_stats,
        )
        raw = float("nan") if record.mos is None else float(record.mos)
        item["mos"] = torch.tensor(normalise_mos(raw, self.mos_scale), dtype=torch.float32)
        item["mos_raw"] = torch.tensor(raw, dtype=torch.float64)
        item["path"] = record.path
        return item


def collate_skipping_none(items: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """``default_collate`` over the items that are not ``None``; ``None`` if there are none."""
    kept = [item for item in items if item is not None]
    return default_collate(kept) if kept else None


def find_distortion_tree(root: str | Path, *, min_distortions: int = 1) -> dict[str, list[int]]:
    """The scenes of an ST-VQRL tree ``root/<k>/<name>`` and the distortion versions each has.

    Scenes are the videos under ``root/0`` (the references); a scene is kept when at least
    ``min_distortions`` of ``root/1`` .. ``root/12`` hold a file of the same relative name.
    """
    root = Path(root)
    reference_dir = root / "0"
    if not reference_dir.is_dir():
        raise DistortionTreeError(
            f"{root} is not a distortion tree: it has no '0' folder of reference videos (make one with "
            "`qasa-vqa synth PRISTINE_DIR OUT_DIR` or `qasa-vqa demo-data`)"
        )
    try:
        references = find_videos(reference_dir)
    except QasaVqaError as error:
        raise DistortionTreeError(f"{root} is not a distortion tree: {error}") from None
    names = [path.relative_to(reference_dir).as_posix() for path in references]
    scenes = {name: [k for k in range(1, 13) if (root / str(k) / name).is_file()] for name in names}
    short = [name for name, versions in scenes.items() if len(versions) < min_distortions]
    if short:
        log.warning(
            "%s: %d scene(s) have fewer than %d distorted versions and are left out, e.g. %s",
            root,
            len(short),
            min_distortions,
            short[0],
        )
    kept = {name: versions for name, versions in scenes.items() if len(versions) >= min_distortions}
    if not kept:
        raise DistortionTreeError(
            f"{root}: no scene has {min_distortions} distorted versions ({len(names)} references found)"
        )
    return kept


class PretrainDataset(_SeededItems):
    """ST-VQRL items: ``versions`` versions of one scene, same frames and patches (module docstring)."""

    def __init__(
        self,
        root: str | Path,
        *,
        versions: int = 10,
        clip_len: int = 32,
        frame_interval: int = 2,
        margin: int = 5,
        grid: int = 7,
        patch: int = 32,
        seed: int = 0,
        on_error: OnError = "skip",
        rank: int = 0,
    ) -> None:
        super().__init__(seed, on_error, rank)
        if versions < 2:
            raise ValueError(f"versions must be at least 2 (the reference and a distortion), got {versions}")
        self.root = Path(root)
        self.scenes = find_distortion_tree(root, min_distortions=versions - 1)
        self.names = sorted(self.scenes)
        self.versions = versions
        self.clip_len, self.frame_interval, self.margin = clip_len, frame_interval, margin
        self.grid, self.patch = grid, patch

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._first_decodable(index, self._load)

    def _load(self, index: int) -> dict[str, Any]:
        name = self.names[index]
        rng = self._rng(index)
        drawn = rng.choice(self.scenes[name], size=self.versions - 1, replace=False)
        chosen = [0, *(int(k) for k in drawn)]
        reference = self.root / "0" / name
        info = self._probe(reference)
        indices = contiguous_clip_indices(
            info.num_frames,
            clip_len=self.clip_len,
            frame_interval=self.frame_interval,
            num_clips=2,
            margin=self.margin,
            rng=rng,
        ).reshape(-1)
        size = self.grid * self.patch
        generator = torch.Generator().manual_seed(int(rng.integers(2**63)))
        layout, clips = None, []
        for version in chosen:
            path = self.root / str(version) / name
            version_info = info if version == 0 else self._probe(path)
            if (version_info.display_width, version_info.display_height) != (
                info.display_width,
                info.display_height,
            ):
                raise VideoDecodeError(
                    path,
                    f"{version_info.display_width}x{version_info.display_height} frames, but the reference "
                    f"{reference} is {info.display_width}x{info.display_height}",
                )
            video = torch.from_numpy(read_frames(path, indices, info=version_info)).permute(3, 0, 1, 2)
            video = upsample_for_fragments(video, size)
            if layout is None:  # one offset set for all frames and all versions (aligned = 64)
                height, width = video.shape[-2:]
                layout = fragment_layout(
                    height,
                    width,
                    len(indices),
                    grid=self.grid,
                    patch=self.patch,
                    aligned=len(indices),
                    generator=generator,
                )
            clips.append(apply_fragments(video, layout))
        stacked = normalise(torch.stack(clips), "imagenet", channel_dim=1)
        return {
            "view1": stacked[:, :, : self.clip_len].contiguous(),
            "view2": stacked[:, :, self.clip_len :].contiguous(),
            "versions": torch.tensor(chosen, dtype=torch.int64),
            "scene": name,
        }
