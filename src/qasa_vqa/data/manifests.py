"""Read the label files of the field into one list of records (FAST-VQA's, DOVER's and the datasets' own).

Users bring LSVQ, KoNViD-1k, LIVE-VQC, YouTube-UGC or their own videos with labels in half a dozen
formats. :func:`read_manifest` turns any of them into a :class:`Manifest`: the records (path relative
to the dataset root, MOS on the file's own scale, extra fields), the MOS scale, the file's SHA-256 and
the entries whose video is missing. Formats (``format=`` name, detected automatically by default):

``fastvqa_txt``
    FAST-VQA / DOVER 4-column text: ``path, duration, fps, mos`` (``-1`` = unknown), used for LSVQ
    train/test/1080p, KoNViD-1k, LIVE-VQC and YouTube-UGC.
``lsvq_csv``
    The official LSVQ CSV: ``name`` (without ``.mp4``), ``mos``, ``is_valid``, ... Rows whose
    ``is_valid`` is false are dropped unless ``keep_invalid=True``.
``konvid_csv``
    KoNViD-1k metadata CSV: ``flickr_id`` (video ``<flickr_id>.mp4``), ``mos`` (1-5).
``livevqc_csv``
    LIVE-VQC CSV: ``File``, ``MOS`` (0-100).
``youtube_ugc_csv``
    YouTube-UGC metadata CSV: ``vid`` (video ``<vid>.mp4``), ``MOSFull`` (1-5).
``qasa_json``
    QASA / SSL-VQA JSON: ``[{"filename": ..., "label": ...}]`` (LSVQ, 0-100).
``qalign_json``
    Q-Align JSON: ``[{"img_path": ..., "gt_score": ...}]``.
``plain_csv``
    Our own: ``path,mos[,split][,std]``; ``mos`` may be empty for unlabelled videos.

Paths stay as written in the file (normalised to forward slashes). Every entry must name a file inside
the dataset root: an absolute path (``/etc/passwd``, ``C:\\x``, ``\\\\server\\share``), one that leaves
the root through ``..`` (``../../etc/passwd``, ``a/../../b``) or one holding control characters is refused
with the file and line (or JSON entry) named, and the whole file with it: a label file that points
outside its root is not half-used. The check is on the path as written, so symbolic links *inside* the
root are followed wherever they point: whoever can write the root chose them (datasets are often
assembled from links into other disks), while a label file, which may come from anywhere, cannot
reach outside. Nothing here decodes video.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import posixpath
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Literal

from qasa_vqa.errors import QasaVqaError
from qasa_vqa.storage import atomic_write_bytes

__all__ = [
    "DATASET_SCALES",
    "FORMATS",
    "Manifest",
    "ManifestError",
    "VideoRecord",
    "detect_format",
    "normalise_mos",
    "read_manifest",
    "safe_relative_path",
    "write_plain_csv",
]

log = logging.getLogger(__name__)

FORMATS = (
    "fastvqa_txt",
    "lsvq_csv",
    "konvid_csv",
    "livevqc_csv",
    "youtube_ugc_csv",
    "qasa_json",
    "qalign_json",
    "plain_csv",
)

#: The MOS scale (lowest, highest possible score) of each dataset, as its authors published it.
DATASET_SCALES: dict[str, tuple[float, float]] = {
    "lsvq": (0.0, 100.0),
    "konvid-1k": (1.0, 5.0),
    "live-vqc": (0.0, 100.0),
    "youtube-ugc": (1.0, 5.0),
}

# The scale a format implies when it is tied to one dataset; the others infer it from the values.
_FORMAT_SCALES: dict[str, tuple[float, float]] = {
    "lsvq_csv": DATASET_SCALES["lsvq"],
    "konvid_csv": DATASET_SCALES["konvid-1k"],
    "livevqc_csv": DATASET_SCALES["live-vqc"],
    "youtube_ugc_csv": DATASET_SCALES["youtube-ugc"],
    "qasa_json": DATASET_SCALES["lsvq"],
}

Missing = Literal["error", "drop", "keep"]


class ManifestError(QasaVqaError):
    """A label file that cannot be read as asked."""


@dataclass(frozen=True)
class VideoRecord:
    """One labelled (or unlabelled, ``mos=None``) video: its path relative to the dataset root."""

    path: str
    mos: float | None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    """The records of one label file, with what is needed to use and to identify them."""

    records: tuple[VideoRecord, ...]
    format: str
    scale: tuple[float, float]
    source: Path
    sha256: str
    root: Path | None = None
    missing: tuple[str, ...] = ()
    subset: str | None = None

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[VideoRecord]:
        return iter(self.records)

    def __getitem__(self, index: int) -> VideoRecord:
        return self.records[index]

    def normalised(self, mos: float) -> float:
        """``mos`` mapped from this manifest's scale to [0, 1] (LSVQ: ``mos / 100``, as QASA trains)."""
        return normalise_mos(mos, self.scale)

    def split(self, name: str) -> list[VideoRecord]:
        """The records whose ``split`` field (plain CSV) equals ``name``."""
        return [record for record in self.records if record.extra.get("split") == name]

    def only(self, name: str) -> Manifest:
        """This manifest restricted to the records of split ``name`` (an error if there are none)."""
        records = tuple(self.split(name))
        if not records:
            names = sorted({str(r.extra["split"]) for r in self.records if "split" in r.extra})
            raise ManifestError(f"{self.source}: no entries with split {name!r} (splits: {names or 'none'})")
        return replace(self, records=records, subset=name)

    def resolve(self, record: VideoRecord) -> Path:
        """The file of ``record`` under the root (the manifest's folder when no root was given); a record
        made elsewhere whose path would leave the root is refused (module docstring)."""
        return (self.root or self.source.parent) / safe_relative_path(record.path, str(self.source))


