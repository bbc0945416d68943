"""Bad checkpoints give one clear error naming the file and run nothing, at every entry that loads one.

The files: a truncated checkpoint, an empty one, text, a pickle whose ``__reduce__`` would run a shell
command or ``exec`` (the command creates a marker file: it must never exist), and the weights of another
architecture (a Video Swin of another width, a CLIP of another width). The entries: the loader itself
(:func:`~qasa_vqa.models.checkpoints.load_torch_file`), ``qasa_vqa.load_scorer`` / ``qasa-vqa score``,
``python -m qasa_vqa.evaluate model=checkpoint``, ``python -m qasa_vqa.train`` with
``model.stvqrl_checkpoint`` and with ``resume`` (Lightning's restore goes through
:class:`~qasa_vqa.lit.run.SafeCheckpointIO`), and CLIP weights (``clip=local clip.pretrained=FILE``,
OpenAI's TorchScript layout included). The command lines run as subprocesses, started together.
"""

from __future__ import annotations

import os
import pickle
import re
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import open_clip
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import qasa_vqa
from offline_runs import demo_train_overrides
from qasa_vqa.errors import QasaVqaError
from qasa_vqa.evaluate import evaluate
from qasa_vqa.lit.run import exit_on_error
from qasa_vqa.models.checkpoints import CheckpointError, load_torch_file, save_qasa, save_stvqrl_backbone
from qasa_vqa.models.clip_quality import LOCAL_CLIP_CONFIGS, build_clip_quality
from qasa_vqa.models.clip_weights import read_clip_file
from qasa_vqa.models.factory import build_qasa_model
from qasa_vqa.models.swin3d import VideoSwinBackbone
from qasa_vqa.train import run

CONF = Path(__file__).resolve().parents[2] / "conf"
TINY = {"embed_dim": 24, "depths": [1, 1, 2, 1], "num_heads": [1, 2, 2, 4], "window_size": [4, 7, 7]}
NARROW = TINY | {"embed_dim": 16}  # the same depths, another width: every tensor has another shape
WIDE_CLIP = LOCAL_CLIP_CONFIGS["tiny"] | {
    "vision_cfg": LOCAL_CLIP_CONFIGS["tiny"]["vision_cfg"] | {"width": 96, "head_width": 32}
}

#: What the user reads for each kind of damaged file (after the file's path).
EXPECTED = {
    "truncated": "truncated or not a checkpoint",
    "empty": "truncated or not a checkpoint: the file is empty (0 bytes)",
    "text": "truncated or not a checkpoint",
    "runs-shell": "refused to load: the file holds Python objects that could run code",
    "runs-exec": "refused to load: the file holds Python objects that could run code",
}


class RunsCode:
    """Unpickling this calls ``function(argument)``: what a malicious checkpoint does."""

    def __init__(self, function: Any, argument: str) -> None:
        self.function, self.argument = function, argument

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return self.function, (self.argument,)


def _damaged(good: Path, folder: Path, markers: Path) -> dict[str, Path]:
    """Each kind of bad file made from the good checkpoint ``good``; the code ones would create a file
    in ``markers`` if anything unpickled them."""
    folder.mkdir(parents=True, exist_ok=True)
    data = good.read_bytes()
    files = {kind: folder / f"{kind}-{good.name}" for kind in EXPECTED}
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["empty"].write_bytes(b"")
    files["text"].write_text("path,mos\nclip.mp4,3.2\n")
    shell = RunsCode(os.system, f"touch {shlex.quote(str(markers / 'shell'))}")
    torch.save({"state_dict": {"w": torch.zeros(2)}, "model": {}, "extra": shell}, files["runs-shell"])
    run_exec = RunsCode(exec, f"open({str(markers / 'exec')!r}, 'w').close()")
    files["runs-exec"].write_bytes(pickle.dumps({"model": {}, "extra": run_exec}, protocol=2))  # legacy
    return files


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("bad_checkpoints")
    markers = root / "markers"
    markers.mkdir()
    torch.manual_seed(0)
    clip_file = root / "tiny_clip.pt"
    torch.save(open_clip.CLIP(**LOCAL_CLIP_CONFIGS["tiny"]).state_dict(), clip_file)
    wide_clip = root / "wide_clip.pt"
    torch.save(open_clip.CLIP(**WIDE_CLIP).state_dict(), wide_clip)
    backbone = save_stvqrl_backbone(VideoSwinBackbone(**TINY), root / "stvqrl_tiny.pt")
    narrow = save_stvqrl_backbone(VideoSwinBackbone(**NARROW), root / "stvqrl_narrow.pt")
    clip_model = build_clip_quality("tiny", pretrained=clip_file)
    model = build_qasa_model(TINY, clip_model, seed=0)
    qasa = save_qasa(model.eval(), root / "qasa_model.pt")
    official_tiny = save_qasa(model, root / "official_tiny.pth", official=True)  # not the paper's Swin-T
    demo = root / "demo"
    demo.mkdir()
    rows = [f"v{i}.mp4,{20 + i},train" for i in range(10)] + [f"t{i}.mp4,{20 + i},test" for i in range(3)]
    (demo / "manifest.csv").write_text("path,mos,split\n" + "\n".join(rows) + "\n")
    return {
        "root": root,
        "markers": markers,
        "clip": clip_file,
        "clip_model": clip_model,
        "wide_clip": wide_clip,
        "backbone": backbone,
        "narrow": narrow,
        "qasa": qasa,
        "official_tiny": official_tiny,
        "demo": demo,
        "bad_qasa": _damaged(qasa, root / "bad_qasa", markers),
        "bad_backbone": _damaged(backbone, root / "bad_backbone", markers),
        "bad_clip": _damaged(clip_file, root / "bad_clip", markers),
    }


