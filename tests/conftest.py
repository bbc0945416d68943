"""Shared fixtures: the test videos (written once per session) and GPU-test skipping."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from videos import FIXTURES, make_fixture


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("videos")


@pytest.fixture(scope="session")
def videos(video_dir: Path) -> dict[str, Path]:
    """Every fixture of ``tests/videos.py``, by name."""
    return {name: make_fixture(name, video_dir) for name in FIXTURES}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
