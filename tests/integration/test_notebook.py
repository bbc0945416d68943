"""notebooks/results.ipynb: committed without outputs, and runs headless on a tiny run.

The tiny run is made in ``tmp_path``: a sweep CSV of two experiments x two budgets x two seeds
(:func:`qasa_vqa.sweeps.append_row`), an evaluation folder in :mod:`qasa_vqa.evaluate`'s layout
(``predictions.csv`` of synthetic scores with one failed video, ``metrics.json`` from
:func:`qasa_vqa.metrics.quality_metrics`) and two quality maps (:func:`qasa_vqa.maps.save_quality_map` on
a synthetic map and frames). The notebook gets them through its environment variables and runs with
nbclient on the venv's own ``python3`` kernel (ipykernel's, never a kernelspec installed elsewhere); a
second run with no inputs checks that every section skips with a message.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import nbformat
import numpy as np
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from qasa_vqa.maps import save_quality_map
from qasa_vqa.metrics import quality_metrics
from qasa_vqa.sweeps import append_row

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "results.ipynb"
ENV = (
    "QASA_ROOT",
    "QASA_SWEEP_CSV",
    "QASA_SWEEP_METRICS",
    "QASA_EVAL_DIRS",
    "QASA_MAPS_DIR",
    "QASA_MAPS_LIMIT",
    "QASA_MAP_STEPS",
    "QASA_NOTEBOOK_OUT",
)
BRANCHES = ("stvqrl", "clip", "qasa")
# The columns of an evaluation's predictions.csv (qasa_vqa.evaluate.PREDICTION_FIELDS; not imported, as
# that module pulls in Hydra, Lightning and open_clip, which the notebook does not need).
PREDICTION_FIELDS = ("test_set", "path", "mos", "score", "stvqrl", "clip", "status", "error")
SRCC_LINE = re.compile(r"SRCC (\S+)/(\S+)/(\S+): recomputed (\S+), metrics\.json (\S+) -> (\w+)")


def _sweep(path: Path) -> dict[str, Any]:
    """Two experiments x budgets 6, 12 x seeds 0, 1; returns the test qasa SRCCs of (demo, 6)."""
    rng = np.random.default_rng(0)
    kept = []
    for experiment, ablation, gain in (("demo", "", 0.2), ("demo_supervised", "supervised", 0.0)):
        for budget in (6, 12):
            for seed in (0, 1):
                row: dict[str, Any] = {
                    "experiment": experiment,
                    "ablation": ablation,
                    "n_labelled": budget,
                    "n_unlabelled": 27,
                    "seed": seed,
                    "global_step": 36,
                }
                for branch in BRANCHES:
                    srcc = 0.3 + gain + 0.02 * budget + rng.normal(0, 0.05)
                    row[f"val/validation/{branch}/srcc"] = srcc + 0.05
                    row[f"test/tiny/{branch}/srcc"] = srcc
                    row[f"test/tiny/{branch}/plcc"] = srcc + 0.03
                if (experiment, budget) == ("demo", 6):
                    kept.append(row["test/tiny/qasa/srcc"])
                append_row(path, row)
    return {"demo_6_qasa_srcc": kept}


def _evaluation(folder: Path) -> dict[str, float]:
    """predictions.csv and metrics.json of a checkpoint's run on one set of 12 videos (one of them
    failed); returns the SRCC of each branch as written to metrics.json."""
    rng = np.random.default_rng(1)
    mos = np.linspace(1.0, 5.0, 12)
    scores = {b: 1 / (1 + np.exp(-(mos - 3) + rng.normal(0, 0.6, mos.size))) for b in BRANCHES}
    rows = [
        {
            "test_set": "tiny",
            "path": f"videos/clip_{i:02d}.mp4",
            "mos": float(mos[i]),
            "score": float(scores["qasa"][i]),
            "stvqrl": float(scores["stvqrl"][i]),
            "clip": float(scores["clip"][i]),
            "status": "ok",
            "error": None,
        }
        for i in range(mos.size)
    ]
    rows.append(
        {"test_set": "tiny", "path": "videos/broken.mp4", "mos": 3.0, "status": "error", "error": "x"}
    )
    with open(folder / "predictions.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, PREDICTION_FIELDS, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    results = {"tiny": {b: quality_metrics(scores[b], mos, bootstrap=10, seed=0) for b in BRANCHES}}
    summary = {"model": "tiny/qasa_model.pt", "fit": "logistic4", "results": results}
    (folder / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    return {b: results["tiny"][b]["srcc"] for b in BRANCHES}


def _quality_map(folder: Path, stem: str, seed: int) -> None:
    """A 4-step map of a 7x7 fragment grid over 8 frames of 360x640, drawn and saved by the package."""
    rng = np.random.default_rng(seed)
    grid, patch, frames, (height, width) = 7, 32, 8, (360, 640)
    cell_h, cell_w = height // grid, width // grid
    top = (np.arange(grid)[:, None] * cell_h + rng.integers(0, cell_h - patch, (grid, grid)))[None]
    left = (np.arange(grid)[None, :] * cell_w + rng.integers(0, cell_w - patch, (grid, grid)))[None]
    indices = np.arange(frames) * 4
    source = {
        "thumbs": rng.integers(0, 256, (frames, 36, 64, 3), dtype=np.uint8),
        "frame_indices": indices,
        "times": indices / 25.0,
        "top": top,
        "left": left,
        "patch": patch,
        "upsampled": (height, width),
        "frame_size": (height, width),
    }
    save_quality_map(rng.normal(size=(4, 7, 7)), source, folder / stem, title=stem)


@pytest.fixture
def tiny_run(tmp_path: Path) -> dict[str, Any]:
    sweep = _sweep(tmp_path / "sweeps" / "tiny" / "results.csv")
    (tmp_path / "eval" / "ckpt").mkdir(parents=True)
    srcc = _evaluation(tmp_path / "eval" / "ckpt")
    for seed, stem in enumerate(("clip_00-0123abcd", "clip_01-4567ef01")):
        _quality_map(tmp_path / "maps", stem, seed)
    return {"root": tmp_path, "srcc": srcc, **sweep}


def _execute(cwd: Path) -> list[dict[str, Any]]:
    """Run the notebook in ``cwd`` on the venv's ipykernel; returns the outputs of its code cells."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    manager = KernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[]))
    try:
        NotebookClient(
            notebook, timeout=120, km=manager, resources={"metadata": {"path": str(cwd)}}
        ).execute()
    finally:  # a kernel manager passed in is not shut down by nbclient: never leave a kernel running
        if manager.has_kernel:
            manager.shutdown_kernel(now=True)
    return [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]


