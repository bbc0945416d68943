"""Bad numbers never reach the weights: all-equal predictions, NaN / inf views and MOS, inf gradients.

Under ``loss.nonfinite=skip`` a non-finite step changes nothing (weights, optimiser state), is counted in
``train/skipped_steps`` and named in a warning, while the schedule and ``global_step`` advance; under
``stop`` the run ends with a diagnosis naming the step, the term, the inputs and the videos. Both
training systems (QASA-VQA's manual optimisation, ST-VQRL's automatic one) are covered; the DDP test
(slow) checks that two ranks take the same decision when only one of them sees the NaN.

Run as a script under ``torchrun`` this file is also that test's worker (:func:`_ddp_worker`).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import socket
import subprocess
import sys
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader, default_collate

from qasa_vqa.lit.qasa import NonFiniteLossError, QASASemiSupervisedModule
from qasa_vqa.lit.schedule import WarmupCosine
from qasa_vqa.lit.stvqrl import STVQRLPretrainModule
from qasa_vqa.losses import plcc_loss
from qasa_vqa.models.clip_quality import build_clip_quality
from qasa_vqa.models.factory import build_qasa_model
from qasa_vqa.models.swin3d import VideoSwinBackbone

TINY_BACKBONE = {"embed_dim": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1], "window_size": [2, 7, 7],
                 "drop_path": 0.0}  # fmt: skip
B, T = 4, 4  # videos per batch; frames of the fragment views (the resized views take 2 and 1: cheaper)
NAN, INF = float("nan"), float("inf")
# a flat learning rate: runs with and without skipped steps then see the same rate at their good steps
FLAT = partial(SimpleNamespace, factor=lambda iteration: 1.0)


def _model(seed: int = 0):
    torch.manual_seed(seed)
    clip = build_clip_quality("tiny", pretrained=None)
    return build_qasa_model(TINY_BACKBONE, clip, head={"hidden_channels": 8, "dropout": 0.0}, seed=seed)


def _item(generator: torch.Generator, part: str, index: int) -> dict[str, Any]:
    item: dict[str, Any] = {
        "frag_v": torch.randn(3, T, 112, 112, generator=generator),
        "frag_a": torch.randn(3, T, 112, 112, generator=generator),
        "resize_v": torch.randn(2, 3, 224, 224, generator=generator),
        "resize_a": torch.randn(1, 3, 224, 224, generator=generator),
        "path": f"{part}/v{index}.mp4",
    }
    if part == "labelled":
        item["mos"] = torch.rand((), generator=generator)
    return item


def _items(batches: int, poison: dict[int, tuple[str, str, float]] | None = None) -> dict[str, list]:
    """``batches`` batches of B labelled and B unlabelled items; ``poison[b] = (part, key, value)`` writes
    ``value`` into one element of ``key`` of the first item of batch ``b``'s ``part``."""
    generator = torch.Generator().manual_seed(0)
    items = {
        part: [_item(generator, part, i) for i in range(batches * B)] for part in ("labelled", "unlabelled")
    }
    for batch, (part, key, value) in (poison or {}).items():
        tensor = items[part][batch * B][key]
        tensor.view(-1)[0] = value
    return items


def _loaders(items: dict[str, list], keep: list[int] | None = None) -> CombinedLoader:
    """The items' batches in order (only the batches ``keep`` when given)."""
    loaders = {}
    for part, data in items.items():
        chosen = data if keep is None else [x for b in keep for x in data[b * B : (b + 1) * B]]
        loaders[part] = DataLoader(chosen, batch_size=B)
    return CombinedLoader(loaders, mode="max_size_cycle")


def _fit(module, loaders, steps: int, **options) -> Trainer:
    trainer = Trainer(accelerator="cpu", max_steps=steps, max_epochs=10, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      **options)  # fmt: skip
    trainer.fit(module, train_dataloaders=loaders)
    return trainer


