"""QASAModel: both branches, the combined score of docs/method.md 5.1, gradients for tiny and full sizes."""

from __future__ import annotations

import torch

from qasa_vqa.models.clip_quality import OPENAI_VIT_B32, build_clip_quality
from qasa_vqa.models.head import VQAHead
from qasa_vqa.models.qasa import QASAModel, QualityRegressor
from qasa_vqa.models.swin3d import VideoSwinBackbone, swin_t_grpb

TINY = {"embed_dim": 16, "depths": (1, 1, 2, 1), "num_heads": (1, 2, 2, 4), "window_size": (2, 7, 7)}


def _check_step(model: QASAModel, fragments: torch.Tensor, resized: torch.Tensor) -> dict[str, torch.Tensor]:
    scores = model.scores(fragments, resized)
    assert all(
        value.shape == (fragments.shape[0],) and torch.isfinite(value).all() for value in scores.values()
    )
    (scores["stvqrl_raw"].sum() + scores["clip"].sum()).backward()
    trained = [p for p in model.parameters() if p.requires_grad]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trained)
    assert model.clip.prompt_features.grad is None and not model.clip.prompt_features.requires_grad
    return scores


def test_tiny_model_scores_and_gradients() -> None:
    torch.manual_seed(0)
    model = QASAModel(
        QualityRegressor(VideoSwinBackbone(**TINY), VQAHead(128)), build_clip_quality("tiny", pretrained=None)
    ).train()
    fragments, resized = torch.randn(2, 3, 8, 112, 112), torch.randn(2, 8, 3, 224, 224)
    quality_map = model.stvqrl(fragments)
    assert quality_map.shape == (2, 1, 4, 4, 4)
    model.eval()
    with torch.no_grad():
        scores = model.scores(fragments, resized)
        assert torch.allclose(scores["stvqrl_raw"], model.stvqrl(fragments).mean(dim=(1, 2, 3, 4)))
        expected = 1 / (1 + torch.exp(-0.1 * scores["stvqrl_raw"])) * scores["clip"]
        assert torch.allclose(scores["qasa"], expected) and torch.equal(
            model(fragments, resized), scores["qasa"]
        )
        assert ((scores["clip"] > 0) & (scores["clip"] < 2)).all()
    half = QASAModel(model.stvqrl, model.clip, score_scale=0.5)
    with torch.no_grad():
        assert torch.allclose(
            half.scores(fragments, resized)["stvqrl"], torch.sigmoid(0.5 * scores["stvqrl_raw"])
        )
    _check_step(model.train(), fragments, resized)


def test_full_model_forward_and_backward_on_cpu() -> None:
    torch.manual_seed(1)
    model = QASAModel(
        QualityRegressor(swin_t_grpb(gradient_checkpointing=True)),
        build_clip_quality(OPENAI_VIT_B32, pretrained=None),
    ).train()
    assert model.stvqrl(torch.randn(1, 3, 4, 224, 224)).shape == (1, 1, 2, 7, 7)
    model.zero_grad()
    _check_step(model, torch.randn(1, 3, 4, 224, 224), torch.randn(1, 2, 3, 224, 224))
