"""Build the QASA-VQA model to train: the backbone (from the ST-VQRL checkpoint), a fresh head, the CLIP branch.

:func:`build_qasa_model` is what the ``model`` config node instantiates (docs/method.md section 4.1): a
:class:`~qasa_vqa.models.swin3d.VideoSwinBackbone` of the given architecture, initialised from an
ST-VQRL checkpoint in any layout the project reads (official ``{'model'}``, a QASA checkpoint, or ours)
(extra keys are ignored as the reference's ``strict=False`` does, but a backbone the file does not cover
or with other shapes is an error: the reference would silently keep random weights), a freshly initialised VQA head, and the CLIP quality branch built elsewhere
(``clip`` config group). A missing checkpoint file is a clear error that names the setting to fill in.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from qasa_vqa.errors import QasaVqaError
from qasa_vqa.models.checkpoints import CheckpointError, load_backbone_weights, read_backbone_weights
from qasa_vqa.models.clip_quality import CLIPQuality
from qasa_vqa.models.head import VQAHead
from qasa_vqa.models.qasa import QASAModel, QualityRegressor
from qasa_vqa.models.swin3d import VideoSwinBackbone

__all__ = ["build_qasa_model"]


def build_qasa_model(
    backbone: Mapping[str, Any],
    clip: CLIPQuality,
    *,
    stvqrl_checkpoint: str | Path | None = None,
    head: Mapping[str, Any] | None = None,
    score_scale: float = 0.1,
    seed: int = 0,
    setting: str = "model.stvqrl_checkpoint",
) -> QASAModel:
    """The model to train (module docstring). ``backbone``: :class:`VideoSwinBackbone` arguments;
    ``head``: :class:`VQAHead` arguments (``in_channels`` follows the backbone); ``seed`` makes the
    freshly initialised parts (backbone without checkpoint, head) reproducible. ``setting`` names the
    config key of the checkpoint path in error messages."""
    options = dict(backbone)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = VideoSwinBackbone(**options)
        head_options = {"in_channels": network.num_features} | dict(head or {})
        vqa_head = VQAHead(**head_options)
    if stvqrl_checkpoint not in (None, ""):
        path = Path(str(stvqrl_checkpoint))
        if not path.is_file():
            raise QasaVqaError(
                f"{setting}={path}: no such ST-VQRL checkpoint; set {setting} to the pretrained backbone "
                "(the authors' shift_niqe_lsvd_model_30.pth or `make pretrain`'s stvqrl_backbone.pt), or null "
                "to start from random weights"
            )
        try:
            stored, weights = read_backbone_weights(path)
        except CheckpointError as error:  # its message starts with the path
            raise QasaVqaError(f"{setting}: {error}") from None
        report = load_backbone_weights(network, weights, strict=False)
        if report.missing or report.mismatched:  # extra keys are ignored, as the reference's strict=False
            raise QasaVqaError(
                f"{setting}={path}: another architecture: the checkpoint's backbone is not the configured "
                f"one{_differences(stored, network.config)} ({report}); choose the model preset it was "
                "trained with (model=tiny, model=stvqrl)"
            )
    return QASAModel(QualityRegressor(network, vqa_head), clip, score_scale=score_scale).train()


def _differences(stored: Mapping[str, Any], configured: Mapping[str, Any]) -> str:
    """`` (the file has embed_dim 24, the model 96; ...)`` for the architecture settings recorded in a
    checkpoint (ours records them; the authors' files do not) that differ from the configured ones."""
    shape_settings = ("embed_dim", "depths", "num_heads", "window_size", "patch_size", "mlp_ratio", "grpb")
    differing = [
        f"{key} {_plain(stored[key])} in the file, {_plain(configured[key])} configured"
        for key in shape_settings
        if key in stored and key in configured and _plain(stored[key]) != _plain(configured[key])
    ]
    return f": {'; '.join(differing)}" if differing else ""


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, list | tuple) else value
