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

Unusable videos: a file that cannot be probed or decoded (empty, random bytes, truncated, no video
stream, ...) and, in the training datasets, a video too small to train on (fewer than ``min_frames``
frames or ``min_side`` pixels on a side: a 16x16 2-frame clip would be upsampled into patches of
interpolation, not of the video). ``on_error="raise"`` raises :class:`UnusableVideoError` (a
:class:`~qasa_vqa.errors.VideoDecodeError` naming the file, the reason and the setting to change; it
survives the trip from a DataLoader worker to the main process intact); ``"skip"`` logs a warning naming
the file, and training datasets return the next usable item instead, while the evaluation dataset
returns ``None``, which :func:`collate_skipping_none` drops (or, with ``mark_skipped=True``, a marker
that :func:`collate_evaluation` turns into the batch's ``skipped`` list). A dataset never returns frames
it could not decode.

Every training item reports what was skipped to make it: ``decode_failures`` (a count) and
``skipped``, a JSON list of ``[video, file, reason]`` (the record's path, or the scene for pretraining;
the file that failed; why). Loader workers are separate processes, so this is how the main process
learns which videos failed (:class:`~qasa_vqa.lit.callbacks.SkippedVideos` collects, deduplicates,
logs and limits them; :func:`skipped_entries` reads a batch's).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
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
    "MIN_FRAMES",
    "MIN_SIDE",
    "DistortionTreeError",
    "EvaluationDataset",
    "PretrainDataset",
    "SemiSupervisedDataset",
    "UnusableVideoError",
    "ViewSpec",
    "collate_evaluation",
    "collate_skipping_none",
    "find_distortion_tree",
    "skipped_entries",
]

log = logging.getLogger(__name__)

OnError = Literal["skip", "raise"]


# Training videos smaller than this are skipped (data.min_frames, data.min_side): below one frame per
# temporal segment of the paper's sampler (8) or one 32-pixel fragment patch, the views hold interpolation.
MIN_FRAMES = 8
MIN_SIDE = 32
_STRICT_HINT = "data.on_error=raise; data.on_error=skip leaves such videos out and lists them"


class DistortionTreeError(QasaVqaError):
    """A folder that is not a usable ST-VQRL distortion tree ``root/{0..12}/<name>``."""


class UnusableVideoError(VideoDecodeError):
    """A video a dataset cannot use, raised under ``on_error="raise"``: the message names the file, the
    reason and the setting to change.

    torch re-raises an error from a DataLoader worker by calling its class with one string, the worker's
    formatted traceback; this class accepts that and keeps only its own message, so the main process (and
    the command line) gets the same error, not a ``RuntimeError`` wrapping a traceback.
    """

    def __init__(self, path: str | Path, reason: str | None = None) -> None:
        if reason is None:  # rebuilt from one string, e.g. by torch's worker-error wrapper
            text = str(path)
            marker = f"{type(self).__name__}: "
            if marker in text:  # "Caught ... Original Traceback ... qasa_vqa...UnusableVideoError: <message>"
                text = text.rsplit(marker, 1)[1].rstrip("\n")
            path, _, reason = text.partition(": ")
        super().__init__(path, reason)


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

    def __init__(
        self, seed: int, on_error: OnError, rank: int = 0, *, min_frames: int = 1, min_side: int = 1
    ) -> None:
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        if min_frames < 1 or min_side < 1:
            raise ValueError(f"min_frames and min_side must be at least 1, got {min_frames}, {min_side}")
        self.seed = int(seed)
        self.rank = int(rank)
        self.on_error = on_error
        self.min_frames, self.min_side = int(min_frames), int(min_side)
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
        info = self._infos[path]
        side = min(info.display_width, info.display_height)
        if info.num_frames < self.min_frames or side < self.min_side:
            raise VideoDecodeError(
                path,
                f"too small to train on: {info.display_width}x{info.display_height} pixels, "
                f"{info.num_frames} frame(s); training videos need at least {self.min_side} pixels a side "
                f"and {self.min_frames} frames (data.min_side, data.min_frames)",
            )
        return info

    def _strict(self, error: VideoDecodeError | OSError, path: Path) -> UnusableVideoError:
        """The error ``on_error="raise"`` raises for an unusable video: the file, why, and the setting."""
        file = getattr(error, "path", None) or getattr(error, "filename", None) or path
        reason = getattr(error, "reason", None) or getattr(error, "strerror", None) or str(error)
        return UnusableVideoError(file, f"{reason} ({_STRICT_HINT})")

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

    def _describe(self, position: int) -> tuple[str, Path]:
        """What item ``position`` is called in reports, and the file it is read from."""
        raise NotImplementedError

    def _first_decodable(self, index: int, load: Callable[[int], dict[str, Any]]) -> dict[str, Any]:
        skipped: list[list[str]] = []
        for attempt in range(len(self)):
            position = (index + attempt) % len(self)
            try:
                item = load(position)
            except (QasaVqaError, OSError) as error:
                video, path = self._describe(position)
                if self.on_error == "raise":
                    raise self._strict(error, path) from error
                self.failures += 1
                file = str(getattr(error, "path", None) or path)
                reason = getattr(error, "reason", None) or str(error)
                skipped.append([video, file, reason])
                log.warning("skipping an unusable video (%d skipped so far here): %s", self.failures, error)
                continue
            item["decode_failures"] = len(skipped)
            item["skipped"] = json.dumps(skipped)
            return item
        raise UnusableVideoError(
            f"all {len(self)} items of the dataset",
            "none of the videos could be decoded, e.g. "
            + "; ".join(f"{file}: {reason}" for _, file, reason in skipped[:3]),
        )


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
        min_frames: int = MIN_FRAMES,
        min_side: int = MIN_SIDE,
    ) -> None:
        super().__init__(seed, on_error, rank, min_frames=min_frames, min_side=min_side)
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

    def _describe(self, position: int) -> tuple[str, Path]:
        record = self.records[position]
        return record.path, self.root / record.path

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
    """Test items: deterministic 64-frame views of each video (see the module docstring).

    A video that cannot be decoded is ``None`` (``on_error="skip"``), or with ``mark_skipped=True`` a
    marker ``{"skipped": <JSON [[video, file, reason]]>}`` that :func:`collate_evaluation` collects, so
    that a loader's main process can count and name them. No minimum size by default: an evaluation
    scores every video it can decode.
    """

    def __init__(
        self,
        records: Sequence[VideoRecord],
        root: str | Path,
        *,
        mos_scale: tuple[float, float] = (0.0, 100.0),
        views: ViewSpec = ViewSpec(),
        on_error: OnError = "skip",
        mark_skipped: bool = False,
    ) -> None:
        super().__init__(0, on_error)
        self.records = list(records)
        self.root = Path(root)
        self.mos_scale = mos_scale
        self.views = views
        self.mark_skipped = mark_skipped

    def __len__(self) -> int:
        return len(self.records)

    def _describe(self, position: int) -> tuple[str, Path]:
        record = self.records[position]
        return record.path, self.root / record.path

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        try:
            return self._load(index)
        except (QasaVqaError, OSError) as error:
            video, path = self._describe(index)
            if self.on_error == "raise":
                raise self._strict(error, path) from error
            self.failures += 1
            log.warning("leaving an undecodable video out of the evaluation: %s", error)
            if not self.mark_skipped:
                return None
            reason = getattr(error, "reason", None) or str(error)
            return {"skipped": json.dumps([[video, str(getattr(error, "path", None) or path), reason]])}

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


