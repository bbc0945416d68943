"""STVQRLPretrainModule: ST-VQRL's self-supervised contrastive pretraining (docs/method.md section 2).

A batch holds ``view1`` / ``view2`` ``[B,K,3,T,H,W]``: K versions (the reference and K-1 distortions)
of B scenes, two temporal clips each. Every clip goes through the backbone (``[C,T',H',W']``), its
tokens through a 1x1 projection C -> 64 with ReLU, giving N = T'H'W' tokens of 64 dimensions; the loss
is :func:`qasa_vqa.losses.gaussian_contrastive_loss` (positives: the same version in the other view,
negatives: the other versions of the scene). Optimiser AdamW (lr 1e-4, weight decay 0.05) on the
backbone; cosine annealing to 1e-5 stepped every iteration over the whole run.

Deviations from the authors' script, by design: the projection is frozen random by default, as there
(it was left out of the optimiser), but it is saved in the checkpoint so a resumed run keeps it;
``learn_projection=True`` trains it. The cosine runs over exactly the steps that are trained (the script
ran 31 epochs on a 30-epoch schedule, section 8 item 20). No autograd anomaly detection (item 4).

Non-finite steps (``nonfinite``, ``loss.nonfinite``), as in :mod:`qasa_vqa.lit.qasa`: a step whose tokens,
loss or (without an fp16 grad scaler) gradients hold a NaN or an infinity is skipped (``"skip"``: its
gradients are dropped before the optimiser step, so nothing moves, the AdamW state included; counted in
``train/skipped_steps`` with a warning) or stops the run (``"stop"``: :class:`NonFiniteLossError` naming
the step, the term and the batch's scenes). Non-finite tokens never reach the Gaussian fit (whose SVD would
raise): the step's loss is then their sum, so the backward pass still runs on every rank. The decision is
reduced over DDP ranks; the schedule advances and ``global_step`` counts the skipped iteration.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn

from qasa_vqa.lit.qasa import (
    _OTHER_RANK,
    _STOP_HINT,
    NonFiniteLossError,
    NonFinitePolicy,
    any_rank,
    diagnose_step,
    nonfinite_gradients,
    nonfinite_terms,
)
from qasa_vqa.losses import gaussian_contrastive_loss
from qasa_vqa.models.swin3d import VideoSwinBackbone

log = logging.getLogger(__name__)

__all__ = ["STVQRLPretrainModule"]


class STVQRLPretrainModule(LightningModule):
    """The backbone, the token projection and the contrastive loss (module docstring)."""

    def __init__(
        self,
        backbone: VideoSwinBackbone,
        *,
        projection_dim: int = 64,
        learn_projection: bool = False,
        tau: float = 0.1,
        ridge: float = 1e-4,
        solver: str = "pinv",
        lr: float = 1e-4,
        weight_decay: float = 0.05,
        min_lr: float = 1e-5,
        projection_seed: int = 0,
        nonfinite: NonFinitePolicy = "skip",
    ) -> None:
        super().__init__()
        if nonfinite not in ("skip", "stop"):
            raise ValueError(f"nonfinite (loss.nonfinite) must be skip or stop, got {nonfinite!r}")
        self.save_hyperparameters(ignore=["backbone"])
        self.backbone = backbone
        self.projection = nn.Conv1d(backbone.num_features, projection_dim, kernel_size=1)
        with torch.random.fork_rng(devices=[]):  # a seeded random projection, whatever the global state
            torch.manual_seed(projection_seed)
            self.projection.reset_parameters()
        self.projection.requires_grad_(learn_projection)
        self.skipped_steps = 0  # training steps skipped for non-finite values, over the whole run
        self._pending: tuple[list[str], int, Any] | None = None  # this step's problems, batch index, batch

    def embed(self, clips: Tensor) -> Tensor:
        """Clips ``[M,3,T,H,W]`` -> token sets ``[M, N, projection_dim]``."""
        features = self.backbone(clips).flatten(2)  # M, C, N
        return torch.relu(self.projection(features)).transpose(1, 2)

    def _tokens(self, view: Tensor) -> Tensor:
        scenes, versions = view.shape[:2]
        tokens = self.embed(view.flatten(0, 1))
        return tokens.view(scenes, versions, *tokens.shape[1:])

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        options = self.hparams
        tokens1, tokens2 = self._tokens(batch["view1"]), self._tokens(batch["view2"])
        problems = nonfinite_terms({"tokens of view1": tokens1, "tokens of view2": tokens2})
        stats: dict[str, Tensor] = {}
        if problems:  # the fit's SVD would raise; a loss that still reaches every parameter's gradient
            loss = tokens1.sum() + tokens2.sum()
        else:
            loss, stats = gaussian_contrastive_loss(
                tokens1, tokens2, tau=options.tau, ridge=options.ridge, solver=options.solver
            )
            problems = nonfinite_terms({"loss": loss, **stats})
        if any_rank(bool(problems), self.device) and not problems:
            problems = [_OTHER_RANK]
        # what a skip's diagnosis needs; the whole batch (its inputs are searched) only when skipping
        self._pending = (problems, batch_idx, batch if problems else {"scene": batch.get("scene")})
        size = batch["view1"].shape[0]
        if not problems:  # a skipped step logs no loss: it would turn the epoch means into NaN
            self.log("train/loss", loss, prog_bar=True, batch_size=size)
            for name, value in stats.items():
                self.log(f"train/{name}", value, batch_size=size)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=size)
        return loss  # backward runs on every rank, finite or not (DDP reduces the gradients of all)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Skip (drop every gradient, so the step moves nothing) or stop on a non-finite step."""
        pending, self._pending = self._pending, None
        problems, batch_idx, batch = pending if pending is not None else ([], -1, None)
        if not problems and getattr(self.trainer.precision_plugin, "scaler", None) is None:
            # the same on every rank: DDP has averaged the gradients already
            problems = nonfinite_gradients(self.named_parameters())
        if problems:
            text = diagnose_step(self.global_step, self.current_epoch, batch_idx, problems, batch)
            if self.hparams.nonfinite == "stop":
                raise NonFiniteLossError(f"{text} ({_STOP_HINT})")
            for group in optimizer.param_groups:
                for parameter in group["params"]:
                    parameter.grad = None  # AdamW leaves a parameter without a gradient untouched
            self.skipped_steps += 1
            log.warning("skipped %s (%d skipped so far; loss.nonfinite=skip)", text, self.skipped_steps)
        self.log("train/skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False, batch_size=1)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["skipped_steps"] = self.skipped_steps

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.skipped_steps = int(checkpoint.get("skipped_steps", 0))

    def on_train_start(self) -> None:
        if self.global_step:
            print(f"resumed at global step {self.global_step} (epoch {self.current_epoch})", flush=True)

    def configure_optimizers(self):
        options = self.hparams
        parameters = [p for p in self.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(parameters, lr=options.lr, weight_decay=options.weight_decay)
        steps = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps, eta_min=options.min_lr)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
