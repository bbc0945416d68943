"""The VQA head of the quality-aware branch: a local quality map and its mean (docs/method.md section 1.5).

FAST-VQA's IP-NLR head as QASA-VQA uses it: Dropout(0.5) -> Conv3d 768->64 (1x1x1) -> GELU ->
Dropout(0.5) -> Conv3d 64->1 (1x1x1), applied to the backbone features ``[B,768,T',7,7]``; the output
``[B,1,T',7,7]`` is a map of local qualities and the video score is its mean. 49,281 parameters.
State-dict names ``fc_hid.*`` / ``fc_last.*`` are the reference's (its unused, parameter-free
AdaptiveAvgPool3d is left out).
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["VQAHead"]


class VQAHead(nn.Module):
    """``[B,C,T',H',W'] -> [B,1,T',H',W']`` local quality map; :meth:`score` gives ``[B]``."""

    def __init__(self, in_channels: int = 768, hidden_channels: int = 64, dropout: float = 0.5) -> None:
        super().__init__()
        self.config = {"in_channels": in_channels, "hidden_channels": hidden_channels, "dropout": dropout}
        self.dropout = nn.Dropout(dropout)
        self.fc_hid = nn.Conv3d(in_channels, hidden_channels, kernel_size=1)
        self.activation = nn.GELU()
        self.fc_last = nn.Conv3d(hidden_channels, 1, kernel_size=1)

    def forward(self, features: Tensor) -> Tensor:
        hidden = self.activation(self.fc_hid(self.dropout(features)))
        return self.fc_last(self.dropout(hidden))

    @staticmethod
    def score(quality_map: Tensor) -> Tensor:
        """The video score: the mean of the quality map over time and space, ``[B]``."""
        return quality_map.flatten(1).mean(dim=1)
