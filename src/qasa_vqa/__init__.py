"""qasa-vqa: label-efficient no-reference video quality assessment (QASA-VQA and ST-VQRL).

The public API grows with the project; today it is the video input pipeline:
``qasa_vqa.video.reader`` (probe, read_frames), ``qasa_vqa.video.sampling`` and
``qasa_vqa.video.fragments``.
"""

from __future__ import annotations

from qasa_vqa.errors import QasaVqaError, VideoDecodeError

__version__ = "0.1.0"

__all__ = ["QasaVqaError", "VideoDecodeError", "__version__"]
