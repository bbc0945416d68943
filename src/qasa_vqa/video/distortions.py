"""The ST-VQRL synthetic distortion corpus: 12 distorted versions of every pristine video.

docs/method.md section 2.1 (the authors' ``LSVQ Synthetic/*.py`` scripts): ``OUT/<k>/<name>`` for k = 0..12
is the reference (a byte copy), MPEG-2 at fixed quantiser 1/20/30, H.264 at CRF 5/35/50, a Gaussian
pyramid down/up of 2/3/4 levels, and the frame rate divided by 2/3/4 then motion-interpolated back
with FFmpeg's ``minterpolate``. :data:`DISTORTIONS` lists them; :func:`distort_video` makes one
version of one file, streaming frames decode -> transform -> encode with PyAV; :func:`synthesize_tree`
makes a whole tree in parallel, resumably, with a ``synth_manifest.csv`` (``qasa-vqa synth``).

How the reference's FFmpeg commands are reproduced, and where this deliberately differs (section 8,
item 21):

* ``-qscale:v N`` makes the CLI put ``N * FF_QP2LAMBDA`` into every frame's ``quality``; PyAV cannot
  set that, and the ``qscale`` flag plus ``global_quality`` alone code every frame at ``qmin`` with
  lambda 0 whatever N is. So the rate controller is pinned instead (``lmin = lmax = N * 118``, I/B
  factors 1), which gives the CLI's quantiser and lambda on every frame; tests read the quantiser
  back from the slice headers. As in the CLI, quantiser 1 is clamped to ``qmin`` = 2.
* Versions 7-12 were written through scikit-video's FFmpegWriter from RGB frames, which gives libx264
  at CRF 23 in **yuv444p** (FFmpeg's choice for RGB input); kept here. Versions 1-6 re-encode the
  decoded pictures as ``ffmpeg -i`` did, in yuv420p; odd sizes, which x264 refuses in 4:2:0, use
  yuv444p for H.264 (MPEG-2 codes odd sizes in 4:2:0 fine).
* The pyramid is OpenCV's pyrDown/pyrUp in numpy, bit-exact (checked against OpenCV 4.14 on odd and
  tiny sizes; OpenCV is not a dependency), cropped back to the source size after the ups.
* Outputs keep the source's name (the scripts wrote ``1.mp4, 2.mp4, ...``), frame size (odd sizes
  broke the scripts' pyramid), frame count and average frame rate (skvideo wrote versions 7-9 at
  25 fps; VFR sources come out CFR). Rotation tags are applied to the pixels, as FFmpeg's autorotate
  did. Audio is not carried. MPEG-2 rates outside its table get ``strict=experimental`` (the
  container keeps the exact rate).
* Frame rate: every k-th frame is kept (rate fps/k) and ``minterpolate`` runs at the source rate
  directly; the scripts used ``round(fps)//k`` (7 fps for k=4 at 30) and minterpolate's default 60 fps
  followed by ``-r fps``, the same frames when 60 is a multiple of fps. The last kept frame is repeated
  so the output has the source's length. ``minterpolate`` takes the filter's options: FFmpeg's
  defaults (:data:`MINTERPOLATE_OPTIONS`) are also its cheapest motion-compensated setting (about
  0.3 s per 1080p output frame on 2 cores; ``me_mode=bidir`` doubles that). Without the filter, or
  with ``minterpolate=None``, frames are linearly blended between the neighbouring kept frames.
* x264 runs with ``mbtree=0`` (:data:`X264_PARAMS`): with its macroblock tree on (FFmpeg's default,
  so the reference's) this build's output changes from run to run, and a corpus must be repeatable.
  The tree only moves bits between frames; CRF keeps its meaning.
* Encoded outputs use the source's container for .mp4/.m4v/.mov/.mkv/.avi and Matroska otherwise
  (.webm, .mpg, ... keep their name but hold Matroska).
"""

from __future__ import annotations

import csv
import glob
import io
import itertools
import json
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from qasa_vqa.errors import QasaVqaError, VideoDecodeError
from qasa_vqa.storage import atomic_save, atomic_write_bytes
from qasa_vqa.video.reader import VIDEO_SUFFIXES, VideoInfo, probe

__all__ = [
    "DISTORTIONS",
    "MANIFEST_NAME",
    "MINTERPOLATE_OPTIONS",
    "X264_PARAMS",
    "Distortion",
    "SynthFailure",
    "SynthReport",
    "distort_video",
    "find_videos",
    "parse_versions",
    "pyr_down",
    "pyr_up",
    "pyramid_blur",
    "synthesize_tree",
]

