"""The QASA-VQA training step: optimisers, stop-gradients, the transfer mask, ablation switches."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader

from qasa_vqa.lit.qasa import QASASemiSupervisedModule
from qasa_vqa.lit.schedule import WarmupCosine
from qasa_vqa.losses import plcc_loss
from qasa_vqa.models.clip_quality import build_clip_quality
from qasa_vqa.models.factory import build_qasa_model

TINY_BACKBONE = {"embed_dim": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1], "window_size": [2, 7, 7],
                 "drop_path": 0.0}  # fmt: skip
B, T = 4, 4


def _model(seed: int = 0):
    torch.manual_seed(seed)
    clip = build_clip_quality("tiny", pretrained=None)
    return build_qasa_model(TINY_BACKBONE, clip, head={"hidden_channels": 8, "dropout": 0.0}, seed=seed)


def _views(generator: torch.Generator, labelled: bool) -> dict[str, torch.Tensor]:
    item = {
        "frag_v": torch.randn(3, T, 112, 112, generator=generator),
        "frag_a": torch.randn(3, T, 112, 112, generator=generator),
        "resize_v": torch.randn(T, 3, 224, 224, generator=generator),
        "resize_a": torch.randn(T // 2, 3, 224, 224, generator=generator),
    }
    if labelled:
        item["mos"] = torch.rand((), generator=generator)
    return item


def _batch(seed: int, unlabelled: bool = True) -> dict[str, dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    collate = torch.utils.data.default_collate
    batch = {"labelled": collate([_views(generator, True) for _ in range(B)])}
    if unlabelled:
        batch["unlabelled"] = collate([_views(generator, False) for _ in range(B)])
    return batch


def _loaders(unlabelled: bool = True) -> CombinedLoader:
    generator = torch.Generator().manual_seed(0)
    loaders = {"labelled": DataLoader([_views(generator, True) for _ in range(2 * B)], batch_size=B)}
    if unlabelled:
        loaders["unlabelled"] = DataLoader([_views(generator, False) for _ in range(2 * B)], batch_size=B)
    return CombinedLoader(loaders, mode="max_size_cycle")


def _fit(module: QASASemiSupervisedModule, steps: int, unlabelled: bool = True) -> None:
    trainer = Trainer(accelerator="cpu", max_steps=steps, max_epochs=10, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)  # fmt: skip
    trainer.fit(module, train_dataloaders=_loaders(unlabelled))


def _snapshot(module: QASASemiSupervisedModule) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.model.named_parameters()}


def _changed(before: dict[str, torch.Tensor], module: QASASemiSupervisedModule, prefix: str) -> bool:
    return any(
        not torch.equal(before[k], v) for k, v in module.model.named_parameters() if k.startswith(prefix)
    )


def test_both_optimisers_step_on_the_schedule() -> None:
    module = QASASemiSupervisedModule(_model(), schedule=partial(WarmupCosine, warmup_epochs=1), epochs=2)
    before = _snapshot(module)
    _fit(module, steps=1)  # the reference's first step runs at factor 0: nothing moves
    assert not _changed(before, module, "")
    module = QASASemiSupervisedModule(
        _model(), schedule=partial(WarmupCosine, warmup_epochs=1, first_step_zero=False), epochs=2
    )
    before, prompts = _snapshot(module), module.model.clip.prompt_features.clone()
    _fit(module, steps=2)
    for prefix in ("stvqrl.vqa_head.", "stvqrl.backbone.", "clip.visual."):
        assert _changed(before, module, prefix), prefix
    assert torch.equal(prompts, module.model.clip.prompt_features)  # the text side is frozen
    optimisers = module.optimizers()
    assert [g["weight_decay"] for g in optimisers[0].param_groups] == [0.05, 0.05]
    assert optimisers[1].param_groups[0]["weight_decay"] == 1e-3
    # two batches per epoch, warm-up of 2 steps: after 2 steps both are at the peak learning rate
    assert [g["lr"] for g in optimisers[0].param_groups] == pytest.approx([1e-3, 1e-4])
    assert optimisers[1].param_groups[0]["lr"] == pytest.approx(5e-6)


def test_one_branch_alone_and_supervised_only() -> None:
    module = QASASemiSupervisedModule(
        _model(), branches=["stvqrl"], schedule=partial(WarmupCosine, first_step_zero=False), epochs=2
    )
    before = _snapshot(module)
    _fit(module, steps=1, unlabelled=False)
    assert _changed(before, module, "stvqrl.") and not _changed(before, module, "clip.")
    assert not isinstance(module.optimizers(), list)  # one optimiser


def test_no_gradient_reaches_the_detached_target() -> None:
    module = QASASemiSupervisedModule(_model())
    losses = module.compute_losses(_batch(0))
    primary = [p for n, p in module.model.named_parameters() if n.startswith("stvqrl.")]
    clip = [p for n, p in module.model.named_parameters() if n.startswith("clip.")]
    for total, others in ((losses["primary"], clip), (losses["auxiliary"], primary)):
        grads = torch.autograd.grad(total, others, allow_unused=True, retain_graph=True)
        assert all(g is None or not g.any() for g in grads)
    own = torch.autograd.grad(losses["primary"], primary, allow_unused=True, retain_graph=True)
    assert any(g is not None and g.any() for g in own)


@pytest.mark.parametrize("less_consistent", ["primary", "auxiliary"])
def test_mask_follows_the_larger_consistency_error(
    less_consistent: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = QASASemiSupervisedModule(_model())
    consistent = torch.tensor([0.1, 0.4, 0.2, 0.9])
    shuffled = torch.tensor([0.9, 0.1, 0.4, 0.2])  # uncorrelated with the first view
    scores = {}
    for name in ("a_l", "b_l", "a_h", "b_h"):
        scores[name] = consistent.clone().requires_grad_(True)
    noisy = "b_l" if less_consistent == "primary" else "b_h"
    scores[noisy] = shuffled.clone().requires_grad_(True)
    monkeypatch.setattr(module, "_views", lambda batch: scores)
    losses = module.compute_losses(_batch(0))
    expected = 1.0 if less_consistent == "primary" else 0.0
    assert float(losses["mask_rate"]) == expected
    assert (float(losses["eps_l"]) > float(losses["eps_h"])) == (less_consistent == "primary")
    transfer = plcc_loss(scores["a_l"], scores["a_h"])
    assert float(losses["stab"]) == pytest.approx(float(transfer.detach()))  # the active term, whichever way


@pytest.mark.parametrize(("mode", "rate"), [("always", 1.0), ("never", 0.0)])
def test_fixed_mask_ablations(mode: str, rate: float) -> None:
    module = QASASemiSupervisedModule(_model(), mask_mode=mode)
    assert float(module.compute_losses(_batch(1))["mask_rate"]) == rate
    with pytest.raises(ValueError, match="mask_mode"):
        QASASemiSupervisedModule(_model(), mask_mode="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="branches"):
        QASASemiSupervisedModule(_model(), branches=["clip", "text"])


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    grads = []
    for checkpointing in (False, True):
        module = QASASemiSupervisedModule(_model(), gradient_checkpointing=checkpointing)
        module.model.train()
        losses = module.compute_losses(_batch(3))
        (losses["primary"] + losses["auxiliary"]).backward()
        grads.append({k: p.grad.clone() for k, p in module.model.named_parameters() if p.grad is not None})
    assert module.model.stvqrl.backbone.gradient_checkpointing
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for key in grads[0]:
        torch.testing.assert_close(grads[1][key], grads[0][key], rtol=1e-5, atol=1e-7, msg=key)


def test_bf16_mixed_precision_trains_with_finite_weights() -> None:
    schedule = partial(WarmupCosine, warmup_epochs=0.5, first_step_zero=False)
    module = QASASemiSupervisedModule(_model(), schedule=schedule, epochs=2)
    before = _snapshot(module)
    trainer = Trainer(accelerator="cpu", precision="bf16-mixed", max_steps=1, max_epochs=10, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(module, train_dataloaders=_loaders())
    assert _changed(before, module, "stvqrl.") and _changed(before, module, "clip.visual.")
    for name, parameter in module.model.named_parameters():
        assert parameter.dtype == torch.float32 and torch.isfinite(parameter).all(), name
