"""The files around scoring: which videos the inputs name, and the rows file that survives being killed.

:func:`collect_videos` turns ``qasa-vqa score``'s inputs into a list of files: a folder gives its videos
(recursively, by extension, sorted), a glob its matches, a label file (any format
:func:`~qasa_vqa.data.manifests.read_manifest` reads) the videos it lists, any other path itself (so a
missing or broken file still gets its ``error`` row). Duplicates are dropped, first occurrence kept.

:class:`RowWriter` appends one row per video to a CSV or JSONL file (chosen by the suffix), each row in
one write followed by an fsync, so a SIGKILL loses at most the row being written. Opened with
``resume=True`` it first repairs a torn last line, then reports the videos already present, which the
scorer skips: rerunning after a kill gives each video exactly once. Without ``resume`` an existing
file is refused (``overwrite=True`` starts it again), so finished work is never lost by accident.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from qasa_vqa.data.manifests import ManifestError, read_manifest
from qasa_vqa.errors import QasaVqaError
from qasa_vqa.storage import append_line, atomic_write_bytes, atomic_write_text

__all__ = ["LABEL_SUFFIXES", "VIDEO_SUFFIXES", "RowWriter", "collect_videos", "read_rows", "row_key"]

VIDEO_SUFFIXES = frozenset(
    [
        ".mp4",
        ".m4v",
        ".mov",
        ".mkv",
        ".webm",
        ".avi",
        ".mpg",
        ".mpeg",
        ".ts",
        ".mts",
        ".m2ts",
        ".flv",
        ".wmv",
        ".3gp",
        ".ogv",
        ".y4m",
        ".yuv",
        ".264",
        ".h264",
        ".265",
        ".hevc",
        ".ivf",
    ]
)
LABEL_SUFFIXES = frozenset({".csv", ".txt", ".json"})


def _is_glob(text: str) -> bool:
    return any(char in text for char in "*?[")


def collect_videos(inputs: Iterable[str | Path], *, root: str | Path | None = None) -> list[Path]:
    """The video files that ``inputs`` name (see the module docstring). ``root``: the folder the paths
    of label files are relative to (default: the label file's folder)."""
    found: list[Path] = []
    for item in inputs:
        text = str(item)
        path = Path(text)
        if path.is_dir():
            videos = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
            if not videos:
                raise QasaVqaError(
                    f"{path}: no video files in this folder (looked for {', '.join(sorted(VIDEO_SUFFIXES))})"
                )
            found += videos
        elif path.is_file() and path.suffix.lower() in LABEL_SUFFIXES:
            try:
                manifest = read_manifest(path, missing="keep")
            except ManifestError as error:
                raise QasaVqaError(f"{path}: not a label file this scorer reads: {error}") from None
            base = Path(root) if root is not None else path.parent
            found += [base / record.path for record in manifest]
        elif not path.exists() and _is_glob(text):
            matches = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
            if not matches:
                raise QasaVqaError(f"{text}: no files match this pattern")
            found += matches
        else:
            found.append(path)  # a file, or a missing one: its row will say what is wrong
    unique: dict[str, Path] = {}
    for path in found:
        unique.setdefault(row_key(path), path)
    return list(unique.values())


def row_key(path: str | Path) -> str:
    """How rows are matched on resume: the absolute, normalised path."""
    return os.path.normpath(os.path.abspath(str(path)))


def _format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    raise QasaVqaError(f"{path}: the output must end in .csv or .jsonl")


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"))
    return repr(value) if isinstance(value, float) else str(value)


def _json_value(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """The complete rows of a CSV or JSONL scores file (a torn last line is left out)."""
    path = Path(path)
    fmt = _format(path)
    text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    if fmt == "jsonl":
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise QasaVqaError(f"{path}:{number}: not a JSON line ({error})") from None
        return rows
    return list(csv.DictReader(io.StringIO(text)))


class RowWriter:
    """Appends score rows to ``path`` (module docstring). Use as a context manager."""

    def __init__(
        self, path: str | Path, fields: Sequence[str], *, resume: bool = False, overwrite: bool = False
    ) -> None:
        self.path = Path(path)
        self.format = _format(self.path)
        self.fields = tuple(fields)
        self.done: set[str] = set()
        exists = self.path.exists() and self.path.stat().st_size > 0
        if exists and not (resume or overwrite):
            raise QasaVqaError(
                f"{self.path} exists; pass --resume to continue it (videos already in it are skipped) or "
                "--overwrite to start it again"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if exists and resume:
            self._repair_and_read()
        elif exists:
            atomic_write_text(self.path, "")
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        if self.format == "csv" and os.fstat(self._fd).st_size == 0:
            append_line(self._fd, ",".join(self.fields) + "\n")

    def _repair_and_read(self) -> None:
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):  # killed while writing: drop the torn line
            atomic_write_bytes(self.path, data[: data.rfind(b"\n") + 1])
        rows = read_rows(self.path)
        if self.format == "csv":
            with open(self.path, encoding="utf-8") as handle:
                header = handle.readline().strip()
            if header and tuple(header.split(",")) != self.fields:
                raise QasaVqaError(
                    f"{self.path}: its columns ({header}) are not this run's ({','.join(self.fields)}); "
                    "resume with the same options, or write to another file"
                )
        self.done = {row_key(row["path"]) for row in rows if row.get("path")}

    def write(self, row: Mapping[str, Any]) -> None:
        if self.format == "csv":
            buffer = io.StringIO()
            csv.writer(buffer, lineterminator="\n").writerow([_cell(row.get(field)) for field in self.fields])
            line = buffer.getvalue()
        else:
            line = json.dumps({field: _json_value(row.get(field)) for field in self.fields}) + "\n"
        append_line(self._fd, line)
        self.done.add(row_key(row["path"]))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