MANIFEST_NAME = "synth_manifest.csv"
# FFmpeg's own minterpolate defaults, spelled out (the reference passed none); the output fps is added.
MINTERPOLATE_OPTIONS = (
    "mi_mode=mci:mc_mode=obmc:me_mode=bilat:me=epzs:mb_size=16:search_param=32:vsbmc=0:scd=fdiff"
)
FF_QP2LAMBDA = 118
# x264's macroblock tree makes the output of this build vary from run to run (measured: the same frames
# gave different bytes and pixels up to 187 levels apart, depending on memory layout and load); without
# it x264 is repeatable, so the same pristine videos always give the same tree.
X264_PARAMS = "mbtree=0"
_CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".avi": "avi"}
_MPEG2_RATES = {
    Fraction(base) * Fraction(n, d)
    for base in (Fraction(24000, 1001), 24, 25, Fraction(30000, 1001), 30, 50, Fraction(60000, 1001), 60)
    for n in range(1, 5)
    for d in range(1, 33)
}
_FIELDS = ("version", "name", "kind", "level", "params", "source", "path", "width", "height", "frames", "fps", "bytes", "status", "error")  # fmt: skip


@dataclass(frozen=True)
class Distortion:
    """One version of the tree: ``OUT/<version>/<name>``; ``level`` 1-3 grows with severity."""

    version: int
    name: str
    kind: str  # reference | mpeg2 | h264 | pyramid | framerate
    level: int
    params: dict[str, Any] = field(default_factory=dict)


_SKVIDEO = {"codec": "libx264", "crf": 23, "pix_fmt": "yuv444p"}
DISTORTIONS: tuple[Distortion, ...] = (
    Distortion(0, "reference", "reference", 0, {"copy": True}),
    *(Distortion(1 + i, f"mpeg2_q{q}", "mpeg2", 1 + i, {"codec": "mpeg2video", "qscale": q}) for i, q in enumerate((1, 20, 30))),
    *(Distortion(4 + i, f"h264_crf{c}", "h264", 1 + i, {"codec": "libx264", "crf": c}) for i, c in enumerate((5, 35, 50))),
    *(Distortion(7 + i, f"pyramid_x{2 ** n}", "pyramid", 1 + i, {"levels": n, **_SKVIDEO}) for i, n in enumerate((2, 3, 4))),
    *(Distortion(10 + i, f"fps_div{k}", "framerate", 1 + i, {"divisor": k, **_SKVIDEO}) for i, k in enumerate((2, 3, 4))),
)  # fmt: skip


@dataclass(frozen=True)
class SynthFailure:
    source: Path
    version: int
    reason: str


@dataclass
class SynthReport:
    """What :func:`synthesize_tree` did: output paths written or already there, and the failures."""

    written: list[Path]
    skipped: list[Path]
    failed: list[SynthFailure]
    manifest: Path


# ------------------------------------------------------------------------------------- Gaussian pyramid


def _taps(a: np.ndarray, axis: int, count: int, weights: Sequence[int]) -> np.ndarray:
    """sum_j weights[j] * a[2i + j] along ``axis`` for i < count (uint16 arithmetic)."""
    total = None
    for offset, weight in enumerate(weights):
        index = [slice(None)] * a.ndim
        index[axis] = slice(offset, offset + 2 * count - 1, 2)
        term = a[tuple(index)] * np.uint16(weight)
        total = term if total is None else total + term
    return total


