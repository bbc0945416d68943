"""The ST-VQRL backbone: GRPB gate by hand, equivalence with torchvision's swin3d_t, sizes, gradients."""

from __future__ import annotations

import collections

import pytest
import torch
from torchvision.models.video import swin3d_t

from qasa_vqa.models.head import VQAHead
from qasa_vqa.models.swin3d import (
    GatedWindowAttention3d,
    VideoSwinBackbone,
    fragment_gate,
    shift_regions,
    swin_t_grpb,
)

TINY = {"embed_dim": 16, "depths": (1, 1, 2, 1), "num_heads": (1, 2, 2, 4), "window_size": (2, 7, 7)}


def _gated(model: torch.nn.Module) -> list[GatedWindowAttention3d]:
    return [m for m in model.modules() if isinstance(m, GatedWindowAttention3d)]


def test_gate_by_hand_on_a_small_map() -> None:
    # a 1 x 4 x 4 map, fragments (1, 2, 2): coordinate h -> floor(2h/4) = 0,0,1,1; one 1x4x4 window
    gate = fragment_gate((1, 4, 4), (1, 4, 4), (0, 0, 0), (1, 2, 2))
    coords = [(h // 2, w // 2) for h in range(4) for w in range(4)]
    expected = torch.tensor([[abs(a[0] - b[0]) + abs(a[1] - b[1]) for b in coords] for a in coords])
    assert torch.equal(gate[0], expected)
    # rolled by one row and column before the partition, as the features are
    rolled = fragment_gate((1, 4, 4), (1, 2, 2), (0, 1, 1), (1, 2, 2))
    first_window = [((h + 1) % 4 // 2, (w + 1) % 4 // 2) for h in range(2) for w in range(2)]
    assert rolled.shape == (4, 4, 4)
    assert rolled[0].tolist() == [
        [abs(a[0] - b[0]) + abs(a[1] - b[1]) for b in first_window] for a in first_window
    ]


def test_gate_statistics_of_stage_0_match_the_reference() -> None:
    # docs/method.md 1.3: unshifted stage-0 windows have g in {0,1,2} (51% / 41% / 8%); shifted ones reach 12
    counts = collections.Counter(
        fragment_gate((16, 56, 56), (8, 7, 7), (0, 0, 0), (1, 7, 7)).flatten().tolist()
    )
    total = sum(counts.values())
    assert set(counts) == {0, 1, 2}
    assert [round(counts[g] / total, 2) for g in (0, 1, 2)] == [0.51, 0.41, 0.08]
    assert fragment_gate((16, 56, 56), (8, 7, 7), (4, 3, 3), (1, 7, 7)).max().item() == 12


def test_parameter_counts_and_state_dict() -> None:
    backbone = swin_t_grpb()
    assert sum(p.numel() for p in backbone.parameters()) == 28_078_620
    assert len(backbone.state_dict()) == 193
    tables = sum(m.fragment_position_bias_table.numel() for m in _gated(backbone))
    assert tables == 228_150 and len(_gated(backbone)) == 10
    plain = swin_t_grpb(grpb=False)
    assert sum(p.numel() for p in plain.parameters()) == 27_850_470 and not _gated(plain)
    assert sum(p.numel() for p in VQAHead().parameters()) == 49_281


@pytest.fixture(scope="module")
def pair() -> tuple[VideoSwinBackbone, torch.nn.Module]:
    torch.manual_seed(0)
    reference = swin3d_t().eval()
    ours = swin_t_grpb().eval()
    weights = {k: v for k, v in reference.state_dict().items() if not k.startswith("head.")}
    missing, unexpected = ours.load_state_dict(weights, strict=False)
    assert not unexpected and all(key.endswith("fragment_position_bias_table") for key in missing)
    assert len(missing) == 10
    return ours, reference


def _torchvision_features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.norm(model.features(model.patch_embed(x))).permute(0, 4, 1, 2, 3)


def test_equal_tables_give_torchvision_swin3d_t_and_different_ones_do_not(pair) -> None:
    ours, reference = pair
    x = torch.randn(1, 3, 16, 128, 160, generator=torch.Generator().manual_seed(1))
    for attention in _gated(ours):
        attention.fragment_position_bias_table.data.copy_(attention.relative_position_bias_table.data)
    with torch.no_grad():
        expected = _torchvision_features(reference, x)
        assert (ours(x) - expected).abs().max().item() < 1e-5
        for attention in _gated(ours):
            attention.fragment_position_bias_table.data.normal_(
                0, 0.5, generator=torch.Generator().manual_seed(2)
            )
        assert (ours(x) - expected).abs().max().item() > 1e-2


def test_full_size_shapes_and_gradients() -> None:
    backbone = swin_t_grpb(gradient_checkpointing=True).train()
    head = VQAHead()
    x = torch.randn(1, 3, 8, 224, 224, requires_grad=True)
    features = backbone(x)
    assert features.shape == (1, 768, 4, 7, 7)
    quality_map = head(features)
    assert quality_map.shape == (1, 1, 4, 7, 7)
    VQAHead.score(quality_map).sum().backward()
    grads = [p.grad for p in backbone.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(a.fragment_position_bias_table.grad.abs().sum() > 0 for a in _gated(backbone))


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    torch.manual_seed(3)
    plain = VideoSwinBackbone(**TINY, drop_path=0.0).train()
    checkpointed = VideoSwinBackbone(**TINY, drop_path=0.0, gradient_checkpointing=True).train()
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 8, 112, 112)
    for model in (plain, checkpointed):
        model(x).square().mean().backward()
    for a, b in zip(plain.parameters(), checkpointed.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-6)


def test_tiny_twin_runs_forward_and_backward() -> None:
    backbone = VideoSwinBackbone(**TINY).train()
    out = backbone(torch.randn(2, 3, 8, 112, 112))
    assert out.shape == (2, 128, 4, 4, 4) and torch.isfinite(out).all()
    out.mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in backbone.parameters() if p.grad is not None)
    assert (
        backbone.train() is backbone and backbone.eval() is backbone
    )  # chaining works (docs/differences.md item 14)


def test_64_frames_give_32_time_steps() -> None:
    backbone = VideoSwinBackbone(**TINY).eval()
    with torch.no_grad():
        assert backbone(torch.randn(1, 3, 64, 64, 64)).shape[2] == 32


def test_bad_configurations_are_rejected() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        VideoSwinBackbone(depths=(2, 2), num_heads=(3, 6, 12))
    with pytest.raises(ValueError, match="one flag per stage"):
        VideoSwinBackbone(grpb=(True, False))


def test_fragment_grid_follows_a_clipped_window() -> None:
    """A 4 x 4 stage map is smaller than the 7 x 7 window, so the window is clipped to 4 x 4 and the
    fragment grid with it: every token is its own fragment (coordinates 0..3), not a 7-grid squeezed
    onto 4 tokens (0, 1, 3, 5)."""
    attention = GatedWindowAttention3d(8, [2, 7, 7], [0, 0, 0], 1)
    attention.fragment_position_bias_table.data.normal_()
    x = torch.randn(1, 2, 4, 4, 8)
    attention(x)
    (gate,) = attention._gates.values()
    assert torch.equal(gate.long(), fragment_gate((2, 4, 4), (2, 4, 4), (0, 0, 0), (1, 4, 4)))
    assert gate.max().item() == 6  # |dh| + |dw| <= 3 + 3 on the token grid itself


def test_gate_in_8_bits_equals_the_int64_gate() -> None:
    for padded, window, shift in [((16, 56, 56), (8, 7, 7), (4, 3, 3)), ((2, 4, 4), (2, 4, 4), (0, 0, 0))]:
        fragments = (1, *[min(7, w) for w in window[1:]])
        wide = fragment_gate(padded, window, shift, fragments)
        narrow = fragment_gate(padded, window, shift, fragments, dtype=torch.uint8)
        assert wide.dtype == torch.int64 and narrow.dtype == torch.uint8
        assert torch.equal(narrow.long(), wide)


@pytest.mark.parametrize(
    ("padded", "window", "shift"),
    [
        ((32, 56, 56), (8, 7, 7), (4, 3, 3)),
        ((8, 7, 7), (8, 7, 7), (0, 3, 3)),
        ((4, 14, 14), (2, 7, 7), (1, 0, 3)),
    ],
)
def test_shift_regions_give_torchvisions_shift_mask(padded, window, shift) -> None:
    from torchvision.models.video.swin_transformer import _compute_attention_mask_3d

    expected = _compute_attention_mask_3d(torch.zeros(1), padded, window, shift)
    regions = shift_regions(padded, window, shift)
    assert torch.equal((regions[:, None, :] != regions[:, :, None]).float() * -100.0, expected)


def test_inference_in_chunks_gives_the_same_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    # without gradients the attention runs a few windows at a time and the MLP a few frames at a time;
    # tiny budgets force many uneven chunks. The output must be the whole-tensor computation's up to
    # float rounding (matrix products over fewer rows may round differently: ~2e-7 relative measured)
    torch.manual_seed(0)
    model = VideoSwinBackbone(
        embed_dim=24, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4], window_size=[4, 7, 7]
    )
    model.eval()
    for attention in _gated(model):
        attention.fragment_position_bias_table.data.normal_()
    x = torch.randn(2, 3, 16, 224, 224)
    with torch.enable_grad():
        whole = model(x).detach()
    monkeypatch.setattr(GatedWindowAttention3d, "inference_chunk_elements", 250_000)  # 3 windows, then 1
    monkeypatch.setattr(VideoSwinBackbone, "inference_chunk_elements", 2_000_000)  # stage 0: 3 + 3 + 2 frames
    with torch.inference_mode():
        chunked = model(x)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5 * whole.abs().max().item())
