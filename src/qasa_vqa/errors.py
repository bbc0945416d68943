"""The project's exception hierarchy.

Every error that qasa-vqa raises on purpose derives from :class:`QasaVqaError`, so a caller can catch
"anything this library rejected" in one clause, and the command line can print such errors as one
readable line instead of a traceback.
"""

from __future__ import annotations

from pathlib import Path


class QasaVqaError(Exception):
    """Base class of every error raised deliberately by qasa-vqa."""


class VideoDecodeError(QasaVqaError):
    """A video could not be probed or decoded.

    The message always names the file and the reason (missing, not a video, no video stream, no frames,
    truncated or corrupt data, a frame index out of range).
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")