def normalise_mos(mos: float, scale: tuple[float, float]) -> float:
    """``mos`` mapped from the MOS range ``scale = (low, high)`` to [0, 1]."""
    low, high = scale
    return (mos - low) / (high - low)


def read_manifest(
    path: str | Path,
    format: str = "auto",
    root: str | Path | None = None,
    *,
    scale: tuple[float, float] | str | None = None,
    missing: Missing = "error",
    keep_invalid: bool = False,
) -> Manifest:
    """Read the label file ``path`` (see the module docstring for the formats).

    ``root`` is the folder the video paths are relative to; when given, entries whose file does not
    exist are reported (count and first few) and then raise (``missing="error"``), are dropped
    (``"drop"``) or kept (``"keep"``). ``scale`` is the MOS range as ``(low, high)`` or a dataset
    name of :data:`DATASET_SCALES`; by default the format's own, else inferred from the values
    (all within [1, 5] -> 1-5, within [0, 1] -> 0-1, within [0, 100] -> 0-100).
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: label file not found" if not path.exists() else f"{path}: not a file")
    if missing not in ("error", "drop", "keep"):
        raise ValueError(f"missing must be 'error', 'drop' or 'keep', got {missing!r}")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ManifestError(f"{path}: not a UTF-8 text file ({error.reason} at byte {error.start})") from None
    fmt = detect_format(path, text) if format == "auto" else format
    if fmt not in _READERS:
        raise ManifestError(f"{path}: unknown manifest format {fmt!r}; known: {', '.join(FORMATS)}")
    records = _READERS[fmt](path, text, keep_invalid)
    if not records:
        raise ManifestError(f"{path}: no entries found (read as {fmt})")
    _check_duplicates(path, records)
    resolved_scale = _resolve_scale(path, fmt, scale, records)
    root_path = Path(root) if root is not None else None
    absent: list[str] = []
    if root_path is not None:
        if not root_path.is_dir():
            raise ManifestError(f"{path}: video root {root_path} is not a folder")
        absent = [record.path for record in records if not (root_path / record.path).is_file()]
        if absent:
            shown = ", ".join(absent[:5]) + (", ..." if len(absent) > 5 else "")
            message = f"{path}: {len(absent)} of {len(records)} videos are missing under {root_path}: {shown}"
            if missing == "error":
                raise ManifestError(message + " (pass missing='drop' to leave them out)")
            log.warning("%s; %s", message, "dropped" if missing == "drop" else "kept")
            if missing == "drop":
                gone = set(absent)
                records = [record for record in records if record.path not in gone]
                if not records:
                    raise ManifestError(f"{path}: none of the videos exist under {root_path}")
    return Manifest(
        records=tuple(records),
        format=fmt,
        scale=resolved_scale,
        source=path,
        sha256=hashlib.sha256(data).hexdigest(),
        root=root_path,
        missing=tuple(absent),
    )


def detect_format(path: str | Path, text: str | None = None) -> str:
    """The format of a label file, from its JSON keys or its CSV header (see the module docstring)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8-sig") if text is None else text
    stripped = text.lstrip()
    if stripped.startswith(("[", "{")):
        entries = _load_json_list(path, text)
        keys = set(entries[0]) if entries and isinstance(entries[0], dict) else set()
        if {"filename", "label"} <= keys:
            return "qasa_json"
        if {"img_path", "gt_score"} <= keys:
            return "qalign_json"
        raise ManifestError(
            f"{path}: JSON entries with keys {sorted(keys)} are neither QASA ({{filename, label}}) "
            "nor Q-Align ({img_path, gt_score})"
        )
    first = next((line for line in text.splitlines() if line.strip()), "")
    cells = [cell.strip() for cell in next(csv.reader([first]), [])]
    header = {cell.lower() for cell in cells}
    if len(cells) == 4 and all(_is_number(cell) for cell in cells[1:]):
        return "fastvqa_txt"
    if {"name", "mos"} <= header:
        return "lsvq_csv"
    if {"flickr_id", "mos"} <= header:
        return "konvid_csv"
    if {"file", "mos"} <= header:
        return "livevqc_csv"
    if {"vid", "mosfull"} <= header:
        return "youtube_ugc_csv"
    if {"path", "mos"} <= header or header == {"path"}:
        return "plain_csv"
    raise ManifestError(
        f"{path}: cannot tell the label format from its first line {first[:80]!r}; pass format= one of "
        f"{', '.join(FORMATS)}"
    )


