"""Checkpoints: the official layouts (key manifest of the key manifest tests/data/stvqrl_keys.txt), our format, safety."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
import torch

from qasa_vqa.cli import main
from qasa_vqa.models.checkpoints import (
    CheckpointError,
    load_qasa,
    load_stvqrl_backbone,
    official_to_ours,
    ours_to_official,
    read_checkpoint,
    save_qasa,
    save_stvqrl_backbone,
)
from qasa_vqa.models.clip_quality import build_clip_quality
from qasa_vqa.models.head import VQAHead
from qasa_vqa.models.qasa import QASAModel, QualityRegressor
from qasa_vqa.models.swin3d import VideoSwinBackbone, swin_t_grpb

MANIFEST = Path(__file__).resolve().parents[1] / "data" / "stvqrl_keys.txt"
TINY = {"embed_dim": 16, "depths": (1, 1, 2, 1), "num_heads": (1, 2, 2, 4), "window_size": (2, 7, 7)}


def _manifest() -> dict[str, list[tuple[str, tuple[int, ...], str]]]:
    """Sections of the key manifest: name -> [(key, shape, dtype)]."""
    sections: dict[str, list] = collections.defaultdict(list)
    section = None
    for line in MANIFEST.read_text().splitlines():
        if line.startswith("## A."):
            section = "stvqrl"
        elif line.startswith("## B."):
            section = "qasa"
        if not line.strip() or line.startswith("#"):
            continue
        key, shape, dtype = line.split("\t")[:3]
        sections[section].append(
            (key, tuple(int(n) for n in shape.strip("()").split(",") if n.strip()), dtype)
        )
    return sections


def _random(shape: tuple[int, ...], dtype: str, generator: torch.Generator) -> torch.Tensor:
    if dtype == "int64":
        return torch.randint(0, 100, shape, generator=generator)
    return torch.randn(shape, generator=generator)


@pytest.fixture(scope="module")
def official_stvqrl(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    model = {key: _random(shape, dtype, generator) for key, shape, dtype in _manifest()["stvqrl"]}
    # the index buffers keep their true values so the loaded backbone still computes attention
    true = ours_to_official(swin_t_grpb().state_dict())
    model.update({k: true[k] for k in model if k.endswith("relative_position_index")})
    path = tmp_path_factory.mktemp("official") / "shift_niqe_lsvd_model_30.pth"
    optimizer = {"state": {}, "param_groups": [{"lr": 1e-4, "weight_decay": 0.05, "params": [0, 1]}]}
    torch.save({"model": model, "optimizer": optimizer, "scheduler": {"last_epoch": 90}, "epoch": 30}, path)
    return path, model


def test_manifest_has_the_documented_sizes() -> None:
    sections = _manifest()
    assert len(sections["stvqrl"]) == 193
    assert (
        sum(torch.Size(shape).numel() for key, shape, dtype in sections["stvqrl"] if dtype == "float32")
        == 28_078_620
    )
    assert len(sections["qasa"]) == 4 + 152


def test_our_names_map_onto_the_official_manifest_exactly() -> None:
    ours = swin_t_grpb().state_dict()
    official = ours_to_official(ours)
    assert {k: tuple(v.shape) for k, v in official.items()} == {k: s for k, s, _ in _manifest()["stvqrl"]}
    assert official_to_ours(official).keys() == ours.keys()
    assert list(official_to_ours({f"module.{k}": v for k, v in official.items()})) == list(ours)


def test_mapping_follows_the_manifest_torchvision_column() -> None:
    rows = [
        line.split("\t")
        for line in MANIFEST.read_text().splitlines()
        if line.startswith(("layers", "patch", "norm"))
    ]
    assert len(rows) == 193
    for key, *_, torchvision_key in rows:
        mapped = next(iter(official_to_ours({key: torch.zeros(1)})))
        if torchvision_key.startswith("(none"):  # the GRPB tables keep their name at torchvision's place
            assert mapped.endswith("fragment_position_bias_table") and mapped.startswith("features.")
        else:
            assert mapped == torchvision_key, key


def test_official_stvqrl_checkpoint_loads_strictly(official_stvqrl) -> None:
    path, model = official_stvqrl
    backbone = load_stvqrl_backbone(path)
    assert not backbone.training
    loaded = ours_to_official(backbone.state_dict())
    assert all(torch.equal(loaded[key], value) for key, value in model.items())
    with torch.no_grad():
        assert backbone(torch.randn(1, 3, 4, 224, 224) * 0.1).shape == (1, 768, 2, 7, 7)


def test_mismatched_checkpoints_are_reported(official_stvqrl, tmp_path: Path) -> None:
    _, model = official_stvqrl
    broken = dict(model)
    del broken["layers.0.blocks.0.attn.fragment_position_bias_table"]
    broken["layers.9.extra"] = torch.zeros(1)
    broken["norm.weight"] = torch.zeros(5)
    torch.save({"model": broken}, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError) as error:
        load_stvqrl_backbone(tmp_path / "broken.pth")
    message = str(error.value)
    assert "broken.pth" in message and "1 missing: features.0.0.attn.fragment_position_bias_table" in message
    assert "1 unexpected: layers.9.extra" in message and "norm.weight expects (768,) got (5,)" in message


def test_files_that_are_not_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        read_checkpoint(tmp_path / "none.pth")
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        read_checkpoint(tmp_path / "text.pth")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not a checkpoint this project knows"):
        load_stvqrl_backbone(tmp_path / "other.pth")


class Payload:
    """An arbitrary object: unpickling it would mean running this project's code from a data file."""


