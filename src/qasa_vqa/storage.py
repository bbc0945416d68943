"""Writing files so that a crash never leaves a damaged file under its final name.

:func:`atomic_save` (and its shorthands for bytes and text) writes through a temporary file in the
same folder (``.<name>.<host>-<pid>-<random>.partial<suffix>``: no other process, on this machine or
another one sharing the folder, takes the same name), fsyncs it, renames it over the target (atomic on
POSIX and Windows filesystems, NFS included), and fsyncs the folder so that the rename itself survives a
power cut. A reader sees the old file or the
new one, never half of either. :func:`create_once` creates a file unless it exists, exactly once among
concurrent processes (a hard link of a finished temporary file). :func:`append_line` is the one append-only write the project makes (the
scorer's rows): one ``write`` of a whole line, then flush and fsync.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "append_line",
    "atomic_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "create_once",
    "fsync_dir",
    "unique_name",
]


def unique_name() -> str:
    """``<host>-<pid>-<random>``: a name part that no other process on any machine takes at the same
    time (not a seeded draw: it must differ between runs of the same seed)."""
    host = "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname()) or "host"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


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


def atomic_save(path: str | Path, save: Callable[[Path], object]) -> Path:
    """Let ``save(temporary_path)`` write the file (``torch.save``, ``savefig``, ...), then fsync it and
    move it over ``path``; if ``save`` fails, the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{unique_name()}.partial{path.suffix}")
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


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_save(path, lambda partial: partial.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_save(path, lambda partial: partial.write_text(text, encoding="utf-8"))


def create_once(path: Path, text: str) -> None:
    """Create ``path`` holding ``text`` unless it exists; of concurrent callers exactly one creates it,
    and nobody ever sees it partly written (a hard link of a finished file, atomic on NFS too)."""
    temporary = path.with_name(f".{path.name}.{unique_name()}.partial")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    try:
        os.link(temporary, path)
    except FileExistsError:
        pass
    except OSError:  # a filesystem without hard links: whole file or nothing still holds with O_EXCL
        with contextlib.suppress(FileExistsError):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, text.encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink()
    fsync_dir(path.parent)


def append_line(fd: int, line: str) -> None:
    """Append one whole line to the open descriptor ``fd`` in one write, and make it durable."""
    data = line.encode("utf-8")
    written = os.write(fd, data)
    while written < len(data):  # a short write (rare: signals, full pipes); finish it
        written += os.write(fd, data[written:])
    os.fsync(fd)
