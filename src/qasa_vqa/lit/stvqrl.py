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
"""

from __future__ import annotations

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn

from qasa_vqa.losses import gaussian_contrastive_loss
from qasa_vqa.models.swin3d import VideoSwinBackbone

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
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["backbone"])
        self.backbone = backbone
        self.projection = nn.Conv1d(backbone.num_features, projection_dim, kernel_size=1)
        with torch.random.fork_rng(devices=[]):  # a seeded random projection, whatever the global state
            torch.manual_seed(projection_seed)
            self.projection.reset_parameters()
        self.projection.requires_grad_(learn_projection)

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
        loss, stats = gaussian_contrastive_loss(
            self._tokens(batch["view1"]),
            self._tokens(batch["view2"]),
            tau=options.tau,
            ridge=options.ridge,
            solver=options.solver,
        )
        size = batch["view1"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        for name, value in stats.items():
            self.log(f"train/{name}", value, batch_size=size)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=size)
        return loss

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
