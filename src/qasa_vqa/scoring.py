"""Score videos with a model: the scorer behind ``qasa-vqa score``, ``evaluate`` and :func:`load_scorer`.

One row (a dict) per video, with the combined score and each branch's, what the reader found (size,
fps, frames, duration), the time spent decoding, making views and in the model, and ``status`` /
``error``: a video that cannot be decoded gives an ``error`` row, never an exception that stops the run.

How a video is scored (docs/method.md section 5.1, made deterministic): the test frames (8 segments x 8
frames, 2 apart, for the paper's model) at the centre of each segment, fragments at the centre of each
cell, every frame resized for CLIP; ``stvqrl = sigmoid(0.1 * mean(map))``, ``clip`` in (0, 2), ``score
= stvqrl * clip``. So the same video gets the same score every time (the reference draws offsets at
random even at test time). ``clips=K > 1`` instead averages K seeded random draws (temporal and spatial
offsets, ``numpy.random.default_rng([seed, unit, k])``) and reports their standard deviation
(``score_std`` ...). A model with only the CLIP branch (a zero-shot CLIP) scores ``score = clip``.

``segment_seconds=S`` also scores each S-second stretch of the video with the same sampler (a
``segments`` list of ``{start, end, score, stvqrl, clip}``). ``maps_dir`` writes, per video, a picture
of the local quality map laid over the frames it came from, and the raw arrays (:mod:`qasa_vqa.maps`).
A :class:`~qasa_vqa.calibration.Calibration` adds ``mos_pred``.

Decoding and view making run in DataLoader workers (``workers``), one video (or segment) per work
unit, so the model does not wait for the decoder; rows come out in input order.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from qasa_vqa.calibration import Calibration
from qasa_vqa.data.datasets import ViewSpec
from qasa_vqa.errors import QasaVqaError
from qasa_vqa.models.clip_quality import CLIPQuality
from qasa_vqa.models.qasa import QASAModel
from qasa_vqa.video.fragments import IncrementalTestViews, make_test_views
from qasa_vqa.video.reader import VideoInfo, probe, read_frames, stream_frames
from qasa_vqa.video.sampling import fragment_frame_indices

__all__ = ["ROW_FIELDS", "ScoreSettings", "Scorer", "load_scorer", "scorer_from_model"]

log = logging.getLogger(__name__)

ROW_FIELDS: tuple[str, ...] = (
    "path",
    "score",
    "stvqrl",
    "clip",
    "mos_pred",
    "score_std",
    "stvqrl_std",
    "clip_std",
    "clips",
    "width",
    "height",
    "fps",
    "num_frames",
    "duration",
    "decode_ms",
    "views_ms",
    "model_ms",
    "status",
    "error",
    "segments",
    "map",
)
"""The columns of a score row, in order (``segments`` and ``map`` are empty unless asked for)."""

_THUMB_WIDTH = 480  # width of the frames a quality-map picture is drawn on


@dataclass(frozen=True)
class ScoreSettings:
    """How videos are scored (module docstring). ``map_frames``: time steps drawn in a map picture."""

    clips: int = 1
    seed: int = 0
    segment_seconds: float | None = None
    batch_size: int = 1
    workers: int = 0
    map_frames: int = 8

    def __post_init__(self) -> None:
        if self.clips < 1 or self.batch_size < 1 or self.workers < 0 or self.map_frames < 1:
            raise QasaVqaError(
                f"clips and batch_size must be at least 1, workers at least 0 and map_frames at least 1; got "
                f"clips={self.clips}, batch_size={self.batch_size}, workers={self.workers}, "
                f"map_frames={self.map_frames}"
            )
        if self.segment_seconds is not None and not (
            self.segment_seconds > 0 and math.isfinite(self.segment_seconds)
        ):
            raise QasaVqaError(
                f"segment_seconds must be a positive number of seconds, got {self.segment_seconds}"
            )


# -- work units: decoding and views (in loader workers) ---------------------------------------------


def segment_ranges(num_frames: int, fps: float, seconds: float) -> list[tuple[int, int]]:
    """``[start, stop)`` frame ranges of consecutive ``seconds``-long stretches (the last may be shorter)."""
    length = max(1, round(seconds * fps)) if fps > 0 else num_frames
    return [(start, min(start + length, num_frames)) for start in range(0, num_frames, length)]


def _give_back_freed_memory() -> None:
    """Return the C heap's free pages to the system (glibc's ``malloc_trim``; elsewhere nothing).

    Freed tensors of a few MB stay in the heap otherwise: after a checkpoint load (the state dict, the
    text tower) 0.1 GB of the paper model's process is free but resident, and a long scoring run would
    carry its largest video's leftovers to the end.
    """
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)


def _load_libc() -> Any:
    try:
        return ctypes.CDLL(None)
    except OSError:  # pragma: no cover - a platform without a loadable C library
        return None


_LIBC = _load_libc()


def _draw_seed(*key: int) -> int:
    return int(np.random.SeedSequence(list(key)).generate_state(1)[0])


class _ScoringUnits(IterableDataset):
    """Yields, per video, one unit for the whole video (and one per segment), each with the views of
    every draw, or one error unit. Videos are shared out to the loader workers round robin."""

    def __init__(
        self,
        paths: Sequence[Path],
        views: ViewSpec,
        settings: ScoreSettings,
        parts: tuple[str, ...],
        with_maps: bool,
    ) -> None:
        self.paths = list(paths)
        self.views = views
        self.settings = settings
        self.parts = parts
        self.with_maps = with_maps

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = get_worker_info()
        share, shares = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        for index in range(share, len(self.paths), shares):
            yield from self._video(index, self.paths[index])
            _give_back_freed_memory()

    def _video(self, index: int, path: Path) -> Iterator[dict[str, Any]]:
        started = time.perf_counter()
        try:
            info = probe(path)
        except Exception as error:  # a bad file becomes an error row, whatever went wrong
            yield {
                "index": index,
                "unit": 0,
                "units": 1,
                "error": _reason(error),
                "info": None,
                "decode_ms": 1000 * (time.perf_counter() - started),
                "views_ms": 0.0,
            }
            return
        probe_ms = 1000 * (time.perf_counter() - started)
        ranges = [(0, info.num_frames)]
        if self.settings.segment_seconds is not None:
            ranges += segment_ranges(info.num_frames, info.fps, self.settings.segment_seconds)
        for unit, (start, stop) in enumerate(ranges):
            try:
                item = self._unit(path, info, unit, start, stop)
            except Exception as error:
                yield {
                    "index": index,
                    "unit": unit,
                    "units": unit + 1,
                    "error": _reason(error),
                    "info": _info_fields(info),
                    "decode_ms": probe_ms,
                    "views_ms": 0.0,
                }
                return
            item |= {
                "index": index,
                "unit": unit,
                "units": len(ranges),
                "error": None,
                "info": _info_fields(info),
            }
            item["decode_ms"] += probe_ms if unit == 0 else 0.0
            yield item

    def _unit(self, path: Path, info: VideoInfo, unit: int, start: int, stop: int) -> dict[str, Any]:
        spec, settings = self.views, self.settings
        random = settings.clips > 1
        draws = []
        for k in range(settings.clips):
            rng = np.random.default_rng([settings.seed, unit, k]) if random else None
            indices = fragment_frame_indices(
                stop - start,
                segments=spec.segments,
                frames_per_segment=spec.test_frames_per_segment,
                frame_interval=spec.frame_interval,
                rng=rng,
                train=False,
            )
            draws.append(indices + start)
        wanted, positions = np.unique(np.concatenate(draws), return_inverse=True)
        per_draw = positions.reshape(settings.clips, -1)
        options = {
            "grid": spec.grid,
            "patch": spec.patch,
            "aligned": per_draw.shape[1],
            "size": spec.size,
            "antialias": spec.antialias,
            "fragment_stats": spec.fragment_stats,
            "resize_stats": spec.resize_stats,
            "parts": self.parts,
        }
        generators = [
            torch.Generator().manual_seed(_draw_seed(settings.seed, unit, k)) if random else None
            for k in range(settings.clips)
        ]
        want_layout = self.with_maps and unit == 0
        height, width = info.display_height, info.display_width
        item: dict[str, Any] = {}
        began = time.perf_counter()
        if IncrementalTestViews.fits(height, width, grid=spec.grid, patch=spec.patch, parts=self.parts):
            results, thumbs, views_seconds = self._streamed_views(
                path, info, wanted, per_draw, generators, options, want_layout
            )
            decoded = time.perf_counter() - began - views_seconds
        else:  # a small video: its fragments come from the whole clip upsampled, so read it whole
            frames = read_frames(path, wanted, info=info)
            decoded = time.perf_counter() - began
            results = [
                make_test_views(
                    frames if np.array_equal(per_draw[k], np.arange(len(frames))) else frames[per_draw[k]],
                    generator=generators[k],
                    centre=not random,
                    return_layout=want_layout and k == 0,
                    **options,
                )
                for k in range(settings.clips)
            ]
            thumbs = _thumbnails(frames[per_draw[0]]) if want_layout else None
            views_seconds = time.perf_counter() - began - decoded
        if want_layout:
            views, layout, upsampled = results[0]
            results[0] = views
            item["map_source"] = _map_source(thumbs, (height, width), draws[0], info, layout, upsampled)
        made = {part: [views[part] for views in results] for part in self.parts}
        item |= {part: torch.stack(tensors) for part, tensors in made.items()}
        item["decode_ms"] = 1000 * decoded
        item["views_ms"] = 1000 * views_seconds
        item["start"] = start / info.fps if info.fps > 0 else 0.0
        item["end"] = stop / info.fps if info.fps > 0 else 0.0
        return item

    @staticmethod
    def _streamed_views(
        path: Path,
        info: VideoInfo,
        wanted: np.ndarray,
        per_draw: np.ndarray,
        generators: list[torch.Generator | None],
        options: dict[str, Any],
        want_layout: bool,
    ) -> tuple[list[Any], np.ndarray | None, float]:
        """Every draw's views built frame by frame as the decoder hands frames over (one source frame
        held at a time; identical to :func:`make_test_views` on all frames), the thumbnails of draw 0's
        frames when ``want_layout``, and the seconds spent making views."""
        height, width = info.display_height, info.display_width
        builders = [
            IncrementalTestViews(
                height, width, per_draw.shape[1], generator=generator, centre=generator is None, **options
            )
            for generator in generators
        ]
        uses: dict[int, list[tuple[int, int]]] = {}  # position in wanted -> (draw, frame of the draw)
        for k, positions in enumerate(per_draw.tolist()):
            for t, position in enumerate(positions):
                uses.setdefault(position, []).append((k, t))
        thumbs = (
            np.empty((per_draw.shape[1], *_thumbnail_size(height, width)[::-1], 3), np.uint8)
            if want_layout
            else None
        )
        spent = 0.0

        def take(position: int, frame: np.ndarray) -> None:
            nonlocal spent
            began = time.perf_counter()
            for k, t in uses[position]:
                builders[k].add(t, frame)
                if thumbs is not None and k == 0:
                    thumbs[t] = _thumbnail(frame)
            spent += time.perf_counter() - began

        stream_frames(path, wanted, take, info=info)
        began = time.perf_counter()
        results = [builder.views(return_layout=want_layout and k == 0) for k, builder in enumerate(builders)]
        spent += time.perf_counter() - began
        return results, thumbs, spent


def _thumbnail_size(height: int, width: int) -> tuple[int, int]:
    scale = min(1.0, _THUMB_WIDTH / width)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _thumbnail(frame: np.ndarray) -> np.ndarray:
    """A small copy of one ``[H, W, 3]`` frame for a quality-map picture."""
    size = _thumbnail_size(*frame.shape[:2])
    return np.asarray(Image.fromarray(np.ascontiguousarray(frame)).resize(size, Image.BILINEAR))


def _thumbnails(frames: np.ndarray) -> np.ndarray:
    return np.stack([_thumbnail(frame) for frame in frames])


def _map_source(
    thumbs: np.ndarray,
    frame_size: tuple[int, int],
    indices: np.ndarray,
    info: VideoInfo,
    layout: Any,
    upsampled: tuple[int, int],
) -> dict[str, Any]:
    """What a map picture needs from the worker: small copies of the sampled frames (``thumbs``, of
    frames ``frame_size`` high and wide), where each came from, and the fragment layout (corners in the
    coordinates of the ``upsampled`` video)."""
    height, width = frame_size
    return {
        "thumbs": thumbs,
        "frame_indices": np.asarray(indices),
        "times": np.asarray(indices) / info.fps if info.fps > 0 else np.zeros(len(indices)),
        "top": layout.top.numpy(),
        "left": layout.left.numpy(),
        "patch": layout.patch,
        "upsampled": upsampled,
        "frame_size": (height, width),
    }


def _as_is(unit: dict[str, Any]) -> dict[str, Any]:
    return unit


def _info_fields(info: VideoInfo) -> dict[str, Any]:
    return {
        "width": info.display_width,
        "height": info.display_height,
        "fps": info.fps,
        "num_frames": info.num_frames,
        "duration": info.duration,
    }


def _reason(error: BaseException) -> str:
    text = str(error).strip() or "no message"
    return text if isinstance(error, QasaVqaError) else f"{type(error).__name__}: {text}"


# -- the scorer -------------------------------------------------------------------------------------


@dataclass
class _Pending:
    """A video whose units are still arriving."""

    units: list[dict[str, Any]]
    expected: int


class Scorer:
    """Scores videos with a QASA model (both branches) or a CLIP quality branch alone.

    Build one with :func:`load_scorer` (from a checkpoint) or :func:`scorer_from_model`; then
    :meth:`score` one video or :meth:`score_many` (an iterator of rows in input order).
    """

    def __init__(
        self,
        model: QASAModel | None,
        clip: CLIPQuality,
        views: ViewSpec,
        *,
        settings: ScoreSettings = ScoreSettings(),
        device: str | torch.device = "cpu",
        calibration: Calibration | None = None,
        map_stride: int | None = None,
        source: str = "",
    ) -> None:
        self.model = model.eval() if model is not None else None
        self.clip = clip.eval()
        self.views = views
        self.settings = settings
        self.device = torch.device(device)
        self.branches = ("stvqrl", "clip", "qasa") if model is not None else ("clip",)
        if calibration is not None and calibration.branch not in self.branches:
            raise QasaVqaError(
                f"the calibration maps the {calibration.branch!r} score, which this model does not give "
                f"(it gives {', '.join(self.branches)})"
            )
        self.calibration = calibration
        self.map_stride = map_stride
        self.source = source
        (self.model or self.clip).to(self.device)
        _give_back_freed_memory()

    def score(self, path: str | Path, *, maps_dir: str | Path | None = None) -> dict[str, Any]:
        """The row of one video (``status`` says whether it could be scored)."""
        return next(iter(self.score_many([path], maps_dir=maps_dir)))

    def score_many(
        self, paths: Iterable[str | Path], *, maps_dir: str | Path | None = None
    ) -> Iterator[dict[str, Any]]:
        """Rows of ``paths``, in their order, each as soon as it and every earlier one are done."""
        paths = [Path(p) for p in paths]
        if not paths:
            return
        if maps_dir is not None and self.model is None:
            raise QasaVqaError("quality maps come from the ST-VQRL branch; this model has only CLIP")
        parts = ("frag", "resize") if self.model is not None else ("resize",)
        dataset = _ScoringUnits(paths, self.views, self.settings, parts, with_maps=maps_dir is not None)
        workers = min(self.settings.workers, len(paths))
        loader = DataLoader(
            dataset,
            batch_size=None,
            collate_fn=_as_is,  # keep numpy arrays as they are (the default converts them to tensors)
            num_workers=workers,
            prefetch_factor=2 if workers else None,
            persistent_workers=False,
        )
        pending: dict[int, _Pending] = {}
        done: dict[int, dict[str, Any]] = {}
        next_row = 0
        batch: list[dict[str, Any]] = []

        def finish(units: list[dict[str, Any]]) -> None:
            nonlocal next_row
            for unit in units:
                entry = pending.setdefault(unit["index"], _Pending([], unit["units"]))
                entry.units.append(unit)
                if unit["error"] is not None or len(entry.units) == entry.expected:
                    index = unit["index"]
                    done[index] = self._row(paths[index], pending.pop(index).units, maps_dir)

        for unit in loader:
            if unit["error"] is not None:
                finish([unit])
            else:
                batch.append(unit)
                if len(batch) == self.settings.batch_size:
                    finish(self._run(batch))
                    batch = []
            while next_row in done:
                yield done.pop(next_row)
                next_row += 1
        if batch:
            finish(self._run(batch))
        while next_row in done:
            yield done.pop(next_row)
            next_row += 1

    # -- model ---------------------------------------------------------------------------------------

    @torch.inference_mode()
    def _run(self, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        started = time.perf_counter()
        clips = self.settings.clips
        resize = torch.cat([unit["resize"] for unit in batch]).to(self.device)
        scores = {"clip": self.clip.video_quality(resize).float().cpu()}
        maps = fragments = None
        if self.model is not None:
            fragments = torch.cat([unit["frag"] for unit in batch]).to(self.device)
            maps = self.model.stvqrl(fragments).float().cpu()  # [B*K, 1, T', h, w]
            raw = maps.flatten(1).mean(dim=1)
            scores["stvqrl"] = torch.sigmoid(self.model.score_scale * raw)
            scores["qasa"] = self.model.combine(raw, scores["clip"])
        elapsed = 1000 * (time.perf_counter() - started) / len(batch)
        for position, unit in enumerate(batch):
            rows = slice(position * clips, (position + 1) * clips)
            unit["scores"] = {branch: values[rows].double().numpy() for branch, values in scores.items()}
            unit["model_ms"] = elapsed
            if maps is not None and "map_source" in unit:
                unit["map"] = maps[position * clips, 0].numpy()
            for part in ("frag", "resize"):
                unit.pop(part, None)
        del resize, fragments
        _give_back_freed_memory()
        return batch

    # -- rows ------------------------------------------------------------------------------------------

    def _row(self, path: Path, units: list[dict[str, Any]], maps_dir: str | Path | None) -> dict[str, Any]:
        units = sorted(units, key=lambda unit: unit["unit"])
        row: dict[str, Any] = dict.fromkeys(ROW_FIELDS)
        row |= {"path": str(path), "clips": self.settings.clips}
        row |= units[0]["info"] or {}
        row["decode_ms"] = sum(unit["decode_ms"] for unit in units)
        row["views_ms"] = sum(unit["views_ms"] for unit in units)
        row["model_ms"] = sum(unit.get("model_ms", 0.0) for unit in units)
        failed = next((unit for unit in units if unit["error"] is not None), None)
        if failed is not None:
            where = "" if failed["unit"] == 0 else f"segment {failed['unit']}: "
            return row | {"status": "error", "error": where + failed["error"]}
        whole = units[0]["scores"]
        score_key = "qasa" if "qasa" in whole else "clip"
        row["score"] = float(whole[score_key].mean())
        row["stvqrl"] = float(whole["stvqrl"].mean()) if "stvqrl" in whole else None
        row["clip"] = float(whole["clip"].mean())
        if self.settings.clips > 1:
            row["score_std"] = float(whole[score_key].std())
            row["stvqrl_std"] = float(whole["stvqrl"].std()) if "stvqrl" in whole else None
            row["clip_std"] = float(whole["clip"].std())
        if self.calibration is not None:
            value = row["score"] if self.calibration.branch == score_key else row[self.calibration.branch]
            row["mos_pred"] = float(self.calibration.apply(value))
        if len(units) > 1:
            row["segments"] = [
                {
                    "start": unit["start"],
                    "end": unit["end"],
                    "score": float(unit["scores"][score_key].mean()),
                    "stvqrl": float(unit["scores"]["stvqrl"].mean()) if "stvqrl" in unit["scores"] else None,
                    "clip": float(unit["scores"]["clip"].mean()),
                }
                for unit in units[1:]
            ]
        if maps_dir is not None and "map" in units[0]:
            from qasa_vqa.maps import save_quality_map

            name = f"{path.stem}-{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]}"
            picture = save_quality_map(
                units[0]["map"],
                units[0]["map_source"],
                Path(maps_dir) / name,
                stride=self.map_stride,
                frames=self.settings.map_frames,
                title=f"{path.name}: score {row['score']:.3f}",
            )
            row["map"] = str(picture)
        return row | {"status": "ok", "error": None}


# -- construction ----------------------------------------------------------------------------------


def scorer_from_model(
    model: QASAModel | CLIPQuality,
    views: ViewSpec | None = None,
    *,
    device: str | torch.device = "cpu",
    settings: ScoreSettings = ScoreSettings(),
    calibration: Calibration | None = None,
    source: str = "",
) -> Scorer:
    """A scorer for a model in memory: a :class:`QASAModel` or a :class:`CLIPQuality` (zero-shot CLIP)."""
    views = views or ViewSpec()
    if isinstance(model, QASAModel):
        return Scorer(
            model,
            model.clip,
            views,
            settings=settings,
            device=device,
            calibration=calibration,
            map_stride=_backbone_stride(model),
            source=source,
        )
    if isinstance(model, CLIPQuality):
        return Scorer(
            None, model, views, settings=settings, device=device, calibration=calibration, source=source
        )
    raise TypeError(f"expected a QASAModel or a CLIPQuality, got {type(model).__name__}")


def _backbone_stride(model: QASAModel) -> int:
    """Pixels of the fragment image per quality-map cell: the patch embedding times 2 per merge."""
    config = model.stvqrl.backbone.config
    return int(config["patch_size"][1]) * 2 ** (len(config["depths"]) - 1)


def load_scorer(
    checkpoint: str | Path,
    *,
    device: str | torch.device = "cpu",
    clip_text: str | Path | None = None,
    clips: int = 1,
    seed: int = 0,
    segment_seconds: float | None = None,
    batch_size: int = 1,
    workers: int = 0,
    calibration: str | Path | Calibration | None = None,
    views: ViewSpec | dict[str, Any] | None = None,
) -> Scorer:
    """A :class:`Scorer` for ``checkpoint`` (our ``qasa_model.pt`` or the authors' QASA layout).

    ``clip_text``: where the prompt features come from for the authors' checkpoint, which has no text
    tower (``"openai"`` or a local CLIP file). ``views``: how frames are sampled and cut; by default the
    checkpoint's own (written by training), else the paper's. ``calibration``: a file from
    ``python -m qasa_vqa.evaluate`` (adds ``mos_pred``). Other arguments: :class:`ScoreSettings`.
    """
    from qasa_vqa.calibration import read_calibration
    from qasa_vqa.models.checkpoints import load_qasa_and_views

    model, stored_views = load_qasa_and_views(checkpoint, clip_text)
    if not model.clip.has_prompt_features:
        raise QasaVqaError(
            f"{checkpoint}: the authors' checkpoint holds no text tower; pass clip_text='openai' (needs "
            "network or a filled open_clip cache) or a local CLIP file (ViT-B-32.pt) for the prompt features"
        )
    if views is None:
        views = stored_views or ViewSpec()
    if not isinstance(views, ViewSpec):
        views = view_spec(views)
    if calibration is not None and not isinstance(calibration, Calibration):
        calibration = read_calibration(calibration)
    settings = ScoreSettings(
        clips=clips, seed=seed, segment_seconds=segment_seconds, batch_size=batch_size, workers=workers
    )
    return scorer_from_model(
        model, views, device=device, settings=settings, calibration=calibration, source=str(checkpoint)
    )


def view_spec(options: dict[str, Any]) -> ViewSpec:
    """A :class:`ViewSpec` from a mapping, with unknown keys named in the error."""
    known = {f.name for f in fields(ViewSpec)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise QasaVqaError(f"unknown view settings {unknown}; known: {sorted(known)}")
    return ViewSpec(**options)
