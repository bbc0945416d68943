"""SafeCheckpointIO: every trainer of build_trainer writes its checkpoints atomically and reads them with
weights_only=True; a failed save keeps the previous last.ckpt, a bad one is refused before restoring."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from qasa_vqa.lit.run import SafeCheckpointIO, build_trainer
from qasa_vqa.models.checkpoints import CheckpointError

CPU = {"accelerator": "cpu", "devices": 1}


class Line(LightningModule):
    """A linear regression on ``width`` inputs: the smallest model with a checkpoint worth resuming."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.layer = nn.Linear(width, 1)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], index: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.layer(x).squeeze(-1), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _data(width: int = 4) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(8, width, generator=generator)
    return DataLoader(TensorDataset(inputs, inputs.sum(dim=1)), batch_size=2)


def _trainer(folder: Path, steps: int) -> Trainer:
    last = ModelCheckpoint(
        dirpath=folder / "checkpoints", save_last=True, save_top_k=0, every_n_train_steps=1
    )
    return build_trainer(
        CPU,
        folder,
        logger=None,
        callbacks=[last],
        max_steps=steps,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def _fit(folder: Path, steps: int, width: int = 4, ckpt_path: Path | None = None) -> Trainer:
    torch.manual_seed(0)
    trainer = _trainer(folder, steps)
    trainer.fit(Line(width), train_dataloaders=_data(width), ckpt_path=ckpt_path, weights_only=True)
    return trainer


def test_every_trainer_uses_the_plugin_and_resumes(tmp_path: Path) -> None:
    trainer = _fit(tmp_path, steps=2)
    assert isinstance(trainer.strategy.checkpoint_io, SafeCheckpointIO)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 2
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]  # no temporary left behind
    resumed = _fit(tmp_path, steps=3, ckpt_path=last)
    assert resumed.global_step == 3
    hardware = {"accelerator": "cpu", "devices": 2, "strategy": "ddp"}  # also under DDP
    ddp = build_trainer(hardware, tmp_path / "ddp", logger=None, max_epochs=1)
    assert isinstance(ddp.strategy.checkpoint_io, SafeCheckpointIO)


def test_a_save_that_fails_midway_keeps_the_previous_last_ckpt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_save = torch.save
    calls: list[Path] = []

    def save_then_die(obj: Any, target: Any, *args: Any, **kwargs: Any) -> None:
        calls.append(Path(target))
        if len(calls) == 1:  # step 1 writes last.ckpt normally
            return real_save(obj, target, *args, **kwargs)
        Path(target).write_bytes(b"PK\x03\x04 half a checkpoint")  # step 2: killed mid-write
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", save_then_die)
    with pytest.raises(OSError, match="No space left"):
        _fit(tmp_path, steps=2)
    monkeypatch.setattr(torch, "save", real_save)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert all(call.parent == last.parent and call.name.startswith(".last.ckpt.") for call in calls)
    assert torch.load(last, weights_only=True)["global_step"] == 1  # the step-1 file, whole
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]  # the partial file is gone


def test_loads_are_weights_only_whatever_the_caller_asks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fit(tmp_path, steps=1)
    real_load = torch.load
    seen: list[Any] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    trainer = _trainer(tmp_path / "again", steps=1)
    checkpoint = trainer.strategy.load_checkpoint(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 1 and seen == [True]


def test_bad_resume_files_are_refused_before_restoring(tmp_path: Path) -> None:
    _fit(tmp_path / "wide", steps=1, width=8)
    other = tmp_path / "wide" / "checkpoints" / "last.ckpt"
    with pytest.raises(CheckpointError) as caught:
        _fit(tmp_path / "run", steps=2, ckpt_path=other)
    message = str(caught.value)
    assert message.startswith(f"{other}: another architecture")
    assert "layer.weight expects (1, 4) got (1, 8)" in message and "resume=null" in message

    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(other.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"truncated\.ckpt: truncated or not a training checkpoint"):
        _fit(tmp_path / "run", steps=2, ckpt_path=truncated)

    model_file = tmp_path / "model.pt"  # weights, but not a training checkpoint
    torch.save({"state_dict": Line().state_dict(), "format": "qasa-vqa"}, model_file)
    with pytest.raises(CheckpointError, match=r"model\.pt: not a Lightning training checkpoint"):
        _fit(tmp_path / "run", steps=2, ckpt_path=model_file)
    assert not (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()  # nothing ran