def _snapshot(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def _same(before: dict[str, torch.Tensor], module) -> bool:
    return all(torch.equal(before[k], v) for k, v in module.named_parameters())


def _finite(module) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in module.parameters())


def _optimisers(module) -> list:
    optimizers = module.optimizers()
    return optimizers if isinstance(optimizers, list) else [optimizers]


# ---------------------------------------------------------------------------------------- all equal


def test_plcc_loss_of_all_equal_predictions_is_finite() -> None:
    """PLCC is undefined at std 0; FAST-VQA's std + 1e-8 gives a finite loss and finite gradients."""
    a = torch.full((4,), 0.5, requires_grad=True)
    y = torch.tensor([0.1, 0.5, 0.2, 0.9])
    loss = plcc_loss(a, y)
    loss.backward()
    assert loss.item() == pytest.approx(0.25)  # rho = 0: (1 - 0) / 4 + (1 - 0) / 8 of the standardised terms
    assert torch.isfinite(a.grad).all()
    assert plcc_loss(a.detach(), a.detach()).item() == 0.0


def test_all_equal_predictions_train_with_finite_weights() -> None:
    """Every video of each batch identical, so both models predict one value per batch (std 0): the
    steps are taken (not mistaken for non-finite ones) and the weights stay finite."""
    items = _items(1)
    for part in items.values():
        for i, item in enumerate(part):
            first = part[(i // B) * B]
            item.update({k: first[k].clone() for k in ("frag_v", "frag_a", "resize_v", "resize_a")})
    module = QASASemiSupervisedModule(_model(), schedule=FLAT, epochs=1)
    batch = default_collate(items["labelled"][:B])
    with torch.no_grad():
        module.model.eval()
        assert module.model.stvqrl.score(batch["frag_v"]).std() < 1e-6  # the premise: all equal
        assert module.model.clip.video_quality(batch["resize_v"]).std() < 1e-6
    before = _snapshot(module)
    trainer = _fit(module, _loaders(items), steps=1)
    assert module.skipped_steps == 0 and trainer.global_step == 1
    assert _finite(module) and not _same(before, module)


# ---------------------------------------------------------------------------------------- NaN / inf


@pytest.mark.parametrize(
    ("part", "key", "value", "terms"),
    [
        ("labelled", "mos", NAN, ("gt_stvqrl=nan", "gt_clip=nan")),
        ("labelled", "frag_v", NAN, ("gt_stvqrl=nan", "primary=nan")),
        ("unlabelled", "resize_a", INF, ("auxiliary=nan", "eps_h=nan")),
    ],
)
def test_a_non_finite_input_skips_the_step_and_changes_nothing(
    part: str, key: str, value: float, terms: tuple[str, ...], caplog: pytest.LogCaptureFixture
) -> None:
    schedule = partial(WarmupCosine, warmup_epochs=1, first_step_zero=False)  # the real schedule
    module = QASASemiSupervisedModule(_model(), schedule=schedule, epochs=2)
    before = _snapshot(module)
    with caplog.at_level(logging.WARNING, logger="qasa_vqa.lit.qasa"):
        trainer = _fit(module, _loaders(_items(1, {0: (part, key, value)})), steps=1)
    assert _same(before, module)  # no optimiser moved anything, weight decay included
    assert all(not optimizer.optimizer.state for optimizer in _optimisers(module))  # nor built moments
    assert module.skipped_steps == 1 and float(trainer.callback_metrics["train/skipped_steps"]) == 1
    assert trainer.global_step == 1  # the iteration is counted ...
    assert all(s.last_epoch == 1 for s in module.lr_schedulers())  # ... and the schedule advanced
    assert "train/gt" not in trainer.callback_metrics  # the NaN terms were not logged
    warning = caplog.text
    assert "skipped training step 0 (epoch 0, batch 0)" in warning
    assert all(term in warning for term in terms), warning
    assert f"non-finite inputs: {part}.{key}: 1 of " in warning
    assert "labelled: labelled/v0.mp4, labelled/v1.mp4" in warning  # the batch's videos
    checkpoint: dict[str, Any] = {}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["skipped_steps"] == 1  # a resumed run continues the count


def test_skipped_steps_are_counted_and_the_good_steps_learn_as_without_them() -> None:
    """Batches 0 and 2 of 3 hold NaN / inf: 2 skipped steps, and the weights equal those of a run that only
    saw batch 1 (same rate, same AdamW step count): a skipped step leaves no trace."""
    poison = {0: ("labelled", "frag_a", NAN), 2: ("unlabelled", "frag_v", INF)}
    items = _items(3, poison)
    module = QASASemiSupervisedModule(_model(), schedule=FLAT, epochs=1)
    trainer = _fit(module, _loaders(items), steps=3)
    assert module.skipped_steps == 2 and trainer.global_step == 3
    assert float(trainer.callback_metrics["train/skipped_steps"]) == 2
    reference = QASASemiSupervisedModule(_model(), schedule=FLAT, epochs=1)
    _fit(reference, _loaders(items, keep=[1]), steps=1)
    assert _finite(module)
    for (name, value), expected in zip(module.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(value, expected, rtol=0, atol=0, msg=name)


def test_the_stop_policy_ends_the_run_with_a_diagnosis() -> None:
    module = QASASemiSupervisedModule(_model(), schedule=FLAT, epochs=1, nonfinite="stop")
    before = _snapshot(module)
    with pytest.raises(NonFiniteLossError) as caught:
        _fit(module, _loaders(_items(1, {0: ("labelled", "mos", NAN)})), steps=1)
    message = str(caught.value)
    assert message.startswith("training step 0 (epoch 0, batch 0): non-finite primary=nan")
    assert "gt=nan" in message
    assert "labelled.mos: 1 of 4 values non-finite" in message
    assert "labelled/v0.mp4, labelled/v1.mp4, labelled/v2.mp4, labelled/v3.mp4" in message
    assert "loss.nonfinite=stop; loss.nonfinite=skip skips" in message
    assert _same(before, module)  # stopped before any optimiser step
    with pytest.raises(ValueError, match="nonfinite"):
        QASASemiSupervisedModule(_model(), nonfinite="ignore")  # type: ignore[arg-type]


def test_a_non_finite_gradient_of_a_finite_loss_is_caught(caplog: pytest.LogCaptureFixture) -> None:
    module = QASASemiSupervisedModule(_model(), schedule=FLAT, epochs=1)
    weight = list(module.model.stvqrl.vqa_head.parameters())[-1]
    name = next(n for n, p in module.model.named_parameters() if p is weight)
    weight.register_hook(lambda grad: grad * INF)  # the loss stays finite, one gradient overflows
    before = _snapshot(module)
    with caplog.at_level(logging.WARNING, logger="qasa_vqa.lit.qasa"):
        _fit(module, _loaders(_items(1)), steps=1)
    assert module.skipped_steps == 1 and _same(before, module)
    assert f"non-finite gradient of {name}" in caplog.text


# ---------------------------------------------------------------------------------------- ST-VQRL


def _pretrain_module(**options) -> STVQRLPretrainModule:
    torch.manual_seed(0)
    backbone = VideoSwinBackbone(
        embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=[2, 7, 7]
    )
    return STVQRLPretrainModule(backbone, projection_dim=4, tau=1.0, lr=1e-3, **options)


def _scenes(batches: int, poison: dict[int, float] | None = None) -> DataLoader:
    generator = torch.Generator().manual_seed(1)
    items = [
        {
            "view1": torch.randn(3, 3, 4, 64, 64, generator=generator),
            "view2": torch.randn(3, 3, 4, 64, 64, generator=generator),
            "scene": f"s{i}.mp4",
        }
        for i in range(2 * batches)
    ]
    for batch, value in (poison or {}).items():
        items[2 * batch]["view1"][0, 0, 0, 0, 0] = value
    return DataLoader(items, batch_size=2)


def test_pretraining_skips_a_non_finite_step(caplog: pytest.LogCaptureFixture) -> None:
    module = _pretrain_module()
    before = _snapshot(module)
    with caplog.at_level(logging.WARNING, logger="qasa_vqa.lit.stvqrl"):
        trainer = _fit(module, _scenes(2, {0: NAN}), steps=1)
    assert _same(before, module) and not module.optimizers().optimizer.state
    assert module.skipped_steps == 1 and float(trainer.callback_metrics["train/skipped_steps"]) == 1
    assert trainer.global_step == 1 and module.lr_schedulers().last_epoch == 1
    text = caplog.text
    assert "skipped training step 0 (epoch 0, batch 0): non-finite tokens of view1=" in text
    assert "view1: 1 of" in text and "batch: s0.mp4, s1.mp4" in text
    trainer = _fit(module, _scenes(2, {0: INF}), steps=2)  # then a good step does move the weights
    assert module.skipped_steps == 2 and _finite(module) and not _same(before, module)


def test_pretraining_stop_policy() -> None:
    module = _pretrain_module(nonfinite="stop")
    with pytest.raises(NonFiniteLossError, match=r"training step 0 .*tokens of view1=.*s0\.mp4, s1\.mp4"):
        _fit(module, _scenes(1, {0: NAN}), steps=1)


# ---------------------------------------------------------------------------------------- DDP (slow)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize(("scope", "scaler"), [("rank", True), ("global", False)])
def test_ddp_ranks_skip_together(scope: str, scaler: bool, tmp_path: Path) -> None:
    """Two gloo ranks; only rank 1's second batch holds a NaN MOS. With the per-rank PLCC scope rank 0's
    own loss is finite, yet both ranks skip that step (no deadlock, no divergence). ``scaler``: the ranks
    behave as under an fp16 grad scaler, which leaves gradients to the scaler, so rank 0 learns of the
    NaN only through the decision reduced over ranks (DDP's averaged gradients would tell it otherwise)."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
               "127.0.0.1", "--master_port", str(_free_port()), __file__, "--out", str(tmp_path),
               "--scope", scope, *(["--scaler"] if scaler else [])]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for record in ranks:
        assert record["skipped_steps"] == 1 and record["global_step"] == 3
        assert all(torch.isfinite(v).all() for v in record["params"].values())
    for key, value in ranks[0]["params"].items():
        assert torch.equal(value, ranks[1]["params"][key]), key  # the ranks did not diverge


def _ddp_worker() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--scope", default="rank")
    parser.add_argument("--scaler", action="store_true", help="check losses only, as under fp16")
    args = parser.parse_args()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    items = _items(3 * world)
    if rank == 1:  # only this rank's second batch is bad
        items["labelled"][(world * 1 + rank) * B]["mos"].fill_(NAN)
    shares = {part: [x for b in range(rank, 3 * world, world) for x in data[b * B : (b + 1) * B]]
              for part, data in items.items()}  # fmt: skip
    module = QASASemiSupervisedModule(_model(), schedule=FLAT, epochs=1, plcc_scope=args.scope)
    if args.scaler:
        module._scaler = lambda: object()  # type: ignore[method-assign]
    trainer = _fit(
        module, _loaders(shares), steps=3, devices=world, strategy="ddp", use_distributed_sampler=False
    )
    params = {k: v.detach().clone() for k, v in module.model.state_dict().items()}
    record = {"skipped_steps": module.skipped_steps, "global_step": trainer.global_step, "params": params}
    torch.save(record, args.out / f"rank{rank}.pt")
    assert not math.isnan(sum(float(v.sum()) for v in params.values()))


if __name__ == "__main__":
    _ddp_worker()
