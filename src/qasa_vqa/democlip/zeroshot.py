"""Zero-shot CLIP quality on a rated corpus: QASA's readout of an untrained-for-VQA CLIP against MOS.

The measurement is QASA-VQA's inference on its CLIP branch alone (docs/method.md section 5.1, item 4): the 64
test frames of each video (8 segments x 8, centred offsets), each resized to 224 x 224 and normalised
as the branch sees them (:class:`~qasa_vqa.data.datasets.EvaluationDataset`), the mean image feature
over those frames, its cosines with the four prompts ("a good / bad / high quality / low quality
photo.") and ``sum_k sigmoid((c_good_k - c_bad_k) / 0.1)``. SRCC and PLCC against the corpus's MOS come
from :func:`qasa_vqa.metrics.quality_metrics` with bootstrap 95% intervals, for all clips and for each
split the manifest names. Several models are scored in one pass over the decoded videos.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from torch.utils.data import DataLoader

from qasa_vqa.data.datasets import EvaluationDataset, collate_skipping_none
from qasa_vqa.data.manifests import read_manifest
from qasa_vqa.errors import QasaVqaError
from qasa_vqa.metrics import quality_metrics
from qasa_vqa.models.clip_quality import CLIPQuality

__all__ = ["score_corpus", "summarise"]


def score_corpus(
    models: Mapping[str, CLIPQuality],
    corpus: str | Path,
    *,
    workers: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """CLIP quality of every video of ``corpus`` (a folder with ``manifest.csv``, or a label file) for
    each of ``models`` (module docstring), in one pass over the decoded videos: ``{"path": [...],
    "split": [...], "mos": array, <model name>: array of CLIP qualities}``."""
    corpus = Path(corpus)
    label_file = corpus / "manifest.csv" if corpus.is_dir() else corpus
    if not label_file.is_file():
        raise QasaVqaError(
            f"{corpus}: no demo corpus here (no manifest.csv); make one with 'qasa-vqa demo-data --out {corpus}'"
        )
    manifest = read_manifest(label_file, root=label_file.parent)
    dataset = EvaluationDataset(
        manifest.records, label_file.parent, mos_scale=manifest.scale, on_error="raise"
    )
    loader = DataLoader(dataset, batch_size=1, num_workers=workers, collate_fn=collate_skipping_none)
    out: dict[str, Any] = {"path": [], "split": [], "mos": [], **{name: [] for name in models}}
    splits = {r.path: str(r.extra.get("split", "")) for r in manifest.records}
    for model in models.values():
        model.eval()
    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), disable=not progress) as bar, torch.no_grad():
        job = bar.add_task(f"zero-shot CLIP quality on {label_file.parent.name}", total=len(dataset))
        for item in loader:
            out["path"].append(item["path"][0])
            out["split"].append(splits[item["path"][0]])
            out["mos"].append(float(item["mos_raw"][0]))
            for name, model in models.items():
                out[name].append(float(model.video_quality(item["resize"])[0]))
            bar.advance(job)
    for key in ("mos", *models):
        out[key] = np.asarray(out[key], dtype=np.float64)
    return out


def summarise(
    scores: Mapping[str, Any], model: str, *, bootstrap: int = 1000, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """SRCC, PLCC (raw) and their bootstrap 95% intervals of ``model`` for all videos and each split."""
    splits = sorted({s for s in scores["split"] if s})
    subsets = {"all": np.ones(len(scores["mos"]), bool)}
    subsets |= {s: np.asarray(scores["split"]) == s for s in splits}
    report = {}
    for name, mask in subsets.items():
        if mask.sum() < 3:
            continue
        m = quality_metrics(scores[model][mask], scores["mos"][mask], bootstrap=bootstrap, seed=seed)
        report[name] = {key: m[key] for key in ("n", "srcc", "srcc_low", "srcc_high", "plcc", "plcc_low",
                                                "plcc_high")}  # fmt: skip
    return report
