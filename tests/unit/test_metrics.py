"""Quality metrics against scipy, hand-computed values and the logistic mapping."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy import stats

from qasa_vqa.lit.metrics import QualityMetrics
from qasa_vqa.metrics import (
    INTERVAL_KEYS,
    ConstantInputWarning,
    LogisticFitWarning,
    MetricInputError,
    apply_fit,
    fit_logistic,
    logistic4,
    logistic5,
    prefixed,
    quality_metrics,
)

BETAS = (4.5, 1.2, 0.3, 0.7)  # upper asymptote, lower asymptote, centre, scale


def _noisy(seed: int, n: int = 80) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    pred = rng.normal(size=n)
    mos = logistic4(pred, *BETAS) + rng.normal(scale=0.4, size=n)
    return pred, mos


# ------------------------------------------------------------------ correlations vs scipy and by hand


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("ties", [False, True])
def test_correlations_equal_scipy(seed: int, ties: bool) -> None:
    rng = np.random.default_rng(seed)
    pred = rng.normal(size=60)
    mos = 0.5 * pred + rng.normal(size=60)
    if ties:  # coarse quantisation gives many ties in both
        pred, mos = np.round(pred * 2) / 2, np.round(mos)
    got = quality_metrics(pred, mos)
    assert got["srcc"] == pytest.approx(stats.spearmanr(pred, mos).statistic, abs=1e-12)
    assert got["krcc"] == pytest.approx(stats.kendalltau(pred, mos, variant="b").statistic, abs=1e-12)
    assert got["plcc"] == pytest.approx(stats.pearsonr(pred, mos).statistic, abs=1e-12)
    assert got["n"] == 60.0


def test_hand_computed_tiny_example() -> None:
    pred, mos = [1, 2, 3, 4, 5], [2, 1, 4, 3, 5]
    got = quality_metrics(pred, mos)
    # SRCC: ranks = values, d = [-1, 1, -1, 1, 0], sum d^2 = 4 -> 1 - 6 * 4 / (5 * 24) = 0.8
    assert got["srcc"] == pytest.approx(0.8)
    # KRCC: 10 pairs, discordant (1,2) and (3,4), no ties -> (8 - 2) / 10 = 0.6
    assert got["krcc"] == pytest.approx(0.6)
    # PLCC: dx = [-2,-1,0,1,2], dy = [-1,-2,1,0,2]; sum dx dy = 8, sum dx^2 = sum dy^2 = 10 -> 0.8
    assert got["plcc"] == pytest.approx(0.8)


def test_hand_computed_tau_b_with_a_tie() -> None:
    # pairs: 5 concordant, 0 discordant, one tie in pred -> 5 / sqrt((6 - 1) * (6 - 0))
    got = quality_metrics([1, 2, 2, 3], [1, 3, 2, 4], fit="none")
    assert got["krcc"] == pytest.approx(5 / np.sqrt(30))
    # fit="none": RMSE of the raw predictions, sqrt((0 + 1 + 0 + 1) / 4)
    assert got["rmse_logistic"] == pytest.approx(np.sqrt(0.5))
    assert got["plcc_logistic"] == got["plcc"]


def test_torch_and_list_inputs_match_numpy() -> None:
    pred, mos = _noisy(5, n=30)
    ref = quality_metrics(pred, mos)
    from_torch = quality_metrics(torch.tensor(pred, requires_grad=True), torch.tensor(mos))
    from_list = quality_metrics(pred.tolist(), mos.tolist())
    assert from_torch == pytest.approx(ref) and from_list == pytest.approx(ref)


# ------------------------------------------------------------------ the logistic mapping


@pytest.mark.parametrize("offset", [0.0, 50.0])
def test_noise_free_logistic_is_recovered(offset: float) -> None:
    # offset 0: mean(pred) ~ 1e-16, where a finite-difference Jacobian never moves b3 (PLCC 0.9957)
    pred = np.linspace(-3.0, 3.0, 50) + offset
    mos = logistic4(pred, BETAS[0], BETAS[1], BETAS[2] + offset, BETAS[3])
    got = quality_metrics(pred, mos)
    assert got["fit_failed"] == 0.0
    assert got["plcc_logistic"] == pytest.approx(1.0, abs=1e-9)
    assert got["rmse_logistic"] == pytest.approx(0.0, abs=1e-6)
    params, mapped = fit_logistic(pred, mos)
    np.testing.assert_allclose([*params[:3], abs(params[3])], np.add(BETAS, [0, 0, offset, 0]), rtol=1e-5)
    np.testing.assert_allclose(apply_fit(pred, params), mapped)


def test_noise_free_logistic5_is_recovered() -> None:
    pred = np.linspace(0.0, 10.0, 60)
    mos = logistic5(pred, 3.0, 1.5, 4.0, 0.1, 2.5)
    got = quality_metrics(pred, mos, fit="logistic5")
    assert got["fit_failed"] == 0.0
    assert got["plcc_logistic"] == pytest.approx(1.0, abs=1e-9)
    assert got["rmse_logistic"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("fit", ["logistic4", "logistic5"])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_fitted_plcc_beats_raw_plcc_on_a_nonlinear_monotone_relation(fit: str, sign: float) -> None:
    rng = np.random.default_rng(7)
    pred = sign * rng.uniform(0.0, 1.0, size=200)
    mos = 1.0 + 4.0 / (1.0 + np.exp(-sign * 12.0 * (pred - sign * 0.5))) + rng.normal(scale=0.1, size=200)
    got = quality_metrics(pred, mos, fit=fit)  # type: ignore[arg-type]
    assert got["fit_failed"] == 0.0
    assert np.sign(got["plcc"]) == sign
    assert got["plcc_logistic"] > abs(got["plcc"]) + 0.02
    assert got["plcc_logistic"] > 0.98


def test_rmse_is_positive_for_imperfect_predictions_and_in_mos_units() -> None:
    # regression: SimpleVQA's performance_no_fit computed y_label - y_label, so RMSE was always 0
    pred, mos = _noisy(11)
    got = quality_metrics(pred, mos)
    _, mapped = fit_logistic(pred, mos)
    assert got["rmse_logistic"] > 0.2
    assert got["rmse_logistic"] == pytest.approx(np.sqrt(np.mean((mapped - mos) ** 2)))
    # in MOS units: scaling MOS by 10 scales RMSE by 10 (and leaves the correlations alone)
    scaled = quality_metrics(pred, 10.0 * mos)
    assert scaled["rmse_logistic"] == pytest.approx(10.0 * got["rmse_logistic"], rel=1e-5)
    assert scaled["srcc"] == pytest.approx(got["srcc"])


def test_linear_fit_gives_absolute_pearson() -> None:
    pred, mos = _noisy(3)
    got = quality_metrics(-pred, mos, fit="linear")
    assert got["plcc_logistic"] == pytest.approx(abs(got["plcc"]))
    params, mapped = fit_logistic(-pred, mos, kind="linear")
    assert params.shape == (2,)
    np.testing.assert_allclose(mapped, params[0] * -pred + params[1])


def test_failed_fit_falls_back_to_a_line() -> None:
    pred, mos = _noisy(4)
    with pytest.warns(LogisticFitWarning, match="maxfev"):
        got = quality_metrics(pred, mos, maxfev=1)
    assert got["fit_failed"] == 1.0
    assert got["plcc_logistic"] == pytest.approx(abs(got["plcc"]))
    with pytest.warns(LogisticFitWarning, match="3 points cannot determine 4 parameters"):
        assert quality_metrics([1, 2, 3], [1, 2, 4])["fit_failed"] == 1.0
    with pytest.raises(MetricInputError, match="fit failed"):
        fit_logistic(pred, mos, maxfev=1, fallback=False)
    with pytest.warns(LogisticFitWarning):
        params, mapped = fit_logistic(pred, mos, maxfev=1)
    assert params.shape == (2,)
    np.testing.assert_allclose(apply_fit(pred, params, "logistic4"), mapped)


def test_constant_predictions_give_nan_and_a_warning() -> None:
    with pytest.warns(ConstantInputWarning, match="predictions are equal"):
        got = quality_metrics([2.0] * 5, [1, 2, 3, 4, 5])
    for key in ("srcc", "krcc", "plcc", "plcc_logistic"):
        assert np.isnan(got[key])
    # the best constant mapping is mean(MOS): RMSE = population std of MOS
    assert got["rmse_logistic"] == pytest.approx(np.std([1, 2, 3, 4, 5]))
    with pytest.warns(ConstantInputWarning, match="MOS are equal"):
        assert np.isnan(quality_metrics([1, 2, 3, 4], [3.0] * 4)["srcc"])


# ------------------------------------------------------------------ bootstrap


def test_bootstrap_intervals_contain_the_estimate_and_follow_the_seed() -> None:
    pred, mos = _noisy(21)
    got = quality_metrics(pred, mos, bootstrap=100, seed=1)
    for key in INTERVAL_KEYS:
        assert got[f"{key}_low"] <= got[key] <= got[f"{key}_high"], key
        assert got[f"{key}_low"] < got[f"{key}_high"], key
    again = quality_metrics(pred, mos, bootstrap=100, seed=1)
    other = quality_metrics(pred, mos, bootstrap=100, seed=2)
    assert again == got
    assert any(other[f"{k}_low"] != got[f"{k}_low"] for k in INTERVAL_KEYS)
    assert "srcc_low" not in quality_metrics(pred, mos)


def test_vectorised_bootstrap_equals_a_scipy_loop() -> None:
    pred, mos = _noisy(8, n=40)
    pred = np.round(pred, 1)  # ties
    got = quality_metrics(pred, mos, fit="none", bootstrap=100, seed=3, confidence=0.9)
    idx = np.random.default_rng(3).integers(0, 40, size=(100, 40))  # one chunk: the same draws
    for key, func in (("srcc", stats.spearmanr), ("plcc", stats.pearsonr), ("krcc", stats.kendalltau)):
        values = [func(pred[i], mos[i]).statistic for i in idx]
        low, high = np.percentile(values, [5.0, 95.0])
        assert got[f"{key}_low"] == pytest.approx(low, abs=1e-12)
        assert got[f"{key}_high"] == pytest.approx(high, abs=1e-12)


# ------------------------------------------------------------------ invalid inputs


@pytest.mark.parametrize(
    ("pred", "mos", "message"),
    [
        ([1, 2, 3, 4], [1, 2, 3], "same length, got 4 predictions and 3 MOS"),
        ([1, 2], [1, 2], "at least 3"),
        ([1, np.nan, 3, np.nan], [1, 2, 3, 4], "2 of 4 predictions and 0 of 4 MOS"),
        ([1, 2, 3], [np.nan, 2, 3], "0 of 3 predictions and 1 of 3 MOS"),
        ([[1, 2], [3, 4]], [1, 2], "must be 1-D"),
    ],
)
def test_invalid_inputs_raise_clear_errors(pred: object, mos: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        quality_metrics(pred, mos)


def test_invalid_options_raise() -> None:
    with pytest.raises(MetricInputError, match="unknown fit"):
        quality_metrics([1, 2, 3], [1, 2, 3], fit="cubic")  # type: ignore[arg-type]
    with pytest.raises(MetricInputError, match="bootstrap"):
        quality_metrics([1, 2, 3], [1, 2, 3], bootstrap=-1)
    with pytest.raises(MetricInputError, match="confidence"):
        quality_metrics([1, 2, 3], [1, 2, 3], confidence=1.5)


# ------------------------------------------------------------------ torchmetrics and names


def _batches(pred: np.ndarray, mos: np.ndarray, sizes: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out, start = [], 0
    for size in sizes:
        out.append((torch.tensor(pred[start : start + size]), torch.tensor(mos[start : start + size])))
        start += size
    return out


def _assert_matches(result: dict[str, torch.Tensor], expected: dict[str, float]) -> None:
    assert set(result) == set(expected)
    for key, value in expected.items():
        assert result[key].dtype == torch.float64
        assert result[key].item() == pytest.approx(value, abs=1e-12), key


def test_metric_over_batches_equals_the_concatenation() -> None:
    pred, mos = _noisy(31, n=50)
    metric = QualityMetrics(bootstrap=5, seed=4)
    for i, (p, m) in enumerate(_batches(pred, mos, [16, 16, 18])):
        metric.update(p.float()[:, None] if i == 0 else p, m)  # [B, 1] and float32 are accepted
    expected = quality_metrics(
        np.concatenate([pred[:16].astype(np.float32), pred[16:]]), mos, bootstrap=5, seed=4
    )
    _assert_matches(metric.compute(), expected)


def test_metric_reset_and_empty_state() -> None:
    pred, mos = _noisy(32, n=20)
    metric = QualityMetrics()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torchmetrics: compute before update
        with pytest.raises(MetricInputError, match="no predictions accumulated"):
            metric.compute()
    metric.update(torch.tensor(pred), torch.tensor(mos))
    metric.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(MetricInputError, match="no predictions accumulated"):
            metric.compute()
    metric.update(torch.tensor(pred[:10]), torch.tensor(mos[:10]))
    _assert_matches(metric.compute(), quality_metrics(pred[:10], mos[:10]))


def test_metric_rejects_bad_batches() -> None:
    metric = QualityMetrics()
    with pytest.raises(MetricInputError, match="shape"):
        metric.update(torch.zeros(4, 2), torch.zeros(4, 2))
    with pytest.raises(MetricInputError, match="4 predictions but 3 targets"):
        metric.update(torch.zeros(4), torch.zeros(3))


@pytest.mark.parametrize("empty_rank", [False, True])
def test_metric_gathers_like_ddp(empty_rank: bool) -> None:
    """Simulate ``all_gather`` across two ranks through torchmetrics' own sync path."""
    pred, mos = _noisy(33, n=40)
    rank0, rank1 = QualityMetrics(), QualityMetrics()
    for p, m in _batches(pred, mos, [10, 15]):
        rank0.update(p, m)
    if not empty_rank:
        for p, m in _batches(pred[25:], mos[25:], [7, 8]):
            rank1.update(p, m)
    remote = {
        "preds": torch.cat(rank1.preds) if rank1.preds else torch.tensor([], dtype=torch.float64),
        "target": torch.cat(rank1.target) if rank1.target else torch.tensor([], dtype=torch.float64),
    }
    local = {"preds": torch.cat(rank0.preds), "target": torch.cat(rank0.target)}

    def fake_all_gather(tensor: torch.Tensor, group: object = None) -> list[torch.Tensor]:
        (name,) = [k for k, v in local.items() if torch.equal(v, tensor)]
        assert tensor.dtype == remote[name].dtype  # all_gather needs one dtype on every rank
        return [tensor, remote[name]]

    rank0._sync_dist(fake_all_gather)
    n = 25 if empty_rank else 40
    _assert_matches(rank0.compute(), quality_metrics(pred[:n], mos[:n]))