def test_checkpoints_with_code_are_refused(tmp_path: Path) -> None:
    torch.save({"model": {"x": torch.zeros(1)}, "extra": Payload()}, tmp_path / "unsafe.pth")
    with pytest.raises(CheckpointError, match=r"refused to load.*weights_only=True"):
        read_checkpoint(tmp_path / "unsafe.pth")


def test_backbone_round_trips_in_both_layouts(tmp_path: Path) -> None:
    backbone = VideoSwinBackbone(**TINY)
    ours = load_stvqrl_backbone(save_stvqrl_backbone(backbone, tmp_path / "ours.pt"))
    assert ours.config == backbone.config
    assert all(
        torch.equal(a, b)
        for a, b in zip(backbone.state_dict().values(), ours.state_dict().values(), strict=True)
    )
    official = save_stvqrl_backbone(swin_t_grpb(), tmp_path / "official.pth", official=True)
    assert set(torch.load(official, weights_only=True)) == {"model"}
    assert load_stvqrl_backbone(official).config["embed_dim"] == 96


def _tiny_qasa(tau: float = 0.1) -> QASAModel:
    torch.manual_seed(0)
    regressor = QualityRegressor(VideoSwinBackbone(**TINY), VQAHead(128))
    return QASAModel(regressor, build_clip_quality("tiny", pretrained=None, tau=tau))


def test_saved_qasa_has_no_text_tower_and_reloads_to_identical_outputs(tmp_path: Path) -> None:
    model = _tiny_qasa(tau=0.2).eval()
    fragments, resized = torch.randn(2, 3, 8, 112, 112), torch.randn(2, 8, 3, 224, 224)
    with torch.no_grad():
        before = model.scores(fragments, resized)
    path = save_qasa(model, tmp_path / "qasa.pt")
    payload = torch.load(path, weights_only=True)
    assert payload["tau"] == 0.2 and payload["prompts"] == list(model.clip.prompts)
    assert payload["normalisation"] == {"fragments": "imagenet", "clip": "imagenet"}
    keys = list(payload["state_dict"])
    assert "clip.prompt_features" in keys
    assert not [
        k for k in keys if k.startswith("clip.") and not k.startswith(("clip.visual.", "clip.prompt"))
    ]
    again = load_qasa(path)
    assert not again.training
    with torch.no_grad():
        after = again.scores(fragments, resized)
    assert all(torch.equal(before[key], after[key]) for key in before)
    assert set(before) == {"stvqrl_raw", "stvqrl", "clip", "qasa"}
    assert torch.allclose(before["qasa"], torch.sigmoid(0.1 * before["stvqrl_raw"]) * before["clip"])


