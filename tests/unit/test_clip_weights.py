"""Self-describing CLIP files and the 'demo' tag: load without a model name, clear errors otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch

from qasa_vqa.errors import QasaVqaError
from qasa_vqa.models.clip_quality import (
    DEFAULT_PROMPTS,
    LOCAL_CLIP_CONFIGS,
    build_clip_quality,
    load_prompt_features,
)
from qasa_vqa.models.clip_weights import (
    FILE_FORMAT,
    demo_clip_path,
    read_clip_file,
    read_clip_header,
    resolve_weights,
    write_clip_file,
)

CUSTOM = {
    "embed_dim": 24,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 224, "patch_size": 32, "width": 48, "head_width": 24, "layers": 1},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 1, "layers": 1},
}


@pytest.fixture(scope="module")
def custom_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    model = open_clip.CLIP(**CUSTOM)
    path = tmp_path_factory.mktemp("clip") / "custom.safetensors"
    write_clip_file(model, path, model_name="custom", config=CUSTOM, provenance={"seed": 3})
    return path, model


def test_self_describing_file_round_trip(custom_file: tuple[Path, torch.nn.Module]) -> None:
    path, model = custom_file
    header = read_clip_header(path)
    assert header is not None and header.model_name == "custom" and header.config == CUSTOM
    assert header.provenance == {"seed": 3}
    weights = read_clip_file(path)
    assert weights.keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():  # half precision on disk, float32 when read
        assert weights[key].dtype == torch.float32
        torch.testing.assert_close(weights[key], value.half().float(), rtol=0, atol=0)
    clip = build_clip_quality(pretrained=path)  # no model name: the file says what it is
    assert clip.model_name == "custom" and clip.prompt_features.shape == (4, 24)
    torch.testing.assert_close(load_prompt_features(path, DEFAULT_PROMPTS), clip.prompt_features)
    frames = torch.randn(1, 2, 3, 224, 224)
    with torch.no_grad():
        quality = clip.eval()(frames)
    assert quality.shape == (1,) and 0 < float(quality) < 2


def test_other_architectures_give_clear_errors(
    custom_file: tuple[Path, torch.nn.Module], tmp_path: Path
) -> None:
    path, _ = custom_file
    with pytest.raises(QasaVqaError, match=r"holds the CLIP 'custom'.*not 'tiny'"):
        build_clip_quality("tiny", pretrained=path)
    plain = tmp_path / "custom.pt"
    torch.save(read_clip_file(path), plain)  # the same weights without their description
    with pytest.raises(QasaVqaError, match="not a CLIP checkpoint of this architecture"):
        build_clip_quality("tiny", pretrained=plain)
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(path.read_bytes()[:100])
    with pytest.raises(QasaVqaError, match="not a readable safetensors file"):
        build_clip_quality(pretrained=damaged)


def test_header_must_describe_an_open_clip_model(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    bad = tmp_path / "bad.safetensors"
    save_file({"x": torch.zeros(1)}, str(bad), metadata={"format": FILE_FORMAT, "model_name": "m",
                                                        "open_clip_config": json.dumps({"width": 3})})  # fmt: skip
    with pytest.raises(QasaVqaError, match=r"not the arguments of open_clip\.CLIP"):
        read_clip_header(bad)
    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(1)}, str(plain))
    assert read_clip_header(plain) is None


def test_demo_tag_resolves_to_the_shipped_file(tmp_path: Path) -> None:
    assert resolve_weights("demo") == demo_clip_path()
    with pytest.raises(QasaVqaError, match="not found"):  # a Path is always a file, never the tag
        resolve_weights(tmp_path / "demo")
    header = read_clip_header(demo_clip_path())
    assert header is not None and header.model_name == "qasa-demo"
    assert header.config == LOCAL_CLIP_CONFIGS["qasa-demo"]
