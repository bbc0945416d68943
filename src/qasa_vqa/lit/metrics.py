"""QualityMetrics: :func:`qasa_vqa.metrics.quality_metrics` as an epoch-level ``torchmetrics`` metric.

Predictions and MOS are gathered from every process before the metrics are computed, so correlations
under DDP are those of the whole set (a per-rank mean of correlations is not a correlation). The
Lightning systems log them per set and branch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from qasa_vqa.metrics import DEFAULT_MAXFEV, FitKind, MetricInputError, check_fit_kind, quality_metrics

__all__ = ["QualityMetrics"]


class QualityMetrics(Metric):
    """Epoch-level :func:`quality_metrics` as a ``torchmetrics.Metric``.

    Predictions and MOS are accumulated per batch (shape ``[B]`` or ``[B, 1]``) in list states
    reduced by concatenation, so under DDP ``compute()`` sees every rank's samples. States are kept
    in float64. ``compute()`` returns the dict of :func:`quality_metrics` as float64 scalar tensors;
    wrap it in :func:`prefixed` before logging.
    """

    is_differentiable = False
    higher_is_better: bool | None = None
    full_state_update = False

    preds: list[torch.Tensor] | torch.Tensor
    target: list[torch.Tensor] | torch.Tensor

    def __init__(
        self,
        *,
        fit: FitKind = "logistic4",
        bootstrap: int = 0,
        seed: int = 0,
        confidence: float = 0.95,
        maxfev: int = DEFAULT_MAXFEV,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.fit = check_fit_kind(fit)
        self.bootstrap = bootstrap
        self.seed = seed
        self.confidence = confidence
        self.maxfev = maxfev
        self.add_state("preds", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")
        # float64 states; also the dtype of the empty tensor torchmetrics sends for a rank without data
        self.set_dtype(torch.float64)

    @staticmethod
    def _flat(x: torch.Tensor | Sequence[float], name: str) -> torch.Tensor:
        x = torch.as_tensor(x).detach()
        if x.ndim == 2 and x.shape[1] == 1:
            x = x[:, 0]
        elif x.ndim == 0:
            x = x.reshape(1)
        if x.ndim != 1:
            raise MetricInputError(
                f"QualityMetrics.update: {name} must have shape [B] or [B, 1], got {tuple(x.shape)}"
            )
        return x

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of predictions and MOS (shape ``[B]`` or ``[B, 1]``)."""
        preds, target = self._flat(preds, "preds"), self._flat(target, "target")
        if preds.shape != target.shape:
            raise MetricInputError(
                f"QualityMetrics.update: {preds.shape[0]} predictions but {target.shape[0]} targets"
            )
        self.preds.append(preds.to(device=self.device, dtype=self.dtype))
        self.target.append(target.to(device=self.device, dtype=self.dtype))

    def compute(self) -> dict[str, torch.Tensor]:
        """:func:`quality_metrics` over everything seen (all ranks), as float64 tensors."""
        if (isinstance(self.preds, list) and not self.preds) or (
            isinstance(self.preds, torch.Tensor) and self.preds.numel() == 0
        ):
            raise MetricInputError(
                "QualityMetrics.compute: no predictions accumulated (compute before update, or after reset)"
            )
        preds, target = dim_zero_cat(self.preds), dim_zero_cat(self.target)
        result = quality_metrics(
            preds,
            target,
            fit=self.fit,  # type: ignore[arg-type]
            bootstrap=self.bootstrap,
            seed=self.seed,
            confidence=self.confidence,
            maxfev=self.maxfev,
        )
        return {
            key: torch.tensor(value, dtype=torch.float64, device=self.device) for key, value in result.items()
        }
