"""Bad configurations give one clear message, never a deep traceback, and start nothing.

An unknown experiment (Hydra's own message, which lists the choices), a label budget larger than the pool,
a data root that is not there (the message names the setting and its environment variable), and label
files whose entries leave the dataset root (refused with the file and line: ``../../etc/passwd``,
absolute paths, Windows drives and shares, control characters; also in hand-edited split files).
The training and evaluation bodies run under :func:`~qasa_vqa.lit.run.exit_on_error`, as their command
lines do: status 2 and one ``qasa-vqa <command>: error: ...`` message on stderr.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import open_clip
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from offline_runs import demo_train_overrides
from qasa_vqa.data.manifests import Manifest, ManifestError, VideoRecord, read_manifest
from qasa_vqa.data.splits import SplitError, budget_split, read_split_file
from qasa_vqa.errors import QasaVqaError
from qasa_vqa.evaluate import evaluate
from qasa_vqa.lit.run import exit_on_error
from qasa_vqa.models.checkpoints import save_stvqrl_backbone
from qasa_vqa.models.clip_quality import LOCAL_CLIP_CONFIGS
from qasa_vqa.models.swin3d import VideoSwinBackbone
from qasa_vqa.train import check_needs, run

CONF = Path(__file__).resolve().parents[2] / "conf"
TINY = {"embed_dim": 24, "depths": [1, 1, 2, 1], "num_heads": [1, 2, 2, 4], "window_size": [4, 7, 7]}
POOL = 10  # videos of the demo-like manifest's train split


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny CLIP, a tiny backbone and a demo-like manifest (the videos are never opened: every fault
    here is found before)."""
    root = tmp_path_factory.mktemp("bad_configs")
    torch.manual_seed(0)
    clip = root / "tiny_clip.pt"
    torch.save(open_clip.CLIP(**LOCAL_CLIP_CONFIGS["tiny"]).state_dict(), clip)
    backbone = save_stvqrl_backbone(VideoSwinBackbone(**TINY), root / "stvqrl_tiny.pt")
    demo = root / "demo"
    demo.mkdir()
    rows = [f"v{i}.mp4,{20 + i},train" for i in range(POOL)] + [f"t{i}.mp4,{20 + i},test" for i in range(3)]
    (demo / "manifest.csv").write_text("path,mos,split\n" + "\n".join(rows) + "\n")
    return {"root": root, "clip": clip, "backbone": backbone, "demo": demo}


def _compose(overrides: list[str], name: str = "train") -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def _fails_with_status_2(command: str, body: Any, capsys: pytest.CaptureFixture[str]) -> str:
    """``body()`` under exit_on_error: status 2 and the message, which is returned (without the prefix)."""
    with pytest.raises(SystemExit) as caught:
        exit_on_error(f"qasa-vqa {command}", body)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    message = err[err.index(f"qasa-vqa {command}: error: ") :].strip()
    return message.removeprefix(f"qasa-vqa {command}: error: ")


def _command(line: list[str]) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", *line], env=env, text=True, capture_output=True, timeout=300)


# -- an unknown experiment ------------------------------------------------------------------------------


def _hydra_says_which_experiments(stderr: str) -> None:
    assert "Traceback" not in stderr and "Could not find 'experiment/nope'" in stderr
    assert "Available options in 'experiment'" in stderr
    assert all(f"\t{name}\n" in stderr for name in ("demo", "500lab_1500unlab", "demo_supervised"))


def test_unknown_experiment_names_the_choices(tmp_path: Path) -> None:
    """Hydra's own message is already one clear screen listing every experiment; it is kept (Hydra exits
    with status 1 for configuration errors it finds before the entry point runs)."""
    process = _command(["qasa_vqa.train", "experiment=nope", f"hydra.run.dir={tmp_path / 'run'}"])
    assert process.returncode == 1 and "Traceback" not in process.stderr
    assert "Could not find 'experiment/nope'" in process.stderr
    assert "Available options in 'experiment'" in process.stderr
    assert all(f"\t{name}\n" in process.stderr for name in ("demo", "500lab_1500unlab", "demo_supervised"))
    assert not (tmp_path / "run").exists()


