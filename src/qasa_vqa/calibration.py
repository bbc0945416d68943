"""Calibration files: a fitted mapping from a model's score to the MOS scale of a rated dataset.

``python -m qasa_vqa.evaluate`` fits the VQEG logistic (or another :data:`~qasa_vqa.metrics.FitKind`)
of one score column against MOS on each test set and writes it as JSON; ``qasa-vqa score --calibration
FILE`` (and :func:`qasa_vqa.load_scorer`) reads it back and adds ``mos_pred``, the score mapped onto
that dataset's MOS scale. The mapping is a config object, never constants in the code (users ask for it: FAST-VQA #7, #32, DOVER #16, #32). The file names the score it maps (``qasa``: the combined score; ``stvqrl``; ``clip``)
and where it was fitted, so a calibration is not silently applied to another score.

Format: ``{"format": "qasa-vqa-calibration", "version": 1, "branch", "fit", "params", "mos_min",
"mos_max", "n", "source": {...}}``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qasa_vqa.errors import QasaVqaError
from qasa_vqa.metrics import FIT_PARAMETERS, apply_fit, check_fit_kind
from qasa_vqa.storage import atomic_write_text

__all__ = ["BRANCHES", "Calibration", "CalibrationError", "read_calibration"]

FORMAT, VERSION = "qasa-vqa-calibration", 1
BRANCHES = ("qasa", "stvqrl", "clip")


class CalibrationError(QasaVqaError):
    """A calibration file that cannot be read or does not fit the scorer."""


@dataclass(frozen=True)
class Calibration:
    """A fitted mapping of the ``branch`` score onto MOS (see the module docstring)."""

    branch: str
    fit: str
    params: tuple[float, ...]
    mos_min: float
    mos_max: float
    n: int
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.branch not in BRANCHES:
            raise CalibrationError(f"branch must be one of {', '.join(BRANCHES)}, got {self.branch!r}")
        try:
            check_fit_kind(self.fit)
        except QasaVqaError as error:
            raise CalibrationError(str(error)) from None
        if len(self.params) != FIT_PARAMETERS[self.fit] or not all(math.isfinite(p) for p in self.params):
            raise CalibrationError(
                f"a {self.fit} mapping needs {FIT_PARAMETERS[self.fit]} finite parameters, got {list(self.params)}"
            )

    def apply(self, score: float | np.ndarray) -> float | np.ndarray:
        """The MOS predicted for ``score`` (a float for a float)."""
        mapped = apply_fit(
            np.atleast_1d(np.asarray(score, dtype=np.float64)), np.asarray(self.params), self.fit
        )
        return float(mapped[0]) if np.ndim(score) == 0 else mapped

    def save(self, path: str | Path) -> Path:
        payload = {"format": FORMAT, "version": VERSION, **asdict(self), "params": list(self.params)}
        return atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


def read_calibration(path: str | Path) -> Calibration:
    """Read a calibration file written by :meth:`Calibration.save`, with errors that name the file."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
    except FileNotFoundError:
        raise CalibrationError(f"{path}: calibration file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CalibrationError(f"{path}: not a readable calibration file ({error})") from None
    if not isinstance(payload, Mapping) or payload.get("format") != FORMAT:
        raise CalibrationError(
            f"{path}: not a qasa-vqa calibration file (write one with python -m qasa_vqa.evaluate)"
        )
    if payload.get("version") != VERSION:
        raise CalibrationError(f"{path}: calibration version {payload.get('version')!r}, expected {VERSION}")
    try:
        return Calibration(
            branch=payload["branch"],
            fit=payload["fit"],
            params=tuple(float(p) for p in payload["params"]),
            mos_min=float(payload["mos_min"]),
            mos_max=float(payload["mos_max"]),
            n=int(payload["n"]),
            source=dict(payload.get("source") or {}),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise CalibrationError(
            f"{path}: incomplete calibration file ({type(error).__name__}: {error})"
        ) from None
    except CalibrationError as error:
        raise CalibrationError(f"{path}: {error}") from None
