"""Datasets: view shapes (docs/method.md 4.2, 5.1, 2.2), seeded draws, shared frames/patches across versions,
and the skip-or-raise policy for videos that fail to decode."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from corpora import VERSION_STEP, write_labelled_clips, write_version_tree
from qasa_vqa.data.datasets import (
    EvaluationDataset,
    PretrainDataset,
    SemiSupervisedDataset,
    ViewSpec,
    collate_skipping_none,
    find_distortion_tree,
)
from qasa_vqa.data.manifests import VideoRecord, read_manifest
from qasa_vqa.errors import QasaVqaError, VideoDecodeError
from qasa_vqa.video.fragments import IMAGENET_STD


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("clips")
    return read_manifest(write_labelled_clips(folder, 4))


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_version_tree(tmp_path_factory.mktemp("tree"), scenes=2, frames=80)


def test_semi_supervised_item_has_the_four_views(clips) -> None:
    dataset = SemiSupervisedDataset(clips.records, clips.source.parent, labelled=True, mos_scale=clips.scale)
    item = dataset[1]
    assert item["frag_v"].shape == (3, 32, 224, 224)
    assert item["frag_a"].shape == (3, 32, 224, 224)
    assert item["resize_v"].shape == (32, 3, 224, 224)
    assert item["resize_a"].shape == (8, 3, 224, 224)
    assert torch.equal(item["resize_a"], item["resize_v"][:-1:4])
    assert item["mos"].item() == pytest.approx(clips.normalised(17.0))
    assert item["path"] == "clips/c1.mp4" and item["decode_failures"] == 0
    for key in ("frag_v", "frag_a", "resize_v"):
        assert item[key].dtype == torch.float32 and torch.isfinite(item[key]).all()
    unlabelled = SemiSupervisedDataset(clips.records, clips.source.parent, labelled=False)
    assert "mos" not in unlabelled[0]


def test_semi_supervised_draws_are_seeded(clips) -> None:
    def make(seed: int) -> SemiSupervisedDataset:
        return SemiSupervisedDataset(clips.records, clips.source.parent, labelled=True, seed=seed)

    a, b, c = make(0), make(0), make(1)
    first = a[0]
    assert torch.equal(first["frag_v"], b[0]["frag_v"])
    assert not torch.equal(first["frag_v"], c[0]["frag_v"])
    assert not torch.equal(first["frag_v"], a[0]["frag_v"])  # the next draw (next epoch) differs


def test_ranks_draw_their_own_views_and_rank_0_draws_what_one_process_draws(clips) -> None:
    def make(rank: int | None) -> SemiSupervisedDataset:
        extra = {} if rank is None else {"rank": rank}
        return SemiSupervisedDataset(clips.records, clips.source.parent, labelled=True, seed=2, **extra)

    single, rank0, rank1, rank1_again = make(None)[0], make(0)[0], make(1)[0], make(1)[0]
    assert torch.equal(single["frag_v"], rank0["frag_v"])
    assert torch.equal(rank1["frag_v"], rank1_again["frag_v"])
    assert not torch.equal(rank0["frag_v"], rank1["frag_v"])  # same worker seed, item and draw: other offsets


def test_semi_supervised_draws_are_reproducible_with_workers(clips) -> None:
    dataset = SemiSupervisedDataset(clips.records, clips.source.parent, labelled=True, seed=3)

    def epoch(loader_seed: int) -> list[torch.Tensor]:
        loader = DataLoader(
            dataset, batch_size=2, num_workers=2, generator=torch.Generator().manual_seed(loader_seed)
        )
        return [batch["frag_a"] for batch in loader]

    first, again, other = epoch(5), epoch(5), epoch(6)
    assert all(torch.equal(x, y) for x, y in zip(first, again, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(first, other, strict=True))


def test_evaluation_item_is_the_same_every_time(clips) -> None:
    dataset = EvaluationDataset(clips.records, clips.source.parent, mos_scale=clips.scale)
    item = dataset[2]
    assert item["frag"].shape == (3, 64, 224, 224)
    assert item["resize"].shape == (64, 3, 224, 224)
    assert item["mos_raw"].item() == 24.0 and item["mos"].item() == pytest.approx(0.24)
    again = dataset[2]
    assert torch.equal(item["frag"], again["frag"]) and torch.equal(item["resize"], again["resize"])


def test_evaluation_item_without_mos_is_nan(clips) -> None:
    records = [VideoRecord(clips[0].path, None)]
    item = EvaluationDataset(records, clips.source.parent)[0]
    assert torch.isnan(item["mos"]) and torch.isnan(item["mos_raw"])


def test_small_views_follow_the_view_spec(clips) -> None:
    spec = ViewSpec(segments=4, frames_per_segment=2, test_frames_per_segment=4, grid=4, patch=16, size=64)
    item = SemiSupervisedDataset(clips.records, clips.source.parent, labelled=False, views=spec)[0]
    assert item["frag_v"].shape == (3, 8, 64, 64) and item["resize_v"].shape == (8, 3, 64, 64)
    assert item["resize_a"].shape == (2, 3, 64, 64)
    test = EvaluationDataset(clips.records, clips.source.parent, views=spec)[0]
    assert test["frag"].shape == (3, 16, 64, 64) and test["resize"].shape == (16, 3, 64, 64)


@pytest.fixture
def with_broken(clips, tmp_path: Path):
    """The clips plus a truncated copy of one of them, second in the list."""
    root = tmp_path / "root"
    shutil.copytree(clips.source.parent / "clips", root / "clips")
    data = (root / "clips" / "c0.mp4").read_bytes()
    (root / "clips" / "broken.mp4").write_bytes(data[: len(data) // 3])
    records = [clips[0], VideoRecord("clips/broken.mp4", 50.0), *clips.records[1:]]
    return root, records


def test_training_item_skips_an_undecodable_video(with_broken, caplog) -> None:
    root, records = with_broken
    dataset = SemiSupervisedDataset(records, root, labelled=True)
    with caplog.at_level(logging.WARNING):
        item = dataset[1]
    assert item["path"] == "clips/c1.mp4"  # the next decodable video stands in
    assert item["decode_failures"] == 1 and dataset.failures == 1
    assert "broken.mp4" in caplog.text
    strict = SemiSupervisedDataset(records, root, labelled=True, on_error="raise")
    with pytest.raises(VideoDecodeError, match=r"broken\.mp4"):
        strict[1]


def test_evaluation_leaves_an_undecodable_video_out(with_broken) -> None:
    root, records = with_broken
    dataset = EvaluationDataset(records, root)
    assert dataset[1] is None and dataset.failures == 1
    batch = collate_skipping_none([dataset[0], dataset[1], dataset[2]])
    assert batch["path"] == ["clips/c0.mp4", "clips/c1.mp4"] and batch["frag"].shape[0] == 2
    assert collate_skipping_none([None]) is None
    with pytest.raises(VideoDecodeError, match=r"broken\.mp4"):
        EvaluationDataset(records, root, on_error="raise")[1]


def test_a_dataset_of_only_broken_videos_raises(tmp_path: Path) -> None:
    (tmp_path / "a.mp4").write_bytes(b"not a video")
    dataset = SemiSupervisedDataset([VideoRecord("a.mp4", 1.0)], tmp_path, labelled=True)
    with pytest.raises(VideoDecodeError, match="none of the videos could be decoded"):
        dataset[0]


def test_labelled_set_needs_every_mos(tmp_path: Path) -> None:
    with pytest.raises(QasaVqaError, match=r"without a MOS: 'b\.mp4'"):
        SemiSupervisedDataset(
            [VideoRecord("a.mp4", 1.0), VideoRecord("b.mp4", None)], tmp_path, labelled=True
        )


def test_pretrain_item_shapes_match_the_reference(tree: Path) -> None:
    item = PretrainDataset(tree, seed=0)[0]
    assert item["view1"].shape == (10, 3, 32, 224, 224)
    assert item["view2"].shape == (10, 3, 32, 224, 224)
    versions = item["versions"].tolist()
    assert versions[0] == 0 and len(set(versions)) == 10 and set(versions[1:]) <= set(range(1, 13))
    assert item["scene"] == "s0.mp4"


def test_pretrain_versions_share_frames_and_patches(tree: Path) -> None:
    dataset = PretrainDataset(tree, versions=5, clip_len=8, grid=4, patch=16, seed=2)
    item = dataset[1]
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)
    for view in ("view1", "view2"):
        pixels = item[view] * std  # back to 0-255 steps
        for slot, version in enumerate(item["versions"].tolist()):
            difference = pixels[slot] - pixels[0]
            # only the version's brightness step separates it from the reference (codec rounding aside)
            assert difference.mean().item() == pytest.approx(VERSION_STEP * version, abs=1.0)
            assert difference.sub(VERSION_STEP * version).abs().max().item() <= 4.0
    # the two views are different moments of the scene
    assert (item["view1"] - item["view2"]).abs().mean() > 0.2


def test_pretrain_draws_differ_between_items_and_seeds(tree: Path) -> None:
    a = PretrainDataset(tree, versions=4, clip_len=4, grid=2, patch=16, seed=0)
    b = PretrainDataset(tree, versions=4, clip_len=4, grid=2, patch=16, seed=0)
    first, same = a[0], b[0]
    assert torch.equal(first["view1"], same["view1"]) and torch.equal(first["versions"], same["versions"])
    draws = {tuple(a[0]["versions"].tolist()) for _ in range(6)}
    assert len(draws) > 1


def test_distortion_tree_discovery(tmp_path: Path, tree: Path, caplog) -> None:
    assert find_distortion_tree(tree) == {"s0.mp4": list(range(1, 13)), "s1.mp4": list(range(1, 13))}
    partial = tmp_path / "partial"
    shutil.copytree(tree, partial)
    for k in range(4, 13):
        (partial / str(k) / "s1.mp4").unlink()
    with caplog.at_level(logging.WARNING):
        scenes = find_distortion_tree(partial, min_distortions=9)
    assert list(scenes) == ["s0.mp4"] and "fewer than 9 distorted versions" in caplog.text
    with pytest.raises(QasaVqaError, match="no '0' folder of reference videos"):
        find_distortion_tree(tmp_path / "nothing")
    with pytest.raises(QasaVqaError, match="no scene has 13 distorted versions"):
        find_distortion_tree(tree, min_distortions=13)
    with pytest.raises(ValueError, match="versions must be at least 2"):
        PretrainDataset(tree, versions=1)


def test_pretrain_rejects_a_version_of_another_size(tmp_path: Path) -> None:
    root = write_version_tree(tmp_path / "t", scenes=1, versions=3, frames=12)
    write_version_tree(tmp_path / "other", scenes=1, versions=3, frames=12, height=48)
    shutil.copy(tmp_path / "other" / "2" / "s0.mp4", root / "2" / "s0.mp4")
    dataset = PretrainDataset(root, versions=3, clip_len=4, grid=2, patch=16, on_error="raise")
    with pytest.raises(VideoDecodeError, match=r"2/s0\.mp4: 80x48 frames, but the reference .* is 80x64"):
        dataset[0]


def test_pretrain_loader_batches(tree: Path) -> None:
    dataset = PretrainDataset(tree, versions=3, clip_len=4, grid=2, patch=16)
    batch = next(iter(DataLoader(dataset, batch_size=2)))
    assert batch["view1"].shape == (2, 3, 3, 4, 32, 32) and batch["versions"].shape == (2, 3)
    assert np.array_equal(batch["versions"][:, 0].numpy(), [0, 0])
