"""One process of the DDP checks in ``test_ddp.py`` (run under torchrun), or the single-process reference.

The tiny training configuration (``model=tiny clip=demo``, composed from ``conf/train.yaml``) is built
with a fixed seed; then:

1. ``validate``: the generated evaluation set (an odd number of videos) through the real datamodule;
   the logged metrics and the videos this process scored are recorded.
2. ``fit`` for ``--steps`` steps per PLCC scope (``global``, then ``rank``), each from the same fresh
   model, on fixed tensor batches: under DDP rank ``r`` takes items ``r, r + W, ...`` of every global batch
   of ``W * batch`` items; the single process (``--batch 2B``) takes each global batch in the gathered
   order (rank 0's items, then rank 1's), so its batches are the concatenated ones. Every step's losses,
   errors and mask are recorded, with the first step's gradients and the final parameters.

Writes ``<out>/rank<r>.json`` and ``<out>/rank<r>_<scope>.pt`` (``single`` instead of ``rank<r>`` for the
reference).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from lightning.pytorch import Callback, seed_everything
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from qasa_vqa.data.datamodules import SemiSupervisedDataModule
from qasa_vqa.lit.run import build_trainer
from qasa_vqa.train import build_module

CONF = Path(__file__).resolve().parents[2] / "conf"
FRAMES = 8  # the tiny twin's training views: 4 segments x 2 frames
RECORDED = ("primary", "auxiliary", "gt", "cons", "stab", "eps_l", "eps_h", "mask_rate")


def _item(generator: torch.Generator, labelled: bool) -> dict[str, torch.Tensor]:
    item = {
        "frag_v": torch.randn(3, FRAMES, 112, 112, generator=generator),
        "frag_a": torch.randn(3, FRAMES, 112, 112, generator=generator),
        "resize_v": torch.randn(FRAMES, 3, 224, 224, generator=generator),
        "resize_a": torch.randn(FRAMES // 4, 3, 224, 224, generator=generator),
    }
    if labelled:
        item["mos"] = torch.rand((), generator=generator)
    return item


class _GatheredOrder(Sampler[int]):
    """The single process's order: each global batch as DDP's ranks hold it, rank 0's part first."""

    def __init__(self, size: int, global_batch: int, world: int) -> None:
        self.order = [
            start + offset
            for start in range(0, size, global_batch)
            for rank in range(world)
            for offset in range(rank, global_batch, world)
        ]

    def __iter__(self):
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


def _loaders(items: int, batch: int, world: int, rank: int, single_of: int) -> CombinedLoader:
    loaders = {}
    for name, seed, labelled in (("labelled", 1, True), ("unlabelled", 2, False)):
        generator = torch.Generator().manual_seed(seed)
        data = [_item(generator, labelled) for _ in range(items)]
        if world > 1:
            sampler: Sampler[int] = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=False)
        else:
            sampler = _GatheredOrder(items, batch, single_of)
        loaders[name] = DataLoader(data, batch_size=batch, sampler=sampler, drop_last=True)
    return CombinedLoader(loaders, mode="max_size_cycle")


class _FirstGradients(Callback):
    """Every parameter's gradient of the first step, as the optimisers see it (after DDP's mean)."""

    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if not self.grads:
            self.grads = {
                name: p.grad.detach().clone()
                for name, p in pl_module.model.named_parameters()
                if p.grad is not None
            }


class _Seen(Callback):
    """The paths of the evaluation videos this process scored."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if batch is not None:
            self.paths.extend(str(p) for p in batch.get("path", []))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=3)
    parser.add_argument("--single-of", type=int, default=2, help="the world size a single process stands for")
    args = parser.parse_args()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    name = f"rank{rank}" if world > 1 else "single"
    trainer_group = "ddp_cpu" if world > 1 else "cpu"
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[
                f"trainer={trainer_group}",
                f"trainer.devices={world}" if world > 1 else "trainer.devices=1",
                "paths.stvqrl_checkpoint=null",
                "model.head.dropout=0.0",  # dropout draws differ between processes: compare the method itself
                f"paths.output_dir={args.out}",
                "seed=0",
            ],
        )
    record: dict[str, Any] = {"world": world, "rank": rank}
    common = {"max_epochs": 1, "max_steps": args.steps, "enable_progress_bar": False,
              "enable_model_summary": False, "enable_checkpointing": False, "num_sanity_val_steps": 0,
              "use_distributed_sampler": False}  # fmt: skip

    # 1. evaluation of an odd-sized set through the real datamodule (split file written by rank 0 only)
    seed_everything(0)
    module = build_module(cfg)
    datamodule = SemiSupervisedDataModule(
        {"manifest": str(args.manifest)},
        n_labelled=2,
        n_validation=5,
        n_unlabelled=0,
        split_dir=args.out / "splits",
        views=dict(cfg.data.views),
        batch_size=1,
        num_workers=0,
    )
    seen = _Seen()
    trainer = build_trainer(cfg.trainer, args.out / name, logger=None, callbacks=[seen], **common)
    (metrics,) = trainer.validate(module, datamodule=datamodule, verbose=False)
    record["validate"] = {key: float(value) for key, value in metrics.items()}
    record["validated_paths"] = seen.paths

    # 2. a few training steps per PLCC scope, each from the same fresh model
    for scope in ("global", "rank"):
        seed_everything(0)
        module = build_module(cfg)
        module.hparams.plcc_scope = scope
        steps: list[dict[str, float]] = []
        compute = module.compute_losses

        def recording(batch: dict[str, Any], compute=compute, steps=steps) -> dict[str, torch.Tensor]:
            losses = compute(batch)
            steps.append({key: float(losses[key].detach()) for key in RECORDED})
            return losses

        module.compute_losses = recording  # type: ignore[method-assign]
        first = _FirstGradients()
        trainer = build_trainer(cfg.trainer, args.out / name, logger=None, callbacks=[first], **common)
        items = args.steps * args.batch * (world if world > 1 else 1)
        trainer.fit(module, train_dataloaders=_loaders(items, args.batch, world, rank, args.single_of))
        record[scope] = steps
        params = {k: v.detach().cpu() for k, v in module.model.state_dict().items()}
        torch.save({"params": params, "grads": first.grads}, args.out / f"{name}_{scope}.pt")
    (args.out / f"{name}.json").write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
