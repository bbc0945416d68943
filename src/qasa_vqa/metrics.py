"""Quality-assessment metrics: SRCC, KRCC, PLCC (raw and fitted), RMSE and bootstrap intervals.

Pure numpy / scipy; the epoch-level ``torchmetrics`` version for the Lightning systems is
:class:`qasa_vqa.lit.metrics.QualityMetrics`.

Conventions (docs/method.md section 5.2; pyiqa's ``correlation_coefficient.py`` is the reference style):

* ``srcc`` is Spearman's rho, ``krcc`` Kendall's tau-b and ``plcc`` Pearson's r, all of the **raw**
  predictions against MOS, computed with ``scipy.stats`` (``spearmanr``, ``kendalltau``, ``pearsonr``).
* ``plcc_logistic`` is Pearson's r after mapping the predictions onto the MOS scale with the VQEG
  4-parameter logistic ``f(x) = (b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2`` (the default), fitted by
  ``scipy.optimize.curve_fit`` from pyiqa's initialisation ``[max(mos), min(mos), mean(pred),
  std(pred) / 4]``. The fit is in-sample (fitted and scored on the same set), as in VQEG and every peer.
  Deviation from pyiqa: ``curve_fit`` gets the analytic Jacobian. MINPACK's forward-difference step
  is ``~1.5e-8 * |b3|``, so with ``mean(pred) ~ 0`` (centred or z-scored predictions) ``x - b3`` does
  not change in floating point, ``b3`` never moves and the fit stalls (PLCC 0.9957 instead of 1 on a
  noise-free logistic; see the tests).
* ``rmse_logistic`` is the RMSE between the **fitted** predictions and MOS, so it is in MOS units.
* ``fit="logistic5"`` uses DBCNN's 5-parameter form ``b1 * (0.5 - 1 / (1 + exp(b2 * (x - b3)))) + b4 * x
  + b5``, initialised here (our choice, not a peer's) as ``[sign(r) * (max(mos) - min(mos)), 1 /
  std(pred), mean(pred), 0, mean(mos)]`` with ``r`` the raw Pearson r: the sigmoid is centred on the
  data, spans about two standard deviations each side, its amplitude is the MOS range and the linear
  term starts at zero. (pyiqa's ``[10, 0, mean(mos), 0.1, 0.1]`` starts flat and centred on the MOS
  mean, so it is not reused.) ``fit="linear"`` is a least-squares line; ``fit="none"`` scores the raw
  predictions (``plcc_logistic == plcc`` and ``rmse_logistic`` is then in prediction units).
* When a logistic fit fails (no convergence within ``maxfev``, non-finite parameters, fewer points
  than parameters, constant predictions) the mapping falls back to the least-squares line and the
  result carries ``fit_failed = 1.0`` (else ``0.0``), with a :class:`LogisticFitWarning`.
* Constant predictions (or MOS) make every correlation undefined: they are reported as NaN with a
  :class:`ConstantInputWarning`, never an exception.
* Bootstrap intervals are percentile intervals over ``bootstrap`` resamples of (prediction, MOS)
  pairs drawn with ``numpy.random.default_rng(seed)``; each resample repeats the whole procedure
  (including the logistic fit from the same initialisation).

Peers' pitfalls, one line each (do not repeat them):

* SimpleVQA ``performance_no_fit`` computes RMSE as ``y_label - y_label``, so its RMSE is always 0.
* pyiqa (``132626b``) ``calculate_rmse`` returns ``sqrt(sum((x - y) ** 2))``, an L2 norm growing with N.
* FAST-VQA / DOVER ``split_train.py`` report the **best** of 10 splits; report mean +- std over draws.
* FAST-VQA / DOVER z-score predictions to the MOS mean/std before PLCC: that is raw PLCC, not fitted.
* BVQA_Benchmark initialises the logistic with ``b4 = 0.5`` (not ``std / 4``) and ``maxfev = 1e8``, so
  its fitted PLCC can differ slightly from pyiqa's and ours.
* Q-Align, SSL-VQA and the QASA test script report raw PLCC: compare them with ``plcc``, not
  ``plcc_logistic``.
* ``DistributedSampler`` pads ranks by repeating samples, so a DDP evaluation scores duplicates unless
  the evaluation sampler does not pad.

Metric names logged by the Lightning modules follow ``{stage}/{branch}/{metric}``;
:func:`prefixed` builds them, e.g. ``val/qasa/srcc``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch
from scipy import optimize, stats
from scipy.special import expit

from qasa_vqa.errors import QasaVqaError

__all__ = [
    "CORRELATION_KEYS",
    "FIT_PARAMETERS",
    "INTERVAL_KEYS",
    "ConstantInputWarning",
    "FitKind",
    "LogisticFitWarning",
    "MetricInputError",
    "apply_fit",
    "fit_logistic",
    "logistic4",
    "logistic5",
    "prefixed",
    "quality_metrics",
]

FitKind = Literal["logistic4", "logistic5", "linear", "none"]
_FIT_KINDS: tuple[str, ...] = ("logistic4", "logistic5", "linear", "none")
FIT_PARAMETERS = {"logistic4": 4, "logistic5": 5, "linear": 2, "none": 0}
"""How many parameters each mapping has (``fit_logistic`` returns that many)."""
_N_PARAMS = FIT_PARAMETERS

CORRELATION_KEYS: tuple[str, ...] = ("srcc", "krcc", "plcc", "plcc_logistic")
"""The keys of :func:`quality_metrics` that are correlations (NaN for constant inputs)."""
INTERVAL_KEYS: tuple[str, ...] = ("srcc", "krcc", "plcc", "plcc_logistic", "rmse_logistic")
"""The keys that get ``<key>_low`` / ``<key>_high`` bootstrap intervals."""

DEFAULT_MAXFEV = 10_000


class MetricInputError(QasaVqaError, ValueError):
    """Predictions or MOS that cannot be scored: wrong shape, mismatched lengths, too few, NaN."""


class ConstantInputWarning(RuntimeWarning):
    """Predictions or MOS are constant, so the correlations are undefined (reported as NaN)."""


class LogisticFitWarning(RuntimeWarning):
    """The logistic mapping could not be fitted; a least-squares line was used instead."""


# --------------------------------------------------------------------------------------------------
# mappings
# --------------------------------------------------------------------------------------------------


def logistic4(x: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """VQEG 4-parameter logistic ``(b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2``.

    ``b1`` and ``b2`` are the upper and lower asymptotes (for an increasing relation), ``b3`` the
    centre and ``|b4|`` the scale. ``b4 = 0`` is treated as the smallest positive scale (a step).
    """
    scale = max(abs(float(b4)), np.finfo(np.float64).tiny)
    with np.errstate(over="ignore"):
        z = (np.asarray(x, dtype=np.float64) - b3) / scale
    return (b1 - b2) * expit(z) + b2


def logistic5(x: np.ndarray, b1: float, b2: float, b3: float, b4: float, b5: float) -> np.ndarray:
    """DBCNN's 5-parameter logistic ``b1 * (0.5 - 1 / (1 + exp(b2 * (x - b3)))) + b4 * x + b5``."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore"):
        z = b2 * (x - b3)
    # 1 / (1 + exp(z)) == expit(-z), stable for any z
    return b1 * (0.5 - expit(-z)) + b4 * x + b5


def _logistic4_jac(x: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """Analytic Jacobian of :func:`logistic4` with respect to (b1, b2, b3, b4), shape [N, 4]."""
    scale = max(abs(float(b4)), np.finfo(np.float64).tiny)
    with np.errstate(over="ignore"):
        z = (np.asarray(x, dtype=np.float64) - b3) / scale
    s = expit(z)
    slope = (b1 - b2) * s * (1.0 - s)  # d f / d z
    sign = -1.0 if b4 < 0 else 1.0
    return np.stack([s, 1.0 - s, -slope / scale, -slope * z / scale * sign], axis=1)


def _logistic5_jac(x: np.ndarray, b1: float, b2: float, b3: float, b4: float, b5: float) -> np.ndarray:
    """Analytic Jacobian of :func:`logistic5` with respect to (b1, ..., b5), shape [N, 5]."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore"):
        q = expit(-b2 * (x - b3))
    slope = b1 * q * (1.0 - q)  # d f / d (b2 (x - b3))
    return np.stack([0.5 - q, slope * (x - b3), -slope * b2, x, np.ones_like(x)], axis=1)


def apply_fit(x: Any, params: np.ndarray, kind: FitKind = "logistic4") -> np.ndarray:
    """Map predictions ``x`` with ``params`` from :func:`fit_logistic`.

    ``params`` of length 2 are always a line ``(slope, intercept)`` (the fallback of a failed logistic
    fit), whatever ``kind`` says; ``kind="none"`` returns ``x`` unchanged.
    """
    x = _as_1d(x, "x")
    params = np.asarray(params, dtype=np.float64)
    if kind == "none":
        return x.copy()
    if params.shape == (2,):
        return params[0] * x + params[1]
    if kind == "logistic4" and params.shape == (4,):
        return logistic4(x, *params)
    if kind == "logistic5" and params.shape == (5,):
        return logistic5(x, *params)
    raise MetricInputError(f"apply_fit: {params.shape[0]} parameters do not describe a {kind!r} mapping")


def _linear_fit(pred: np.ndarray, mos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares line; for constant ``pred`` the minimum-norm solution maps everything to mean(mos)."""
    design = np.stack([pred, np.ones_like(pred)], axis=1)
    params, *_ = np.linalg.lstsq(design, mos, rcond=None)
    return params, design @ params


def _initial_params(pred: np.ndarray, mos: np.ndarray, kind: str) -> list[float]:
    if kind == "logistic4":  # pyiqa / VQEG initialisation
        return [float(mos.max()), float(mos.min()), float(pred.mean()), float(pred.std()) / 4.0]
    # logistic5: sigmoid centred on the data, amplitude = MOS range with the sign of the raw relation
    r = np.corrcoef(pred, mos)[0, 1] if mos.std() > 0 else 1.0
    sign = -1.0 if r < 0 else 1.0
    return [sign * float(np.ptp(mos)), 1.0 / float(pred.std()), float(pred.mean()), 0.0, float(mos.mean())]


def _fit(
    pred: np.ndarray, mos: np.ndarray, kind: str, maxfev: int
) -> tuple[np.ndarray, np.ndarray, bool, str]:
    """Fit ``kind``; return (params, mapped, failed, reason). Never raises on a failed fit."""
    if kind == "none":
        return np.empty(0), pred.copy(), False, ""
    if kind == "linear":
        params, mapped = _linear_fit(pred, mos)
        return params, mapped, False, ""
    n_params = _N_PARAMS[kind]
    if np.ptp(pred) == 0:
        reason = "the predictions are constant"
    elif pred.size < n_params:
        reason = f"{pred.size} points cannot determine {n_params} parameters"
    else:
        func, jac = (logistic4, _logistic4_jac) if kind == "logistic4" else (logistic5, _logistic5_jac)
        try:
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore", optimize.OptimizeWarning)
                params, _ = optimize.curve_fit(
                    func, pred, mos, p0=_initial_params(pred, mos, kind), jac=jac, maxfev=maxfev
                )
            mapped = func(pred, *params)
        except (RuntimeError, ValueError, TypeError, FloatingPointError, np.linalg.LinAlgError) as err:
            reason = f"curve_fit failed ({err})"
        else:
            if np.all(np.isfinite(params)) and np.all(np.isfinite(mapped)):
                return np.asarray(params, dtype=np.float64), mapped, False, ""
            reason = "curve_fit returned non-finite parameters"
    params, mapped = _linear_fit(pred, mos)
    return params, mapped, True, reason


def fit_logistic(
    pred: Any,
    mos: Any,
    kind: FitKind = "logistic4",
    *,
    maxfev: int = DEFAULT_MAXFEV,
    fallback: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Fit the mapping from predictions to MOS; return ``(params, mapped_pred)``.

    ``kind="logistic4"`` (VQEG, pyiqa initialisation) is the default; ``"logistic5"`` (DBCNN form),
    ``"linear"`` (``params = [slope, intercept]``) and ``"none"`` (empty params, predictions
    unchanged) are the others. When a logistic fit fails, ``fallback=True`` warns
    (:class:`LogisticFitWarning`) and returns the least-squares line (2 parameters, which
    :func:`apply_fit` recognises); ``fallback=False`` raises :class:`MetricInputError` instead.
    Reuse the mapping on new predictions with :func:`apply_fit`.
    """
    kind = check_fit_kind(kind)
    pred_arr, mos_arr = _validate(pred, mos)
    params, mapped, failed, reason = _fit(pred_arr, mos_arr, kind, maxfev)
    if failed:
        if not fallback:
            raise MetricInputError(f"fit_logistic: the {kind} fit failed: {reason}")
        warnings.warn(
            f"fit_logistic: the {kind} fit failed ({reason}); using a least-squares line instead",
            LogisticFitWarning,
            stacklevel=2,
        )
    return params, mapped


# --------------------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------------------


def _as_1d(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to(device="cpu", dtype=torch.float64).numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise MetricInputError(f"{name} must be a sequence of numbers ({err})") from err
    if arr.ndim != 1:
        raise MetricInputError(f"{name} must be 1-D, got shape {tuple(arr.shape)}")
    return arr


def _validate(pred: Any, mos: Any, min_items: int = 3) -> tuple[np.ndarray, np.ndarray]:
    pred_arr, mos_arr = _as_1d(pred, "pred"), _as_1d(mos, "mos")
    if pred_arr.size != mos_arr.size:
        raise MetricInputError(
            f"pred and mos must have the same length, got {pred_arr.size} predictions and {mos_arr.size} MOS"
        )
    if pred_arr.size < min_items:
        raise MetricInputError(f"need at least {min_items} (prediction, MOS) pairs, got {pred_arr.size}")
    bad_pred, bad_mos = int(np.sum(~np.isfinite(pred_arr))), int(np.sum(~np.isfinite(mos_arr)))
    if bad_pred or bad_mos:
        raise MetricInputError(
            f"NaN/inf values: {bad_pred} of {pred_arr.size} predictions and {bad_mos} of {mos_arr.size} MOS"
        )
    return pred_arr, mos_arr


def check_fit_kind(kind: str) -> str:
    if kind not in _FIT_KINDS:
        raise MetricInputError(f"unknown fit {kind!r}; choose one of {', '.join(_FIT_KINDS)}")
    return kind


# --------------------------------------------------------------------------------------------------
# the metrics
# --------------------------------------------------------------------------------------------------


def _point_metrics(pred: np.ndarray, mos: np.ndarray, fit: str, maxfev: int) -> tuple[dict[str, float], str]:
    """All point metrics of one (pred, mos) sample, with no warnings; returns (metrics, fit failure)."""
    nan = float("nan")
    defined = np.ptp(pred) > 0 and np.ptp(mos) > 0
    out: dict[str, float] = {}
    if defined:
        out["srcc"] = float(stats.spearmanr(pred, mos).statistic)
        out["krcc"] = float(stats.kendalltau(pred, mos, variant="b").statistic)
        out["plcc"] = float(stats.pearsonr(pred, mos).statistic)
    else:
        out["srcc"] = out["krcc"] = out["plcc"] = nan
    _, mapped, failed, reason = _fit(pred, mos, fit, maxfev)
    out["plcc_logistic"] = (
        float(stats.pearsonr(mapped, mos).statistic) if defined and np.ptp(mapped) > 0 else nan
    )
    out["rmse_logistic"] = float(np.sqrt(np.mean((mapped - mos) ** 2)))
    out["n"] = float(pred.size)
    out["fit_failed"] = 1.0 if failed else 0.0
    return out, reason


def _rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.sum(a * b, axis=1) / np.sqrt(np.sum(a * a, axis=1) * np.sum(b * b, axis=1))
    return np.clip(r, -1.0, 1.0)


def _bootstrap(
    pred: np.ndarray, mos: np.ndarray, fit: str, maxfev: int, n_boot: int, seed: int, confidence: float
) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    n = pred.size
    samples: dict[str, list[np.ndarray]] = {key: [] for key in INTERVAL_KEYS}
    chunk = max(1, 2_000_000 // n)  # bound the index matrix to ~16 MB
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_boot - start), n))
        p, m = pred[idx], mos[idx]
        # vectorised: Pearson of ranks (average ties) is exactly Spearman's rho
        samples["plcc"].append(_rowwise_pearson(p, m))
        samples["srcc"].append(_rowwise_pearson(stats.rankdata(p, axis=1), stats.rankdata(m, axis=1)))
        krcc, plcc_fit, rmse_fit = (np.empty(len(idx)) for _ in range(3))
        for i in range(len(idx)):
            constant = np.ptp(p[i]) == 0 or np.ptp(m[i]) == 0
            krcc[i] = np.nan if constant else stats.kendalltau(p[i], m[i], variant="b").statistic
            _, mapped, _, _ = _fit(p[i], m[i], fit, maxfev)
            rmse_fit[i] = np.sqrt(np.mean((mapped - m[i]) ** 2))
            plcc_fit[i] = np.nan if constant or np.ptp(mapped) == 0 else np.corrcoef(mapped, m[i])[0, 1]
        samples["krcc"].append(krcc)
        samples["plcc_logistic"].append(plcc_fit)
        samples["rmse_logistic"].append(rmse_fit)
    tail = 100.0 * (1.0 - confidence) / 2.0
    out: dict[str, float] = {}
    for key, parts in samples.items():
        values = np.concatenate(parts)
        if np.all(np.isnan(values)):
            low = high = float("nan")
        else:
            low, high = np.nanpercentile(values, [tail, 100.0 - tail])
        out[f"{key}_low"], out[f"{key}_high"] = float(low), float(high)
    return out


def quality_metrics(
    pred: Any,
    mos: Any,
    *,
    fit: FitKind = "logistic4",
    bootstrap: int = 0,
    seed: int = 0,
    confidence: float = 0.95,
    maxfev: int = DEFAULT_MAXFEV,
) -> dict[str, float]:
    """SRCC, KRCC, PLCC (raw and fitted) and fitted RMSE of predictions against MOS.

    Args:
        pred: predicted scores, 1-D (list, numpy array or torch tensor), any scale.
        mos: the mean opinion scores, 1-D, same length (at least 3).
        fit: the mapping before ``plcc_logistic`` / ``rmse_logistic``: ``"logistic4"`` (VQEG, pyiqa
            initialisation; default), ``"logistic5"`` (DBCNN), ``"linear"`` or ``"none"``.
        bootstrap: number of resamples for percentile intervals (0: none).
        seed: seed of ``numpy.random.default_rng`` for the resampling.
        confidence: coverage of the intervals, in (0, 1).
        maxfev: ``curve_fit``'s evaluation budget.

    Returns:
        ``srcc``, ``krcc``, ``plcc``, ``plcc_logistic``, ``rmse_logistic``, ``n`` and ``fit_failed``
        (1.0 when the logistic fit fell back to a line), plus ``<key>_low`` / ``<key>_high`` for each
        of :data:`INTERVAL_KEYS` when ``bootstrap > 0``. All values are floats.

    Raises:
        MetricInputError: (a ``ValueError``) for non-1-D inputs, mismatched lengths, fewer than 3
            pairs, NaN/inf values, an unknown ``fit`` or invalid bootstrap settings.
    """
    fit = check_fit_kind(fit)  # type: ignore[assignment]
    if int(bootstrap) != bootstrap or bootstrap < 0:
        raise MetricInputError(f"bootstrap must be a non-negative integer, got {bootstrap!r}")
    if not 0.0 < confidence < 1.0:
        raise MetricInputError(f"confidence must be in (0, 1), got {confidence!r}")
    pred_arr, mos_arr = _validate(pred, mos)
    for name, arr in (("predictions", pred_arr), ("MOS", mos_arr)):
        if np.ptp(arr) == 0:
            warnings.warn(
                f"quality_metrics: all {arr.size} {name} are equal ({arr[0]:g}); SRCC, KRCC and PLCC are "
                "undefined and reported as NaN",
                ConstantInputWarning,
                stacklevel=2,
            )
    out, reason = _point_metrics(pred_arr, mos_arr, fit, maxfev)
    if out["fit_failed"] and np.ptp(pred_arr) > 0:  # constant predictions were already reported
        warnings.warn(
            f"quality_metrics: the {fit} fit failed ({reason}); rmse_logistic and plcc_logistic use a "
            "least-squares line (fit_failed = 1.0)",
            LogisticFitWarning,
            stacklevel=2,
        )
    if bootstrap:
        out.update(_bootstrap(pred_arr, mos_arr, fit, maxfev, int(bootstrap), seed, confidence))
    return out


def prefixed(metrics: Mapping[str, Any], stage: str, branch: str) -> dict[str, Any]:
    """``{stage}/{branch}/{metric}`` names, e.g. ``val/qasa/srcc``."""
    for label, value in (("stage", stage), ("branch", branch)):
        if not value or "/" in value:
            raise MetricInputError(f"{label} must be a non-empty name without '/', got {value!r}")
    return {f"{stage}/{branch}/{key}": value for key, value in metrics.items()}