def test_our_qasa_takes_the_files_tensors_as_its_weights(tmp_path: Path) -> None:
    # loaded strictly, the modules are built on the meta device and the file's tensors become their
    # weights (one copy in memory): nothing may stay without values, dtypes follow the model (a file
    # saved in half precision loads as float32, as copying into the model did), gradients stay on
    model = _tiny_qasa()
    path = save_qasa(model.eval(), tmp_path / "qasa.pt")
    payload = torch.load(path, weights_only=True)
    payload["state_dict"] = {
        k: v.half() if v.is_floating_point() else v for k, v in payload["state_dict"].items()
    }
    torch.save(payload, tmp_path / "half.pt")
    for name in ("qasa.pt", "half.pt"):
        loaded = load_qasa(tmp_path / name)
        copied = load_qasa(tmp_path / name, strict=False)  # modules built for real, weights copied in
        tensors = dict(loaded.state_dict())
        assert not any(t.is_meta for t in [*loaded.parameters(), *loaded.buffers()])
        assert all(p.requires_grad for p in loaded.parameters())
        for key, value in copied.state_dict().items():
            assert tensors[key].dtype == value.dtype and torch.equal(tensors[key], value), (name, key)


def test_official_qasa_layout_round_trip_and_missing_prompts(tmp_path: Path, monkeypatch) -> None:
    model = _tiny_qasa().eval()
    official = save_qasa(model, tmp_path / "clip2stvqrl500_25.pth", official=True)
    payload = torch.load(official, weights_only=True)
    assert set(payload) == {"primary", "auxillary", "epoch"}
    assert "vqa_head.fc_hid.weight" in payload["primary"]
    assert "backbone.layers.0.blocks.0.attn.fragment_position_bias_table" in payload["primary"]
    # the official file's CLIP is ViT-B/32: build the tiny one instead for this test
    import qasa_vqa.models.checkpoints as checkpoints

    monkeypatch.setattr(checkpoints, "VideoSwinBackbone", lambda **kw: VideoSwinBackbone(**(kw or TINY)))
    monkeypatch.setattr(checkpoints, "VQAHead", lambda *a, **kw: VQAHead(128))
    monkeypatch.setattr(
        checkpoints, "build_clip_visual", lambda name: build_clip_quality("tiny", None).visual
    )
    loaded = load_qasa(official)
    frames = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(loaded.clip.image_features(frames), model.clip.image_features(frames))
        with pytest.raises(Exception, match="clip_text"):
            loaded.clip.video_quality(torch.randn(1, 2, 3, 224, 224))
    monkeypatch.setattr(
        checkpoints, "load_prompt_features", lambda source, prompts, name: model.clip.prompt_features
    )
    with_text = load_qasa(official, clip_text="openai")
    resized = torch.randn(1, 2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(with_text.clip.video_quality(resized), model.clip.video_quality(resized))


def test_full_official_qasa_checkpoint_from_the_manifest(official_stvqrl, tmp_path: Path) -> None:
    _, backbone = official_stvqrl
    generator = torch.Generator().manual_seed(1)
    sections = _manifest()
    primary = {f"backbone.{k}": v for k, v in backbone.items()}
    head = {k: _random(s, d, generator) for k, s, d in sections["qasa"] if k.startswith("vqa_head.")}
    primary.update(head)
    auxillary = {
        k: _random(s, d, generator) * 0.02 for k, s, d in sections["qasa"] if not k.startswith("vqa_head.")
    }
    path = tmp_path / "clip2stvqrl500_25.pth"
    torch.save({"primary": primary, "auxillary": auxillary, "epoch": 25}, path)
    model = load_qasa(path)
    assert len(primary) == 197 and len(auxillary) == 152
    assert torch.equal(model.stvqrl.vqa_head.fc_hid.weight, head["vqa_head.fc_hid.weight"])
    assert sum(p.numel() for p in model.clip.visual.parameters()) == 87_849_216
    with torch.no_grad():
        assert model.clip.image_features(torch.randn(1, 3, 224, 224)).shape == (1, 512)
    assert not model.clip.has_prompt_features
    assert load_stvqrl_backbone(path).config == swin_t_grpb().config  # the backbone alone, from QASA


def test_convert_command(official_stvqrl, tmp_path: Path, capsys) -> None:
    source, model = official_stvqrl
    ours = tmp_path / "stvqrl.pt"
    assert main(["convert", str(source), str(ours)]) == 0
    assert "stvqrl-backbone in qasa-vqa format" in capsys.readouterr().out
    back = tmp_path / "back.pth"
    assert main(["convert", str(ours), str(back), "--official"]) == 0
    again = torch.load(back, weights_only=True)["model"]
    assert again.keys() == model.keys() and all(torch.equal(again[k], model[k]) for k in model)
    assert main(["convert", str(tmp_path / "missing.pth"), str(back)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
