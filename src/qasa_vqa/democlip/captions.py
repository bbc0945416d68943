"""Captions for degraded pictures: what is shown, what is wrong with it, and how good it looks overall.

A caption is composed from three parts, as a person would describe a picture:

* the content, when known (``"a cat"``, ``"a brick wall"``; procedural textures may go unnamed);
* the visible distortions, each as one of its words with a degree that follows its severity
  (invisible below 0.12, ``"slightly blurry"`` below 0.35, ``"blurry"`` below 0.7, ``"very blurry"``
  above), or, for a clean picture, words such as ``"sharp"`` and ``"clean"``;
* an overall quality word from five levels, worst to best: ``bad / terrible / very low quality``,
  ``poor / low quality / bad``, ``fair / mediocre``, ``good / decent``, ``high quality / excellent /
  good``. The level follows the quality ``Q = prod_i (1 - w_i s_i)`` of the applied distortions
  (severity ``s_i``, weight ``w_i`` of :mod:`~qasa_vqa.democlip.degrade`), blurred by a small seeded
  "rater" noise, cut at 0.2, 0.4, 0.6 and 0.8. QASA's prompt words (good, bad, high quality, low
  quality) are the most frequent words of their levels, so the prompts mean what the method assumes.

Several templates put the parts together (``"a good photo."``, ``"a blurry, blocky, low quality photo
of a cat."``, ...); :func:`short_caption` is the prompts' own form, ``"a {quality word} photo."``, which
training starts from. Every choice draws from the generator passed in.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from qasa_vqa.democlip.degrade import DISTORTIONS, Applied

__all__ = [
    "CLEAN_WORDS",
    "LEVEL_CUTS",
    "QUALITY_WORDS",
    "VISIBLE",
    "compose_caption",
    "describe_distortion",
    "overall_quality",
    "quality_level",
    "short_caption",
]

VISIBLE = 0.12  # below this severity a distortion is not mentioned
LEVEL_CUTS = (0.2, 0.4, 0.6, 0.8)
RATER_NOISE = 0.04
# Level 0 (worst) .. 4 (best): each level's words and how often each is said. QASA's prompt words are
# the most frequent of their levels, and "good" / "bad" are shared by the two levels at each end.
QUALITY_WORDS: tuple[tuple[str, ...], ...] = (
    ("bad", "low quality", "terrible"),
    ("low quality", "bad", "poor"),
    ("fair", "mediocre", "average"),
    ("good", "decent", "nice"),
    ("high quality", "good", "excellent"),
)
_QUALITY_P = ((0.45, 0.3, 0.25), (0.45, 0.35, 0.2), (0.5, 0.3, 0.2), (0.55, 0.25, 0.2), (0.45, 0.35, 0.2))
CLEAN_WORDS = ("sharp", "clean", "crisp", "clear", "well exposed")
_NOUNS, _NOUN_P = ("photo", "picture", "image"), (0.8, 0.1, 0.1)
_DEGREES = (("slightly", "mildly", "somewhat"), ("",), ("very", "heavily", "extremely"))
# Templates, with how often each is used: short ones dominate, so the quality words are learned first.
_TEMPLATES = (
    ("a {quality} {noun}.", 0.35),
    ("a {quality} {noun} of {content}.", 0.2),
    ("a {described}, {quality} {noun}.", 0.25),
    ("a {described} {noun} of {content}.", 0.1),
    ("a {quality}, {described} {noun} of {content}.", 0.1),
)


def overall_quality(applied: Sequence[Applied]) -> float:
    """``prod_i (1 - w_i s_i)`` over the applied distortions: 1 for a clean picture, towards 0 for a ruined one."""
    quality = 1.0
    for item in applied:
        quality *= 1.0 - DISTORTIONS[item.name].weight * item.severity
    return quality


def quality_level(quality: float, rng: np.random.Generator | None = None) -> int:
    """The level 0..4 of a quality in [0, 1]; with ``rng``, after a rater's noise of sd 0.04."""
    if rng is not None:
        quality += RATER_NOISE * float(rng.standard_normal())
    return int(np.searchsorted(LEVEL_CUTS, quality, side="right"))


def _quality_word(level: int, rng: np.random.Generator) -> str:
    return QUALITY_WORDS[level][int(rng.choice(len(QUALITY_WORDS[level]), p=_QUALITY_P[level]))]


def short_caption(level: int, rng: np.random.Generator) -> str:
    """The shortest caption, in the prompts' own form: ``"a {quality word} photo."``."""
    return f"a {_quality_word(level, rng)} photo."


def describe_distortion(item: Applied, rng: np.random.Generator) -> str | None:
    """One of the distortion's words with a degree from its severity; ``None`` if it is not visible."""
    if item.severity < VISIBLE:
        return None
    word = item.words[int(rng.integers(len(item.words)))]
    if word.startswith("with "):
        return word
    band = 0 if item.severity < 0.35 else 1 if item.severity < 0.7 else 2
    degree = _DEGREES[band][int(rng.integers(len(_DEGREES[band])))]
    return f"{degree} {word}".strip()


def _join(words: Sequence[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def compose_caption(
    applied: Sequence[Applied], content: Sequence[str], rng: np.random.Generator, *, level: int | None = None
) -> str:
    """A caption for a picture of ``content`` (names to choose from; empty: unnamed) after ``applied``.

    ``level`` overrides the quality level (default: :func:`quality_level` of :func:`overall_quality`
    with rater noise from ``rng``).
    """
    if level is None:
        level = quality_level(overall_quality(applied), rng)
    faults = [w for i in rng.permutation(len(applied)) if (w := describe_distortion(applied[i], rng))]
    if not faults and level >= 3:
        faults = [str(w) for w in rng.choice(CLEAN_WORDS, int(rng.integers(1, 3)), replace=False)]
    phrases = [w for w in faults if w.startswith("with ")]
    described = _join([w for w in faults if not w.startswith("with ")])
    usable = [
        (t, p) for t, p in _TEMPLATES
        if ("{described}" not in t or described) and ("{content}" not in t or content)
    ]  # fmt: skip
    weights = np.array([p for _, p in usable])
    template = usable[int(rng.choice(len(usable), p=weights / weights.sum()))][0]
    caption = template.format(
        quality=_quality_word(level, rng),
        noun=_NOUNS[int(rng.choice(len(_NOUNS), p=_NOUN_P))],
        content=content[int(rng.integers(len(content)))] if content else "",
        described=described,
    )
    return caption[:-1] + f" {_join(phrases)}." if phrases else caption