def write_plain_csv(path: str | Path, records: Sequence[VideoRecord], *, fields: Sequence[str] = ()) -> Path:
    """Write ``records`` as a plain CSV (``path,mos`` plus the named ``extra`` fields), atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "mos", *fields])
    for record in records:
        mos = "" if record.mos is None else repr(float(record.mos))
        writer.writerow([record.path, mos, *(record.extra.get(name, "") for name in fields)])
    return atomic_write_bytes(path, buffer.getvalue().encode("utf-8"))  # line ends exactly as written


# -- readers -------------------------------------------------------------------------------------


def _read_fastvqa_txt(path: Path, text: str, keep_invalid: bool) -> list[VideoRecord]:
    records = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        cells = [cell.strip() for cell in line.rsplit(",", 3)]
        if len(cells) != 4:
            raise ManifestError(f"{path}:{line_number}: expected 'path, duration, fps, mos', got {line!r}")
        video, duration, fps, mos = cells
        where = f"{path}:{line_number}"
        extra = {"duration": _number(duration, where, "duration"), "fps": _number(fps, where, "fps")}
        records.append(_record(video, _number(mos, where, "mos"), where, extra))
    return records


def _read_lsvq_csv(path: Path, text: str, keep_invalid: bool) -> list[VideoRecord]:
    records = []
    for where, row in _csv_rows(path, text, ("name", "mos")):
        valid = row.get("is_valid", "1").strip().lower() not in ("0", "false", "no", "")
        if not valid and not keep_invalid:
            continue
        extra = {key: value for key, value in row.items() if key not in ("name", "mos")}
        records.append(_record(row["name"] + ".mp4", _number(row["mos"], where, "mos"), where, extra))
    return records


def _keyed_csv_reader(path_column: str, mos_column: str, suffix: str):
    def read(path: Path, text: str, keep_invalid: bool) -> list[VideoRecord]:
        records = []
        for where, row in _csv_rows(path, text, (path_column, mos_column)):
            extra = {key: value for key, value in row.items() if key not in (path_column, mos_column)}
            video = row[path_column] + suffix
            records.append(_record(video, _number(row[mos_column], where, mos_column), where, extra))
        return records

    return read


def _read_json(path_key: str, mos_key: str):
    def read(path: Path, text: str, keep_invalid: bool) -> list[VideoRecord]:
        records = []
        for position, entry in enumerate(_load_json_list(path, text)):
            where = f"{path}: entry {position}"
            if not isinstance(entry, dict) or path_key not in entry or mos_key not in entry:
                raise ManifestError(f"{where}: expected an object with {path_key!r} and {mos_key!r}")
            extra = {key: value for key, value in entry.items() if key not in (path_key, mos_key)}
            records.append(
                _record(str(entry[path_key]), _number(entry[mos_key], where, mos_key), where, extra)
            )
        return records

    return read


def _read_plain_csv(path: Path, text: str, keep_invalid: bool) -> list[VideoRecord]:
    records = []
    for where, row in _csv_rows(path, text, ("path",)):
        raw = (row.get("mos") or "").strip()
        mos = _number(raw, where, "mos") if raw else None
        extra = {key: value for key, value in row.items() if key not in ("path", "mos") and value != ""}
        if "std" in extra:
            extra["std"] = _number(extra["std"], where, "std")
        records.append(_record(row["path"], mos, where, extra))
    return records


_READERS = {
    "fastvqa_txt": _read_fastvqa_txt,
    "lsvq_csv": _read_lsvq_csv,
    "konvid_csv": _keyed_csv_reader("flickr_id", "mos", ".mp4"),
    "livevqc_csv": _keyed_csv_reader("File", "MOS", ""),
    "youtube_ugc_csv": _keyed_csv_reader("vid", "MOSFull", ".mp4"),
    "qasa_json": _read_json("filename", "label"),
    "qalign_json": _read_json("img_path", "gt_score"),
    "plain_csv": _read_plain_csv,
}


# -- helpers -------------------------------------------------------------------------------------


def _csv_rows(path: Path, text: str, required: Sequence[str]) -> Iterator[tuple[str, dict[str, str]]]:
    reader = csv.DictReader(text.splitlines())
    spelled = {name.lower(): name for name in required}  # required columns match whatever their case
    header = [spelled.get(name.strip().lower(), name.strip()) for name in (reader.fieldnames or [])]
    reader.fieldnames = header
    absent = [name for name in required if name not in header]
    if absent:
        raise ManifestError(f"{path}: CSV header {header} lacks the column(s) {absent}")
    for row in reader:
        if not any((value or "").strip() for value in row.values() if isinstance(value, str)):
            continue
        if None in row:
            raise ManifestError(f"{path}:{reader.line_num}: more cells than header columns")
        yield f"{path}:{reader.line_num}", {key: (value or "").strip() for key, value in row.items()}


def _load_json_list(path: Path, text: str) -> list[Any]:
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as error:
        raise ManifestError(f"{path}: invalid JSON ({error.msg} at line {error.lineno})") from None
    if not isinstance(entries, list):
        raise ManifestError(f"{path}: expected a JSON list of entries, got {type(entries).__name__}")
    return entries


def _record(raw_path: str, mos: float | None, where: str, extra: dict[str, Any]) -> VideoRecord:
    return VideoRecord(path=safe_relative_path(raw_path, where), mos=mos, extra=extra)


def safe_relative_path(raw_path: str, where: str) -> str:
    """``raw_path`` normalised (forward slashes, no ``.`` or inner ``..``) if it names a file inside the
    root; otherwise a :class:`ManifestError` that starts with ``where`` (the file and line)."""
    text = raw_path.strip().replace("\\", "/")
    if not text:
        raise ManifestError(f"{where}: empty video path")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise ManifestError(f"{where}: video path {raw_path!r} holds control characters")
    if PurePosixPath(text).is_absolute() or PureWindowsPath(raw_path.strip()).drive:
        raise ManifestError(
            f"{where}: absolute video path {raw_path!r} refused; paths must be relative to the dataset root"
        )
    normal = posixpath.normpath(text)
    if normal == ".." or normal.startswith("../"):
        raise ManifestError(
            f"{where}: video path {raw_path!r} leaves the dataset root (refused: entries must stay inside it)"
        )
    if normal == ".":
        raise ManifestError(f"{where}: video path {raw_path!r} names the dataset root itself, not a video")
    return normal


def _number(value: Any, where: str, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ManifestError(f"{where}: {name} {value!r} is not a number") from None
    if not math.isfinite(number):
        raise ManifestError(f"{where}: {name} is {value!r}")
    return number


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _check_duplicates(path: Path, records: Sequence[VideoRecord]) -> None:
    seen: set[str] = set()
    repeated = [record.path for record in records if record.path in seen or seen.add(record.path)]
    if repeated:
        raise ManifestError(f"{path}: {len(repeated)} video path(s) listed twice, e.g. {repeated[0]!r}")


def _resolve_scale(
    path: Path, fmt: str, scale: tuple[float, float] | str | None, records: Sequence[VideoRecord]
) -> tuple[float, float]:
    if isinstance(scale, str):
        if scale not in DATASET_SCALES:
            raise ManifestError(f"unknown dataset scale {scale!r}; known: {', '.join(DATASET_SCALES)}")
        return DATASET_SCALES[scale]
    if scale is not None:
        low, high = float(scale[0]), float(scale[1])
        if not high > low:
            raise ManifestError(f"MOS scale {scale} must have low < high")
        return low, high
    if fmt in _FORMAT_SCALES:
        return _FORMAT_SCALES[fmt]
    values = [record.mos for record in records if record.mos is not None]
    if not values:
        return DATASET_SCALES["lsvq"]
    low, high = min(values), max(values)
    for candidate in ((0.0, 1.0), (1.0, 5.0), (0.0, 100.0)):
        if candidate[0] <= low and high <= candidate[1]:
            return candidate
    raise ManifestError(
        f"{path}: MOS values span {low}..{high}, outside 0-1, 1-5 and 0-100; pass scale=(low, high)"
    )
