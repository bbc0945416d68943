"""``qasa-vqa demo-clip`` end to end on a tiny corpus: train, write, measure, reproduce, fail clearly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from qasa_vqa.cli import main
from qasa_vqa.data.synthetic import generate_demo_corpus
from qasa_vqa.democlip.make import excluded_scenes
from qasa_vqa.models.clip_quality import build_clip_quality
from qasa_vqa.models.clip_weights import read_clip_file, read_clip_header


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "corpus"
    knobs = {"scenes": 4, "variants": 3, "frames": 16, "width": 96, "height": 72, "tree_scenes": 0}
    generate_demo_corpus(root, seed=5, progress=False, **knobs)
    return root


def _train(out: Path, corpus: Path, workers: int) -> list[str]:
    return ["demo-clip", "--out", str(out), "--steps", "2", "--shots", "32", "--seed", "1", "--corpus", str(corpus),
            "--bootstrap", "50", "--workers", str(workers), "--no-progress", "--snapshots", "1,2"]  # fmt: skip


def test_demo_clip_trains_writes_measures_and_reproduces(
    corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "made"
    assert main(_train(out, corpus, workers=2)) == 0
    printed = capsys.readouterr().out
    assert "demo CLIP" in printed and "random init" in printed and "SRCC" in printed
    weights = out / "demo_clip.safetensors"
    assert (out / "train_log.csv").read_text().count("\n") == 3 and (out / "pairs.png").is_file()
    header = read_clip_header(weights)
    assert header is not None and header.model_name == "qasa-demo"
    provenance = header.provenance
    assert provenance["command"] in printed and "--steps 2 --shots 32" in provenance["command"]
    assert provenance["recipe"]["seed"] == 1 and provenance["recipe"]["steps"] == 2
    # the corpus's test scenes (and the default corpus's) are left out of the pictures
    left_out = excluded_scenes(corpus)
    record = json.loads((corpus / "corpus.json").read_text())
    assert {s for s, split in record["scenes"].items() if split == "test"} <= set(left_out)
    assert not {p.split(".")[0] for p in provenance["photos_used"]} & set(left_out)
    zero_shot = provenance["zero_shot"]
    assert set(zero_shot) == {"corpus", "trained", "random"} and zero_shot["trained"]["all"]["n"] == 12
    assert -1 <= zero_shot["trained"]["all"]["srcc_low"] <= zero_shot["trained"]["all"]["srcc_high"] <= 1
    assert build_clip_quality(pretrained=weights).prompt_features.shape == (4, 128)
    snapshot = read_clip_header(out / "snapshot_1.safetensors")  # step 2 is the end: the weights file itself
    assert snapshot is not None and snapshot.provenance["snapshot_step"] == 1
    assert not (out / "snapshot_2.safetensors").exists()

    again = tmp_path / "again"  # the recorded recipe on one process: the same tensors
    assert main(_train(again, corpus, workers=1)) == 0
    first, second = read_clip_file(weights), read_clip_file(again / "demo_clip.safetensors")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)

    capsys.readouterr()
    assert main(["demo-clip", "--evaluate-only", "--weights", str(weights), "--corpus", str(corpus),
                 "--bootstrap", "50", "--no-progress"]) == 0  # fmt: skip
    table = capsys.readouterr().out
    assert table.count("demo CLIP") == 3 and table.count("random init") == 3  # all, test, train


def test_demo_clip_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo-clip", "--snapshots", "5,x", "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "--snapshots" in capsys.readouterr().err
    assert main(["demo-clip", "--evaluate-only", "--corpus", str(tmp_path / "nowhere"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "no demo corpus" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    bogus = tmp_path / "bogus.safetensors"
    bogus.write_bytes(b"not weights")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "manifest.csv").write_text("path,mos\n")
    code = main(["demo-clip", "--evaluate-only", "--weights", str(bogus), "--corpus", str(tmp_path / "c"),
                 "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and str(bogus) in err and "Traceback" not in err
