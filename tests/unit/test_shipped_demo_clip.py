"""The demo CLIP shipped in the package: small, self-describing, and quality-aware on unseen pictures."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from qasa_vqa.democlip.make import DEMO_MODEL_NAME, Recipe, _random_twin
from qasa_vqa.democlip.pairs import plan_sample, render_sample, usable_photos
from qasa_vqa.models.clip_quality import LOCAL_CLIP_CONFIGS, build_clip_quality
from qasa_vqa.models.clip_weights import demo_clip_path, read_clip_header
from qasa_vqa.video.fragments import normalise


def test_shipped_file_is_small_and_says_how_it_was_made() -> None:
    path = demo_clip_path()
    assert path.stat().st_size <= 10 * 1024**2
    header = read_clip_header(path)
    assert header is not None and header.model_name == DEMO_MODEL_NAME
    assert header.config == LOCAL_CLIP_CONFIGS[DEMO_MODEL_NAME]
    provenance = header.provenance
    recipe = Recipe(**provenance["recipe"])
    assert (
        provenance["command"].startswith("qasa-vqa demo-clip")
        and f"--steps {recipe.steps}" in provenance["command"]
    )
    assert {"hubble_deep_field", "ihc", "rocket"} <= set(provenance["scenes_left_out"])
    assert not {p.split(".")[0] for p in provenance["photos_used"]} & set(provenance["scenes_left_out"])
    trained = provenance["zero_shot"]["trained"]["all"]
    assert trained["n"] == 72 and trained["srcc_low"] <= trained["srcc"] <= trained["srcc_high"]


def test_shipped_file_loads_by_tag_and_path() -> None:
    by_tag = build_clip_quality(pretrained="demo")
    by_path = build_clip_quality(pretrained=demo_clip_path())
    assert by_tag.model_name == by_path.model_name == DEMO_MODEL_NAME
    assert by_tag.prompt_features.shape == (4, 128)
    torch.testing.assert_close(by_tag.prompt_features, by_path.prompt_features)
    # the text tower has learned which quality words mean the same: each prompt is closer to its synonym
    # than to its antonym (a random text tower puts "a Good photo." nearer "a Bad photo." than "a High
    # quality photo.", since the first two share more tokens)
    good, bad, high, low = torch.nn.functional.normalize(by_tag.prompt_features, dim=-1)
    assert float(good @ high) > float(good @ bad) and float(high @ good) > float(high @ low)
    assert float(bad @ low) > float(bad @ good) and float(low @ bad) > float(low @ high)


def _to_input(pictures: list[np.ndarray]) -> torch.Tensor:
    return normalise(torch.from_numpy(np.stack(pictures)).permute(0, 3, 1, 2), "imagenet", channel_dim=1)


@pytest.fixture(scope="module")
def clean_and_damaged() -> tuple[torch.Tensor, torch.Tensor]:
    """Unseen shots (a seed never trained on), each clean and under heavy codec, blur and noise damage."""
    photos = usable_photos(["hubble_deep_field", "ihc", "rocket"])
    heavy = ((("h264", 0.85),), (("blur", 0.8),), (("noise", 0.8),), (("rescale", 0.85),))
    clean, damaged = [], []
    for index in range(6):
        plan = plan_sample(987_654, index, photos, versions=1)
        plan = dataclasses.replace(plan, mixes=((), *heavy))
        pictures, _, _ = render_sample(plan)
        clean.append(pictures[0, 0])
        damaged.extend(pictures[1:, 0])
    return _to_input(clean), _to_input(damaged)


def _quality(clip: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return clip.eval()(images[:, None]).double()  # one frame per "video"


def test_shipped_model_prefers_clean_pictures(clean_and_damaged: tuple[torch.Tensor, torch.Tensor]) -> None:
    clean, damaged = clean_and_damaged
    demo = build_clip_quality(pretrained="demo")
    clean_q, damaged_q = _quality(demo, clean), _quality(demo, damaged)
    pairs = clean_q.repeat_interleave(4) - damaged_q  # each shot's clean version against its 4 damaged ones
    assert (pairs > 0).double().mean() >= 0.75 and clean_q.mean() > damaged_q.mean()
    random_model = _random_twin(demo_clip_path(), seed=0)
    random_gap = _quality(random_model, clean).mean() - _quality(random_model, damaged).mean()
    assert float(clean_q.mean() - damaged_q.mean()) > 5 * abs(float(random_gap))
