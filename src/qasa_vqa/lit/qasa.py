"""QASASemiSupervisedModule: QASA-VQA's CLIP-guided semi-supervised training (docs/method.md section 4).

A thin system around :class:`~qasa_vqa.models.qasa.QASAModel` and the pure losses of
:mod:`qasa_vqa.losses`. One training step takes a labelled batch (``frag_v``, ``frag_a``, ``resize_v``,
``resize_a``, ``mos``) and, unless training is supervised-only, an unlabelled batch of the same views:

* the primary Q_L (ST-VQRL backbone + VQA head) scores its two fragment views, ``a_L = q_L(T')``,
  ``b_L = q_L(T'')``; the auxiliary Q_H (CLIP visual tower + frozen prompt features) its two resized
  views, ``a_H = q_H(S)``, ``b_H = q_H(S^F)``;
* labelled: ``l(a, y) + w_cons l(a, b)`` for each model; unlabelled: each model's consistency term and
  the transfer term, routed by the mask ``m = [eps_L > eps_H]`` (:func:`qasa_vqa.losses.unlabelled_losses`);
* manual optimisation with the reference's two AdamW optimisers (primary: head lr 1e-3, backbone lr
  1e-4, weight decay 0.05; CLIP: visual tower lr 5e-6, weight decay 1e-3), both on the warm-up + cosine
  factor of :mod:`qasa_vqa.lit.schedule` stepped every iteration. The two totals have disjoint graphs
  (the transfer targets are detached), so one backward pass of their sum gives each optimiser exactly
  the gradients of its own total. Optional gradient clipping (per optimiser, by norm). Lightning's
  ``global_step`` counts iterations (under manual optimisation it would count every optimiser's step;
  only the last one's is counted), so checkpoints every N steps and resuming mean training iterations.

Non-finite steps (``nonfinite``, ``loss.nonfinite`` in the config): after the backward pass every step
checks its loss terms and, without an fp16 grad scaler (which skips overflowing steps itself), its
gradients. If any is NaN or infinite (NaN in a view or a MOS, an overflow), ``"skip"`` (the default)
zeroes the gradients and steps no optimiser, so the weights and the optimisers' state stay exactly as
they were; the step is counted in ``train/skipped_steps`` (the run's total, kept in checkpoints) and a
warning names the step, the terms and the batch's videos. ``"stop"`` raises
:class:`NonFiniteLossError` with the same diagnosis. A skipped iteration is still an iteration: the
learning-rate schedule advances and ``global_step`` counts it, so checkpoints, resuming and the schedule
keep their meaning. Under DDP the decision is reduced over ranks (any rank's non-finite value makes every
rank skip), so the ranks never diverge or wait on each other. A batch whose predictions are all equal is
not caught: its PLCC is undefined, but the loss (``std + 1e-8``) and its gradients stay finite.

Ablations are options, not code paths of their own: ``w_stab=0`` (no transfer), ``w_cons=0`` (no
consistency), ``mask_mode`` ``"always"`` / ``"never"`` (fixed transfer direction), ``branches`` with
one branch (the other is neither trained nor used as a teacher), and a datamodule without unlabelled
data (supervised-only).

Under DDP (docs/method.md section 4.11) the batch statistics stay those of the method: with
``plcc_scope="global"`` (the default) every score vector and the labels are gathered from all ranks with
gradients (:func:`qasa_vqa.distributed.gather_with_grad`) before any loss, so each rank computes the
losses and the transfer mask of the global batch and the averaged gradients equal those of one process
on the concatenated batch; with ``plcc_scope="rank"`` each rank correlates its own part of the batch
(the reference's statistic at its per-GPU batch size) and the consistency errors are averaged over ranks
before the mask, so every rank still makes the same transfer decision.

Validation and test score every configured set with deterministic test views and log SRCC, PLCC,
KRCC, ... per set and branch: ``val/<set>/stvqrl/srcc``, ``val/<set>/clip/srcc``, ``val/<set>/qasa/srcc``
(the combined score of the reference's inference), ``test/<set>/...`` likewise.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn

from qasa_vqa.distributed import gather_with_grad, is_distributed, mean_across_ranks
from qasa_vqa.errors import QasaVqaError
from qasa_vqa.lit.metrics import QualityMetrics
from qasa_vqa.lit.schedule import WarmupCosine
from qasa_vqa.losses import labelled_losses, plcc_loss, unlabelled_losses
from qasa_vqa.metrics import MetricInputError
from qasa_vqa.models.qasa import QASAModel

__all__ = [
    "BRANCHES",
    "NonFiniteLossError",
    "QASASemiSupervisedModule",
    "any_rank",
    "describe_batch",
    "diagnose_step",
    "nonfinite_gradients",
    "nonfinite_terms",
]

log = logging.getLogger(__name__)

BRANCHES = ("stvqrl", "clip")
SCORES = ("stvqrl", "clip", "qasa")  # what validation reports: each branch and the combined score
MaskMode = Literal["batch", "sample", "always", "never"]
PlccScope = Literal["global", "rank"]
OptimizerFactory = Callable[[Iterable[Any]], torch.optim.Optimizer]
# The reference's optimisers and schedule (docs/method.md 4.7); the head and backbone learning rates are separate
PRIMARY_OPTIMIZER: OptimizerFactory = partial(torch.optim.AdamW, weight_decay=0.05)
CLIP_OPTIMIZER: OptimizerFactory = partial(torch.optim.AdamW, lr=5e-6, weight_decay=1e-3)
SCHEDULE: Callable[..., WarmupCosine] = partial(WarmupCosine, warmup_epochs=2.5)
_LOGGED = ("srcc", "plcc", "krcc", "plcc_logistic", "rmse_logistic")
NonFinitePolicy = Literal["skip", "stop"]
_STOP_HINT = (
    "loss.nonfinite=stop; loss.nonfinite=skip skips such steps and counts them in train/skipped_steps"
)
_OTHER_RANK = "the loss or gradients of another process (this process's were finite)"


class NonFiniteLossError(QasaVqaError):
    """A training step with a NaN or infinite loss or gradient, under ``nonfinite="stop"``."""


def _show(value: Tensor) -> str:
    if value.numel() == 1:
        return f"{value.item():g}"
    bad = int((~torch.isfinite(value)).sum())
    return f"{bad} of {value.numel()} values non-finite"


def nonfinite_terms(values: Mapping[str, Any]) -> list[str]:
    """``"name=value"`` for every floating-point tensor of ``values`` holding a NaN or an infinity (one
    host synchronisation when all are finite)."""
    tensors = {k: v.detach() for k, v in values.items() if isinstance(v, Tensor) and v.is_floating_point()}
    if not tensors:
        return []
    flags = torch.stack([torch.isfinite(v).all() for v in tensors.values()])
    if bool(flags.all()):
        return []
    return [
        f"{name}={_show(value)}"
        for (name, value), ok in zip(tensors.items(), flags.tolist(), strict=True)
        if not ok
    ]


def nonfinite_gradients(named_parameters: Iterable[tuple[str, Tensor]], limit: int = 3) -> list[str]:
    """``"gradient of <name>"`` for the first ``limit`` parameters whose gradient holds a NaN or an
    infinity, and how many more (one host synchronisation when all are finite)."""
    named = [(name, p.grad) for name, p in named_parameters if p.grad is not None]
    if not named:
        return []
    flags = torch.stack([torch.isfinite(grad).all() for _, grad in named])
    if bool(flags.all()):
        return []
    bad = [name for (name, _), ok in zip(named, flags.tolist(), strict=True) if not ok]
    more = f" and {len(bad) - limit} more" if len(bad) > limit else ""
    return [f"gradient of {', '.join(bad[:limit])}{more}"]


def describe_batch(batch: Any, prefix: str = "") -> tuple[list[str], list[str]]:
    """What a batch holds that could explain a non-finite loss: its floating-point tensors with NaN or
    infinite values (``"labelled.mos: 1 of 4 values non-finite"``) and its videos (``"labelled: a.mp4,
    b.mp4"``, from ``path`` or ``scene`` fields)."""
    inputs: list[str] = []
    videos: list[str] = []
    if not isinstance(batch, Mapping):
        return inputs, videos
    for key, value in batch.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            more_inputs, more_videos = describe_batch(value, f"{name}.")
            inputs += more_inputs
            videos += more_videos
        elif (
            isinstance(value, Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all())
        ):
            inputs.append(f"{name}: {_show(value)}")
        elif key in ("path", "scene") and isinstance(value, list | tuple):
            videos.append(f"{prefix.rstrip('.') or 'batch'}: {', '.join(map(str, value))}")
    return inputs, videos


def any_rank(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True if ``flag`` is true on any process (every rank must call it); ``flag`` in one process."""
    if not is_distributed():
        return flag
    return bool(mean_across_ranks(torch.tensor(float(flag), device=device)) > 0)


def diagnose_step(step: int, epoch: int, batch_idx: int, problems: Sequence[str], batch: Any) -> str:
    """One paragraph on a non-finite step: where, which terms, which inputs, which videos."""
    inputs, videos = describe_batch(batch)
    text = f"training step {step} (epoch {epoch}, batch {batch_idx}): non-finite {'; '.join(problems)}"
    if inputs:
        text += f"; non-finite inputs: {'; '.join(inputs)}"
    if videos:
        text += f"; videos: {'; '.join(videos)}"
    return text


class QASASemiSupervisedModule(LightningModule):
    """The two models, their losses, optimisers and validation (module docstring)."""

    def __init__(
        self,
        model: QASAModel,
        *,
        primary_optimizer: OptimizerFactory = PRIMARY_OPTIMIZER,
        head_lr: float = 1e-3,
        backbone_lr: float = 1e-4,
        clip_optimizer: OptimizerFactory = CLIP_OPTIMIZER,
        schedule: Callable[..., WarmupCosine] = SCHEDULE,
        epochs: int = 40,
        w_cons: float = 1.0,
        w_stab: float = 1.0,
        mask_mode: MaskMode = "batch",
        plcc_scope: PlccScope = "global",
        branches: Sequence[str] = BRANCHES,
        gradient_clip_val: float | None = None,
        gradient_checkpointing: bool = False,
        val_bootstrap: int = 0,
        nonfinite: NonFinitePolicy = "skip",
    ) -> None:
        super().__init__()
        branches = tuple(branches)
        if nonfinite not in ("skip", "stop"):
            raise ValueError(f"nonfinite (loss.nonfinite) must be skip or stop, got {nonfinite!r}")
        if not branches or any(b not in BRANCHES for b in branches) or len(set(branches)) != len(branches):
            raise ValueError(f"branches must be a non-empty subset of {BRANCHES}, got {branches}")
        if mask_mode not in ("batch", "sample", "always", "never"):
            raise ValueError(f"mask_mode must be batch, sample, always or never, got {mask_mode!r}")
        if plcc_scope not in ("global", "rank"):
            raise ValueError(f"plcc_scope must be global or rank, got {plcc_scope!r}")
        self.save_hyperparameters(ignore=["model", "primary_optimizer", "clip_optimizer", "schedule"])
        self.model = model
        self.primary_optimizer, self.clip_optimizer, self.schedule = (
            primary_optimizer,
            clip_optimizer,
            schedule,
        )
        self.automatic_optimization = False
        self.branches = branches
        if gradient_checkpointing:
            model.stvqrl.backbone.gradient_checkpointing = True
            model.clip.set_grad_checkpointing(True)
        self.val_names: list[str] = []
        self.test_names: list[str] = []
        self.eval_metrics = nn.ModuleDict()
        self.skipped_steps = 0  # training steps skipped for non-finite values, over the whole run

    # ------------------------------------------------------------------ training

    def lr_schedule(self) -> WarmupCosine:
        """The schedule of this run, with ``I`` = training batches per epoch of the trainer's data."""
        trainer = self.trainer
        trainer.estimated_stepping_batches  # noqa: B018 -- sets the training data up, so the count is known
        per_epoch = trainer.num_training_batches
        iterations = int(per_epoch) if math.isfinite(per_epoch) and per_epoch > 0 else 1
        return self.schedule(iterations_per_epoch=iterations, epochs=self.hparams.epochs)

    def configure_optimizers(self) -> tuple[list[torch.optim.Optimizer], list[dict[str, Any]]]:
        """The primary's optimiser (head and backbone groups) and CLIP's, each on the schedule's LambdaLR;
        only those of the trained branches."""
        options = self.hparams
        optimizers = []
        if "stvqrl" in self.branches:
            primary = self.model.stvqrl
            groups = [
                {"params": list(primary.vqa_head.parameters()), "lr": options.head_lr},
                {"params": list(primary.backbone.parameters()), "lr": options.backbone_lr},
            ]
            optimizers.append(self.primary_optimizer(groups))
        if "clip" in self.branches:
            optimizers.append(self.clip_optimizer(self.model.clip.visual.parameters()))
        factor = self.lr_schedule().factor
        schedulers = [
            {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, factor), "interval": "step"}
            for optimizer in optimizers
        ]
        return optimizers, schedulers

    def _gathering(self) -> bool:
        return self.hparams.plcc_scope == "global" and is_distributed()

    def _views(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Each trained branch's scores of its two views: ``a_l, b_l`` and / or ``a_h, b_h``; under DDP
        with the global PLCC scope, those of every rank's videos (gathered with gradients)."""
        out = {}
        if "stvqrl" in self.branches:
            out["a_l"] = self.model.stvqrl.score(batch["frag_v"])
            out["b_l"] = self.model.stvqrl.score(batch["frag_a"])
        if "clip" in self.branches:
            out["a_h"] = self.model.clip.video_quality(batch["resize_v"])
            out["b_h"] = self.model.clip.video_quality(batch["resize_a"])
        if self._gathering():
            out = {key: gather_with_grad(value) for key, value in out.items()}
        return out

    def compute_losses(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """The losses of one step (no optimisation): ``primary`` and ``auxiliary`` totals with gradient,
        and the detached parts that are logged (``gt``, ``cons``, ``stab``, ``mask_rate``, ...)."""
        options = self.hparams
        labelled, unlabelled = batch["labelled"], batch.get("unlabelled")
        scores = self._views(labelled)
        y = gather_with_grad(labelled["mos"]) if self._gathering() else labelled["mos"]
        zero = y.new_zeros(())
        totals = {"primary": zero, "auxiliary": zero}
        parts: dict[str, Tensor] = {"gt": zero, "cons": zero}
        for branch, (a, b), total in (
            ("stvqrl", ("a_l", "b_l"), "primary"),
            ("clip", ("a_h", "b_h"), "auxiliary"),
        ):
            if branch in self.branches:
                terms = labelled_losses(scores[a], scores[b], y, options.w_cons)
                totals[total] = totals[total] + terms["total"]
                parts["gt"] = parts["gt"] + terms["gt"].detach()
                parts["cons"] = parts["cons"] + terms["cons"].detach()
                parts[f"gt_{branch}"] = terms["gt"].detach()
        if unlabelled is not None:
            u = self._views(unlabelled)
            if len(self.branches) == 2:
                mode = options.mask_mode
                terms = unlabelled_losses(
                    u["a_l"], u["b_l"], u["a_h"], u["b_h"], w_cons=options.w_cons, w_stab=options.w_stab,
                    mode=mode, reduce_errors=self._reduce_errors(),
                )  # fmt: skip
                totals["primary"] = totals["primary"] + terms["primary"]
                totals["auxiliary"] = totals["auxiliary"] + terms["auxiliary"]
                parts["cons"] = parts["cons"] + terms["cons_l"].detach() + terms["cons_h"].detach()
                parts |= {key: terms[key].detach() for key in ("eps_l", "eps_h", "mask_rate")}
                parts["stab"] = terms["transfer"]
            else:  # one branch: its own consistency on unlabelled videos, no teacher
                a, b = ("a_l", "b_l") if "stvqrl" in self.branches else ("a_h", "b_h")
                total = "primary" if "stvqrl" in self.branches else "auxiliary"
                cons = plcc_loss(u[a], u[b])
                totals[total] = totals[total] + options.w_cons * cons
                parts["cons"] = parts["cons"] + cons.detach()
        return totals | parts

    def _reduce_errors(self) -> Callable[[Tensor], Tensor] | None:
        """Per-rank losses under DDP: the consistency errors are averaged over ranks before the mask."""
        return mean_across_ranks if self.hparams.plcc_scope == "rank" and is_distributed() else None

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        losses = self.compute_losses(batch)
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        schedulers = self.lr_schedulers()
        schedulers = schedulers if isinstance(schedulers, list) else [schedulers]
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        total = losses["primary"] + losses["auxiliary"]
        self.manual_backward(total)  # on every rank, finite or not: DDP's gradient reduction needs them all
        problems = self._step_problems(losses)
        if problems:
            self._skip_step(batch, batch_idx, problems, optimizers)
        else:
            for position, optimizer in enumerate(optimizers):
                if self.hparams.gradient_clip_val:
                    self.clip_gradients(
                        optimizer,
                        gradient_clip_val=self.hparams.gradient_clip_val,
                        gradient_clip_algorithm="norm",
                    )
                if position < len(optimizers) - 1:
                    self._uncounted_step(optimizer)
                else:
                    optimizer.step()  # Lightning counts this one: global_step = training iterations
        with warnings.catch_warnings():  # a skipped first step: the schedule advances before any step
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
            for scheduler in schedulers:
                scheduler.step()  # every iteration, skipped or not: the schedule counts iterations
        size = batch["labelled"]["mos"].shape[0]
        self.log(
            "train/skipped_steps", float(self.skipped_steps), batch_size=size, on_step=True, on_epoch=False
        )
        if problems:  # nothing of a skipped step is logged: its terms would turn the epoch means into NaN
            return total.detach()
        logged = {f"train/{k}": v.detach() for k, v in losses.items() if k not in ("primary", "auxiliary")}
        logged |= {
            "train/loss_primary": losses["primary"].detach(),
            "train/loss_auxiliary": losses["auxiliary"].detach(),
        }
        logged["train/lr_factor"] = schedulers[0].get_last_lr()[0] / schedulers[0].base_lrs[0]
        # under DDP the mean over ranks (global scope: every rank holds the same values already)
        self.log_dict(logged, batch_size=size, on_step=True, on_epoch=True, sync_dist=is_distributed())
        return total.detach()

    def _scaler(self) -> Any:
        trainer = self._trainer
        return getattr(trainer.precision_plugin, "scaler", None) if trainer is not None else None

    def _step_problems(self, losses: Mapping[str, Tensor]) -> list[str]:
        """What is non-finite in this step (the loss terms; the gradients unless an fp16 grad scaler
        handles those), agreed over ranks: empty if every rank's step is finite."""
        problems = nonfinite_terms(losses)
        if not problems and self._scaler() is None:
            problems = nonfinite_gradients(self.model.named_parameters())
        if any_rank(bool(problems), self.device) and not problems:
            problems = [_OTHER_RANK]
        return problems

    def _skip_step(self, batch: Any, batch_idx: int, problems: Sequence[str], optimizers: list[Any]) -> None:
        """Stop with a diagnosis, or drop this step's gradients and count the iteration without a step."""
        text = diagnose_step(self.global_step, self.current_epoch, batch_idx, problems, batch)
        if self.hparams.nonfinite == "stop":
            raise NonFiniteLossError(f"{text} ({_STOP_HINT})")
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        self.skipped_steps += 1
        counted = optimizers[-1]
        if hasattr(counted, "_on_before_step"):
            # Lightning counts a manual-optimisation iteration when its optimiser steps; this one steps
            # nothing, so it makes the two calls that the step makes around it (global_step = iterations)
            counted._on_before_step()
            counted._on_after_step()
        log.warning("skipped %s (%d skipped so far; loss.nonfinite=skip)", text, self.skipped_steps)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["skipped_steps"] = self.skipped_steps

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.skipped_steps = int(checkpoint.get("skipped_steps", 0))

    def _uncounted_step(self, optimizer: Any) -> None:
        """Step an optimiser without advancing Lightning's step counter (which counts every optimiser
        step under manual optimisation): through the precision plugin's grad scaler when there is one, so
        fp16 still unscales and skips non-finite steps; the scaler's update follows the counted step."""
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        raw = getattr(optimizer, "optimizer", optimizer)
        if scaler is not None:
            scaler.step(raw)
        else:
            raw.step()

    # ------------------------------------------------------------------ validation and test

    def setup(self, stage: str) -> None:
        """One :class:`QualityMetrics` per evaluation set and score, named after the datamodule's sets."""
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        for kind in ("val", "test"):
            names = list(getattr(datamodule, f"{kind}_names", []) or [])
            for name in names:
                for score in SCORES:
                    key = f"{kind}__{name}__{score}"
                    if key not in self.eval_metrics:
                        self.eval_metrics[key] = QualityMetrics(bootstrap=self.hparams.val_bootstrap)
            setattr(self, f"{kind}_names", names)

    def _evaluate(self, kind: str, batch: dict[str, Any] | None, dataloader_idx: int) -> None:
        if batch is None or "frag" not in batch:  # every video of the batch failed to decode (logged by
            return  # the dataset, counted by the SkippedVideos callback)
        scores = self.model.scores(batch["frag"], batch["resize"])
        name = getattr(self, f"{kind}_names")[dataloader_idx]
        for score in SCORES:
            self.eval_metrics[f"{kind}__{name}__{score}"].update(scores[score].float(), batch["mos"])

    def _log_evaluation(self, kind: str) -> None:
        """Compute and log every set's metrics. Under DDP each rank scored its own share of each set
        (no padded repeats, possibly none at all), so every rank computes every metric of the stage: the
        computation gathers all ranks' predictions and must be entered by all of them."""
        logged = {}
        names = set(getattr(self, f"{kind}_names"))
        distributed = is_distributed()
        for key, metric in self.eval_metrics.items():
            stage, name, score = key.split("__")
            if stage != kind or name not in names or not (distributed or metric.update_called):
                continue
            try:
                with warnings.catch_warnings():  # a rank without videos of this set has no update
                    warnings.filterwarnings("ignore", message=".*was called before the ``update``")
                    values = metric.compute()
            except MetricInputError:  # fewer than 3 videos (a debug run): nothing to report
                metric.reset()
                continue
            logged |= {f"{kind}/{name}/{score}/{m}": values[m].float() for m in _LOGGED if m in values}
            metric.reset()
        if logged:
            self.log_dict(logged, sync_dist=False)

    def validation_step(self, batch: dict[str, Any] | None, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate("val", batch, dataloader_idx)

    def on_validation_epoch_end(self) -> None:
        self._log_evaluation("val")

    def test_step(self, batch: dict[str, Any] | None, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate("test", batch, dataloader_idx)

    def on_test_epoch_end(self) -> None:
        self._log_evaluation("test")

    def on_fit_start(self) -> None:
        """Under DDP, ranks above 0 reseed torch's generator from the seed and their rank: every rank starts
        from the same seed (``seed_everything``), and would otherwise draw the same dropout masks as rank 0
        for its different videos. Rank 0 keeps the single process's draws."""
        if self.global_rank > 0:
            torch.manual_seed((torch.initial_seed() + 1_000_003 * self.global_rank) % 2**63)

    def on_train_start(self) -> None:
        if self.global_step:
            print(f"resumed at global step {self.global_step} (epoch {self.current_epoch})", flush=True)
