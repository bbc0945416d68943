"""The demo CLIP's pairs: seeded plans and pixels, never a test photograph, the same pool on any worker count."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from qasa_vqa.data.synthetic import DemoKnobs, plan_corpus
from qasa_vqa.democlip.make import excluded_scenes
from qasa_vqa.democlip.pairs import (
    KEPT_FRAMES,
    PHOTO_CONTENT,
    build_pool,
    plan_sample,
    render_sample,
    usable_photos,
)

DEFAULT_TEST_SCENES = sorted(s for s, split in plan_corpus(0, DemoKnobs())[0].items() if split == "test")


def test_the_default_corpus_test_photos_are_left_out(tmp_path: Path) -> None:
    assert excluded_scenes(None) == DEFAULT_TEST_SCENES == ["hubble_deep_field", "ihc", "rocket"]
    photos = usable_photos(excluded_scenes(None))
    assert photos and not {p.split(".")[0] for p in photos} & set(DEFAULT_TEST_SCENES)
    sources = {plan_sample(0, i, photos).source for i in range(300)}
    assert sources <= set(photos) | {"texture:leaves", "texture:shapes", "texture:clouds"}
    assert {p for p in sources if not p.startswith("texture:")} == set(photos)  # all used, in 300 draws
    # another corpus's test scenes are left out too, read from its plan (seed and sizes), never its scores
    knobs = DemoKnobs(scenes=5, variants=2)
    (tmp_path / "corpus.json").write_text(json.dumps({"seed": 4, "knobs": vars(knobs) | {}}))
    other = {s for s, split in plan_corpus(4, knobs)[0].items() if split == "test"}
    assert set(excluded_scenes(tmp_path)) == set(DEFAULT_TEST_SCENES) | other


def test_plans_are_pure_functions_of_seed_and_index() -> None:
    photos = usable_photos(DEFAULT_TEST_SCENES)
    assert plan_sample(3, 17, photos) == plan_sample(3, 17, photos)
    assert plan_sample(3, 17, photos) != plan_sample(4, 17, photos)
    plans = [plan_sample(0, i, photos) for i in range(200)]
    mixes = [m for p in plans for m in p.mixes]
    assert all(len(p.mixes) == 4 for p in plans)
    sizes = np.bincount([len(m) for m in mixes], minlength=4) / len(mixes)
    assert np.allclose(sizes, [0.16, 0.38, 0.30, 0.16], atol=0.05)  # 0-3 distortions per version
    severities = [s for m in mixes for _, s in m]
    assert 0 <= min(severities) < 0.05 and 0.95 < max(severities) <= 1


def test_render_is_reproducible_and_shaped() -> None:
    photos = usable_photos(DEFAULT_TEST_SCENES)
    plan = plan_sample(0, 5, photos)
    pictures, captions, quality = render_sample(plan)
    again, captions_again, _ = render_sample(plan)
    assert pictures.shape == (4, len(KEPT_FRAMES), 224, 224, 3) and pictures.dtype == np.uint8
    assert np.array_equal(pictures, again) and captions == captions_again
    assert len(quality) == 4 and all(0 <= q <= 1 for q in quality)
    pairs = [pair for version in captions for pair in version]
    assert len(pairs) == 4 * len(KEPT_FRAMES)
    for full, short in pairs:  # one verdict said two ways: the short form is "a {its quality word} photo."
        assert full.startswith("a ") and short.startswith("a ") and short.endswith(" photo.")
    assert plan.source in PHOTO_CONTENT  # content names appear in the captions of a photograph
    names = PHOTO_CONTENT[plan.source]
    assert any(f" of {name}" in full for full, _ in pairs for name in names)


def test_pool_does_not_depend_on_the_worker_count() -> None:
    photos = usable_photos(DEFAULT_TEST_SCENES)
    one = build_pool(2, 3, photos, versions=2, workers=1, progress=False, chunk=1)
    two = build_pool(2, 3, photos, versions=2, workers=2, progress=False, chunk=2)
    assert one.images.shape == (3, 2, len(KEPT_FRAMES), 224, 224, 3) and len(one) == 12
    assert np.array_equal(one.images, two.images) and one.captions == two.captions
    assert np.array_equal(one.quality, two.quality)
    with pytest.raises(ValueError, match="at least one shot"):
        build_pool(0, 0, photos)
