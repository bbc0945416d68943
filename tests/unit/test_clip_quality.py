"""The CLIP quality branch: formula (docs/method.md 4.4), frame averaging, prompt buffer, official key layout."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from pathlib import Path

import open_clip
import pytest
import torch
from torch import Tensor, nn

from qasa_vqa.errors import QasaVqaError
from qasa_vqa.models.clip_quality import (
    DEFAULT_PAIRS,
    DEFAULT_PROMPTS,
    OPENAI_VIT_B32,
    CLIPQuality,
    build_clip_quality,
    build_clip_visual,
    create_clip,
    get_clip_tokenizer,
    load_prompt_features,
    load_visual_official,
    prompt_cosine,
    quality_from_cosine,
    visual_state_dict_official,
)


@pytest.fixture(scope="module")
def tiny() -> CLIPQuality:
    torch.manual_seed(0)
    return build_clip_quality("tiny", pretrained=None)


@pytest.fixture(scope="module")
def vit_b32() -> CLIPQuality:
    torch.manual_seed(0)
    return build_clip_quality(OPENAI_VIT_B32, pretrained=None)


def _frames(*shape: int, seed: int = 0) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _official_vit_b32_keys() -> Iterator[tuple[str, tuple[int, ...]]]:
    """The 152 keys of the official 'auxillary' entry (stvqrl_keys.txt section B)."""
    w = 768
    yield "class_embedding", (w,)
    yield "positional_embedding", (50, w)
    yield "proj", (w, 512)
    yield "conv1.weight", (w, 3, 32, 32)
    yield from (("ln_pre.weight", (w,)), ("ln_pre.bias", (w,)))
    for i in range(12):
        block = f"transformer.resblocks.{i}."
        yield block + "attn.in_proj_weight", (3 * w, w)
        yield block + "attn.in_proj_bias", (3 * w,)
        yield block + "attn.out_proj.weight", (w, w)
        yield block + "attn.out_proj.bias", (w,)
        yield from ((block + "ln_1.weight", (w,)), (block + "ln_1.bias", (w,)))
        yield block + "mlp.c_fc.weight", (4 * w, w)
        yield block + "mlp.c_fc.bias", (4 * w,)
        yield block + "mlp.c_proj.weight", (w, 4 * w)
        yield block + "mlp.c_proj.bias", (w,)
        yield from ((block + "ln_2.weight", (w,)), (block + "ln_2.bias", (w,)))
    yield from (("ln_post.weight", (w,)), ("ln_post.bias", (w,)))


def test_default_prompts_and_tokenizer_case() -> None:
    assert DEFAULT_PROMPTS == (
        "a Good photo.",
        "a Bad photo.",
        "a High quality photo.",
        "a Low quality photo.",
    )
    assert DEFAULT_PAIRS == ((0, 1), (2, 3))
    tokenizer = get_clip_tokenizer("tiny")
    # The reference test script lower-cases the classes; CLIP's BPE lower-cases anyway (docs/method.md 4.1).
    assert torch.equal(tokenizer(list(DEFAULT_PROMPTS)), tokenizer([p.lower() for p in DEFAULT_PROMPTS]))


def test_openai_name_uses_quickgelu(vit_b32: CLIPQuality) -> None:
    assert "openai" in open_clip.list_pretrained_tags_by_model(OPENAI_VIT_B32)
    assert open_clip.get_model_config(OPENAI_VIT_B32)["quick_gelu"] is True
    assert isinstance(vit_b32.visual.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU)


def test_tiny_forward_backward(tiny: CLIPQuality) -> None:
    frames = _frames(2, 3, 3, 224, 224).requires_grad_(False)
    tiny.zero_grad()
    q = tiny(frames)
    assert q.shape == (2,)
    assert torch.isfinite(q).all()
    q.sum().backward()
    grads = [p.grad for p in tiny.visual.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    assert tiny.prompt_features is not None and not tiny.prompt_features.requires_grad
    assert "prompt_features" in tiny.state_dict()
    assert "prompt_features" not in dict(tiny.named_parameters())
    assert tiny.prompt_features.shape == (4, 32)


def test_quality_formula_by_hand(tiny: CLIPQuality) -> None:
    features = _frames(5, 32, seed=1)
    t = tiny.prompt_features
    assert t is not None
    q = tiny.quality_from_features(features)
    expected = []
    for f in features.tolist():
        nf = math.sqrt(sum(x * x for x in f))
        cos = [sum(a * b for a, b in zip(f, row, strict=True)) / nf / row.norm().item() for row in t]
        expected.append(sum(1 / (1 + math.exp((cos[b] - cos[g]) / 0.1)) for g, b in ((0, 1), (2, 3))))
    torch.testing.assert_close(q, torch.tensor(expected), rtol=1e-5, atol=1e-5)
    # = sum of the softmax probabilities of the good prompt at logit scale 1/tau.
    cos = prompt_cosine(features, t)
    probs = [torch.softmax(cos[:, [g, b]] / 0.1, dim=-1)[:, 0] for g, b in DEFAULT_PAIRS]
    torch.testing.assert_close(q, sum(probs))
    assert ((q > 0) & (q < 2)).all()


def test_quality_range_extremes() -> None:
    # Open interval (0, 2) in exact arithmetic (float64 here); float32 saturates to 0 or 2 only at
    # cosine gaps above about 1.7, far beyond what CLIP produces.
    cos = torch.tensor(
        [[1.0, -1.0, 1.0, -1.0], [-1.0, 1.0, -1.0, 1.0], [0.3, 0.3, 0.2, 0.2]], dtype=torch.float64
    )
    q = quality_from_cosine(cos, DEFAULT_PAIRS, 0.1)
    assert 1.99 < q[0] < 2
    assert 0 < q[1] < 0.01
    torch.testing.assert_close(q[2], torch.tensor(1.0, dtype=torch.float64))


class _LinearVisual(nn.Module):
    """A visual stub whose features scale with the frame, so frame norms differ on purpose."""

    output_dim = 32

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 32, bias=False)

    def forward(self, frames: Tensor) -> Tensor:
        return self.proj(frames.mean(dim=(2, 3)))


def test_video_quality_averages_features_before_normalising(tiny: CLIPQuality) -> None:
    frames = _frames(2, 4, 3, 224, 224, seed=2)
    with torch.no_grad():
        q = tiny.video_quality(frames)
        per_frame = torch.stack([tiny.image_features(frames[:, i]) for i in range(4)], dim=1)
        manual = tiny.quality_from_features(per_frame.mean(dim=1))
    assert per_frame.shape == (2, 4, 32)
    torch.testing.assert_close(q, manual, rtol=1e-5, atol=1e-5)

    torch.manual_seed(0)
    stub = CLIPQuality(_LinearVisual(), torch.randn(4, 32))
    scaled = _frames(1, 2, 3, 8, 8, seed=3) + 1.0
    scaled[:, 1] *= 50.0  # the second frame's feature is 50x longer: it dominates the raw mean
    with torch.no_grad():
        f = stub.image_features(scaled[0])
        raw_mean = stub.quality_from_features(f.mean(dim=0, keepdim=True))
        unit_mean = stub.quality_from_features(nn.functional.normalize(f, dim=-1).mean(dim=0, keepdim=True))
        torch.testing.assert_close(stub.video_quality(scaled), raw_mean)
    assert not torch.allclose(raw_mean, unit_mean, atol=1e-3)


def test_missing_prompt_features(tiny: CLIPQuality) -> None:
    bare = CLIPQuality(tiny.visual)
    assert not bare.has_prompt_features
    assert "prompt_features" not in bare.state_dict()
    frames = _frames(1, 2, 3, 224, 224, seed=3)
    assert bare.image_features(frames[0]).shape == (2, 32)
    with pytest.raises(QasaVqaError, match="clip_text"):
        bare.video_quality(frames)
    with pytest.raises(QasaVqaError, match="'openai'"):
        bare.quality_from_features(torch.zeros(1, 32))
    # A state dict that holds prompt features fills them in.
    bare.load_state_dict(tiny.state_dict())
    assert bare.prompt_features is not None
    torch.testing.assert_close(bare.video_quality(frames), tiny.video_quality(frames))


def test_bad_prompt_setup(tiny: CLIPQuality) -> None:
    with pytest.raises(QasaVqaError, match="pair"):
        CLIPQuality(tiny.visual, pairs=((0, 4),))
    with pytest.raises(QasaVqaError, match="tau"):
        CLIPQuality(tiny.visual, tau=0.0)
    with pytest.raises(QasaVqaError, match="shape"):
        CLIPQuality(tiny.visual, torch.zeros(3, 32))


def test_vit_b32_param_count_and_official_keys(vit_b32: CLIPQuality) -> None:
    assert sum(p.numel() for p in vit_b32.visual.parameters()) == 87_849_216
    official = visual_state_dict_official(vit_b32)
    expected = dict(_official_vit_b32_keys())
    assert len(expected) == 152
    assert {k: tuple(v.shape) for k, v in official.items()} == expected
    assert all(v.dtype == torch.float32 for v in official.values())
    assert vit_b32.prompt_features is not None and vit_b32.prompt_features.shape == (4, 512)


def test_state_dict_has_no_text_tower(vit_b32: CLIPQuality) -> None:
    keys = set(vit_b32.state_dict())
    assert keys == {"prompt_features"} | {"visual." + k for k, _ in _official_vit_b32_keys()}
    assert not any(
        k.startswith(("token_embedding", "ln_final", "text_projection", "transformer.")) for k in keys
    )


def test_load_visual_official_round_trip_and_report(tiny: CLIPQuality) -> None:
    torch.manual_seed(1)
    other = build_clip_visual("tiny")
    official = visual_state_dict_official(tiny)
    report = load_visual_official(other, {"module." + k: v for k, v in official.items()})
    assert report.ok
    for k, v in other.state_dict().items():
        assert torch.equal(v, official[k])
    broken = dict(official)
    broken.pop("proj")
    broken["ln_post.weight"] = torch.zeros(5)
    broken["extra.weight"] = torch.zeros(1)
    with pytest.raises(QasaVqaError, match=r"1 missing: proj.*1 unexpected: extra\.weight.*ln_post\.weight"):
        load_visual_official(other, broken)
    loose = load_visual_official(other, broken, strict=False)
    assert loose.missing == ("proj",) and loose.unexpected == ("extra.weight",)
    assert [k for k, _, _ in loose.mismatched] == ["ln_post.weight"]


def test_save_load_round_trip(tiny: CLIPQuality, tmp_path: Path) -> None:
    path = tmp_path / "clip_quality.pt"
    torch.save(tiny.state_dict(), path)
    torch.manual_seed(123)
    fresh = CLIPQuality(build_clip_visual("tiny"))
    fresh.load_state_dict(torch.load(path, weights_only=True))
    frames = _frames(2, 3, 3, 224, 224, seed=4)
    tiny.eval()
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(frames), tiny(frames))
    tiny.train()


def test_local_clip_files(tmp_path: Path) -> None:
    torch.manual_seed(5)
    clip = create_clip("tiny", pretrained=None)
    plain = tmp_path / "tiny_clip.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in clip.state_dict().items()}}, plain)
    scripted = tmp_path / "tiny_clip_openai_format.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(clip).save(str(scripted))
    reference = build_clip_quality("tiny", pretrained=plain)
    for source in (plain, str(scripted)):
        model = build_clip_quality("tiny", pretrained=source)
        assert model.prompt_features is not None and reference.prompt_features is not None
        torch.testing.assert_close(model.prompt_features, reference.prompt_features)
        for k, v in model.visual.state_dict().items():
            assert torch.equal(v, clip.visual.state_dict()[k])
    torch.testing.assert_close(load_prompt_features(plain, model_name="tiny"), reference.prompt_features)
    with pytest.raises(QasaVqaError, match="not found"):
        build_clip_quality("tiny", pretrained=tmp_path / "missing.pt")
    wrong = tmp_path / "not_clip.pt"
    torch.save({"visual.proj": torch.zeros(2)}, wrong)
    with pytest.raises(QasaVqaError, match="missing"):
        create_clip("tiny", pretrained=wrong)


def test_weight_source_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(QasaVqaError, match="local architecture without released weights"):
        create_clip("tiny", pretrained="openai")
    with pytest.raises(QasaVqaError, match="unknown CLIP model"):
        create_clip("no-such-model", pretrained=None)
    with pytest.raises(QasaVqaError, match="no weights 'nope'"):
        create_clip(OPENAI_VIT_B32, pretrained="nope")

    def offline(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Failed to download weights for tag 'openai'")

    monkeypatch.setattr(open_clip, "create_model", offline)
    with pytest.raises(QasaVqaError, match="pass a local file"):
        load_prompt_features("openai")
