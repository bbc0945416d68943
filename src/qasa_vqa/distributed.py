"""Collectives that keep the method's batch statistics exact under data-parallel training (DDP).

QASA-VQA's losses are statistics of a batch (a PLCC loss correlates a batch's scores; the transfer mask
compares two batch-level consistency errors), so running them per process silently changes the method
when a batch is split over ranks. Two pure helpers restore it (docs/method.md section 4.11):

* :func:`gather_with_grad`: every rank's vector, concatenated in rank order, on every rank, with
  gradients. Its backward sums the incoming gradients over ranks (all-reduce) and returns each rank its
  own slice: every rank computes the same loss ``L`` of the gathered vector, so rank ``r`` receives
  ``W dL/dx_r``, and DDP's mean over ranks turns that into exactly the gradient of ``L`` on one process
  holding the concatenated batch. Ranks may hold different numbers of samples.
* :func:`mean_across_ranks`: a detached mean over ranks, for per-rank statistics that must lead to one
  decision on every rank (the transfer mask when the losses are computed per rank).

Both are the identity in a single process (or when ``torch.distributed`` is not initialised), so the
losses and the training system call them unconditionally. Works with every backend that has
``all_gather`` and ``all_reduce`` (gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["gather_with_grad", "is_distributed", "mean_across_ranks", "rank_and_world"]


def is_distributed() -> bool:
    """True when ``torch.distributed`` is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)`` of this process; ``(0, 1)`` outside a process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dimension 0 (sizes may differ per rank); backward: all-reduce, own slice."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:  # type: ignore[override]
        world = dist.get_world_size()
        rank = dist.get_rank()
        size = torch.tensor([x.shape[0]], dtype=torch.long, device=x.device)
        sizes = [torch.zeros_like(size) for _ in range(world)]
        dist.all_gather(sizes, size)
        counts = [int(s.item()) for s in sizes]
        longest = max(counts)
        padded = x.new_zeros((longest, *x.shape[1:]))
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous())
        ctx.counts, ctx.rank = counts, rank
        return torch.cat([part[:count] for part, count in zip(parts, counts, strict=True)])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.counts[: ctx.rank])
        return grad[start : start + ctx.counts[ctx.rank]]


def gather_with_grad(x: Tensor) -> Tensor:
    """Every rank's ``x`` concatenated along dimension 0 in rank order, with gradients (module docstring).

    The identity outside a multi-process group. Every rank must call it, in the same order.
    """
    if not is_distributed():
        return x
    return _GatherWithGrad.apply(x)


def mean_across_ranks(x: Tensor) -> Tensor:
    """The mean of ``x`` over ranks (detached; same shape on every rank); ``x`` itself in one process."""
    if not is_distributed():
        return x.detach()
    total = x.detach().clone().float() if not x.is_floating_point() else x.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / dist.get_world_size()
