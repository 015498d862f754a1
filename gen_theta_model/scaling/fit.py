"""Power-law fits of loss against scale, with bootstrap intervals and inversion.

Two forms, both fitted in log space (the errors of a loss are multiplicative):

* ``power``:        L(x) = (xc / x) ** alpha          log L = alpha (log xc - log x)
* ``power_floor``:  L(x) = e + (xc / x) ** alpha      an irreducible loss e >= 0

``x`` is the number of pretraining trajectories D (the seed's L(D) = (Dc/D)^alphaD),
or the parameter count N, or anything else that scales. The pure power law is a
weighted linear regression of log L on log x; the floor form is a bounded
nonlinear least-squares fit (scipy ``least_squares``) from several starts. Both
are fitted as L = e + exp(a - alpha log x), well conditioned also where alpha is
near 0 (no law: the loss does not fall with scale); xc = exp(a / alpha) is
derived (inf when alpha <= 0 gives no finite xc).

Intervals come from a seeded pairs bootstrap: points are resampled with
replacement and the form refitted; a resample with fewer distinct x than the form
has parameters is drawn again. Percentile intervals are reported. With fewer than
parameters + 2 distinct x, most resamples would fit exactly, and no interval is given.

Every result is a frozen dataclass with ``to_dict``/``from_dict`` (plain JSON).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy.optimize import least_squares

Form = Literal["power", "power_floor"]
INTERVAL_NAMES = ("xc", "alpha", "e")
N_PARAMS: dict[str, int] = {"power": 2, "power_floor": 3}
MAX_BOOT_DRAWS = 20  # draws per kept resample before giving up on degenerate data


@dataclass(frozen=True)
class ScalingFit:
    """One fitted power law with its goodness of fit and bootstrap samples.

    ``a`` is the log-space intercept (L = e + exp(a - alpha log x)); ``samples``
    holds one (a, alpha, e) row per kept bootstrap resample; intervals of anything
    derived from the fit (a prediction, an inversion, xc) are percentiles over these
    rows. ``aicc`` is None where n - k - 1 <= 0.
    """

    form: Form
    x_name: str
    xc: float
    alpha: float
    e: float
    a: float
    x: list[float]
    y: list[float]
    r2_log: float
    rmse_log: float
    rmse: float
    aic: float
    aicc: float | None
    level: float
    ci: dict[str, list[float]] = field(default_factory=dict)
    samples: list[list[float]] = field(default_factory=list)
    boot_rejected: int = 0

    @property
    def n_params(self) -> int:
        return N_PARAMS[self.form]

    def predict(self, x: np.ndarray | float) -> np.ndarray:
        """Loss at scale ``x`` (any shape)."""
        return _model(np.asarray(x, dtype=float), self.a, self.alpha, self.e)

    def predict_band(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Pointwise percentile band of the prediction at ``x`` (shape (M,)), or None."""
        if not self.samples:
            return None
        s = np.asarray(self.samples)
        preds = _model(np.asarray(x, dtype=float)[None, :], s[:, :1], s[:, 1:2], s[:, 2:3])  # (B, M)
        lo, hi = _percentiles(self.level)
        return np.percentile(preds, lo, axis=0), np.percentile(preds, hi, axis=0)

    def invert(self, target: float) -> float:
        """Scale x at which the fitted loss equals ``target``.

        inf when ``target`` is at or below the floor e, or when alpha <= 0 (the fitted
        loss does not fall with scale, so no amount of data reaches a lower target).
        """
        return _invert(target, self.a, self.alpha, self.e)

    def invert_interval(self, target: float) -> list[float] | None:
        """Percentile interval of :meth:`invert` over the bootstrap samples (may hold inf)."""
        if not self.samples:
            return None
        return _interval([_invert(target, *row) for row in self.samples], self.level)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["n_params"] = self.n_params
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScalingFit:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class DataRequirement:
    """Data needed for a target loss, and the time to collect it.

    ``d_needed`` trajectories (inf when the target is at or below the fitted
    floor); ``hours`` = d_needed * hours_per_trajectory; ``weeks`` = hours beyond
    what ``d_have`` trajectories already hold, divided by the weekly collection rate.
    """

    target: float
    d_needed: float
    d_ci: list[float] | None
    hours_per_trajectory: float
    hours_per_week: float
    d_have: float
    hours: float
    weeks: float
    weeks_ci: list[float] | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def fit_power_law(
    x: np.ndarray,
    y: np.ndarray,
    *,
    form: Form = "power",
    sigma_log: np.ndarray | None = None,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    x_name: str = "D",
) -> ScalingFit:
    """Fit ``form`` to losses ``y`` (shape (n,), > 0) at scales ``x`` (shape (n,), > 0).

    ``sigma_log`` (shape (n,)) is the standard deviation of log y per point, e.g.
    std(L)/L over seeds or task suites; points are weighted by 1/sigma_log**2.
    ``n_boot`` bootstrap resamples drawn from ``np.random.default_rng(seed)``.
    """
    x, y, w = _check_points(x, y, sigma_log, form)
    a, alpha, e = _fit_once(form, x, y, w)
    resid = np.log(y) - np.log(_model(x, a, alpha, e))
    k, n = N_PARAMS[form], len(x)
    wrss = float(np.sum(w * resid**2))
    ly = np.log(y)
    ss_tot = float(np.sum(w * (ly - np.average(ly, weights=w)) ** 2))
    aic = n * math.log(max(wrss, 1e-300) / n) + 2 * k
    samples, rejected = _bootstrap(form, x, y, w, (a, alpha, e), n_boot, seed)
    ci = {}
    if samples:
        columns = {"xc": [_xc(r[0], r[1]) for r in samples], "alpha": [r[1] for r in samples],
                   "e": [r[2] for r in samples]}
        ci = {name: _interval(columns[name], level) for name in INTERVAL_NAMES[:k]}
    return ScalingFit(
        form=form, x_name=x_name, xc=_xc(a, alpha), alpha=alpha, e=e, a=a,
        x=x.tolist(), y=y.tolist(),
        r2_log=1.0 - wrss / ss_tot if ss_tot > 0 else float("nan"),
        rmse_log=float(np.sqrt(np.mean(resid**2))),
        rmse=float(np.sqrt(np.mean((y - _model(x, a, alpha, e)) ** 2))),
        aic=aic,
        aicc=aic + 2 * k * (k + 1) / (n - k - 1) if n - k - 1 > 0 else None,
        level=level, ci=ci, samples=samples, boot_rejected=rejected,
    )


