"""Losses against references: PLCC loss vs its closed form and scipy, the transfer mask and its gradient
routing (docs/method.md sections 4.5, 4.6), ST-VQRL's Gaussian fit, distance and contrastive loss vs NumPy
and a per-pair loop of the formula (section 2.3)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr

from qasa_vqa.losses import (
    GaussianContrastiveLoss,
    consistency_errors,
    gaussian_contrastive_loss,
    gaussian_distance_matrix,
    gaussian_fit,
    labelled_losses,
    plcc_loss,
    sample_consistency_errors,
    transfer_mask,
    unlabelled_losses,
    weighted_plcc_loss,
)


def closed_form(rho: float) -> float:
    return (1 - rho) / 4 + (1 - rho**2) / 8


def leaf(values: list[float] | np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values), dtype=torch.float64).clone().requires_grad_(True)


# --------------------------------------------------------------------------------------------------
# PLCC loss


@pytest.mark.parametrize("seed", range(6))
def test_plcc_loss_matches_the_closed_form_with_scipy_rho(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 40))
    a = rng.normal(size=n)
    b = 0.7 * a * rng.uniform(-1, 1) + rng.normal(size=n) * rng.uniform(0.1, 2) + 3
    rho = float(pearsonr(a, b)[0])
    got = plcc_loss(torch.tensor(a), torch.tensor(b)).item()
    assert got == pytest.approx(closed_form(rho), abs=1e-7)
    # float32, and [B, 1] / [B] mixed
    got32 = plcc_loss(torch.tensor(a, dtype=torch.float32)[:, None], torch.tensor(b, dtype=torch.float32))
    assert got32.item() == pytest.approx(closed_form(rho), abs=1e-5)


def test_plcc_loss_anchor_values_and_symmetry() -> None:
    a = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64)
    b = torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=torch.float64)  # orthogonal, both mean 0
    assert float(pearsonr(a.numpy(), b.numpy())[0]) == pytest.approx(0.0, abs=1e-12)
    assert plcc_loss(a, b).item() == pytest.approx(0.375, abs=1e-7)
    x = torch.linspace(-2, 5, 9, dtype=torch.float64)
    assert plcc_loss(x, 3 * x + 1).item() == pytest.approx(0.0, abs=1e-7)
    assert plcc_loss(x, -0.5 * x + 2).item() == pytest.approx(0.5, abs=1e-7)
    rng = np.random.default_rng(7)
    u, v = torch.tensor(rng.normal(size=11)), torch.tensor(rng.normal(size=11))
    assert plcc_loss(u, v).item() == pytest.approx(plcc_loss(v, u).item(), abs=1e-9)


def test_plcc_loss_is_the_documented_formula() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=10), rng.normal(size=10)
    ah = (a - a.mean()) / (a.std() + 1e-8)
    bh = (b - b.mean()) / (b.std() + 1e-8)
    rho = np.mean(ah * bh)
    expected = (np.mean((ah - bh) ** 2) / 4 + np.mean((rho * ah - bh) ** 2) / 4) / 2
    assert plcc_loss(torch.tensor(a), torch.tensor(b)).item() == pytest.approx(expected, rel=1e-12)


def test_plcc_loss_gradients_reach_both_arguments_unless_detached() -> None:
    rng = np.random.default_rng(1)
    a, b = leaf(rng.normal(size=8)), leaf(rng.normal(size=8))
    plcc_loss(a, b).backward()
    assert a.grad is not None and b.grad is not None
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0
    a2, b2 = leaf(rng.normal(size=8)), leaf(rng.normal(size=8))
    plcc_loss(a2, b2.detach()).backward()
    assert a2.grad is not None and a2.grad.abs().sum() > 0
    assert b2.grad is None


def test_plcc_loss_rejects_bad_shapes_and_tiny_batches() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        plcc_loss(torch.tensor([1.0]), torch.tensor([2.0]))
    with pytest.raises(ValueError, match="same number"):
        plcc_loss(torch.rand(4), torch.rand(5))
    with pytest.raises(ValueError, match=r"\[B\] or \[B, 1\]"):
        plcc_loss(torch.rand(4, 2), torch.rand(4, 2))
    with pytest.raises(ValueError, match=r"\[B\] or \[B, 1\]"):
        plcc_loss(torch.rand(()), torch.rand(()))


def test_plcc_loss_of_a_constant_vector_is_finite_with_finite_gradients() -> None:
    a, b = leaf([2.0, 2.0, 2.0, 2.0]), leaf([0.1, 0.5, 0.2, 0.9])
    loss = plcc_loss(a, b)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()


def test_weighted_plcc_loss_restricts_to_the_weighted_samples() -> None:
    rng = np.random.default_rng(5)
    a, b = leaf(rng.normal(size=7)), leaf(rng.normal(size=7))
    mask = torch.tensor([1, 0, 1, 1, 0, 1, 0], dtype=torch.float64)
    keep = mask.bool()
    expected = plcc_loss(a.detach()[keep], b.detach()[keep])
    got = weighted_plcc_loss(a, b, mask)
    assert got.item() == pytest.approx(expected.item(), abs=1e-12)
    got.backward()
    assert (a.grad[~keep] == 0).all() and (b.grad[~keep] == 0).all()
    assert a.grad[keep].abs().sum() > 0
    ones = torch.ones(7, dtype=torch.float64)
    assert weighted_plcc_loss(a, b, 3 * ones).item() == pytest.approx(plcc_loss(a, b).item(), abs=1e-12)
    one_sample = torch.tensor([0, 0, 1, 0, 0, 0, 0], dtype=torch.float64)
    assert weighted_plcc_loss(a, b, one_sample).item() == 0.0
    with pytest.raises(ValueError, match="non-negative"):
        weighted_plcc_loss(a, b, -ones)


# --------------------------------------------------------------------------------------------------
# Semi-supervised terms


def test_labelled_losses_parts() -> None:
    rng = np.random.default_rng(2)
    a, b, y = (torch.tensor(rng.normal(size=6)) for _ in range(3))
    out = labelled_losses(a, b, y, w_cons=0.5)
    assert out["gt"].item() == pytest.approx(plcc_loss(a, y).item())
    assert out["cons"].item() == pytest.approx(plcc_loss(a, b).item())
    assert out["total"].item() == pytest.approx(out["gt"].item() + 0.5 * out["cons"].item())


def test_transfer_mask_both_ways() -> None:
    assert transfer_mask(0.3, 0.1).item() == 1.0  # primary less consistent -> learns from auxiliary
    assert transfer_mask(0.1, 0.3).item() == 0.0
    assert transfer_mask(0.2, 0.2).item() == 0.0  # ties: the auxiliary learns
    assert transfer_mask(torch.tensor(0.3), torch.tensor([0.1])).shape == ()
    with pytest.raises(ValueError, match="two scalars"):
        transfer_mask(torch.rand(3), torch.rand(3))
    with pytest.raises(ValueError, match="two \\[B\\] vectors"):
        transfer_mask(torch.rand(3), torch.rand(4), mode="sample")
    with pytest.raises(ValueError, match="mode"):
        transfer_mask(0.1, 0.2, mode="pixel")  # type: ignore[arg-type]


def test_consistency_errors_batch_mode_are_detached_plcc_losses() -> None:
    rng = np.random.default_rng(4)
    a_l, b_l, a_h, b_h = (leaf(rng.normal(size=6)) for _ in range(4))
    eps_l, eps_h = consistency_errors(a_l, b_l, a_h, b_h)
    assert eps_l.shape == () and not eps_l.requires_grad and not eps_h.requires_grad
    assert eps_l.item() == pytest.approx(plcc_loss(a_l, b_l).item())
    assert eps_h.item() == pytest.approx(plcc_loss(a_h, b_h).item())


def test_per_sample_mask_on_a_hand_made_case() -> None:
    # primary: views agree except on sample 3; auxiliary: views agree except on sample 0
    base = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64)
    a_l, b_l = base.clone(), base.clone()
    b_l[3] = 5.5
    a_h, b_h = base.clone(), base.clone()
    b_h[0] = 2.5
    e_l, e_h = consistency_errors(a_l, b_l, a_h, b_h, mode="sample")
    assert e_l.shape == (6,)
    # by hand: |a^ - b^| with biased std
    bl = b_l.numpy()
    expected = np.abs((base.numpy() - 2.5) / base.numpy().std() - (bl - bl.mean()) / bl.std())
    np.testing.assert_allclose(e_l.numpy(), expected, rtol=1e-6)
    assert int(e_l.argmax()) == 3 and int(e_h.argmax()) == 0
    mask = transfer_mask(e_l, e_h, mode="sample")
    assert mask[3] == 1 and mask[0] == 0
    np.testing.assert_array_equal(mask.numpy(), (e_l > e_h).numpy().astype(float))
    assert torch.equal(sample_consistency_errors(a_l, b_l), e_l)


def _unlabelled_inputs(seed: int) -> tuple[torch.Tensor, ...]:
    rng = np.random.default_rng(seed)
    return tuple(leaf(rng.normal(size=6)) for _ in range(4))


def _grads(loss: torch.Tensor, tensors: tuple[torch.Tensor, ...]) -> list[bool]:
    """Whether each tensor receives a non-zero gradient from ``loss``."""
    grads = torch.autograd.grad(loss, tensors, retain_graph=True, allow_unused=True)
    return [g is not None and bool(g.abs().sum() > 0) for g in grads]


@pytest.mark.parametrize("primary_worse", [True, False])
def test_unlabelled_losses_batch_mode_values_and_gradient_routing(primary_worse: bool) -> None:
    rng = np.random.default_rng(0)
    x, y, noise = rng.normal(size=6), rng.normal(size=6), 0.05 * rng.normal(size=6)
    consistent = (leaf(y), leaf(y + noise))  # rho(a, b) close to 1: small error
    inconsistent = (leaf(x), leaf(-x + noise))  # rho(a, b) close to -1: large error
    (a_l, b_l), (a_h, b_h) = (inconsistent, consistent) if primary_worse else (consistent, inconsistent)
    out = unlabelled_losses(a_l, b_l, a_h, b_h, w_cons=0.5, w_stab=2.0)
    eps_l, eps_h = plcc_loss(a_l, b_l).item(), plcc_loss(a_h, b_h).item()
    assert (eps_l > eps_h) == primary_worse
    m = 1.0 if primary_worse else 0.0
    assert out["mask"].item() == m and out["mask_rate"].item() == m
    assert out["eps_l"].item() == pytest.approx(eps_l) and out["eps_h"].item() == pytest.approx(eps_h)
    expected_l = m * 2.0 * plcc_loss(a_l, a_h).item() + 0.5 * eps_l
    expected_h = (1 - m) * 2.0 * plcc_loss(a_l, a_h).item() + 0.5 * eps_h
    assert out["primary"].item() == pytest.approx(expected_l)
    assert out["auxiliary"].item() == pytest.approx(expected_h)
    assert out["transfer"].item() == pytest.approx(2.0 * plcc_loss(a_l, a_h).item())
    assert not out["transfer"].requires_grad
    inputs = (a_l, b_l, a_h, b_h)
    # L_L^u never reaches the auxiliary's scores, L_H^u never the primary's
    assert _grads(out["primary"], inputs) == [True, True, False, False]
    assert _grads(out["auxiliary"], inputs) == [False, False, True, True]
    # the transfer term moves only the model that learns
    assert _grads(out["transfer_l"], inputs)[0] == primary_worse
    assert _grads(out["transfer_h"], inputs)[2] == (not primary_worse)


def test_unlabelled_losses_sample_mode() -> None:
    a_l, b_l, a_h, b_h = _unlabelled_inputs(1)
    out = unlabelled_losses(a_l, b_l, a_h, b_h, mode="sample")
    e_l, e_h = sample_consistency_errors(a_l, b_l), sample_consistency_errors(a_h, b_h)
    mask = (e_l > e_h).double()
    assert torch.equal(out["mask"], mask)
    assert torch.equal(out["sample_eps_l"], e_l)
    assert 0 < mask.sum() < 6, "seed should give a mixed mask"
    keep = mask.bool()

    def part(x: torch.Tensor, y: torch.Tensor, sel: torch.Tensor) -> float:
        n = int(sel.sum())
        return n / 6 * plcc_loss(x.detach()[sel], y.detach()[sel]).item() if n >= 2 else 0.0

    assert out["transfer_l"].item() == pytest.approx(part(a_l, a_h, keep))
    assert out["transfer_h"].item() == pytest.approx(part(a_l, a_h, ~keep))
    assert out["primary"].item() == pytest.approx(out["transfer_l"].item() + plcc_loss(a_l, b_l).item())
    inputs = (a_l, b_l, a_h, b_h)
    assert _grads(out["primary"], inputs) == [True, True, False, False]
    assert _grads(out["auxiliary"], inputs) == [False, False, True, True]
    # the per-sample transfer moves only the routed samples
    g = torch.autograd.grad(out["transfer_l"], a_l, retain_graph=True)[0]
    assert (g[~keep] == 0).all()


def test_sample_mode_with_a_uniform_mask_equals_batch_mode() -> None:
    a_l, b_l, a_h, b_h = _unlabelled_inputs(2)
    with torch.no_grad():
        b_h.copy_(a_h)  # the auxiliary is perfectly self-consistent: every m_i = 1 and m = 1
    batch = unlabelled_losses(a_l, b_l, a_h, b_h)
    sample = unlabelled_losses(a_l, b_l, a_h, b_h, mode="sample")
    assert batch["mask"].item() == 1.0 and bool(sample["mask"].all())
    for key in ("primary", "auxiliary", "transfer"):
        assert sample[key].item() == pytest.approx(batch[key].item(), abs=1e-10)


# --------------------------------------------------------------------------------------------------
# ST-VQRL Gaussian-distance contrastive loss


def _np_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray, ridge: float) -> float:
    diff = mu1 - mu2
    pooled = (s1 + s2) / 2 + ridge * np.eye(len(mu1))
    return math.sqrt(max(float(diff @ np.linalg.pinv(pooled) @ diff), 0.0) + 1e-8)


def test_gaussian_fit_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    tokens = rng.normal(size=(2, 3, 20, 5)) * rng.uniform(0.5, 3, size=5) + rng.normal(size=5)
    mu, sigma = gaussian_fit(torch.tensor(tokens))
    assert mu.shape == (2, 3, 5) and sigma.shape == (2, 3, 5, 5)
    for b in range(2):
        for k in range(3):
            np.testing.assert_allclose(mu[b, k].numpy(), tokens[b, k].mean(axis=0), rtol=1e-12)
            np.testing.assert_allclose(
                sigma[b, k].numpy(), np.cov(tokens[b, k], rowvar=False, ddof=1), rtol=1e-10
            )
    with pytest.raises(ValueError, match="at least 2 tokens"):
        gaussian_fit(torch.rand(3, 1, 4))


@pytest.mark.parametrize("n_tokens", [40, 4])  # full-rank and rank-deficient (N < C) covariances
def test_gaussian_distance_matrix_matches_a_per_pair_numpy_loop(n_tokens: int) -> None:
    rng = np.random.default_rng(n_tokens)
    b, k, c = 2, 3, 6
    v1 = rng.normal(size=(b, k, n_tokens, c)) + rng.normal(size=(b, k, 1, c))
    v2 = rng.normal(size=(b, k, n_tokens, c)) * 1.5 + rng.normal(size=(b, k, 1, c))
    mu1, s1 = gaussian_fit(torch.tensor(v1))
    mu2, s2 = gaussian_fit(torch.tensor(v2))
    got = gaussian_distance_matrix(mu1, s1, mu2, s2).numpy()
    assert got.shape == (b, k, k)
    for bb in range(b):
        for i in range(k):
            for j in range(k):
                expected = _np_distance(
                    v1[bb, i].mean(0),
                    np.cov(v1[bb, i], rowvar=False),
                    v2[bb, j].mean(0),
                    np.cov(v2[bb, j], rowvar=False),
                    1e-4,
                )
                assert got[bb, i, j] == pytest.approx(expected, rel=1e-5, abs=1e-5)
    # symmetric in its two Gaussians
    swapped = gaussian_distance_matrix(mu2, s2, mu1, s1).numpy()
    np.testing.assert_allclose(swapped, got.transpose(0, 2, 1), rtol=1e-9)


@pytest.mark.parametrize("n_tokens", [40, 4])
def test_cholesky_solver_agrees_with_pinv(n_tokens: int) -> None:
    gen = torch.Generator().manual_seed(n_tokens)
    v1 = torch.randn(2, 3, n_tokens, 6, generator=gen, dtype=torch.float64) * 3
    v2 = torch.randn(2, 3, n_tokens, 6, generator=gen, dtype=torch.float64)
    fits = (*gaussian_fit(v1), *gaussian_fit(v2))
    pinv = gaussian_distance_matrix(*fits)
    chol = gaussian_distance_matrix(*fits, solver="cholesky")
    torch.testing.assert_close(chol, pinv, rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="positive ridge"):
        gaussian_distance_matrix(*fits, ridge=0.0, solver="cholesky")
    with pytest.raises(ValueError, match="solver"):
        gaussian_distance_matrix(*fits, solver="lu")  # type: ignore[arg-type]


def _loop_loss(v1: torch.Tensor, v2: torch.Tensor, tau: float) -> float:
    """The formula of docs/method.md 2.3 with explicit sums over scenes, anchors and candidates."""
    x1, x2 = v1.double().numpy(), v2.double().numpy()
    b, k = x1.shape[:2]

    def d(x: np.ndarray, y: np.ndarray) -> float:
        return _np_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False), 1e-4)

    def s(x: np.ndarray, y: np.ndarray) -> float:
        return math.exp(-tau * d(x, y))

    total = 0.0
    for bb in range(b):
        per_scene = 0.0
        for i in range(k):
            l1 = -math.log(s(x1[bb, i], x2[bb, i]) / sum(s(x1[bb, i], x2[bb, j]) for j in range(k)))
            l2 = -math.log(s(x2[bb, i], x1[bb, i]) / sum(s(x2[bb, i], x1[bb, j]) for j in range(k)))
            per_scene += l1 + l2
        total += per_scene / k
    return total / b


@pytest.mark.parametrize("tau", [0.1, 1.0])
def test_contrastive_loss_matches_a_hand_loop(tau: float) -> None:
    gen = torch.Generator().manual_seed(0)
    b, k, n, c = 2, 4, 12, 5
    offsets = torch.randn(b, k, 1, c, generator=gen) * 2
    v1 = torch.randn(b, k, n, c, generator=gen) + offsets
    v2 = torch.randn(b, k, n, c, generator=gen) + offsets
    loss, stats = gaussian_contrastive_loss(v1, v2, tau=tau)
    assert loss.dtype == torch.float32 and loss.shape == ()
    assert loss.item() == pytest.approx(_loop_loss(v1, v2, tau), rel=1e-5)
    assert set(stats) == {"pos_dist", "neg_dist", "l1", "l2", "top1"}
    assert stats["l1"].item() + stats["l2"].item() == pytest.approx(loss.item(), rel=1e-5)
    module = GaussianContrastiveLoss(tau=tau)
    assert module(v1, v2)[0].item() == pytest.approx(loss.item(), rel=1e-12)
    assert "solver='pinv'" in repr(module)
    cholesky_loss, _ = gaussian_contrastive_loss(v1, v2, tau=tau, solver="cholesky")
    assert cholesky_loss.item() == pytest.approx(loss.item(), rel=1e-6)


def test_matching_versions_give_a_lower_loss_than_shuffled_versions() -> None:
    gen = torch.Generator().manual_seed(1)
    b, k, n, c = 2, 6, 30, 8
    # very distinct versions: different means and scales
    offsets = torch.randn(b, k, 1, c, generator=gen) * 5
    scales = torch.rand(b, k, 1, c, generator=gen) * 2 + 0.5
    v1 = torch.randn(b, k, n, c, generator=gen) * scales + offsets
    v2 = torch.randn(b, k, n, c, generator=gen) * scales + offsets
    matched, stats = gaussian_contrastive_loss(v1, v2)
    identical, _ = gaussian_contrastive_loss(v1, v1.clone())
    shuffled, shuffled_stats = gaussian_contrastive_loss(v1, v2[:, torch.roll(torch.arange(k), 1)])
    chance = 2 * math.log(k)
    assert identical < matched < chance < shuffled
    assert stats["pos_dist"] < stats["neg_dist"] and stats["top1"].item() == 1.0
    assert shuffled_stats["top1"].item() == 0.0


@pytest.mark.parametrize(
    "case",
    ["few_tokens", "constant_tokens", "duplicate_tokens", "identical_views", "float32_compute", "cholesky"],
)
def test_contrastive_loss_and_gradients_stay_finite_for_degenerate_covariances(case: str) -> None:
    gen = torch.Generator().manual_seed(2)
    b, k, n, c = 2, 3, 3, 8  # N = 3 tokens in C = 8 dimensions: covariance rank <= 2
    v1 = torch.randn(b, k, n, c, generator=gen)
    v2 = torch.randn(b, k, n, c, generator=gen)
    kwargs: dict[str, object] = {}
    if case == "constant_tokens":
        v1 = torch.randn(b, k, 1, c, generator=gen).expand(b, k, 16, c).contiguous()
        v2 = torch.full((b, k, 16, c), 0.5)
    elif case == "duplicate_tokens":
        v1 = torch.randn(b, k, 2, c, generator=gen).repeat(1, 1, 10, 1)
        v2 = v1.clone()
    elif case == "identical_views":
        v2 = v1.clone()
    elif case == "float32_compute":
        v1, v2 = v1 * 100, v2 * 100
        kwargs["compute_dtype"] = None
    elif case == "cholesky":
        v1 = torch.randn(b, k, 1, c, generator=gen).expand(b, k, 16, c).contiguous()
        v2 = torch.randn(b, k, 2, c, generator=gen).repeat(1, 1, 8, 1)
        kwargs["solver"] = "cholesky"
    v1.requires_grad_(True)
    v2.requires_grad_(True)
    loss, stats = gaussian_contrastive_loss(v1, v2, **kwargs)  # type: ignore[arg-type]
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(value) for value in stats.values())
    assert torch.isfinite(v1.grad).all() and torch.isfinite(v2.grad).all()


def test_distance_gradients_match_finite_differences() -> None:
    gen = torch.Generator().manual_seed(3)
    v1 = torch.randn(1, 2, 5, 3, generator=gen, dtype=torch.float64).requires_grad_(True)
    v2 = torch.randn(1, 2, 5, 3, generator=gen, dtype=torch.float64).requires_grad_(True)

    def f(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return gaussian_contrastive_loss(x, y, tau=0.5)[0]

    assert torch.autograd.gradcheck(f, (v1, v2))


def test_contrastive_loss_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"\[B, K, N, C\]"):
        gaussian_contrastive_loss(torch.rand(2, 3, 4, 5), torch.rand(2, 3, 4, 6))
    with pytest.raises(ValueError, match=r"\[B, K, N, C\]"):
        gaussian_contrastive_loss(torch.rand(3, 4, 5), torch.rand(3, 4, 5))
    with pytest.raises(ValueError, match="at least 2 versions"):
        gaussian_contrastive_loss(torch.rand(2, 1, 4, 5), torch.rand(2, 1, 4, 5))
    with pytest.raises(ValueError, match="same leading"):
        gaussian_distance_matrix(torch.rand(2, 3), torch.rand(2, 3, 3), torch.rand(2, 4), torch.rand(2, 4, 4))


@pytest.mark.gpu
def test_contrastive_loss_on_cuda_matches_cpu() -> None:
    gen = torch.Generator().manual_seed(4)
    v1 = torch.randn(6, 10, 784, 64, generator=gen)
    v2 = v1 + 0.3 * torch.randn(6, 10, 784, 64, generator=gen)
    cpu, _ = gaussian_contrastive_loss(v1, v2)
    x1, x2 = v1.cuda().requires_grad_(True), v2.cuda().requires_grad_(True)
    gpu, _ = gaussian_contrastive_loss(x1, x2)
    gpu.backward()
    assert gpu.item() == pytest.approx(cpu.item(), rel=1e-5)
    assert torch.isfinite(x1.grad).all() and torch.isfinite(x2.grad).all()
