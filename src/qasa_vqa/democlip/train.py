"""Train the demo CLIP: a small open_clip ``CLIP`` (both towers) with open_clip's own contrastive loss.

The model is ``open_clip.CLIP(**DEMO_CLIP_CONFIG)``: a ViT with OpenAI ViT-B/32's patch size, input
size and QuickGELU at a fraction of its width and depth, and a narrow text transformer over CLIP's
own BPE vocabulary (so open_clip's tokenizer serves it, and every prompt can be encoded). Training is
open_clip's recipe at small scale: ``open_clip.ClipLoss`` on L2-normalised features with the learned
logit scale (clamped at 100), AdamW (no weight decay on gains, biases, embeddings and the logit scale),
linear warm-up then cosine decay to zero, stepped every iteration. Batches are drawn from a
:class:`~qasa_vqa.democlip.pairs.PairPool` by a seeded ``torch.Generator`` (shuffled passes, random
horizontal flips), normalised with the ImageNet statistics the CLIP branch of QASA-VQA feeds its tower.
A batch holds every version of its shots, so the same content appears at several qualities and only the
quality and distortion words tell the captions apart.

Curriculum: training starts on the short captions (``"a good photo."``, the prompts' own form), so
both towers find the quality axis first; their share falls linearly to zero at ``short_until`` of the
steps, after which the full captions (content, distortions, quality) are used. A tiny text tower trained
on full captions from the start keeps "a good photo." and "a bad photo." almost identical (cosine
0.98 after 300 steps) while short captions separate them within 200 steps.

A wall-clock budget becomes a step count (:func:`estimate_steps` times a few steps of a throwaway
model first), so a run given minutes records its steps and can be repeated exactly with them.
"""

from __future__ import annotations

import copy
import csv
import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

from qasa_vqa.democlip.pairs import PairPool
from qasa_vqa.models.clip_quality import LOCAL_CLIP_CONFIGS
from qasa_vqa.storage import atomic_write_bytes
from qasa_vqa.video.fragments import normalise

__all__ = [
    "DEMO_CLIP_CONFIG",
    "TrainResult",
    "TrainSettings",
    "build_demo_clip",
    "estimate_steps",
    "train_demo_clip",
]

DEMO_CLIP_CONFIG: dict[str, Any] = LOCAL_CLIP_CONFIGS["qasa-demo"]
_MAX_LOGIT_SCALE = math.log(100)


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings (:func:`estimate_steps` turns a time budget into ``steps``)."""

    steps: int = 3000
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_fraction: float = 0.05
    short_until: float = 0.5  # share of short captions: 1 at the start, falling linearly to 0 here
    seed: int = 0


@dataclass
class TrainResult:
    """The trained model and what happened: steps run, seconds, and the per-step log rows."""

    model: nn.Module
    steps: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


def build_demo_clip(config: dict[str, Any] | None = None, seed: int = 0) -> nn.Module:
    """A randomly initialised ``open_clip.CLIP`` of ``config`` (default :data:`DEMO_CLIP_CONFIG`), seeded."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return open_clip.CLIP(**copy.deepcopy(config or DEMO_CLIP_CONFIG))


def _no_decay(name: str, parameter: torch.Tensor) -> bool:
    return (
        parameter.ndim < 2 or "ln" in name or "bias" in name or "embedding" in name or "logit_scale" in name
    )


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