def preferred_form(fits: list[ScalingFit]) -> ScalingFit:
    """Return the fit with the lowest AICc (AIC where AICc is undefined for some fit)."""
    use_aicc = all(f.aicc is not None for f in fits)
    return min(fits, key=lambda f: f.aicc if use_aicc else f.aic)


def holdout_error(
    x: np.ndarray, y: np.ndarray, form: Form = "power", sigma_log: np.ndarray | None = None
) -> dict[str, float] | None:
    """Extrapolation check: fit without the largest x, predict it.

    Returns the held-out x, the observed and predicted loss and the relative error
    (predicted / observed - 1), or None when too few distinct x remain.
    """
    x, y, w = np.asarray(x, float), np.asarray(y, float), _weights(sigma_log, len(x))
    keep = x < x.max()
    if len(np.unique(x[keep])) < N_PARAMS[form]:
        return None
    a, alpha, e = _fit_once(form, x[keep], y[keep], w[keep])
    held = x == x.max()
    observed = float(np.exp(np.mean(np.log(y[held]))))
    predicted = float(_model(x.max(), a, alpha, e))
    return {"x": float(x.max()), "observed": observed, "predicted": predicted,
            "relative_error": predicted / observed - 1.0}


def data_requirement(
    fit: ScalingFit,
    target: float,
    hours_per_trajectory: float,
    hours_per_week: float,
    d_have: float = 0.0,
) -> DataRequirement:
    """Invert an L(D) fit to the trajectories, hours and weeks needed for ``target``."""
    if target <= 0 or hours_per_trajectory <= 0 or hours_per_week <= 0 or d_have < 0:
        raise ValueError(
            f"need target > 0, hours_per_trajectory > 0, hours_per_week > 0, d_have >= 0; got "
            f"{target}, {hours_per_trajectory}, {hours_per_week}, {d_have}"
        )

    def weeks(d: float) -> float:
        return max(d - d_have, 0.0) * hours_per_trajectory / hours_per_week

    d_needed = fit.invert(target)
    d_ci = fit.invert_interval(target)
    return DataRequirement(
        target=target, d_needed=d_needed, d_ci=d_ci,
        hours_per_trajectory=hours_per_trajectory, hours_per_week=hours_per_week, d_have=d_have,
        hours=d_needed * hours_per_trajectory, weeks=weeks(d_needed),
        weeks_ci=[weeks(d) for d in d_ci] if d_ci is not None else None,
    )


def _model(x: np.ndarray, a: Any, alpha: Any, e: Any) -> np.ndarray:
    return e + np.exp(a - alpha * np.log(x))


def _exp_or_inf(v: float) -> float:
    return math.exp(v) if v < 700.0 else math.inf


def _xc(a: float, alpha: float) -> float:
    """Return xc of L = (xc / x)^alpha: exp(a / alpha); inf where alpha <= 0 (no finite scale)."""
    return _exp_or_inf(a / alpha) if alpha > 0 else math.inf


def _invert(target: float, a: float, alpha: float, e: float) -> float:
    """Scale at which the loss is ``target``; inf at or below the floor, or when loss does not fall with scale."""
    if target <= e or alpha <= 0:
        return math.inf
    return _exp_or_inf((a - math.log(target - e)) / alpha)


