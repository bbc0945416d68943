"""``python -m qasa_vqa.evaluate``: two test sets at once, metrics equal to ``quality_metrics`` on the
predictions it writes, a calibration that ``score`` accepts, and zero-shot CLIP through the same harness."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from qasa_vqa import load_scorer
from qasa_vqa.calibration import read_calibration
from qasa_vqa.data.synthetic import generate_demo_corpus
from qasa_vqa.errors import QasaVqaError
from qasa_vqa.evaluate import evaluate
from qasa_vqa.metrics import quality_metrics
from qasa_vqa.models.checkpoints import save_qasa
from qasa_vqa.models.clip_quality import LOCAL_CLIP_CONFIGS, build_clip_quality
from qasa_vqa.models.factory import build_qasa_model

CONF = Path(__file__).resolve().parents[2] / "conf"
TINY_BACKBONE = {"embed_dim": 24, "depths": [1, 1, 2, 1], "num_heads": [1, 2, 2, 4], "window_size": [4, 7, 7]}
TINY_VIEWS = {"segments": 4, "frames_per_segment": 2, "test_frames_per_segment": 4, "patch": 16}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval")
    knobs = {"scenes": 8, "variants": 2, "frames": 16, "width": 96, "height": 72, "tree_scenes": 1}
    corpus = generate_demo_corpus(root / "demo", seed=2, progress=False, build_tree=False, **knobs)
    torch.manual_seed(0)
    clip_file = root / "tiny_clip.pt"
    torch.save(open_clip.CLIP(**LOCAL_CLIP_CONFIGS["tiny"]).state_dict(), clip_file)
    model = build_qasa_model(TINY_BACKBONE, build_clip_quality("tiny", pretrained=clip_file), seed=0)
    checkpoint = save_qasa(model.eval(), root / "qasa_model.pt", views=TINY_VIEWS)
    return {"manifest": corpus.manifest, "checkpoint": checkpoint, "clip": clip_file, "root": root}


def _compose(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="eval", overrides=overrides)


def _sets(manifest: Path, names: tuple[str, ...] = ("seen", "unseen")) -> list[str]:
    """Test sets of the corpus: ``seen`` (its train split, 12 videos) and ``unseen`` (test, 4 videos)."""
    split = {"seen": "train", "unseen": "test"}
    sets = [f"+test_sets.{name}={{manifest: '{manifest}', split: {split[name]}}}" for name in names]
    return ["data=[]", *sets, "bootstrap=50", "workers=0"]


def _predictions(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_two_test_sets_write_table_predictions_scatter_and_calibration(
    setup: dict[str, Path], tmp_path: Path
) -> None:
    cfg = _compose([f"checkpoint={setup['checkpoint']}", *_sets(setup["manifest"])])
    out = tmp_path / "eval"
    outcome = evaluate(cfg, out)
    for name in ("predictions.csv", "metrics.json", "table.md", "scatter_seen.png", "scatter_unseen.png",
                 "calibration_seen.json", "calibration_unseen.json"):  # fmt: skip
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    rows = _predictions(out / "predictions.csv")
    assert {r["test_set"] for r in rows} == {"seen", "unseen"} and len(rows) == 16
    assert all(r["status"] == "ok" for r in rows)
    stored = json.loads((out / "metrics.json").read_text())["results"]
    for test_set in ("seen", "unseen"):
        chosen = [r for r in rows if r["test_set"] == test_set]
        mos = [float(r["mos"]) for r in chosen]
        for branch, column in (("qasa", "score"), ("stvqrl", "stvqrl"), ("clip", "clip")):
            expected = quality_metrics([float(r[column]) for r in chosen], mos, bootstrap=50, seed=0)
            got = stored[test_set][branch]
            for key, value in expected.items():
                # Intervals of the fitted metrics refit 4-point resamples, an ill-conditioned fit whose last
                # bits differ with the process's state (they moved after matplotlib had drawn): a tolerance.
                fitted_interval = key.endswith(("_low", "_high")) and "logistic" in key
                if math.isnan(value):
                    assert got[key] is None
                else:
                    tolerance = {"abs": 0.02} if fitted_interval else {"rel": 1e-12, "abs": 1e-12}
                    assert got[key] == pytest.approx(value, **tolerance), (test_set, branch, key)
            assert outcome["results"][test_set][branch]["srcc"] == pytest.approx(expected["srcc"])
    table = (out / "table.md").read_text()
    assert table.count("\n| seen |") == 3 and table.count("\n| unseen |") == 3 and "[" in table

    # the calibration maps the combined score onto the set's MOS, and score accepts it
    calibration = read_calibration(out / "calibration_unseen.json")
    assert calibration.branch == "qasa" and calibration.n == 4 and calibration.source["test_set"] == "unseen"
    video = setup["manifest"].parent / next(r["path"] for r in rows if r["test_set"] == "unseen")
    row = load_scorer(setup["checkpoint"], calibration=out / "calibration_unseen.json").score(video)
    assert row["mos_pred"] == pytest.approx(calibration.apply(row["score"]))
    assert row["score"] == pytest.approx(float(next(r["score"] for r in rows if r["path"] in str(video))))


def test_zero_shot_clip_goes_through_the_same_harness(setup: dict[str, Path], tmp_path: Path) -> None:
    overrides = ["model=clip_zeroshot", "clip=local", "clip.model_name=tiny", f"clip.pretrained={setup['clip']}",
                 f"views={json.dumps(TINY_VIEWS).replace(chr(34), '')}", *_sets(setup["manifest"], ("unseen",))]  # fmt: skip
    out = tmp_path / "zeroshot"
    outcome = evaluate(_compose(overrides), out)
    assert set(outcome["results"]["unseen"]) == {"clip"}
    rows = _predictions(out / "predictions.csv")
    assert all(r["stvqrl"] == "" and r["score"] == r["clip"] for r in rows)
    # the checkpoint's CLIP branch was built from the same CLIP file, untrained: the same clip scores
    trained = evaluate(
        _compose([f"checkpoint={setup['checkpoint']}", *_sets(setup["manifest"], ("unseen",))]),
        tmp_path / "ck",
    )
    zero_shot, branch = outcome["results"]["unseen"]["clip"], trained["results"]["unseen"]["clip"]
    assert branch["srcc"] == pytest.approx(zero_shot["srcc"]) and branch["plcc"] == pytest.approx(
        zero_shot["plcc"]
    )
    assert read_calibration(out / "calibration_unseen.json").branch == "clip"


def test_clear_errors(setup: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(QasaVqaError, match="checkpoint=PATH"):
        evaluate(_compose(_sets(setup["manifest"])), tmp_path / "a")
    with pytest.raises(QasaVqaError, match="nothing to evaluate"):
        evaluate(_compose([f"checkpoint={setup['checkpoint']}", "data=[]"]), tmp_path / "b")
    with pytest.raises(QasaVqaError, match="calibrate"):
        evaluate(_compose([f"checkpoint={setup['checkpoint']}", *_sets(setup["manifest"]), "calibrate=what"]),
                 tmp_path / "c")  # fmt: skip


def test_command_line_prints_the_table(setup: dict[str, Path], tmp_path: Path) -> None:
    command = [sys.executable, "-m", "qasa_vqa.evaluate", f"checkpoint={setup['checkpoint']}",
               *_sets(setup["manifest"], ("unseen",)), f"hydra.run.dir={tmp_path / 'cli'}"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| unseen | QASA (combined) |" in result.stdout and "calibration_unseen.json" in result.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "qasa_vqa.evaluate", "checkpoint=/no/such.pt", *_sets(setup["manifest"], ("unseen",)),
         f"hydra.run.dir={tmp_path / 'bad'}"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert missing.returncode != 0 and "/no/such.pt" in missing.stderr and "Traceback" not in missing.stderr


def test_views_override_is_checked(setup: dict[str, Path], tmp_path: Path) -> None:
    cfg = _compose([f"checkpoint={setup['checkpoint']}", *_sets(setup["manifest"]), "views={colour: 3}"])
    with pytest.raises(QasaVqaError, match="colour"):
        evaluate(cfg, tmp_path / "v")
