"""QASAModel: the quality-aware branch (ST-VQRL backbone + VQA head) and the CLIP branch, combined.

docs/method.md sections 4.1, 4.4 and 5.1. ``model.stvqrl(fragments)`` gives the local quality map
``[B,1,T/2,7,7]`` of the fragment view ``[B,3,T,224,224]``; ``model.clip.video_quality(resized)`` the
CLIP quality in (0, 2) of the resized frames ``[B,T,3,224,224]``; :meth:`QASAModel.scores` returns both
and the combined score of the reference's inference, ``sigmoid(score_scale * s_L) * q_H`` with
``score_scale = 0.1`` (in (0, 2)). Plain ``nn.Module``s: training systems and scorers wrap them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from qasa_vqa.models.clip_quality import CLIPQuality
from qasa_vqa.models.head import VQAHead
from qasa_vqa.models.swin3d import VideoSwinBackbone

__all__ = ["QASAModel", "QualityRegressor"]


class QualityRegressor(nn.Module):
    """Backbone + VQA head (the reference's ``BaseEvaluator``; state-dict prefixes ``backbone.`` /
    ``vqa_head.``). Calling it gives the quality map; :meth:`score` the video score ``[B]``."""

    def __init__(self, backbone: VideoSwinBackbone, head: VQAHead | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.vqa_head = head if head is not None else VQAHead(backbone.num_features)

    def forward(self, fragments: Tensor) -> Tensor:
        return self.vqa_head(self.backbone(fragments))

    def score(self, fragments: Tensor) -> Tensor:
        return VQAHead.score(self(fragments))


class QASAModel(nn.Module):
    """Both branches of QASA-VQA and their combination (module docstring)."""

    def __init__(self, stvqrl: QualityRegressor, clip: CLIPQuality, *, score_scale: float = 0.1) -> None:
        super().__init__()
        self.stvqrl = stvqrl
        self.clip = clip
        self.score_scale = score_scale

    def combine(self, stvqrl_raw: Tensor, clip_quality: Tensor) -> Tensor:
        """``sigmoid(score_scale * s_L) * q_H``, the reference's overall score."""
        return torch.sigmoid(self.score_scale * stvqrl_raw) * clip_quality

    def scores(self, fragments: Tensor, resized: Tensor) -> dict[str, Tensor]:
        """Scores of a batch: ``stvqrl_raw`` (mean of the map), ``stvqrl`` (its sigmoid), ``clip`` (in
        (0, 2)) and ``qasa`` (the combination), each ``[B]``. ``fragments`` ``[B,3,T,224,224]``,
        ``resized`` ``[B,T,3,224,224]``."""
        raw = self.stvqrl.score(fragments)
        clip_quality = self.clip.video_quality(resized)
        return {
            "stvqrl_raw": raw,
            "stvqrl": torch.sigmoid(self.score_scale * raw),
            "clip": clip_quality,
            "qasa": self.combine(raw, clip_quality),
        }

    def forward(self, fragments: Tensor, resized: Tensor) -> Tensor:
        return self.scores(fragments, resized)["qasa"]