def _printed(outputs: list[dict[str, Any]]) -> str:
    return "".join(output.get("text", "") for output in outputs if output["output_type"] == "stream")


def _clear_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


def test_committed_notebook_has_no_outputs() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code), (
        "strip the notebook before committing (notebooks/README.md): .venv/bin/nbstripout --extra-keys "
        "metadata.language_info notebooks/results.ipynb"
    )
    assert notebook.metadata.kernelspec.name == "python3"


def test_notebook_runs_headless_on_a_tiny_run(
    tiny_run: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, out = tiny_run["root"], tiny_run["root"] / "figures"
    _clear_env(monkeypatch)
    monkeypatch.setenv("QASA_SWEEP_CSV", str(root / "sweeps" / "tiny" / "results.csv"))
    monkeypatch.setenv("QASA_EVAL_DIRS", str(root / "eval" / "*"))
    monkeypatch.setenv("QASA_MAPS_DIR", str(root / "maps"))
    monkeypatch.setenv("QASA_NOTEBOOK_OUT", str(out))
    outputs = _execute(root)
    text = _printed(outputs)

    figures = [f"label_budget_test_tiny_{branch}_srcc.png" for branch in BRANCHES]
    figures += ["scatter_ckpt_tiny.png", "map_clip_00-0123abcd.png", "map_clip_01-4567ef01.png"]
    for name in figures:
        assert (out / name).is_file() and (out / name).stat().st_size > 1000, name
    images = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(images) == len(figures) + 2  # and the scorer's own pictures of the 2 maps

    # The summary table: mean +- std over the two seeds of (demo, 6 labels).
    kept = np.array(tiny_run["demo_6_qasa_srcc"])
    table = "".join(output.get("data", {}).get("text/html", "") for output in outputs)
    assert f"{kept.mean():.3f} ± {kept.std(ddof=1):.3f}" in table

    # The metrics recomputed from predictions.csv are those of metrics.json (the failed video left out).
    assert "12 of 13 predictions scored with a MOS" in text
    checks = {m[2]: m for m in SRCC_LINE.findall(text) if m[:2] == ("ckpt", "tiny")}
    assert set(checks) == set(BRANCHES)
    for branch, (*_, recomputed, stored, verdict) in checks.items():
        assert verdict == "match"
        assert float(recomputed) == pytest.approx(tiny_run["srcc"][branch], abs=1e-6)
        assert stored == f"{tiny_run['srcc'][branch]:.6f}"


def test_notebook_skips_what_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _clear_env(monkeypatch)  # every default is relative to the run folder, where nothing exists
    text = _printed(_execute(tmp_path))
    assert "skipping the label-budget curve" in text
    assert "skipping the scatter plots" in text
    assert "skipping them" in text
    assert "figures: none" in text
