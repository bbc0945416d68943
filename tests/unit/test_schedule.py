"""The warm-up + cosine factor of docs/method.md 4.7, in the reference's mode and with its quirks switched off."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from qasa_vqa.lit.schedule import WarmupCosine, trained_epochs


def test_reference_numbers() -> None:
    schedule = WarmupCosine(iterations_per_epoch=500 // 6, epochs=40)
    assert (schedule.iterations_per_epoch, schedule.warmup_steps, schedule.schedule_steps) == (83, 207, 3320)
    assert schedule.total_steps == 3403 and trained_epochs(40) == 41
    assert schedule.factor(0) == 0.0  # the first step does not move the weights
    assert schedule.factor(207) == 1.0 and schedule.factor(100) == pytest.approx(100 / 207)
    # the last step: the cosine's denominator is M, not M - W, so it never reaches 0
    assert schedule.factor(3402) == pytest.approx(0.5 * (1 + math.cos(math.pi * 3195 / 3320)))
    assert schedule.factor(3402) == pytest.approx(0.0035, abs=5e-5)


def test_quirks_switched_off() -> None:
    schedule = WarmupCosine(83, 40, first_step_zero=False, decay_over="remaining", extra_epoch=False)
    assert schedule.factor(0) == pytest.approx(1 / 207) and schedule.factor(206) == 1.0
    assert schedule.total_steps == 3320
    assert schedule.factor(3320) == pytest.approx(0.0, abs=1e-12)  # reaches 0 at the end
    assert schedule.factor(207 + (3320 - 207) // 2) == pytest.approx(0.5, abs=1e-3)  # half way


def test_monotone_after_warmup_and_bad_settings() -> None:
    schedule = WarmupCosine(10, 5, warmup_epochs=1)
    values = [schedule.factor(step) for step in range(schedule.total_steps)]
    assert values[:11] == [step / 10 for step in range(11)]
    assert all(a >= b for a, b in itertools.pairwise(values[10:]))
    with pytest.raises(ValueError, match="at least one iteration"):
        WarmupCosine(0, 5)
    with pytest.raises(ValueError, match="decay_over"):
        WarmupCosine(1, 1, decay_over="end")  # type: ignore[arg-type]


def test_factor_steps_the_optimiser_through_lambda_lr() -> None:
    weight = torch.nn.Parameter(torch.zeros(1))
    optimiser = torch.optim.SGD([weight], lr=2.0)
    schedule = WarmupCosine(4, 3, warmup_epochs=1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, schedule.factor)
    seen = []
    for _ in range(schedule.total_steps):
        seen.append(optimiser.param_groups[0]["lr"])
        optimiser.step()
        scheduler.step()
    assert seen == pytest.approx([2.0 * schedule.factor(step) for step in range(schedule.total_steps)])