def _is_marker(item: Mapping[str, Any] | None) -> bool:
    return item is not None and set(item) == {"skipped"}


def collate_skipping_none(items: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """``default_collate`` over the items that are not ``None`` (nor skip markers); ``None`` if there are
    none."""
    kept = [item for item in items if item is not None and not _is_marker(item)]
    return default_collate(kept) if kept else None


def collate_evaluation(items: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
    """An evaluation batch that says what was left out: ``default_collate`` of the decoded items (no
    tensors at all when none was) plus ``skipped``, the JSON lists of the items that failed (see
    :func:`skipped_entries`)."""
    kept = [item for item in items if item is not None and not _is_marker(item)]
    batch: dict[str, Any] = default_collate(kept) if kept else {}
    batch["skipped"] = [item["skipped"] for item in items if _is_marker(item)]
    return batch


def skipped_entries(batch: Any) -> Iterator[tuple[str, str, str]]:
    """The ``(video, file, reason)`` of every video skipped to make ``batch`` (a batch of training or
    evaluation items, or a mapping of such batches), in order; duplicates included."""
    if not isinstance(batch, Mapping):
        return
    for key, value in batch.items():
        if key == "skipped":
            for text in value if isinstance(value, list | tuple) else [value]:
                for video, file, reason in json.loads(text):
                    yield str(video), str(file), str(reason)
        elif isinstance(value, Mapping):
            yield from skipped_entries(value)


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
        min_frames: int = MIN_FRAMES,
        min_side: int = MIN_SIDE,
    ) -> None:
        super().__init__(seed, on_error, rank, min_frames=min_frames, min_side=min_side)
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

    def _describe(self, position: int) -> tuple[str, Path]:
        name = self.names[position]
        return name, self.root / "0" / name

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
