"""Training the demo CLIP: open_clip's contrastive loss goes down, the same seed gives the same model."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from qasa_vqa.democlip.pairs import PairPool, build_pool, usable_photos
from qasa_vqa.democlip.train import TrainSettings, _Batches, _tokens, estimate_steps, train_demo_clip
from qasa_vqa.models.clip_quality import LOCAL_CLIP_CONFIGS

TINY = copy.deepcopy(LOCAL_CLIP_CONFIGS["tiny"]) | {"embed_dim": 32}


@pytest.fixture(scope="module")
def pool() -> PairPool:
    return build_pool(0, 8, usable_photos(["hubble_deep_field", "ihc", "rocket"]), versions=2, progress=False)


def test_batches_hold_every_version_of_whole_shots(pool: PairPool) -> None:
    tokens = _tokens(pool.captions, 77)
    assert tokens.shape == (len(pool), 77)
    batches = _Batches(pool, tokens, 8, seed=0)
    images, text = batches.next()
    assert images.shape == (8, 3, 224, 224) and text.shape == (8, 77)
    flat = pool.images.reshape(-1, 224, 224, 3)
    mean = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
    std = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)
    pixels = (images * std + mean).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    found = []
    for picture in pixels:  # each item is a stored picture, maybe flipped: find which
        hits = [
            i
            for i in range(len(flat))
            if np.array_equal(picture, flat[i]) or np.array_equal(picture, flat[i][:, ::-1])
        ]
        assert len(hits) == 1
        found.append(hits[0])
    shot, version = np.array(found) // 4, np.array(found) // 2 % 2  # [shots, versions=2, pictures=2]
    assert sorted(set(shot.tolist())) == sorted(shot[::2].tolist())  # 4 whole shots
    assert all(sorted(version[shot == s].tolist()) == [0, 1] for s in set(shot.tolist()))
    assert all(torch.equal(text[k], tokens[found[k]]) for k in range(8))
    with pytest.raises(ValueError, match="not a multiple"):
        _Batches(pool, tokens, 7, seed=0)


def test_short_captions_replace_full_ones_by_their_share(pool: PairPool) -> None:
    full, short = _tokens(pool.captions, 77), _tokens(pool.short_captions, 77)
    assert all(
        c.startswith("a ") and c.endswith(" photo.") for s in pool.short_captions for v in s for c in v
    )
    batches = _Batches(pool, full, 16, seed=0, short=short)
    _, all_short = batches.next(1.0)
    _, all_full = batches.next(0.0)
    _, half = batches.next(0.5)
    short_rows = {tuple(row.tolist()) for row in short}
    full_rows = {tuple(row.tolist()) for row in full}
    assert all(tuple(row.tolist()) in short_rows for row in all_short)
    assert all(tuple(row.tolist()) in full_rows for row in all_full)
    assert 0 < sum(tuple(row.tolist()) in short_rows for row in half) < 16


def test_training_lowers_the_contrastive_loss_and_is_reproducible(pool: PairPool) -> None:
    settings = TrainSettings(steps=40, batch_size=8, lr=2e-3, warmup_fraction=0.1, seed=3)
    first = train_demo_clip(pool, settings, config=TINY, progress=False)
    losses = [row["loss"] for row in first.history]
    assert len(losses) == 40 and np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.3
    again = train_demo_clip(pool, settings, config=TINY, progress=False)
    other = train_demo_clip(pool, TrainSettings(steps=40, batch_size=8, seed=4), config=TINY, progress=False)
    state, same, different = first.model.state_dict(), again.model.state_dict(), other.model.state_dict()
    assert all(torch.equal(state[k], same[k]) for k in state)
    assert any(not torch.equal(state[k], different[k]) for k in state)
    assert [row["lr"] for row in first.history][3] == pytest.approx(2e-3)  # end of the 4-step warm-up
    assert first.history[-1]["lr"] < 1e-4  # cosine to zero


def test_a_time_budget_becomes_steps(pool: PairPool) -> None:
    few = estimate_steps(pool, 1.0, batch_size=8, config=TINY, probes=2)
    many = estimate_steps(pool, 100.0, batch_size=8, config=TINY, probes=2)
    assert 1 <= few < many