def pyr_down(image: np.ndarray) -> np.ndarray:
    """OpenCV's ``pyrDown``: [1,4,6,4,1]/16 blur (BORDER_REFLECT_101), keep even rows/columns.

    uint8 ``[H, W(, C)]`` -> ``[(H+1)//2, (W+1)//2(, C)]``, with OpenCV's integer rounding (half up).
    """
    h, w = image.shape[:2]
    padded = np.pad(image, [(2, 2), (2, 2)] + [(0, 0)] * (image.ndim - 2), mode="reflect")
    rows = _taps(padded.astype(np.uint16), 0, (h + 1) // 2, (1, 4, 6, 4, 1))
    both = _taps(rows, 1, (w + 1) // 2, (1, 4, 6, 4, 1))
    return ((both + np.uint16(128)) >> 8).astype(np.uint8)


def _up_axis(a: np.ndarray, axis: int) -> np.ndarray:
    a = np.moveaxis(a, axis, 0)
    n = a.shape[0]
    # reflect-101 in the zero-stuffed 2n domain: src[-1] = src[1], src[n] = src[n-1]
    p = np.concatenate([a[min(1, n - 1)][None], a, a[n - 1][None]])
    out = np.empty((2 * n, *a.shape[1:]), dtype=np.uint16)
    out[0::2] = p[:-2] + np.uint16(6) * p[1:-1] + p[2:]
    out[1::2] = np.uint16(4) * (p[1:-1] + p[2:])
    return np.moveaxis(out, 0, axis)


def pyr_up(image: np.ndarray) -> np.ndarray:
    """OpenCV's ``pyrUp``: zero-stuff to twice the size, blur with 4 x [1,4,6,4,1]/16 (reflect-101)."""
    both = _up_axis(_up_axis(image.astype(np.uint16), 0), 1)
    return ((both + np.uint16(32)) >> 6).astype(np.uint8)


def pyramid_blur(image: np.ndarray, levels: int) -> np.ndarray:
    """``levels`` pyrDowns then as many pyrUps, cropped back to the input size (odd sizes included)."""
    out = image
    for _ in range(levels):
        out = pyr_down(out)
    for _ in range(levels):
        out = pyr_up(out)
    return np.ascontiguousarray(out[: image.shape[0], : image.shape[1]])


# ------------------------------------------------------------------------------------------ one video


def distort_video(
    source: str | Path, dest: str | Path, version: int, *, minterpolate: str | None = MINTERPOLATE_OPTIONS
) -> Path:
    """Write version ``version`` (0..12, :data:`DISTORTIONS`) of ``source`` to ``dest``; return ``dest``.

    ``dest`` appears only when complete (:func:`qasa_vqa.storage.atomic_save`: a ``.<name>.<unique>.partial<ext>``
    file, renamed; stale ones of killed runs are removed first).
    ``minterpolate`` holds the filter options of versions 10-12 (``None``: linear blend instead).
    Raises :class:`VideoDecodeError` naming ``source`` when it cannot be decoded.
    """
    source, dest = Path(source), Path(dest)
    spec = _distortion(version)
    info = probe(source)
    dest.parent.mkdir(parents=True, exist_ok=True)
    for stale in dest.parent.glob(f".{glob.escape(dest.name)}.*.partial{glob.escape(dest.suffix)}"):
        stale.unlink(missing_ok=True)

    def write(partial: Path) -> None:
        if spec.kind == "reference":
            shutil.copyfile(source, partial)
        else:
            _write_distorted(source, partial, info, spec, minterpolate)

    try:
        atomic_save(dest, write)
    except av.FFmpegError as error:  # decoding errors are VideoDecodeErrors already
        raise QasaVqaError(
            f"{dest}: encoding {spec.name} failed ({getattr(error, 'strerror', error)})"
        ) from error
    return dest


def _distortion(version: int) -> Distortion:
    if not isinstance(version, int | np.integer) or not 0 <= version < len(DISTORTIONS):
        raise QasaVqaError(f"distortion version {version!r} is out of range: versions are 0..12")
    return DISTORTIONS[version]


def _write_distorted(
    source: Path, dest: Path, info: VideoInfo, spec: Distortion, minterpolate: str | None
) -> None:
    p, size = spec.params, (info.display_width, info.display_height)
    rate = Fraction(info.fps).limit_denominator(1001) if info.fps > 0 else Fraction(25)
    frames = _decode(source, info)
    even = size[0] % 2 == 0 and size[1] % 2 == 0
    options: dict[str, str] = {}
    if spec.kind == "mpeg2":
        pix_fmt, lam = "yuv420p", str(p["qscale"] * FF_QP2LAMBDA)
        options = {"lmin": lam, "lmax": lam, "i_qfactor": "1", "i_qoffset": "0", "b_qfactor": "1"}
        options |= {"b_qoffset": "0"} | ({} if rate in _MPEG2_RATES else {"strict": "experimental"})
    elif spec.kind == "h264":
        pix_fmt, options = ("yuv420p" if even else "yuv444p"), {"crf": str(p["crf"])}
    else:
        pix_fmt, options = p["pix_fmt"], {"crf": str(p["crf"])}
        if spec.kind == "pyramid":
            frames = (_rgb_frame(pyramid_blur(f.to_ndarray(format="rgb24"), p["levels"])) for f in frames)
        else:
            frames = _interpolate(frames, info.num_frames, p["divisor"], rate, size, minterpolate)
    if p["codec"] == "libx264":
        options["x264-params"] = X264_PARAMS
    fmt = _CONTAINERS.get(dest.suffix.lower(), "matroska")
    with av.open(str(dest), mode="w", format=fmt) as container:
        stream = container.add_stream(p["codec"], rate=rate)
        stream.width, stream.height, stream.pix_fmt = *size, pix_fmt
        stream.codec_context.options = options
        for index, frame in enumerate(frames):
            frame.pts, frame.time_base = index, 1 / rate
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def _rgb_frame(array: np.ndarray) -> av.VideoFrame:
    return av.VideoFrame.from_ndarray(array, format="rgb24")


def _decode(source: Path, info: VideoInfo) -> Iterator[av.VideoFrame]:
    """Every frame of ``source`` in display order, upright, one at a time."""
    try:
        with av.open(str(source)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                if info.rotation:
                    frame = _rgb_frame(np.rot90(frame.to_ndarray(format="rgb24"), k=info.rotation // 90))
                yield frame
    except av.FFmpegError as error:
        raise VideoDecodeError(source, f"decoding failed ({getattr(error, 'strerror', error)})") from error


def _interpolate(
    frames: Iterator[av.VideoFrame],
    count: int,
    k: int,
    rate: Fraction,
    size: tuple[int, int],
    options: str | None,
) -> Iterator[av.VideoFrame]:
    """Keep every ``k``-th frame (rate/k), interpolate back to ``rate``; exactly ``count`` frames."""
    kept = (f.reformat(format="yuv444p") for f in itertools.islice(frames, 0, None, k))
    if options is None or "minterpolate" not in av.filter.filters_available:
        yield from itertools.islice(_blend(kept, k), count)
        return
    graph = av.filter.Graph()
    low = Fraction(k) / rate
    nodes = [
        graph.add_buffer(width=size[0], height=size[1], format="yuv444p", time_base=low),
        graph.add(
            "minterpolate", ":".join(filter(None, [f"fps={rate.numerator}/{rate.denominator}", options]))
        ),
        graph.add("buffersink"),
    ]
    graph.link_nodes(*nodes).configure()
    produced, last, pushed = 0, None, 0

    def drain() -> Iterator[av.VideoFrame]:
        nonlocal produced
        while produced < count:
            try:
                out = graph.vpull()
            except (av.BlockingIOError, av.EOFError):
                return
            produced += 1
            yield out

    for frame in kept:
        frame.pts, frame.time_base, last = pushed, low, frame
        graph.vpush(frame)
        pushed += 1
        yield from drain()
    for _ in range(8):  # repeat the last kept frame past the end: minterpolate looks ahead
        if produced >= count or last is None:
            break
        last.pts = pushed
        graph.vpush(last)
        pushed += 1
        yield from drain()
    graph.vpush(None)
    yield from drain()
    tail = last  # still short (tiny clips): hold the last frame
    while produced < count and tail is not None:
        produced += 1
        yield tail.reformat(format="yuv444p")


def _blend(kept: Iterator[av.VideoFrame], k: int) -> Iterator[av.VideoFrame]:
    """Fallback interpolation: output frame t = linear blend of kept frames floor(t/k) and the next."""
    previous = None
    for frame in itertools.chain(kept, [None]):
        current = None if frame is None else frame.to_ndarray(format="rgb24").astype(np.float32)
        if previous is not None:
            nxt = previous if current is None else current
            for j in range(k):
                mix = previous + (nxt - previous) * (j / k)
                yield _rgb_frame(np.clip(np.rint(mix), 0, 255).astype(np.uint8))
        previous = current


# ---------------------------------------------------------------------------------------------- trees


def find_videos(in_dir: str | Path, *, exclude: Path | None = None) -> list[Path]:
    """Video files under ``in_dir`` (recursive, sorted, hidden names and anything under ``exclude`` skipped)."""
    in_dir = Path(in_dir)
    if not in_dir.is_dir():
        raise QasaVqaError(f"{in_dir}: no such directory")
    skip = exclude.resolve() if exclude is not None else None
    found = sorted(
        path
        for path in in_dir.rglob("*")
        if path.suffix.lower() in VIDEO_SUFFIXES
        and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(in_dir).parts)
        and not (skip is not None and path.resolve().is_relative_to(skip))
    )
    if not found:
        raise QasaVqaError(f"{in_dir}: no videos found (looked for {' '.join(VIDEO_SUFFIXES)})")
    return found


def parse_versions(text: str) -> list[int]:
    """``"0,1,5"`` or ``"1-3,7"`` -> sorted unique versions; :class:`QasaVqaError` if malformed/out of range."""
    versions: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            low, _, high = part.partition("-")
            versions.update(range(int(low), int(high or low) + 1))
        except ValueError:
            raise QasaVqaError(f"bad version list {text!r}: expected e.g. 0,1,5 or 1-3") from None
    return _check_versions(versions)


def _check_versions(versions: Iterable[int]) -> list[int]:
    chosen = sorted(set(versions))
    if not chosen:
        raise QasaVqaError("no distortion versions chosen")
    for version in chosen:
        _distortion(version)
    return chosen


def _task(source: Path, rel: str, out_dir: Path, version: int, minterpolate: str | None) -> dict[str, Any]:
    """One (video, version): write it unless present, then describe it (a manifest row)."""
    dest, row = out_dir / str(version) / rel, _row(rel, version)
    try:
        status = "skipped" if dest.exists() else "written"
        if status == "written":
            distort_video(source, dest, version, minterpolate=minterpolate)
        info = probe(dest)
        row |= {"width": info.display_width, "height": info.display_height, "frames": info.num_frames}
        row |= {"fps": round(info.fps, 6), "bytes": dest.stat().st_size, "status": status, "error": ""}
    except Exception as error:  # one task's failure must not lose the others
        row |= _failure(error)
    return row


def _row(rel: str, version: int) -> dict[str, Any]:
    spec = DISTORTIONS[version]
    row: dict[str, Any] = {"version": version, "name": spec.name, "kind": spec.kind, "level": spec.level}
    return row | {
        "params": json.dumps(spec.params, sort_keys=True),
        "source": rel,
        "path": f"{version}/{rel}",
    }


def _failure(error: BaseException) -> dict[str, str]:
    return {"status": "failed", "error": f"{type(error).__name__}: {error}".replace("\n", " ")}


def _collect(future: Future, task: tuple) -> dict[str, Any]:
    try:
        return future.result()
    except Exception as error:  # a worker that died (e.g. killed for memory) fails only its task
        return _row(task[1], task[3]) | _failure(error)


def synthesize_tree(
    in_dir: str | Path,
    out_dir: str | Path,
    *,
    versions: Sequence[int] = range(13),
    workers: int | None = None,
    progress: bool = True,
    minterpolate: str | None = MINTERPOLATE_OPTIONS,
) -> SynthReport:
    """Write ``out_dir/<k>/<relative path>`` for every video under ``in_dir`` and every k in ``versions``.

    Outputs already present are skipped (they only ever appear complete), so an interrupted run resumes.
    ``workers`` processes (default ``min(4, cpus)``) run one (video, version) each; failures are
    collected, not raised. ``out_dir/synth_manifest.csv`` describes every output (merged with the rows
    of earlier runs for other versions), rewritten atomically at the end.
    """
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    chosen = _check_versions(versions)
    sources = find_videos(in_dir, exclude=out_dir)
    workers = min(4, os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise QasaVqaError(f"workers must be at least 1, got {workers}")
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = [
        (src, src.relative_to(in_dir).as_posix(), out_dir, v, minterpolate) for src in sources for v in chosen
    ]
    pool = ProcessPoolExecutor(workers) if workers > 1 and len(tasks) > 1 else None
    futures = {pool.submit(_task, *t): t for t in tasks} if pool else {}  # forks happen before rich's thread
    results = (_collect(f, futures[f]) for f in as_completed(futures)) if pool else (_task(*t) for t in tasks)
    rows: list[dict[str, Any]] = []
    bar = Progress(TextColumn("synth"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   TextColumn("{task.description}"), console=Console(stderr=True), disable=not progress)  # fmt: skip
    try:
        with bar:
            job = bar.add_task("", total=len(tasks))
            for row in results:
                rows.append(row)
                bar.update(job, advance=1, description=row["path"])
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    manifest = _write_manifest(out_dir, rows)
    by_status = {s: [out_dir / r["path"] for r in rows if r["status"] == s] for s in ("written", "skipped")}
    failed = [
        SynthFailure(in_dir / r["source"], r["version"], r["error"]) for r in rows if r["status"] == "failed"
    ]
    return SynthReport(sorted(by_status["written"]), sorted(by_status["skipped"]), failed, manifest)


def _write_manifest(out_dir: Path, rows: list[dict[str, Any]]) -> Path:
    manifest = out_dir / MANIFEST_NAME
    done = {row["path"] for row in rows}
    if manifest.exists():  # keep earlier runs' rows for outputs this run did not touch, if still there
        with manifest.open(newline="") as handle:
            rows = rows + [
                r for r in csv.DictReader(handle) if r["path"] not in done and (out_dir / r["path"]).exists()
            ]
    rows.sort(key=lambda r: (int(r["version"]), r["source"]))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_bytes(manifest, text.getvalue().encode("utf-8"))
