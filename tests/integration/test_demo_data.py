"""The demo corpus end to end: rated clips, manifest and the ST-VQRL pretraining tree of train scenes."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import pytest

from qasa_vqa.data.synthetic import generate_demo_corpus
from qasa_vqa.video.reader import probe


def _check_tree(corpus_root: Path, tree_scenes: tuple[str, ...]) -> None:
    record = json.loads((corpus_root / "corpus.json").read_text())
    train = {s for s, split in record["scenes"].items() if split == "train"}
    assert tree_scenes and set(tree_scenes) <= train
    tree = corpus_root / "tree"
    assert sorted(int(p.name) for p in tree.iterdir() if p.is_dir()) == list(range(13))
    for version in range(13):
        assert sorted(p.name for p in (tree / str(version)).iterdir()) == sorted(
            f"{s}.mp4" for s in tree_scenes
        )
    frames = record["knobs"]["frames"]
    for version in (0, 6, 9, 12):
        assert probe(tree / str(version) / f"{tree_scenes[0]}.mp4").num_frames == frames


def test_demo_corpus_with_tree(tmp_path: Path) -> None:
    knobs = {"scenes": 4, "variants": 2, "frames": 16, "width": 96, "height": 72, "tree_scenes": 2}
    corpus = generate_demo_corpus(tmp_path / "demo", seed=1, progress=False, **knobs)
    assert corpus.tree_dir == tmp_path / "demo" / "tree" and len(corpus.tree_scenes) == 2
    assert (corpus.num_scenes, corpus.num_clips, corpus.num_test) == (4, 8, 2)
    _check_tree(corpus.root, corpus.tree_scenes)
    assert sorted(p.name for p in (corpus.root / "pristine-subset").iterdir()) == sorted(
        f"{s}.mp4" for s in corpus.tree_scenes
    )
    assert generate_demo_corpus(tmp_path / "demo", seed=1, progress=False, **knobs) == corpus


@pytest.mark.slow
def test_default_demo_corpus(tmp_path: Path) -> None:
    start = time.perf_counter()
    corpus = generate_demo_corpus(tmp_path / "demo", progress=False)
    elapsed = time.perf_counter() - start
    assert (corpus.num_scenes, corpus.num_clips) == (12, 72)
    _check_tree(corpus.root, corpus.tree_scenes)
    with corpus.manifest.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    mos = np.array([float(r["mos"]) for r in rows])
    clean = np.array([float(r["mos"]) for r in rows if r["path"].endswith("_00.mp4")])
    assert mos.min() < 30 and mos.max() > 85 and 35 < np.median(mos) < 75  # a wide range
    assert clean.min() > 75  # near-pristine clips
    info = probe(corpus.root / rows[0]["path"])
    assert (info.width, info.height, info.num_frames) == (320, 240, 64)
    print(
        f"default demo corpus in {elapsed:.1f} s; MOS min/median/max {mos.min():.1f}/{np.median(mos):.1f}/{mos.max():.1f}"
    )
