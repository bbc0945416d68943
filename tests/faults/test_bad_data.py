"""Bad data: corrupt, truncated, empty, audio-only and tiny videos among the training videos.

Under ``data.on_error=skip`` training goes on and the run says how many videos it skipped and which (the
``train/skipped_videos`` metric, a warning, ``skipped_videos.json``), counted across loader worker
processes; evaluation sets count what they leave out too. ``data.on_error=raise`` stops with one message
naming the file and the setting, also when the error comes from a worker process; more failures than
``data.max_failed_fraction`` of a training set stop the run with the list. The slow test runs
``python -m qasa_vqa.train`` end to end on a corpus with 10% bad videos.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import av
import numpy as np
import open_clip
import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from torch import nn
from torch.utils.data import DataLoader

from qasa_vqa.data.datasets import (
    EvaluationDataset,
    SemiSupervisedDataset,
    UnusableVideoError,
    ViewSpec,
    collate_evaluation,
    skipped_entries,
)
from qasa_vqa.data.manifests import VideoRecord, read_manifest
from qasa_vqa.data.splits import budget_split
from qasa_vqa.lit.callbacks import SkippedVideos, TooManyBadVideosError
from qasa_vqa.models.checkpoints import save_stvqrl_backbone
from qasa_vqa.models.clip_quality import LOCAL_CLIP_CONFIGS
from qasa_vqa.models.swin3d import VideoSwinBackbone
from qasa_vqa.video.writer import synthetic_frames, write_video

SMALL = ViewSpec(segments=4, frames_per_segment=2, test_frames_per_segment=2, grid=2, patch=16, size=32)
KINDS = ("corrupt", "truncated", "empty", "audio_only", "tiny")
# what each kind's reason says (the reader's wording for the first four, the datasets' for the last)
REASONS = {
    "corrupt": r"not a readable video|corrupt|invalid data",
    "truncated": r"not a readable video|truncated|corrupt",
    "empty": r"empty",
    "audio_only": r"no video stream",
    "tiny": r"too small to train on: 16x16 pixels, 2 frame\(s\).*data\.min_side, data\.min_frames",
}
GOOD_FRAMES, GOOD_HEIGHT, GOOD_WIDTH = 16, 72, 96


def write_good(path: Path, seed: int) -> Path:
    return write_video(path, synthetic_frames(GOOD_FRAMES, GOOD_HEIGHT, GOOD_WIDTH, seed=seed), codec="h264")


def write_audio_only(path: Path) -> Path:
    """An MP4 holding one AAC stream (a 440 Hz tone, about a second) and no video."""
    rate, size = 16000, 1024
    tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(16 * size) / rate)).astype(np.float32)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "mono"
        for start in range(0, len(tone), size):
            frame = av.AudioFrame.from_ndarray(tone[None, start : start + size], format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def write_bad(path: Path, kind: str, *, seed: int = 0) -> Path:
    """One bad video of ``kind`` (see ``KINDS``) at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "corrupt":  # random bytes under a video's name
        path.write_bytes(np.random.default_rng(seed).integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    elif kind == "truncated":  # the first third of a real video (its index, at the end, is lost)
        data = write_good(path, seed=seed + 1000).read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "audio_only":
        write_audio_only(path)
    elif kind == "tiny":  # decodable, but 16 x 16 pixels and 2 frames
        write_video(path, synthetic_frames(2, 16, 16, seed=seed), codec="h264")
    else:
        raise ValueError(kind)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """50 videos, 10% bad: one of each kind at positions 0, 10, 20, 30, 40 (never next to each other,
    so each is tried once per pass over the data), the others good."""
    root = tmp_path_factory.mktemp("bad_data")
    records, bad = [], {}
    for i in range(50):
        if i % 10 == 0:
            kind = KINDS[i // 10]
            relative = f"v/{kind}.mp4"
            write_bad(root / relative, kind, seed=i)
            bad[relative] = kind
        else:
            relative = f"v/good{i:02d}.mp4"
            write_good(root / relative, seed=i)
        records.append(VideoRecord(relative, float(i)))
    return {"root": root, "records": records, "bad": bad}


def _entries(item: dict[str, Any]) -> list[tuple[str, str, str]]:
    return list(skipped_entries({"skipped": [item["skipped"]]}))


def test_every_kind_of_bad_video_is_skipped_with_its_reason(corpus: dict[str, Any]) -> None:
    dataset = SemiSupervisedDataset(corpus["records"], corpus["root"], labelled=True, views=SMALL)
    for position, kind in zip(range(0, 50, 10), KINDS, strict=True):
        item = dataset[position]
        assert item["path"] == f"v/good{position + 1:02d}.mp4"  # the next usable video stands in
        assert item["decode_failures"] == 1
        ((video, file, reason),) = _entries(item)
        assert video == f"v/{kind}.mp4" and Path(file).name == f"{kind}.mp4"
        assert re.search(REASONS[kind], reason, flags=re.IGNORECASE), (kind, reason)
        assert all(torch.isfinite(item[key]).all() for key in ("frag_v", "frag_a", "resize_v", "resize_a"))
    assert _entries(dataset[1]) == [] and dataset[1]["decode_failures"] == 0


def test_the_strict_policy_names_the_file_and_the_setting(corpus: dict[str, Any]) -> None:
    root = corpus["root"]
    for relative, kind in corpus["bad"].items():
        strict = SemiSupervisedDataset([VideoRecord(relative, 1.0)], root, labelled=True, on_error="raise")
        with pytest.raises(
            UnusableVideoError, match=rf"{kind}\.mp4: .*data\.on_error=raise; data\.on_error=skip"
        ):
            strict[0]
    # from a loader worker process: the same error type and message, not a RuntimeError holding a traceback
    strict = SemiSupervisedDataset([VideoRecord("v/empty.mp4", 1.0)], root, labelled=True, on_error="raise")
    with pytest.raises(UnusableVideoError) as caught:
        next(iter(DataLoader(strict, num_workers=1)))
    message = str(caught.value)
    hint = "data.on_error=raise; data.on_error=skip leaves such videos out and lists them"
    assert message == f"{root / 'v' / 'empty.mp4'}: the file is empty ({hint})"
    assert caught.value.path == str(root / "v" / "empty.mp4") and "Traceback" not in message
    evaluation = EvaluationDataset([VideoRecord("v/audio_only.mp4", 1.0)], root, on_error="raise")
    with pytest.raises(UnusableVideoError, match=r"audio_only\.mp4: .*no video stream.*data\.on_error"):
        next(iter(DataLoader(evaluation, num_workers=1, collate_fn=collate_evaluation)))


class _Tiny(LightningModule):
    """Trains one number; records which videos its training and validation batches held."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))
        self.val_names = ["mine"]
        self.trained: list[str] = []
        self.validated: list[str] = []

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        self.trained += list(batch["path"])
        return (self.weight - batch["frag_v"].mean()) ** 2

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self.validated += list(batch.get("path", []))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _train(corpus: dict[str, Any], callback: SkippedVideos, epochs: int) -> tuple[_Tiny, Trainer]:
    dataset = SemiSupervisedDataset(corpus["records"], corpus["root"], labelled=True, views=SMALL, seed=0)
    loader = DataLoader(dataset, batch_size=5, shuffle=True, num_workers=2,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    module = _Tiny()
    trainer = Trainer(accelerator="cpu", max_epochs=epochs, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=[callback])  # fmt: skip
    trainer.fit(module, train_dataloaders=loader)
    return module, trainer


def test_training_goes_on_and_reports_exactly_the_bad_videos(
    corpus: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two epochs with two loader workers: the five bad videos are found in the workers, and the main
    process lists each once (with its reason, seen once per epoch), counts 5 per epoch, and warns."""
    with caplog.at_level(logging.WARNING, logger="qasa_vqa.lit.callbacks"):
        module, trainer = _train(corpus, SkippedVideos(tmp_path, max_failed_fraction=0.2), epochs=2)
    assert trainer.current_epoch == 2 and trainer.global_step == 20  # trained to the end
    assert not set(module.trained) & set(corpus["bad"])  # no bad video reached a batch
    assert float(trainer.callback_metrics["train/skipped_videos"]) == 5
    report = json.loads((tmp_path / "skipped_videos.json").read_text())
    assert report["skipped"] == 5 and report["sets"] == {"train": {"videos": 50, "skipped": 5}}
    assert {r["video"]: r["file"] for r in report["videos"]} == {
        relative: str(corpus["root"] / relative) for relative in corpus["bad"]
    }
    assert all(r["times"] == 2 and r["first_epoch"] == 0 and r["reason"] for r in report["videos"])
    assert "epoch 0: 5 training video(s) skipped (5 in the run so far" in caplog.text
    assert "train/v/tiny.mp4 (too small to train on" in caplog.text
    assert not list(tmp_path.glob(".*partial*"))  # written atomically: no temporary file left


def test_more_failures_than_allowed_stop_the_run(corpus: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(TooManyBadVideosError) as caught:
        _train(corpus, SkippedVideos(tmp_path, max_failed_fraction=0.05), epochs=1)
    message = str(caught.value)
    assert message.startswith("3 of the 50 videos of training set 'train' could not be used (6%, more than ")
    assert "data.max_failed_fraction=0.05 allows" in message and "raise data.max_failed_fraction" in message
    report = json.loads((tmp_path / "skipped_videos.json").read_text())
    assert len(report["videos"]) == 3 and all(r["file"] in message for r in report["videos"])
    assert all(r["video"] in corpus["bad"] for r in report["videos"])
    with pytest.raises(ValueError, match="max_failed_fraction"):
        SkippedVideos(max_failed_fraction=1.5)


def test_evaluation_counts_and_names_what_it_leaves_out(corpus: dict[str, Any], tmp_path: Path) -> None:
    """An evaluation set keeps every video it can decode (the tiny one too) and reports the others."""
    records = (
        corpus["records"][:12]
        + corpus["records"][20:22]
        + corpus["records"][30:32]
        + corpus["records"][40:42]
    )
    dataset = EvaluationDataset(records, corpus["root"], views=SMALL, mark_skipped=True)
    loader = DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=collate_evaluation)
    module, callback = _Tiny(), SkippedVideos(tmp_path)
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[callback])  # fmt: skip
    trainer.validate(module, dataloaders=loader, verbose=False)
    left_out = {"v/corrupt.mp4", "v/truncated.mp4", "v/empty.mp4", "v/audio_only.mp4"}
    assert float(trainer.callback_metrics["val/mine/skipped_videos"]) == 4
    assert {r["video"] for r in callback.evaluation["val/mine"]} == left_out
    assert sorted(module.validated) == sorted(r.path for r in records if r.path not in left_out)
    report = json.loads((tmp_path / "skipped_videos.json").read_text())
    assert {r["video"] for r in report["evaluation"]["val/mine"]} == left_out


# ------------------------------------------------------------------------------------------ end to end

N_LABELLED, N_VALIDATION, N_UNLABELLED, N_TEST = 20, 5, 20, 5


@pytest.fixture(scope="module")
def run_setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A demo-layout corpus of 50 videos (45 train pool + 5 test), 5 of them bad; the bad ones are placed
    (knowing the run's seeded split, drawn here by the same function) as 1 labelled, 1 validation and 3
    unlabelled videos, no two neighbours, so no training set loses more than 20%."""
    root = tmp_path_factory.mktemp("bad_run")
    corpus = root / "demo"
    rows = ["path,mos,split"]
    pool = N_LABELLED + N_VALIDATION + N_UNLABELLED
    for i in range(pool + N_TEST):
        rows.append(f"videos/v{i:02d}.mp4,{10 + (i * 37) % 80},{'train' if i < pool else 'test'}")
    (corpus / "videos").mkdir(parents=True)
    (corpus / "manifest.csv").write_text("\n".join(rows) + "\n")
    manifest = read_manifest(corpus / "manifest.csv").only("train")
    split = budget_split(manifest, N_LABELLED, n_validation=N_VALIDATION, seed=0)
    labelled, validation, unlabelled = (
        list(part) for part in (split.labelled, split.validation, split.unlabelled)
    )
    assert len(unlabelled) == N_UNLABELLED
    chosen = {labelled[3].path: "corrupt", validation[1].path: "empty", unlabelled[2].path: "truncated",
              unlabelled[9].path: "audio_only", unlabelled[15].path: "tiny"}  # fmt: skip
    for i in range(pool + N_TEST):
        relative = f"videos/v{i:02d}.mp4"
        if relative in chosen:
            write_bad(corpus / relative, chosen[relative], seed=i)
        else:
            write_good(corpus / relative, seed=i)
    torch.manual_seed(0)
    clip = root / "tiny_clip.pt"
    torch.save(open_clip.CLIP(**LOCAL_CLIP_CONFIGS["tiny"]).state_dict(), clip)
    tiny = {"embed_dim": 24, "depths": [1, 1, 2, 1], "num_heads": [1, 2, 2, 4], "window_size": [4, 7, 7]}
    backbone = save_stvqrl_backbone(VideoSwinBackbone(**tiny), root / "stvqrl_tiny.pt")
    training = {path for path in chosen if path != validation[1].path}
    return {"root": root, "corpus": corpus, "clip": clip, "backbone": backbone, "bad": chosen,
            "training": training, "validation": {validation[1].path}}  # fmt: skip


def _train_cli(setup: dict[str, Any], out: Path, *extra: str) -> subprocess.CompletedProcess:
    args = [
        "experiment=demo", "clip=local", "clip.model_name=tiny", f"clip.pretrained={setup['clip']}",
        f"paths.demo_root={setup['corpus']}", f"paths.output_root={out}", f"hydra.run.dir={out / 'run'}",
        f"model.stvqrl_checkpoint={setup['backbone']}", f"data.n_labelled={N_LABELLED}",
        f"data.n_validation={N_VALIDATION}", "data.batch_size=4", "data.num_workers=2", "epochs=1",
        "logger=csv", "~callbacks.progress", *extra,
    ]  # fmt: skip
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "qasa_vqa.train", *args], env=env, capture_output=True,
                          text=True, timeout=900)  # fmt: skip


def _metric_rows(run: Path) -> list[dict[str, str]]:
    (path,) = run.glob("logs/**/metrics.csv")
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_a_training_run_with_ten_percent_bad_videos(run_setup: dict[str, Any], tmp_path: Path) -> None:
    # skip (the default): trains to the end, names exactly the bad videos, counts them per epoch
    result = _train_cli(run_setup, tmp_path / "skip")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = tmp_path / "skip" / "run"
    assert (run / "qasa_model.pt").is_file()
    report = json.loads((run / "skipped_videos.json").read_text())
    assert {r["video"] for r in report["videos"]} == run_setup["training"]
    assert report["sets"] == {
        "labelled": {"videos": 20, "skipped": 1},
        "unlabelled": {"videos": 20, "skipped": 3},
    }
    assert {r["video"] for r in report["evaluation"]["val/validation"]} == run_setup["validation"]
    assert report["evaluation"]["test/demo-test"] == []
    rows = _metric_rows(run)
    per_epoch = [float(r["train/skipped_videos"]) for r in rows if r.get("train/skipped_videos")]
    assert per_epoch == [4.0, 4.0]  # 2 epochs (1 + the reference's extra one), every training video seen
    assert {
        float(r["val/validation/skipped_videos"]) for r in rows if r.get("val/validation/skipped_videos")
    } == {1.0}
    assert {float(r["train/skipped_steps"]) for r in rows if r.get("train/skipped_steps")} == {0.0}
    assert "training video(s) skipped" in result.stderr + result.stdout

    # raise: one clear line naming a bad file and the setting, no traceback (the error crossed a worker)
    result = _train_cli(run_setup, tmp_path / "raise", "data.on_error=raise")
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    (line,) = [text for text in result.stderr.splitlines() if text.startswith("qasa-vqa train: error:")]
    assert any(Path(path).name in line for path in run_setup["bad"]), line
    assert "data.on_error=raise; data.on_error=skip" in line and "Traceback" not in result.stderr

    # a stricter limit than the share that fails: stops with the list and the setting
    result = _train_cli(run_setup, tmp_path / "limit", "data.max_failed_fraction=0.1",
                        "validate_before_training=false")  # fmt: skip
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 of the 20 videos of training set 'unlabelled' could not be used (10%" not in result.stderr
    assert "3 of the 20 videos of training set 'unlabelled' could not be used (15%, more than " \
           "data.max_failed_fraction=0.1 allows)" in result.stderr  # fmt: skip
    assert not (tmp_path / "limit" / "run" / "qasa_model.pt").exists()