def _interval(values: list[float], level: float) -> list[float]:
    """Percentile interval by order statistics (no interpolation: values may be inf)."""
    lo, hi = _percentiles(level)
    return [float(np.percentile(np.asarray(values, dtype=float), q, method="inverted_cdf")) for q in (lo, hi)]


def _percentiles(level: float) -> tuple[float, float]:
    return 50.0 * (1.0 - level), 50.0 * (1.0 + level)


def _weights(sigma_log: np.ndarray | None, n: int) -> np.ndarray:
    if sigma_log is None:
        return np.ones(n)
    return 1.0 / np.asarray(sigma_log, dtype=float) ** 2


def _check_points(
    x: np.ndarray, y: np.ndarray, sigma_log: np.ndarray | None, form: Form
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    if form not in N_PARAMS:
        raise ValueError(f"unknown form {form!r}; expected one of {sorted(N_PARAMS)}")
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in length: {x.shape[0]} vs {y.shape[0]}")
    bad = ~(np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0))
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"scales and losses must be finite and > 0; point {i} is x={x[i]}, y={y[i]}")
    if len(np.unique(x)) < N_PARAMS[form]:
        raise ValueError(
            f"form {form!r} needs at least {N_PARAMS[form]} distinct scales, got {sorted(set(x.tolist()))}"
        )
    w = _weights(sigma_log, len(x))
    if w.shape != x.shape or not np.all(np.isfinite(w) & (w > 0)):
        raise ValueError(f"sigma_log must be {len(x)} finite values > 0, got {sigma_log!r}")
    return x, y, w


def _fit_once(form: Form, x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[float, float, float]:
    if form == "power":
        return (*_fit_loglinear(x, y, w), 0.0)
    return _fit_floor(x, y, w, starts=_floor_starts(x, y, w))


def _fit_loglinear(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """Weighted least squares of log y = a + b log x: returns (a, alpha = -b)."""
    lx, ly = np.log(x), np.log(y)
    mx, my = np.average(lx, weights=w), np.average(ly, weights=w)
    b = np.sum(w * (lx - mx) * (ly - my)) / np.sum(w * (lx - mx) ** 2)
    return float(my - b * mx), -float(b)


def _floor_starts(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> list[tuple[float, float, float]]:
    starts = []
    for frac in (0.0, 0.3, 0.6, 0.9):
        e0 = frac * float(y.min())
        a0, alpha0 = _fit_loglinear(x, np.maximum(y - e0, 1e-12), w)
        starts.append((a0, max(alpha0, 1e-3), e0))
    return starts


def _fit_floor(
    x: np.ndarray, y: np.ndarray, w: np.ndarray, starts: list[tuple[float, float, float]]
) -> tuple[float, float, float]:
    """Bounded least squares in log space over theta = (a, alpha, e)."""
    lx, ly, sw = np.log(x), np.log(y), np.sqrt(w)

    def resid(theta: np.ndarray) -> np.ndarray:
        return sw * (ly - np.log(theta[2] + np.exp(theta[0] - theta[1] * lx)))

    lower, upper = [-np.inf, 1e-6, 0.0], [np.inf, 20.0, float(y.min()) * (1 - 1e-9)]
    best = None
    for a0, alpha0, e0 in starts:
        theta0 = np.clip([a0, alpha0, e0], np.add(lower, 1e-12), np.subtract(upper, 1e-12))
        sol = least_squares(resid, theta0, bounds=(lower, upper), method="trf")
        if best is None or sol.cost < best.cost:
            best = sol
    a, alpha, e = best.x
    return float(a), float(alpha), float(e)


def _bootstrap(
    form: Form,
    x: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    estimate: tuple[float, float, float],
    n_boot: int,
    seed: int,
) -> tuple[list[list[float]], int]:
    k = N_PARAMS[form]
    if n_boot <= 0 or len(np.unique(x)) < k + 2:  # resamples of k + 1 points mostly fit exactly
        return [], 0
    rng = np.random.default_rng(seed)
    samples: list[list[float]] = []
    rejected = 0
    while len(samples) < n_boot:
        idx = rng.integers(0, len(x), len(x))
        if len(np.unique(x[idx])) < k:
            rejected += 1
            if rejected > MAX_BOOT_DRAWS * n_boot:
                raise ValueError(f"bootstrap: too few distinct scales to resample: {sorted(set(x.tolist()))}")
            continue
        if form == "power":
            samples.append([*_fit_loglinear(x[idx], y[idx], w[idx]), 0.0])
        else:
            starts = [estimate, *_floor_starts(x[idx], y[idx], w[idx])[::3]]
            samples.append(list(_fit_floor(x[idx], y[idx], w[idx], starts)))
    return samples, rejected
