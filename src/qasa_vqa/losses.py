"""Training losses: PLCC loss, the semi-supervised consistency / transfer terms, ST-VQRL contrastive loss.

Pure torch functions (plus one small ``nn.Module``); no Lightning, no Hydra. The training modules call
them and log the named parts they return.

* :func:`plcc_loss` is FAST-VQA's correlation loss (docs/method.md section 4.5): both vectors standardised
  with the biased std (+1e-8), ``(mean((a^ - b^)^2) / 4 + mean((rho a^ - b^)^2) / 4) / 2``, which is
  ``(1 - rho) / 4 + (1 - rho^2) / 8`` in closed form. :func:`weighted_plcc_loss` is the same loss with
  per-sample weights (used only by the per-sample transfer mask, an addition of ours).
* :func:`labelled_losses`, :func:`consistency_errors`, :func:`transfer_mask` and
  :func:`unlabelled_losses` are the per-iteration terms of QASA-VQA (docs/method.md section 4.6): supervised
  + consistency on labelled data; on unlabelled data the intra-model consistency errors eps_L, eps_H
  decide which model learns from the other (stop-gradient targets via ``.detach()``).
* :func:`gaussian_fit`, :func:`gaussian_distance_matrix` and :func:`gaussian_contrastive_loss` (module
  :class:`GaussianContrastiveLoss`) are ST-VQRL's self-supervised loss (docs/method.md section 2.3): each
  clip's tokens are fitted with a Gaussian, clips are compared with the NIQE-style distance, and an
  InfoNCE over the K versions of the same scene in the other temporal view, both directions.

Deviations from the authors' code (docs/differences.md):

* Distance: the quadratic form is clamped at 0 and an ``eps`` is added inside the square root
  (``sqrt(clamp(q, min=0) + eps)``), so rounding can neither give NaN (item 19) nor an infinite gradient
  at distance 0. The device is taken from the inputs (the reference's ``get_device()`` broke on CPU).
* The InfoNCE term ``-log(s_ii / sum_j s_ij)`` with ``s = exp(-tau d)`` is computed as a log-softmax over
  ``-tau d``: mathematically identical, numerically safe for large distances.
* The Gaussian fit and the ``pinv`` run in float64 by default (``compute_dtype``); the reference ran in
  float32, where ``pinv``'s relative cut-off can discard the 1e-4 ridge directions of rank-deficient
  covariances. Pass ``compute_dtype=None`` to compute in the tokens' own dtype. ``solver="cholesky"``
  is an equivalent, faster option for a positive ridge (see :func:`gaussian_distance_matrix`).
* The transfer mask is one scalar per batch, as in the reference (item 12); a per-sample mask is an
  option (``mode="sample"``, see :func:`unlabelled_losses`). Consistency errors are 0-d tensors rather
  than Python floats, so no host synchronisation is needed; inside :func:`unlabelled_losses` they are
  the detached consistency terms, not a second evaluation (item 12: the reference computed them twice).
  With dropout active they include dropout noise, as in the reference.
* Half-precision inputs to the PLCC losses are computed in float32.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

__all__ = [
    "GaussianContrastiveLoss",
    "consistency_errors",
    "gaussian_contrastive_loss",
    "gaussian_distance_matrix",
    "gaussian_fit",
    "labelled_losses",
    "plcc_loss",
    "sample_consistency_errors",
    "transfer_mask",
    "unlabelled_losses",
    "weighted_plcc_loss",
]

MaskMode = Literal["batch", "sample", "always", "never"]
Solver = Literal["pinv", "cholesky"]


# --------------------------------------------------------------------------------------------------
# PLCC loss (docs/method.md section 4.5)


def _as_vector(x: Tensor, name: str) -> Tensor:
    """``[B]`` or ``[B, 1]`` -> ``[B]`` (float32 for half precision); anything else is an error."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim == 2 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 1:
        raise ValueError(f"{name} must have shape [B] or [B, 1], got {list(x.shape)}")
    if not x.is_floating_point() or x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    return x