# -- a budget larger than the pool ------------------------------------------------------------------------


def test_budget_larger_than_the_pool(files: dict[str, Path]) -> None:
    manifest = read_manifest(files["demo"] / "manifest.csv").only("train")
    with pytest.raises(SplitError) as caught:
        budget_split(manifest, 8, 3, n_validation=4)
    message = str(caught.value)
    assert message.startswith(f"{files['demo'] / 'manifest.csv'}: a budget of 8 labelled + 4 validation + 3")
    assert f"= 15 videos exceeds the {POOL} in the manifest (its split 'train')" in message
    assert "data.n_" in message


def test_training_with_a_budget_larger_than_the_pool(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _compose([*demo_train_overrides(files, tmp_path), "data.n_labelled=8", "data.n_validation=4"])
    message = _fails_with_status_2("train", lambda: run(cfg, tmp_path / "run"), capsys)
    assert "a budget of 8 labelled + 4 validation + 0 unlabelled = 12 videos exceeds the 10" in message
    assert "\n" not in message
    assert not list(tmp_path.glob("splits/*.json"))  # no split file was written
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_training_command_with_a_budget_larger_than_the_pool(files: dict[str, Path], tmp_path: Path) -> None:
    overrides = [
        *demo_train_overrides(files, tmp_path),
        "data.n_labelled=12",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    process = _command(["qasa_vqa.train", *overrides])
    assert process.returncode == 2 and "Traceback" not in process.stderr, process.stderr[-3000:]
    last = process.stderr.strip().splitlines()[-1]
    assert last.startswith("qasa-vqa train: error: ") and "exceeds the 10 in the manifest" in last


# -- a data root that is not there ------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["setting", "environment"])
def test_missing_data_root_names_the_setting_and_the_variable(
    files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    nowhere = tmp_path / "nowhere"
    overrides = ["experiment=500lab_1500unlab", f"model.stvqrl_checkpoint={files['backbone']}"]
    if how == "setting":
        overrides.append(f"paths.data_root={nowhere}")
    else:
        monkeypatch.setenv("QASA_DATA", str(nowhere))
    with pytest.raises(QasaVqaError) as caught:
        check_needs(_compose(overrides))
    message = str(caught.value)
    assert f"data.train.manifest = {nowhere}/LSVQ/labels_train.txt" in message
    assert f"paths.data_root = {nowhere} is not a folder" in message and "QASA_DATA" in message
    assert "model.stvqrl_checkpoint" not in message  # that one is there


def test_missing_demo_root_says_how_to_make_it(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nowhere = tmp_path / "no_demo"
    cfg = _compose([*demo_train_overrides(files, tmp_path), f"paths.demo_root={nowhere}"])
    message = _fails_with_status_2("train", lambda: run(cfg, tmp_path / "run"), capsys)
    assert message.startswith("experiment demo is missing what it needs:")
    assert "make demo-data" in message and f"paths.demo_root = {nowhere} is not a folder" in message
    assert "QASA_DEMO_DATA" in message and not (tmp_path / "run").exists()


def test_evaluate_names_missing_test_sets_before_loading_a_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nowhere = tmp_path / "nowhere"
    overrides = [
        f"checkpoint={tmp_path / 'model.pt'}",
        "data=[konvid,live_vqc]",
        f"paths.data_root={nowhere}",
    ]
    cfg = _compose(overrides, "eval")
    message = _fails_with_status_2("evaluate", lambda: evaluate(cfg, tmp_path / "eval"), capsys)
    lines = message.splitlines()
    assert lines[0] == "no label file for the test set(s):" and len(lines) == 3
    assert lines[1].startswith(f"  konvid: {nowhere}/") and lines[2].startswith(f"  live_vqc: {nowhere}/")
    assert all(
        f"paths.data_root = {nowhere} is not a folder" in line and "QASA_DATA" in line for line in lines[1:]
    )


# -- entries that leave the dataset root ------------------------------------------------------------------


ESCAPES = {
    "../../etc/passwd": "leaves the dataset root",
    "clips/../../../etc/passwd": "leaves the dataset root",
    "/etc/passwd": "absolute video path '/etc/passwd' refused",
    "C:\\Windows\\win.ini": "absolute video path",
    "\\\\server\\share\\x.mp4": "absolute video path",
    "clips/a\x00.mp4": "holds control characters",
}


@pytest.mark.parametrize("entry", list(ESCAPES))
def test_manifest_entries_outside_the_root_are_refused_with_their_line(tmp_path: Path, entry: str) -> None:
    manifest = tmp_path / "labels.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, lineterminator="\n").writerows([["path", "mos"], ["clips/a.mp4", 3.1], ["clips/b.mp4", 2.2],
                                                           [entry, 4.0]])  # fmt: skip
    with pytest.raises(ManifestError) as caught:
        read_manifest(manifest)
    message = str(caught.value)
    assert message.startswith(f"{manifest}:4: ") and repr(entry) in message and ESCAPES[entry] in message


def test_every_format_names_the_entry(tmp_path: Path) -> None:
    fastvqa = tmp_path / "labels_train.txt"
    fastvqa.write_text("ok/1.mp4, 8.0, 30, 55.0\n../../etc/passwd, 8.0, 30, 60.0\n")
    with pytest.raises(ManifestError, match=rf"^{fastvqa}:2: video path '../../etc/passwd' leaves"):
        read_manifest(fastvqa)
    pool = tmp_path / "semisupervised.json"
    pool.write_text(
        json.dumps([{"filename": "ok.mp4", "label": 50}, {"filename": "/etc/passwd", "label": 1}])
    )
    with pytest.raises(ManifestError, match=rf"^{pool}: entry 1: absolute video path '/etc/passwd'"):
        read_manifest(pool)


def test_symlinks_inside_the_root_are_followed(tmp_path: Path) -> None:
    """The policy: a label file cannot name anything outside its root, but the root's owner may link to
    other disks (datasets are often assembled that way), so links inside the root are followed."""
    elsewhere = tmp_path / "other_disk" / "video.mp4"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(b"not decoded here")
    root = tmp_path / "root"
    (root / "clips").mkdir(parents=True)
    (root / "clips" / "linked.mp4").symlink_to(elsewhere)
    manifest = tmp_path / "labels.csv"
    manifest.write_text("path,mos\nclips/linked.mp4,3.0\n")
    read = read_manifest(manifest, root=root)
    assert (
        read.resolve(read[0]) == root / "clips" / "linked.mp4"
        and read.resolve(read[0]).resolve() == elsewhere
    )


def test_records_and_split_files_made_elsewhere_are_checked_too(tmp_path: Path) -> None:
    manifest = tmp_path / "labels.csv"
    manifest.write_text("path,mos\nclips/a.mp4,3.0\n")
    read = read_manifest(manifest)
    with pytest.raises(ManifestError, match="leaves the dataset root"):
        read.resolve(VideoRecord("../../etc/passwd", 1.0))
    assert isinstance(read, Manifest)
    split = tmp_path / "split.json"
    entries = [{"path": "clips/a.mp4", "mos": 3.0}, {"path": "../secret.mp4", "mos": 1.0}]
    split.write_text(json.dumps({"kind": "qasa-vqa split", "version": 1, "labelled": entries}))
    with pytest.raises(SplitError, match=rf"^{split}: labelled\[1\]: video path '../secret.mp4' leaves"):
        read_split_file(split)


def test_training_on_a_manifest_that_escapes_its_root(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    demo = tmp_path / "demo"
    demo.mkdir()
    rows = [f"v{i}.mp4,{20 + i},train" for i in range(6)] + ["../../etc/passwd,50,train"]
    (demo / "manifest.csv").write_text("path,mos,split\n" + "\n".join(rows) + "\n")
    cfg = _compose([*demo_train_overrides(files, tmp_path), f"paths.demo_root={demo}"])
    message = _fails_with_status_2("train", lambda: run(cfg, tmp_path / "run"), capsys)
    assert message == f"{demo / 'manifest.csv'}:8: video path '../../etc/passwd' leaves the dataset root " + (
        "(refused: entries must stay inside it)"
    )
