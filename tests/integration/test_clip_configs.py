"""The ``clip`` config group: every file composes, ``clip=demo`` builds the shipped demo CLIP offline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from qasa_vqa.models.clip_quality import DEFAULT_PROMPTS, OPENAI_VIT_B32, CLIPQuality, create_clip

CONF = Path(__file__).resolve().parents[2] / "conf"


def _clip(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="pretrain", overrides=list(overrides)).clip


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "clip").glob("*.yaml")))
def test_every_clip_config_names_the_paper_prompts(name: str) -> None:
    node = _clip(f"+clip={name}")
    assert node._target_ == "qasa_vqa.models.clip_quality.build_clip_quality"
    assert tuple(node.prompts) == DEFAULT_PROMPTS and OmegaConf.to_container(node.pairs) == [[0, 1], [2, 3]]
    assert node.tau == 0.1


def test_clip_demo_builds_offline() -> None:
    clip = instantiate(_clip("+clip=demo"))
    assert isinstance(clip, CLIPQuality) and clip.model_name == "qasa-demo"
    assert clip.prompt_features is not None and clip.prompt_features.shape == (4, 128)
    with torch.no_grad():
        assert clip.eval()(torch.randn(1, 2, 3, 224, 224)).shape == (1,)


def test_clip_local_takes_a_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    weights = tmp_path / "tiny.pt"
    torch.save(create_clip("tiny", pretrained=None).state_dict(), weights)
    node = _clip("+clip=local", "clip.model_name=tiny", f"clip.pretrained={weights}")
    assert instantiate(node).model_name == "tiny"
    assert _clip("+clip=openai").model_name == OPENAI_VIT_B32 and _clip("+clip=openai").pretrained == "openai"