class _Batches:
    """Seeded batches of whole shots: ``batch_size / versions`` shots, every version of each, one of its
    pictures at random (random horizontal flips), so a batch holds the same content at several
    qualities and only the distortion and quality words tell its captions apart. Shots are drawn in
    shuffled passes. Returns normalised images ``[B,3,H,W]`` and their tokens."""

    def __init__(
        self,
        pool: PairPool,
        tokens: torch.Tensor,
        batch_size: int,
        seed: int,
        short: torch.Tensor | None = None,
    ) -> None:
        if batch_size % pool.versions:
            raise ValueError(f"the batch size {batch_size} is not a multiple of the {pool.versions} versions")
        self.shots_per_batch = batch_size // pool.versions
        if pool.shots < self.shots_per_batch:
            raise ValueError(
                f"the pool holds {pool.shots} shots, fewer than a batch of {self.shots_per_batch}"
            )
        self.pool, self.tokens, self.short = pool, tokens, short
        self.flat_images = pool.images.reshape(-1, *pool.images.shape[3:])
        self.generator = torch.Generator().manual_seed(seed)
        self.order, self.position = torch.empty(0, dtype=torch.long), 0

    def next(self, short_share: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch; each caption is the picture's short one with chance ``short_share``."""
        if self.position + self.shots_per_batch > len(self.order):
            self.order, self.position = torch.randperm(self.pool.shots, generator=self.generator), 0
        shots = self.order[self.position : self.position + self.shots_per_batch]
        self.position += self.shots_per_batch
        versions, pictures = self.pool.versions, self.pool.images.shape[2]
        version = torch.arange(versions).repeat(len(shots))
        picture = torch.randint(pictures, (len(version),), generator=self.generator)
        index = (shots.repeat_interleave(versions) * versions + version) * pictures + picture
        images = torch.from_numpy(self.flat_images[index.numpy()]).permute(0, 3, 1, 2)
        flip = torch.rand(len(index), generator=self.generator) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        tokens = self.tokens[index]
        if self.short is not None:
            use_short = torch.rand(len(index), generator=self.generator) < short_share
            tokens = torch.where(use_short[:, None], self.short[index], tokens)
        return normalise(images, "imagenet", channel_dim=1), tokens


def _tokens(captions: list, context_length: int) -> torch.Tensor:
    """CLIP BPE tokens ``[N, context_length]`` of nested captions, flattened (each distinct one once)."""
    unique, inverse = np.unique(np.asarray(captions).reshape(-1), return_inverse=True)
    tokens = open_clip.SimpleTokenizer(context_length=context_length)(unique.tolist())
    return tokens[torch.from_numpy(inverse.reshape(-1))]


def _step(model: nn.Module, loss_fn: nn.Module, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    image_features, text_features, logit_scale = model(images, text)
    return loss_fn(image_features, text_features, logit_scale)


def estimate_steps(
    pool: PairPool, seconds: float, *, batch_size: int, config: dict[str, Any] | None = None, probes: int = 3
) -> int:
    """How many training steps fit in ``seconds``: times ``probes`` steps (after one warm-up) of a
    throwaway model on real batches. At least 1."""
    model = build_demo_clip(config, 0).train()
    batches = _Batches(pool, _tokens(pool.captions, model.context_length), batch_size, 0)
    optimiser, loss_fn = torch.optim.AdamW(model.parameters(), lr=0.0), open_clip.ClipLoss()
    for probe in range(probes + 1):
        if probe == 1:
            started = time.perf_counter()
        optimiser.zero_grad(set_to_none=True)
        _step(model, loss_fn, *batches.next()).backward()
        optimiser.step()
    per_step = (time.perf_counter() - started) / probes
    return max(1, int(seconds / per_step))


def train_demo_clip(
    pool: PairPool,
    settings: TrainSettings,
    *,
    config: dict[str, Any] | None = None,
    progress: bool = True,
    log_path: Path | None = None,
    on_step: Callable[[int, nn.Module], None] | None = None,
) -> TrainResult:
    """Train a demo CLIP on ``pool`` (module docstring). ``on_step(step, model)`` runs after each step."""
    if settings.steps < 1:
        raise ValueError(f"need at least one training step, got {settings.steps}")
    model = build_demo_clip(config, settings.seed).train()
    tokens = _tokens(pool.captions, model.context_length)
    short = _tokens(pool.short_captions, model.context_length)
    decay = [p for n, p in model.named_parameters() if not _no_decay(n, p)]
    rest = [p for n, p in model.named_parameters() if _no_decay(n, p)]
    optimiser = torch.optim.AdamW(
        [{"params": decay, "weight_decay": settings.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=settings.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    loss_fn = open_clip.ClipLoss()
    batches = _Batches(pool, tokens, settings.batch_size, settings.seed, short)
    total, warmup = settings.steps, max(1, round(settings.warmup_fraction * settings.steps))
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), "loss {task.fields[loss]}",
               TimeElapsedColumn(), TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, console=Console(stderr=True), disable=not progress) as bar:
        job = bar.add_task("demo CLIP training (steps)", total=total, loss="-")
        for step in range(total):
            factor = _lr_factor(step, total, warmup)
            for group in optimiser.param_groups:
                group["lr"] = settings.lr * factor
            share = max(0.0, 1.0 - step / (settings.short_until * total)) if settings.short_until > 0 else 0.0
            images, text = batches.next(share)
            loss = _step(model, loss_fn, images, text)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, _MAX_LOGIT_SCALE)
            value = loss.item()
            row = {"step": step + 1, "loss": value, "lr": settings.lr * factor}
            row |= {"logit_scale": float(model.logit_scale.exp()), "seconds": time.perf_counter() - started}
            history.append(row)
            bar.update(job, advance=1, loss=f"{value:.3f}")
            if on_step is not None:
                on_step(step + 1, model)
    if log_path is not None:
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
        atomic_write_bytes(log_path, text.getvalue().encode("utf-8"))
    return TrainResult(model.eval(), total, time.perf_counter() - started, history)