def _pair(a: Tensor, b: Tensor, *, names: tuple[str, str] = ("a", "b")) -> tuple[Tensor, Tensor]:
    a = _as_vector(a, names[0])
    b = _as_vector(b, names[1])
    if a.shape != b.shape:
        raise ValueError(
            f"{names[0]} and {names[1]} must hold the same number of samples, got {a.shape[0]} and {b.shape[0]}"
        )
    if a.shape[0] < 2:
        raise ValueError(f"a correlation needs a batch of at least 2 samples, got {a.shape[0]}")
    if a.dtype != b.dtype:
        dtype = torch.promote_types(a.dtype, b.dtype)
        a, b = a.to(dtype), b.to(dtype)
    return a, b


def _standardise(x: Tensor, eps: float) -> Tensor:
    """``(x - mean) / (biased std + eps)`` over the batch (torch gives std a zero gradient at std 0)."""
    return (x - x.mean()) / (x.std(correction=0) + eps)


def plcc_loss(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """FAST-VQA's PLCC loss between two score vectors over the batch, a 0-d tensor (docs/method.md 4.5).

    ``a^``, ``b^`` are standardised with the biased std plus ``eps``; ``rho = mean(a^ b^)``;
    ``loss = (mean((a^ - b^)^2) / 4 + mean((rho a^ - b^)^2) / 4) / 2``, i.e.
    ``(1 - rho) / 4 + (1 - rho^2) / 8`` up to ``eps``: 0 at rho = 1, 0.375 at rho = 0, 0.5 at rho = -1.
    Accepts ``[B]`` or ``[B, 1]`` for each argument (B >= 2); gradients reach both unless one is detached.
    """
    a, b = _pair(a, b)
    a_hat = _standardise(a, eps)
    b_hat = _standardise(b, eps)
    rho = (a_hat * b_hat).mean()
    loss0 = ((a_hat - b_hat) ** 2).mean() / 4
    loss1 = ((rho * a_hat - b_hat) ** 2).mean() / 4
    return (loss0 + loss1) / 2


def weighted_plcc_loss(
    a: Tensor, b: Tensor, weights: Tensor, eps: float = 1e-8, min_count: int = 2
) -> Tensor:
    """:func:`plcc_loss` with non-negative per-sample ``weights`` (``[B]`` or ``[B, 1]``), a 0-d tensor.

    Every batch mean of the PLCC loss (the two means, the two biased variances, ``rho`` and the two
    squared errors) becomes a weighted mean ``sum(w x) / sum(w)``. With 0/1 weights this is exactly
    :func:`plcc_loss` restricted to the samples of weight 1, and samples of weight 0 get no gradient;
    with equal weights it is :func:`plcc_loss`. When fewer than ``min_count`` samples have a positive
    weight the correlation is undefined and the result is 0 (a constant, without gradient).
    """
    a, b = _pair(a, b)
    w = _as_vector(weights, "weights").to(device=a.device, dtype=a.dtype).detach()
    if w.shape != a.shape:
        raise ValueError(f"weights must have one entry per sample ({a.shape[0]}), got {w.shape[0]}")
    if bool((w < 0).any()):
        raise ValueError("weights must be non-negative")
    if int((w > 0).sum()) < max(min_count, 2):
        return a.new_zeros(())
    w = w / w.sum()

    def standardise(x: Tensor) -> Tensor:
        centred = x - (w * x).sum()
        var = (w * centred**2).sum()
        # sqrt with a zero (not infinite) gradient at variance 0, as torch.std does
        std = torch.where(var > 0, var.clamp_min(torch.finfo(x.dtype).tiny).sqrt(), var.new_zeros(()))
        return centred / (std + eps)

    a_hat = standardise(a)
    b_hat = standardise(b)
    rho = (w * a_hat * b_hat).sum()
    loss0 = (w * (a_hat - b_hat) ** 2).sum() / 4
    loss1 = (w * (rho * a_hat - b_hat) ** 2).sum() / 4
    return (loss0 + loss1) / 2


# --------------------------------------------------------------------------------------------------
# Semi-supervised terms (docs/method.md section 4.6)


def labelled_losses(a: Tensor, b: Tensor, y: Tensor, w_cons: float = 1.0) -> dict[str, Tensor]:
    """Labelled loss of one model: ``gt = l(a, y)``, ``cons = l(a, b)``, ``total = gt + w_cons * cons``.

    ``a`` and ``b`` are the model's scores of its two views (``a_L = q_L(T')``, ``b_L = q_L(T'')`` for
    the primary, ``a_H = q_H(S)``, ``b_H = q_H(S^F)`` for the auxiliary), ``y`` the labels; ``l`` is
    :func:`plcc_loss`. All three are 0-d tensors with gradient.
    """
    gt = plcc_loss(a, y)
    cons = plcc_loss(a, b)
    return {"gt": gt, "cons": cons, "total": gt + w_cons * cons}


def sample_consistency_errors(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Per-sample self-consistency error ``|a^_i - b^_i|``, ``[B]``, without gradient.

    ``a^``, ``b^`` are the two views' scores standardised over the batch exactly as in :func:`plcc_loss`
    (biased std + ``eps``), so the error is insensitive to each model's scale and offset, like the
    batch-level error ``l(a, b)``; note ``mean(|a^ - b^|^2) = 2 (1 - rho)``.
    """
    with torch.no_grad():
        a, b = _pair(a.detach(), b.detach())
        return (_standardise(a, eps) - _standardise(b, eps)).abs()


def consistency_errors(
    a_l: Tensor, b_l: Tensor, a_h: Tensor, b_h: Tensor, mode: MaskMode = "batch"
) -> tuple[Tensor, Tensor]:
    """Consistency errors ``(eps_L, eps_H)`` of the primary and the auxiliary model, without gradient.

    ``mode="batch"`` (the reference): ``eps_L = l(a_L, b_L)``, ``eps_H = l(a_H, b_H)`` as 0-d tensors.
    ``mode="sample"``: the ``[B]`` vectors of :func:`sample_consistency_errors`.
    """
    _check_mode(mode, ("batch", "sample"))
    if mode == "sample":
        return sample_consistency_errors(a_l, b_l), sample_consistency_errors(a_h, b_h)
    with torch.no_grad():
        return plcc_loss(a_l.detach(), b_l.detach()), plcc_loss(a_h.detach(), b_h.detach())


def transfer_mask(eps_l: Tensor | float, eps_h: Tensor | float, mode: MaskMode = "batch") -> Tensor:
    """Knowledge-transfer mask: 1 where the primary is less self-consistent (``eps_L > eps_H``), else 0.

    Where the mask is 1 the primary Q_L learns from the auxiliary Q_H, where it is 0 the auxiliary
    learns from the primary (ties go to 0, as in the reference). ``mode="batch"``: one 0-d mask from
    two scalars (docs/method.md 4.6). ``mode="sample"``: a ``[B]`` mask from two ``[B]`` error vectors.
    The mask is a float tensor (the errors' dtype, float32 for Python numbers) without gradient.
    """
    _check_mode(mode, ("batch", "sample"))
    el = torch.as_tensor(eps_l).detach()
    eh = torch.as_tensor(eps_h).detach()
    if mode == "batch":
        if el.numel() != 1 or eh.numel() != 1:
            raise ValueError(
                f"batch mode compares two scalars, got shapes {list(el.shape)} and {list(eh.shape)}"
            )
        el, eh = el.reshape(()), eh.reshape(())
    elif el.ndim != 1 or el.shape != eh.shape:
        raise ValueError(
            f"sample mode compares two [B] vectors, got shapes {list(el.shape)} and {list(eh.shape)}"
        )
    dtype = el.dtype if el.is_floating_point() else torch.float32
    return (el > eh.to(el.device)).to(dtype)


def unlabelled_losses(
    a_l: Tensor,
    b_l: Tensor,
    a_h: Tensor,
    b_h: Tensor,
    *,
    w_cons: float = 1.0,
    w_stab: float = 1.0,
    mode: MaskMode = "batch",
    reduce_errors: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, Tensor]:
    """Unlabelled losses of both models with the knowledge-transfer mask (docs/method.md section 4.6).

    ``a_l, b_l`` are the primary's scores of T' and T'', ``a_h, b_h`` the auxiliary's of S and S^F.
    With ``l`` = :func:`plcc_loss` and ``sg`` = ``.detach()``:

    * ``primary``   = ``L_L^u = m w_stab l(a_L, sg(a_H)) + w_cons l(a_L, b_L)`` (no gradient to Q_H),
    * ``auxiliary`` = ``L_H^u = (1 - m) w_stab l(sg(a_L), a_H) + w_cons l(a_H, b_H)`` (none to Q_L).

    ``mode="batch"`` (the reference): ``m = [eps_L > eps_H]`` with ``eps = l(a, b)`` of each model.
    ``mode="always"`` / ``"never"``: ``m = 1`` / ``m = 0`` whatever the errors (fixed-direction ablations).
    ``mode="sample"``: ``m_i = [e_L,i > e_H,i]`` with the per-sample errors of
    :func:`sample_consistency_errors`, and each transfer term is a correlation over the samples routed
    to that model: ``w_stab * (n / B) * l_S(a_L, sg(a_H))`` where ``S`` = the ``n`` samples with
    ``m_i = 1`` (``m_i = 0`` for the auxiliary) and ``l_S`` = :func:`plcc_loss` restricted to them
    (:func:`weighted_plcc_loss` with 0/1 weights), 0 when ``n < 2``. The factor ``n / B`` makes an
    all-ones (all-zeros) per-sample mask equal the batch mask 1 (0) and keeps a correlation over a few
    samples, which is noisy, from weighing as much as one over the whole batch.

    Returned 0-d tensors: ``primary``, ``auxiliary`` (with gradient); ``cons_l``, ``cons_h`` (the
    unweighted consistency terms, with gradient); ``transfer_l``, ``transfer_h`` (the weighted transfer
    terms as added to each total, with gradient); ``transfer`` (their detached sum, the active transfer
    term to log); ``eps_l``, ``eps_h`` (batch errors ``l(a, b)``, detached); ``mask_rate`` (mean of the
    mask). ``mask``: the mask used, 0-d in batch mode, ``[B]`` in sample mode. Sample mode adds
    ``sample_eps_l``, ``sample_eps_h`` (``[B]``).
    """
    _check_mode(mode)
    cons_l = plcc_loss(a_l, b_l)
    cons_h = plcc_loss(a_h, b_h)
    eps_l, eps_h = cons_l.detach(), cons_h.detach()
    if reduce_errors is not None and mode == "batch":
        eps_l, eps_h = reduce_errors(eps_l), reduce_errors(eps_h)
    target_h, target_l = a_h.detach(), a_l.detach()
    out: dict[str, Tensor] = {"cons_l": cons_l, "cons_h": cons_h, "eps_l": eps_l, "eps_h": eps_h}
    if mode in ("batch", "always", "never"):
        mask = (
            transfer_mask(eps_l, eps_h, "batch")
            if mode == "batch"
            else eps_l.new_tensor(float(mode == "always"))
        )
        transfer_l = mask * w_stab * plcc_loss(a_l, target_h)
        transfer_h = (1 - mask) * w_stab * plcc_loss(target_l, a_h)
    else:
        sample_eps_l, sample_eps_h = consistency_errors(a_l, b_l, a_h, b_h, mode="sample")
        mask = transfer_mask(sample_eps_l, sample_eps_h, "sample")
        batch = mask.shape[0]
        transfer_l = w_stab * (mask.sum() / batch) * weighted_plcc_loss(a_l, target_h, mask)
        transfer_h = w_stab * ((1 - mask).sum() / batch) * weighted_plcc_loss(target_l, a_h, 1 - mask)
        out["sample_eps_l"], out["sample_eps_h"] = sample_eps_l, sample_eps_h
    out.update(
        primary=transfer_l + w_cons * cons_l,
        auxiliary=transfer_h + w_cons * cons_h,
        transfer_l=transfer_l,
        transfer_h=transfer_h,
        transfer=transfer_l.detach() + transfer_h.detach(),
        mask=mask,
        mask_rate=mask.mean(),
    )
    return out


def _check_mode(mode: str, allowed: tuple[str, ...] = ("batch", "sample", "always", "never")) -> None:
    if mode not in allowed:
        raise ValueError(f"mode must be one of {', '.join(allowed)}, got {mode!r}")


# --------------------------------------------------------------------------------------------------
# ST-VQRL Gaussian-distance contrastive loss (docs/method.md section 2.3)


def gaussian_fit(tokens: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and unbiased covariance of a token set: ``[..., N, C]`` -> ``([..., C], [..., C, C])``.

    ``Sigma = sum_n (x_n - mu)(x_n - mu)^T / (N - 1)``; needs ``N >= 2``. Rank-deficient covariances
    (``N <= C``, repeated or constant tokens) are returned as they are; the distance adds the ridge.
    """
    if tokens.ndim < 2:
        raise ValueError(f"tokens must have shape [..., N, C], got {list(tokens.shape)}")
    n = tokens.shape[-2]
    if n < 2:
        raise ValueError(f"an unbiased covariance needs at least 2 tokens, got N = {n}")
    mu = tokens.mean(dim=-2)
    centred = tokens - mu.unsqueeze(-2)
    sigma = centred.transpose(-1, -2) @ centred / (n - 1)
    return mu, sigma


def gaussian_distance_matrix(
    mu1: Tensor,
    sigma1: Tensor,
    mu2: Tensor,
    sigma2: Tensor,
    ridge: float = 1e-4,
    eps: float = 1e-8,
    solver: Solver = "pinv",
) -> Tensor:
    """NIQE-style distance between every Gaussian of set 1 and every Gaussian of set 2, ``[..., K1, K2]``.

    ``mu1 [..., K1, C]``, ``sigma1 [..., K1, C, C]``, ``mu2 [..., K2, C]``, ``sigma2 [..., K2, C, C]``
    (same leading dimensions, e.g. the scene). For each pair
    ``d = sqrt(clamp(dmu^T pinv((Sigma1 + Sigma2) / 2 + ridge I) dmu, min=0) + eps)`` with
    ``dmu = mu1 - mu2``; all ``K1 x K2`` pooled covariances are handled in one batched call. Computed
    in the inputs' dtype; ``d`` is symmetric in its two Gaussians.

    ``solver="pinv"`` (the reference): ``torch.linalg.pinv`` with its default cut-off. ``"cholesky"``:
    ``q = |L^-1 dmu|^2`` with ``L L^T`` the pooled matrix, which a positive ``ridge`` makes positive
    definite, so pinv equals the inverse and both solvers agree up to rounding (in float64: pinv's
    cut-off, 64 x 2.2e-16 of the largest eigenvalue, never reaches the ridge for covariance eigenvalues
    below ~1e9). Cholesky avoids the batched SVD (the whole ST-VQRL loss at 6 x 10 x 784 x 64 in float64,
    forward and backward, on 2 CPU threads: ~1 s vs ~3-10 s) but fails on matrices that rounding leaves
    indefinite, which float32 can do for large covariances.
    """
    if mu1.ndim < 2 or mu2.ndim < 2:
        raise ValueError(f"mu1, mu2 must be [..., K, C], got {list(mu1.shape)} and {list(mu2.shape)}")
    c = mu1.shape[-1]
    if (
        mu2.shape[-1] != c
        or sigma1.shape != (*mu1.shape, c)
        or sigma2.shape != (*mu2.shape, c)
        or mu1.shape[:-2] != mu2.shape[:-2]
    ):
        raise ValueError(
            "expected mu [..., K, C] and sigma [..., K, C, C] with the same leading dimensions and C, got "
            f"mu1 {list(mu1.shape)}, sigma1 {list(sigma1.shape)}, mu2 {list(mu2.shape)}, sigma2 {list(sigma2.shape)}"
        )
    pooled = (sigma1.unsqueeze(-3) + sigma2.unsqueeze(-4)) / 2  # [..., K1, K2, C, C]
    pooled = pooled + ridge * torch.eye(c, dtype=pooled.dtype, device=pooled.device)
    pooled = (pooled + pooled.transpose(-1, -2)) / 2  # exactly symmetric
    diff = mu1.unsqueeze(-2) - mu2.unsqueeze(-3)  # [..., K1, K2, C]
    if solver == "pinv":
        precision = torch.linalg.pinv(pooled)
        quad = (diff.unsqueeze(-2) @ precision @ diff.unsqueeze(-1))[..., 0, 0]
    elif solver == "cholesky":
        if ridge <= 0:
            raise ValueError(f"solver='cholesky' needs a positive ridge, got {ridge}")
        lower = torch.linalg.cholesky(pooled)
        whitened = torch.linalg.solve_triangular(lower, diff.unsqueeze(-1), upper=False)
        quad = (whitened**2).sum(dim=(-2, -1))
    else:
        raise ValueError(f"solver must be 'pinv' or 'cholesky', got {solver!r}")
    return torch.sqrt(quad.clamp(min=0) + eps)


def gaussian_contrastive_loss(
    view1_tokens: Tensor,
    view2_tokens: Tensor,
    tau: float = 0.1,
    *,
    ridge: float = 1e-4,
    eps: float = 1e-8,
    compute_dtype: torch.dtype | None = torch.float64,
    solver: Solver = "pinv",
) -> tuple[Tensor, dict[str, Tensor]]:
    """ST-VQRL's contrastive loss over the versions of each scene (docs/method.md section 2.3).

    ``view1_tokens``, ``view2_tokens``: ``[B, K, N, C]`` (B scenes, K >= 2 versions, N tokens of C
    dimensions; 6 x 10 x 784 x 64 in the reference), the two temporal clips. With ``D[b, i, j]`` =
    :func:`gaussian_distance_matrix` between version ``i`` of view 1 and version ``j`` of view 2 and
    logits ``-tau D``: ``l1(b, i) = -log_softmax_j(-tau D[b, i, :])[i]`` (anchor in view 1),
    ``l2(b, i) = -log_softmax_j(-tau D[b, :, i])[i]`` (views swapped), ``L = mean_{b, i}(l1 + l2)``.
    Negatives are only the other versions of the same scene.

    Returns the loss (0-d, in the tokens' dtype) and detached 0-d statistics for logging: ``pos_dist``
    (mean of the diagonal of D), ``neg_dist`` (mean off the diagonal), ``l1``, ``l2`` (their means) and
    ``top1`` (fraction of anchors, both directions, whose nearest version in the other view is their own).
    ``compute_dtype`` (default float64) is the dtype of the fit and the distance; ``None`` keeps the
    tokens' dtype. ``solver``: see :func:`gaussian_distance_matrix`.
    """
    if view1_tokens.ndim != 4 or view1_tokens.shape != view2_tokens.shape:
        raise ValueError(
            "the two views must both have shape [B, K, N, C], got "
            f"{list(view1_tokens.shape)} and {list(view2_tokens.shape)}"
        )
    k = view1_tokens.shape[1]
    if k < 2:
        raise ValueError(f"the contrastive loss needs at least 2 versions per scene, got K = {k}")
    out_dtype = view1_tokens.dtype if view1_tokens.is_floating_point() else torch.float32
    dtype = compute_dtype or out_dtype
    mu1, sigma1 = gaussian_fit(view1_tokens.to(dtype))
    mu2, sigma2 = gaussian_fit(view2_tokens.to(dtype))
    dist = gaussian_distance_matrix(
        mu1, sigma1, mu2, sigma2, ridge=ridge, eps=eps, solver=solver
    )  # [B, K, K]
    logits = -tau * dist
    l1 = -torch.diagonal(logits.log_softmax(dim=-1), dim1=-2, dim2=-1)  # [B, K]
    l2 = -torch.diagonal(logits.log_softmax(dim=-2), dim1=-2, dim2=-1)  # softmax over view-1 versions
    loss = (l1 + l2).mean()
    with torch.no_grad():
        eye = torch.eye(k, dtype=torch.bool, device=dist.device)
        own = torch.arange(k, device=dist.device)
        top1 = ((dist.argmin(dim=-1) == own).float().mean() + (dist.argmin(dim=-2) == own).float().mean()) / 2
        stats = {
            "pos_dist": dist[:, eye].mean(),
            "neg_dist": dist[:, ~eye].mean(),
            "l1": l1.mean(),
            "l2": l2.mean(),
            "top1": top1,
        }
    return loss.to(out_dtype), {name: value.detach() for name, value in stats.items()}


class GaussianContrastiveLoss(nn.Module):
    """:func:`gaussian_contrastive_loss` with its hyper-parameters stored (no parameters, no buffers)."""

    def __init__(
        self,
        tau: float = 0.1,
        ridge: float = 1e-4,
        eps: float = 1e-8,
        compute_dtype: torch.dtype | None = torch.float64,
        solver: Solver = "pinv",
    ) -> None:
        super().__init__()
        self.tau = tau
        self.ridge = ridge
        self.eps = eps
        self.compute_dtype = compute_dtype
        self.solver = solver

    def forward(self, view1_tokens: Tensor, view2_tokens: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        return gaussian_contrastive_loss(
            view1_tokens,
            view2_tokens,
            self.tau,
            ridge=self.ridge,
            eps=self.eps,
            compute_dtype=self.compute_dtype,
            solver=self.solver,
        )

    def extra_repr(self) -> str:
        return (
            f"tau={self.tau}, ridge={self.ridge}, eps={self.eps}, "
            f"compute_dtype={self.compute_dtype}, solver={self.solver!r}"
        )
