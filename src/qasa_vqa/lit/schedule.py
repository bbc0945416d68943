"""QASA-VQA's learning-rate schedule: linear warm-up, then a half cosine, stepped every iteration.

docs/method.md section 4.7. With ``I`` iterations per epoch, ``W = int(warmup_epochs * I)`` warm-up steps and
``M = epochs * I``, the reference multiplies both optimisers' learning rates by

    factor(c) = c / W                                  for c <= W
    factor(c) = 0.5 * (1 + cos(pi * (c - W) / M))      otherwise

and runs ``epochs + 1`` epochs. Its quirks are kept by default and each can be switched off:

* ``first_step_zero``: factor(0) = 0, so the first step does not move the weights; off, the warm-up
  is ``(c + 1) / W``.
* ``decay_over="total"``: the cosine's denominator is ``M``, not the ``M - W`` steps left after the
  warm-up, so it never reaches 0 (factor(3,402) is about 0.0035 in the paper's setting); ``"remaining"``
  decays to 0 at step ``M``.
* ``extra_epoch``: one epoch more than configured is trained (:func:`trained_epochs`).

Pure functions; ``WarmupCosine(...).factor`` is the function ``torch.optim.lr_scheduler.LambdaLR`` takes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

__all__ = ["WarmupCosine", "trained_epochs"]


@dataclass(frozen=True)
class WarmupCosine:
    """The schedule of one run (module docstring); ``factor(step)`` is the learning-rate multiplier."""

    iterations_per_epoch: int
    epochs: int
    warmup_epochs: float = 2.5
    first_step_zero: bool = True
    decay_over: Literal["total", "remaining"] = "total"
    extra_epoch: bool = True

    def __post_init__(self) -> None:
        if self.iterations_per_epoch < 1 or self.epochs < 1:
            raise ValueError(
                f"need at least one iteration and one epoch, got {self.iterations_per_epoch} and {self.epochs}"
            )
        if self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if self.decay_over not in ("total", "remaining"):
            raise ValueError(f"decay_over must be 'total' or 'remaining', got {self.decay_over!r}")

    @property
    def warmup_steps(self) -> int:
        """``W = int(warmup_epochs * I)``."""
        return int(self.warmup_epochs * self.iterations_per_epoch)

    @property
    def schedule_steps(self) -> int:
        """``M = epochs * I``."""
        return self.epochs * self.iterations_per_epoch

    @property
    def total_steps(self) -> int:
        """Steps actually trained: ``trained_epochs * I``."""
        return trained_epochs(self.epochs, self.extra_epoch) * self.iterations_per_epoch

    def factor(self, step: int) -> float:
        """The multiplier at ``step`` (0-based count of optimiser steps taken so far)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        warmup = self.warmup_steps
        if warmup > 0 and step <= warmup:
            return (step if self.first_step_zero else min(step + 1, warmup)) / warmup
        span = self.schedule_steps if self.decay_over == "total" else self.schedule_steps - warmup
        progress = min(step - warmup, span) / max(span, 1)
        return 0.5 * (1.0 + math.cos(math.pi * progress))


def trained_epochs(epochs: int, extra_epoch: bool = True) -> int:
    """Epochs the reference's loop runs for ``epochs`` configured: ``range(epochs + 1)``."""
    return epochs + 1 if extra_epoch else epochs