def test_metric_merge_state_equals_full_data() -> None:
    pred, mos = _noisy(34, n=30)
    a, b = QualityMetrics(), QualityMetrics()
    a.update(torch.tensor(pred[:12]), torch.tensor(mos[:12]))
    b.update(torch.tensor(pred[12:]), torch.tensor(mos[12:]))
    b.merge_state(a)  # incoming state first, then local
    _assert_matches(b.compute(), quality_metrics(np.r_[pred[:12], pred[12:]], np.r_[mos[:12], mos[12:]]))


def test_prefixed_names() -> None:
    assert prefixed({"srcc": 0.9, "plcc": 0.8}, "val", "qasa") == {"val/qasa/srcc": 0.9, "val/qasa/plcc": 0.8}
    with pytest.raises(MetricInputError, match="stage"):
        prefixed({"srcc": 0.9}, "val/x", "qasa")
    with pytest.raises(MetricInputError, match="branch"):
        prefixed({"srcc": 0.9}, "val", "")


def test_analytic_jacobians_match_finite_differences() -> None:
    from qasa_vqa.metrics import _logistic4_jac, _logistic5_jac

    x = np.random.default_rng(0).normal(size=9)
    cases = [
        (logistic4, _logistic4_jac, [4.0, 1.0, 0.3, 0.7]),
        (logistic4, _logistic4_jac, [4.0, 1.0, 0.3, -0.7]),  # |b4|: the sign of b4 flips d/db4
        (logistic5, _logistic5_jac, [3.0, 1.5, 0.2, 0.1, 2.0]),
    ]
    for func, jac, params in cases:
        h = 1e-6
        numeric = np.stack(
            [
                (func(x, *np.add(params, h * e)) - func(x, *np.subtract(params, h * e))) / (2 * h)
                for e in np.eye(len(params))
            ],
            axis=1,
        )
        np.testing.assert_allclose(jac(x, *params), numeric, atol=1e-7)
