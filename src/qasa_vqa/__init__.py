"""qasa-vqa: label-efficient no-reference video quality assessment (QASA-VQA and ST-VQRL).

The public API: :func:`load_scorer` (score videos with a trained model: ``scorer.score(path)`` and
``scorer.score_many(paths)``, see :mod:`qasa_vqa.scoring`), the training and evaluation entry points
(``python -m qasa_vqa.train``, ``python -m qasa_vqa.evaluate``), and the video input pipeline
(:mod:`qasa_vqa.video.reader`, :mod:`qasa_vqa.video.sampling`, :mod:`qasa_vqa.video.fragments`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qasa_vqa.errors import QasaVqaError, VideoDecodeError

if TYPE_CHECKING:
    from qasa_vqa.scoring import Scorer

__version__ = "0.1.0"

__all__ = ["QasaVqaError", "VideoDecodeError", "__version__", "load_scorer"]


def load_scorer(checkpoint: Any, **options: Any) -> Scorer:
    """A scorer for a trained checkpoint: see :func:`qasa_vqa.scoring.load_scorer` (imported lazily, so
    that ``import qasa_vqa`` stays light)."""
    from qasa_vqa.scoring import load_scorer as _load_scorer

    return _load_scorer(checkpoint, **options)
