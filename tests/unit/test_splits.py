"""The official QASA split, seeded label budgets and split files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from qasa_vqa.data.manifests import read_manifest
from qasa_vqa.data.splits import (
    STRATEGIES,
    Split,
    SplitError,
    budget_split,
    ensure_split_file,
    official_qasa_split,
    read_split_file,
    write_split_file,
)

SHARED = Path(os.environ.get("QASA_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))


@pytest.fixture(scope="module")
def lsvq_train(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stand-in for the 28,056-line LSVQ train list: unique names, labels from a seeded draw."""
    rng = np.random.default_rng(7)
    labels = rng.uniform(2.0, 91.0, size=28056)
    lines = [f"batch{i // 1000}/{i}.mp4, -1, -1, {label!r}" for i, label in enumerate(labels.tolist())]
    path = tmp_path_factory.mktemp("lsvq") / "labels_train.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def _pool_json(train_list: Path, out: Path) -> Path:
    """The 1,999-entry pool as the authors derived it (written independently of the code under test)."""
    records = read_manifest(train_list).records
    entries = []
    for k in range(1999):
        i = (k * 28056) // 1999  # numpy.linspace(0, 28056, 2000, dtype=int)[k], by hand
        entries.append({"filename": records[i].path, "label": records[i].mos})
    out.write_text(json.dumps(entries))
    return out


