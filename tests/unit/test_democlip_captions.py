"""Captions of the demo CLIP's pictures: the quality word and the degree words follow the severity."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qasa_vqa.democlip.captions import (
    QUALITY_WORDS,
    VISIBLE,
    compose_caption,
    describe_distortion,
    overall_quality,
    quality_level,
)
from qasa_vqa.democlip.degrade import DISTORTIONS, Applied

BLUR = ("blurry", "out of focus", "soft")


def _applied(name: str, severity: float) -> Applied:
    return Applied(name, severity, BLUR if name == "blur" else ("noisy", "grainy"))


def test_overall_quality_is_the_weighted_product() -> None:
    mix = [_applied("blur", 0.5), Applied("colour_cast", 0.5, ("bluish",))]
    expected = (1 - DISTORTIONS["blur"].weight * 0.5) * (1 - DISTORTIONS["colour_cast"].weight * 0.5)
    assert math.isclose(overall_quality(mix), expected)
    assert overall_quality([]) == 1.0
    assert [quality_level(q) for q in (0.0, 0.19, 0.2, 0.5, 0.79, 0.8, 1.0)] == [0, 0, 1, 2, 3, 4, 4]


def test_degree_words_follow_severity() -> None:
    rng = np.random.default_rng(0)
    assert describe_distortion(_applied("blur", VISIBLE - 0.01), rng) is None
    for _ in range(20):
        mild = describe_distortion(_applied("blur", 0.2), rng)
        plain = describe_distortion(_applied("blur", 0.5), rng)
        strong = describe_distortion(_applied("blur", 0.9), rng)
        assert mild.split()[0] in ("slightly", "mildly", "somewhat") and mild.split(" ", 1)[1] in BLUR
        assert plain in BLUR
        assert strong.split()[0] in ("very", "heavily", "extremely") and strong.split(" ", 1)[1] in BLUR


def _levels_said(severity: float, draws: int = 400) -> np.ndarray:
    """How often each level's exclusive words appear in captions of a blur of ``severity``."""
    rng = np.random.default_rng(1)
    exclusive = {
        level: {w for w in words if all(w not in QUALITY_WORDS[o] for o in range(5) if o != level)}
        for level, words in enumerate(QUALITY_WORDS)
    }
    counts = np.zeros(5)
    for _ in range(draws):
        caption = compose_caption([_applied("blur", severity)] if severity else [], ("a cat",), rng)
        for level, words in exclusive.items():
            counts[level] += any(f" {w} " in f" {caption.rstrip('.')} ".replace(",", " ") for w in words)
    return counts / draws


def test_quality_words_follow_severity() -> None:
    clean, mid, ruined = _levels_said(0.0), _levels_said(0.5), _levels_said(0.95)
    assert clean[4] > 0.3 and clean[:3].sum() == 0  # "high quality", "excellent", ... and never worse
    assert mid[2] > 0.2 and mid[4] == 0 and mid[0] == 0  # "fair", "mediocre", ...
    assert ruined[0] > 0.2 and ruined[3:].sum() == 0  # "terrible", "very low quality", ...


def test_prompt_words_are_the_most_said_of_their_levels() -> None:
    rng = np.random.default_rng(2)
    best = [compose_caption([], (), rng, level=4) for _ in range(300)]
    worst = [compose_caption([], (), rng, level=0) for _ in range(300)]
    assert sum("high quality" in c for c in best) > 60 and sum(" good " in f" {c} " for c in best) > 40
    assert sum(" bad " in f" {c} ".replace(",", " ") for c in worst) > 60
    assert not any("bad" in c or "low quality" in c for c in best)
    assert not any("good" in c or "high quality" in c for c in worst)


@pytest.mark.parametrize("seed", [0, 1])
def test_captions_are_reproducible(seed: int) -> None:
    mix = [_applied("blur", 0.6), _applied("noise", 0.3)]
    first = [compose_caption(mix, ("a cat", "an animal"), np.random.default_rng(seed)) for _ in range(3)]
    again = [compose_caption(mix, ("a cat", "an animal"), np.random.default_rng(seed)) for _ in range(3)]
    assert first == again and all(c.startswith("a ") and c.endswith(".") for c in first)