@pytest.fixture(autouse=True)
def nothing_ran(files: dict[str, Any]):
    yield
    assert not any(files["markers"].iterdir()), "a checkpoint ran code on load"


# -- the command lines, as the user runs them --------------------------------------------------------


def _command(line: list[str]) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", *line], env=env, text=True, capture_output=True, timeout=300)


def _one_line_and_status_2(process: subprocess.CompletedProcess, command: str, *parts: str) -> None:
    assert process.returncode == 2, process.stderr[-3000:]
    assert "Traceback" not in process.stderr
    last = process.stderr.strip().splitlines()[-1]
    assert last.startswith(f"qasa-vqa {command}: error: ") and all(part in last for part in parts), last


def test_train_command_with_a_truncated_last_ckpt(files: dict[str, Any]) -> None:
    """A run whose last.ckpt a crash truncated (before checkpoints were written atomically): the rerun
    says which file and what to do, instead of Lightning's traceback from deep in the unpickler."""
    run_dir = files["root"] / "cli_train"
    (run_dir / "checkpoints").mkdir(parents=True)
    last = run_dir / "checkpoints" / "last.ckpt"
    good = files["qasa"].read_bytes()
    last.write_bytes(good[: len(good) // 3])
    overrides = [*demo_train_overrides(files, files["root"] / "cli_out"), f"hydra.run.dir={run_dir}"]
    process = _command(["qasa_vqa.train", *overrides, f"paths.output_dir={run_dir}", "resume=auto"])
    _one_line_and_status_2(
        process, "train", str(last), "truncated or not a training checkpoint", "resume=null"
    )


@pytest.mark.slow
def test_score_command_with_a_checkpoint_that_would_run_code(files: dict[str, Any]) -> None:
    path = files["bad_qasa"]["runs-shell"]
    root = files["root"]
    process = _command(["qasa_vqa", "score", str(root / "clip.mp4"), "--checkpoint", str(path), "--out",
                        str(root / "scores.csv")])  # fmt: skip
    _one_line_and_status_2(process, "score", str(path), EXPECTED["runs-shell"])


@pytest.mark.slow
def test_evaluate_command_with_a_truncated_checkpoint(files: dict[str, Any]) -> None:
    path = files["bad_qasa"]["truncated"]
    process = _command(["qasa_vqa.evaluate", f"checkpoint={path}", "data=[]",
                        f"+test_sets.mine.manifest={files['demo'] / 'manifest.csv'}",
                        f"hydra.run.dir={files['root'] / 'cli_eval'}"])  # fmt: skip
    _one_line_and_status_2(process, "evaluate", str(path), EXPECTED["truncated"])


# -- the loader and each entry, in process -----------------------------------------------------------


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_the_loader_names_the_file_and_the_fault(files: dict[str, Any], kind: str) -> None:
    path = files["bad_qasa"][kind]
    with pytest.raises(CheckpointError) as caught:
        load_torch_file(path)
    assert str(caught.value).startswith(f"{path}: {EXPECTED[kind]}"), caught.value
    assert caught.value.__cause__ is None and "\n" not in str(caught.value)


def test_refusals_name_what_would_have_run(files: dict[str, Any]) -> None:
    for kind, name in (("runs-shell", "system"), ("runs-exec", "exec")):
        with pytest.raises(CheckpointError, match=rf"could run code when unpickled \([\w.]*{name}\)"):
            load_torch_file(files["bad_backbone"][kind])


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_load_scorer(files: dict[str, Any], kind: str) -> None:
    path = files["bad_qasa"][kind]
    with pytest.raises(CheckpointError, match="^" + re.escape(f"{path}: {EXPECTED[kind]}")):
        qasa_vqa.load_scorer(path)


def test_load_scorer_on_weights_of_another_architecture(files: dict[str, Any], tmp_path: Path) -> None:
    payload = torch.load(files["qasa"], weights_only=True)  # ours, recording a backbone it does not hold
    payload["architecture"]["backbone"]["embed_dim"] = 16
    path = tmp_path / "relabelled.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError) as caught:
        qasa_vqa.load_scorer(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: another architecture: the QASA weights do not fit the model")
    assert "stvqrl.backbone.patch_embed.proj.weight expects (16, 3, 2, 4, 4) got (24, 3, 2, 4, 4)" in message


@pytest.mark.slow  # builds Video Swin-T
def test_load_scorer_on_another_architecture(files: dict[str, Any]) -> None:
    path = files["official_tiny"]  # the authors' layout, whose backbone is always Video Swin-T
    with pytest.raises(CheckpointError) as caught:
        qasa_vqa.load_scorer(path, clip_text=files["clip"])
    message = str(caught.value)
    assert message.startswith(f"{path}: another architecture: the ST-VQRL weights")
    assert "backbone.patch_embed.proj.weight expects (96, 3, 2, 4, 4) got (24, 3, 2, 4, 4)" in message


@pytest.mark.parametrize("kind", [*EXPECTED, "narrow"])
def test_stvqrl_checkpoint_of_the_model(files: dict[str, Any], kind: str) -> None:
    path = files["narrow"] if kind == "narrow" else files["bad_backbone"][kind]
    with pytest.raises(QasaVqaError) as caught:
        build_qasa_model(TINY, files["clip_model"], stvqrl_checkpoint=path, setting="paths.stvqrl_checkpoint")
    message = str(caught.value)
    assert message.startswith("paths.stvqrl_checkpoint") and str(path) in message
    if kind == "narrow":
        assert "another architecture" in message and "embed_dim 16 in the file, 24 configured" in message
        assert "patch_embed.proj.weight expects (24, 3, 2, 4, 4) got (16, 3, 2, 4, 4)" in message
    else:
        assert EXPECTED[kind] in message


@pytest.mark.parametrize("kind", [*EXPECTED, "wide"])
def test_clip_weights(files: dict[str, Any], kind: str) -> None:
    path = files["wide_clip"] if kind == "wide" else files["bad_clip"][kind]
    with pytest.raises(QasaVqaError) as caught:
        build_clip_quality("tiny", pretrained=path)
    message = str(caught.value)
    assert message.startswith(str(path)), message
    if kind == "wide":
        assert (
            "another architecture" in message and "visual.conv1.weight expects (64, 3, 32, 32) got" in message
        )
    else:
        assert EXPECTED[kind].replace("a checkpoint", "a CLIP weights file") in message


def test_a_torchscript_shaped_archive_runs_nothing(files: dict[str, Any], tmp_path: Path) -> None:
    """OpenAI's layout is read by TorchScript's loader, which never imports Python callables."""
    archive = tmp_path / "ViT-B-32.pt"
    payload = pickle.dumps(RunsCode(os.system, f"touch {shlex.quote(str(files['markers'] / 'ts'))}"))
    with zipfile.ZipFile(archive, "w") as handle:
        for name in ("constants.pkl", "data.pkl"):
            handle.writestr(f"ViT-B-32/{name}", payload)
        handle.writestr("ViT-B-32/version", "3\n")
    with pytest.raises(
        QasaVqaError, match="^" + re.escape(f"{archive}: truncated or not a CLIP TorchScript")
    ):
        read_clip_file(archive)


def _compose(overrides: list[str], name: str = "train") -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


@pytest.mark.parametrize("kind", ["truncated", "runs-exec"])
def test_evaluate_refuses_before_scoring(
    files: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    """``python -m qasa_vqa.evaluate model=checkpoint``'s body under :func:`exit_on_error`."""
    path = files["bad_qasa"][kind]
    manifest = files["demo"] / "manifest.csv"
    cfg = _compose([f"checkpoint={path}", "data=[]", f"+test_sets.mine.manifest={manifest}"], "eval")
    with pytest.raises(SystemExit) as caught:
        exit_on_error("qasa-vqa evaluate", lambda: evaluate(cfg, tmp_path / "eval"))
    assert caught.value.code == 2
    message = capsys.readouterr().err.strip()
    assert message == f"qasa-vqa evaluate: error: {path}: " + message.split(f"{path}: ", 1)[1]
    assert EXPECTED[kind] in message and not (tmp_path / "eval").exists()


@pytest.mark.parametrize(
    ("setting", "kind", "expected"),
    [
        ("resume", "runs-shell", "refused to load: the file holds Python objects that could run code"),
        ("resume", "qasa", "not a Lightning training checkpoint"),
        ("model.stvqrl_checkpoint", "runs-exec", "refused to load"),
        ("clip.pretrained", "truncated", "truncated or not a CLIP weights file"),
    ],
)
def test_training_refuses_before_it_starts(
    files: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    setting: str,
    kind: str,
    expected: str,
) -> None:
    """The training entry's body under :func:`exit_on_error`, as ``python -m qasa_vqa.train`` runs it."""
    bad = {"resume": "bad_qasa", "model.stvqrl_checkpoint": "bad_backbone", "clip.pretrained": "bad_clip"}
    path = files["qasa"] if kind == "qasa" else files[bad[setting]][kind]
    cfg = _compose(
        [*demo_train_overrides(files, tmp_path), f"{setting}={path}", "validate_before_training=false"]
    )
    with pytest.raises(SystemExit) as caught:
        exit_on_error("qasa-vqa train", lambda: run(cfg, tmp_path / "run"))
    assert caught.value.code == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith("qasa-vqa train: error: ") and str(path) in message and expected in message
    assert not (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()