def test_official_split_by_hand(lsvq_train: Path, tmp_path: Path) -> None:
    pool = json.loads(_pool_json(lsvq_train, tmp_path / "semisupervised.json").read_text())
    split = official_qasa_split(tmp_path / "semisupervised.json")
    labelled_index = [(i * 1998) // 499 for i in range(500)]  # floor(i * (N-1) / 499)
    assert labelled_index[:4] == [0, 4, 8, 12] and labelled_index[-2:] == [1993, 1998]
    assert [(r.path, r.mos) for r in split.labelled] == [
        (pool[i]["filename"], pool[i]["label"]) for i in labelled_index
    ]
    others = [i for i in range(1999) if i not in set(labelled_index)]
    assert len(others) == 1499
    assert [r.path for r in split.unlabelled] == [pool[i]["filename"] for i in others]
    assert split.validation == ()


def test_official_split_is_the_same_from_both_source_forms(lsvq_train: Path, tmp_path: Path) -> None:
    from_pool = official_qasa_split(_pool_json(lsvq_train, tmp_path / "pool.json"))
    from_list = official_qasa_split(lsvq_train)
    assert [(r.path, r.mos) for r in from_list.labelled] == [(r.path, r.mos) for r in from_pool.labelled]
    assert [(r.path, r.mos) for r in from_list.unlabelled] == [(r.path, r.mos) for r in from_pool.unlabelled]


def test_official_split_rejects_other_lengths(tmp_path: Path) -> None:
    path = tmp_path / "short.json"
    path.write_text(json.dumps([{"filename": f"{i}.mp4", "label": 50} for i in range(1500)]))
    with pytest.raises(SplitError, match="1500 entries; the official QASA split needs the 1,999-entry pool"):
        official_qasa_split(path)


@pytest.mark.parametrize("source", ["semisupervised.json", "labels/LSVQ/labels_train.txt"])
def test_official_split_reproduces_the_authors_file(source: str) -> None:
    pool_path = SHARED / "semisupervised.json"
    if not (SHARED / source).exists() or not pool_path.exists():
        pytest.skip(f"reference data not present under {SHARED}")
    pool = json.loads(pool_path.read_text())
    split = official_qasa_split(SHARED / source)
    assert [(r.path, r.mos) for r in split.labelled] == [
        (pool[i]["filename"], pool[i]["label"]) for i in np.linspace(0, 1998, 500, dtype=int)
    ]
    assert [r.path for r in split.labelled][:3] == [
        pool[0]["filename"],
        pool[4]["filename"],
        pool[8]["filename"],
    ]
    assert split.labelled[-1].path == pool[1998]["filename"] == "ia-batch24/youtube-drWZE8F81RI.mp4"
    labelled = {r.path for r in split.labelled}
    assert [(r.path, r.mos) for r in split.unlabelled] == [
        (e["filename"], e["label"]) for e in pool if e["filename"] not in labelled
    ]
    assert len(split.unlabelled) == 1499


@pytest.fixture
def manifest(tmp_path: Path):
    rng = np.random.default_rng(3)
    rows = [f"v{i:03d}.mp4,{value:.3f}" for i, value in enumerate(rng.uniform(1, 5, size=200))]
    path = tmp_path / "pool.csv"
    path.write_text("path,mos\n" + "\n".join(rows) + "\n")
    return read_manifest(path)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_budgets_are_disjoint_sized_and_in_manifest_order(manifest, strategy: str) -> None:
    split = budget_split(manifest, 20, 100, seed=5, strategy=strategy, n_validation=10)
    sizes = (len(split.labelled), len(split.validation), len(split.unlabelled))
    assert sizes == (20, 10, 100)
    sets = [{r.path for r in part} for part in (split.labelled, split.validation, split.unlabelled)]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    order = {r.path: i for i, r in enumerate(manifest)}
    for part in (split.labelled, split.validation, split.unlabelled):
        positions = [order[r.path] for r in part]
        assert positions == sorted(positions)
    assert split.inputs["manifest_sha256"] == manifest.sha256
    assert split.inputs["strategy"] == strategy


def test_random_budget_depends_on_the_seed_only(manifest) -> None:
    first = budget_split(manifest, 30, 50, seed=1)
    assert budget_split(manifest, 30, 50, seed=1) == first
    assert budget_split(manifest, 30, 50, seed=2).labelled != first.labelled


def test_unlabelled_defaults_to_everything_left(manifest) -> None:
    split = budget_split(manifest, 30, seed=0, n_validation=5)
    assert len(split.unlabelled) == 200 - 35
    assert split.inputs["n_unlabelled"] == 165


def test_linspace_is_the_qasa_rule(manifest) -> None:
    split = budget_split(manifest, 25, strategy="linspace")
    expected = [manifest[(i * 199) // 24].path for i in range(25)]
    assert [r.path for r in split.labelled] == expected
    assert budget_split(manifest, 25, strategy="linspace", seed=9).labelled == split.labelled


def test_mos_stratified_takes_one_video_per_mos_bin(manifest) -> None:
    n = 10
    split = budget_split(manifest, n, 0, seed=4, strategy="mos-stratified")
    ordered = sorted(r.mos for r in manifest)
    bins = np.array_split(np.array(ordered), n)
    picked = sorted(r.mos for r in split.labelled)
    for value, bin_ in zip(picked, bins, strict=True):
        assert bin_[0] <= value <= bin_[-1]
    # the spread of the labels is the pool's, unlike a random draw of the same size can be
    assert picked[0] <= bins[0][-1] and picked[-1] >= bins[-1][0]


def test_budget_errors(manifest, tmp_path: Path) -> None:
    with pytest.raises(
        SplitError, match=r"190 labelled \+ 5 validation \+ 10 unlabelled = 205 videos exceeds the 200"
    ):
        budget_split(manifest, 190, 10, n_validation=5)
    with pytest.raises(SplitError, match="unknown split strategy 'stratified'; choose one of random"):
        budget_split(manifest, 10, strategy="stratified")
    with pytest.raises(SplitError, match="n_labelled must be at least 1"):
        budget_split(manifest, 0)
    with pytest.raises(SplitError, match="whole number"):
        budget_split(manifest, 10, -3)
    partial = tmp_path / "partial.csv"
    partial.write_text("path,mos\na.mp4,1\nb.mp4,\nc.mp4,3\n")
    with pytest.raises(
        SplitError, match=r"mos-stratified needs a MOS for every video; 1 have none, e\.g\. 'b\.mp4'"
    ):
        budget_split(read_manifest(partial), 1, strategy="mos-stratified")


def test_split_files_are_byte_identical_for_the_same_inputs(manifest, tmp_path: Path) -> None:
    for strategy in STRATEGIES:
        a = ensure_split_file(
            tmp_path / f"a-{strategy}.json", budget_split(manifest, 12, 40, seed=3, strategy=strategy)
        )
        b = ensure_split_file(
            tmp_path / f"b-{strategy}.json", budget_split(manifest, 12, 40, seed=3, strategy=strategy)
        )
        assert (tmp_path / f"a-{strategy}.json").read_bytes() == (
            tmp_path / f"b-{strategy}.json"
        ).read_bytes()
        assert a == b
    payload = json.loads((tmp_path / "a-random.json").read_text())
    assert payload["inputs"]["manifest_sha256"] == manifest.sha256
    assert payload["inputs"]["seed"] == 3 and payload["counts"] == {
        "labelled": 12,
        "validation": 0,
        "unlabelled": 40,
    }
    assert not list(tmp_path.glob(".*partial"))


def test_split_file_is_written_once_then_read(manifest, tmp_path: Path) -> None:
    path = tmp_path / "split.json"
    made = ensure_split_file(path, budget_split(manifest, 10, 20, seed=1))
    stamp = path.stat().st_mtime_ns
    again = ensure_split_file(path, budget_split(manifest, 10, 20, seed=1))
    assert again == made and path.stat().st_mtime_ns == stamp
    assert read_split_file(path) == made
    with pytest.raises(SplitError, match="made from other inputs \\(differs in n_unlabelled, seed\\)"):
        ensure_split_file(path, budget_split(manifest, 10, 21, seed=2))


def test_split_round_trip_keeps_paths_and_labels(manifest, tmp_path: Path) -> None:
    split = budget_split(manifest, 10, 20, seed=1, n_validation=3)
    back = read_split_file(write_split_file(split, tmp_path / "s.json"))
    for name in ("labelled", "validation", "unlabelled"):
        assert [(r.path, r.mos) for r in getattr(back, name)] == [
            (r.path, r.mos) for r in getattr(split, name)
        ]


def test_overlapping_or_malformed_split_files_are_rejected(manifest, tmp_path: Path) -> None:
    path = write_split_file(budget_split(manifest, 5, 5, seed=1), tmp_path / "s.json")
    payload = json.loads(path.read_text())
    payload["unlabelled"].append(payload["labelled"][0])
    path.write_text(json.dumps(payload))
    with pytest.raises(SplitError, match=r"s\.json: .* is listed in both labelled and unlabelled"):
        read_split_file(path)
    with pytest.raises(SplitError, match="is listed twice"):
        Split(labelled=(manifest[0], manifest[0]), unlabelled=())
    path.write_text('{"kind": "something else"}')
    with pytest.raises(SplitError, match="not a qasa-vqa split file"):
        read_split_file(path)
    path.write_text("{oops")
    with pytest.raises(SplitError, match="not a JSON split file"):
        read_split_file(path)
    with pytest.raises(SplitError, match="split file not found"):
        read_split_file(tmp_path / "none.json")
