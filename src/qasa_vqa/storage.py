"""Writing files so that a crash never leaves a damaged file under its final name.

:func:`atomic_write` writes through a temporary file in the same folder (``.<name>.<pid>.partial``),
flushes and fsyncs it, renames it over the target (atomic on POSIX and Windows filesystems), and
fsyncs the folder so that the rename itself survives a power cut. A reader sees the old file or the
new one, never half of either. :func:`append_line` is the one append-only write the project makes (the
scorer's rows): one ``write`` of a whole line, then flush and fsync.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

__all__ = [
    "append_line",
    "atomic_save",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "fsync_dir",
]


def fsync_dir(folder: str | Path) -> None:
    """fsync a folder (so a rename in it is durable); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file for writing; on a clean exit it replaces ``path``, on an error it is removed."""
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(partial, mode, **({"encoding": "utf-8", "newline": ""} if mode == "w" else {})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_write(path, "wb") as handle:
        handle.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    with atomic_write(path, "w") as handle:
        handle.write(text)
    return Path(path)


def atomic_save(path: str | Path, save: Callable[[Path], object]) -> Path:
    """Let ``save(temporary_path)`` write a file (e.g. ``torch.save``, ``savefig``), then move it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial{path.suffix}")
    try:
        save(partial)
        with open(partial, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise
    fsync_dir(path.parent)
    return path


def append_line(fd: int, line: str) -> None:
    """Append one whole line to the open descriptor ``fd`` in one write, and make it durable."""
    data = line.encode("utf-8")
    written = os.write(fd, data)
    while written < len(data):  # a short write (rare: signals, full pipes); finish it
        written += os.write(fd, data[written:])
    os.fsync(fd)
