"""Overrides that run ``python -m qasa_vqa.train`` offline on small generated files (tiny local CLIP, a tiny
backbone, a small demo-like corpus), shared by the fault tests."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


def demo_train_overrides(files: Mapping[str, Any], out: Path) -> list[str]:
    """The demo experiment on ``files`` (``clip``, ``backbone``, ``demo``), CPU, outputs under ``out``."""
    return [
        "experiment=demo",
        "trainer=cpu",
        "clip=local",
        "clip.model_name=tiny",
        f"clip.pretrained={files['clip']}",
        f"paths.demo_root={files['demo']}",
        f"paths.output_root={out}",
        f"paths.output_dir={out / 'run'}",
        f"model.stvqrl_checkpoint={files['backbone']}",
        "data.n_labelled=4",
        "data.n_validation=2",
        "data.num_workers=0",
        "logger=csv",
        "~callbacks.progress",
    ]
