"""Power-law fits: recovery of known constants, interval coverage, inversion, forms, bad input."""

import json
import math

import numpy as np
import pytest

from gen_theta_model.scaling.fit import (
    ScalingFit,
    data_requirement,
    fit_power_law,
    holdout_error,
    preferred_form,
)

D = np.repeat([25, 50, 100, 200, 400, 800], 3).astype(float)


def noisy_power(seed: int, dc: float = 10.0, alpha: float = 0.35, e: float = 0.0, noise: float = 0.05):
    rng = np.random.default_rng(seed)
    return (e + (dc / D) ** alpha) * np.exp(rng.normal(0.0, noise, len(D)))


def test_power_fit_recovers_dc_and_alpha_and_ci_covers_truth():
    fit = fit_power_law(D, noisy_power(1), n_boot=500, seed=3)
    assert fit.form == "power" and fit.e == 0.0
    assert fit.alpha == pytest.approx(0.35, abs=0.03)
    assert fit.xc == pytest.approx(10.0, rel=0.3)
    assert fit.ci["alpha"][0] <= 0.35 <= fit.ci["alpha"][1]
    assert fit.ci["xc"][0] <= 10.0 <= fit.ci["xc"][1]
    assert fit.r2_log > 0.95 and len(fit.samples) == 500


def test_bootstrap_interval_coverage_near_nominal():
    covered = sum(
        fit.ci["alpha"][0] <= 0.35 <= fit.ci["alpha"][1]
        for fit in (fit_power_law(D, noisy_power(100 + k), n_boot=200, seed=k) for k in range(30))
    )
    # Nominal 95%; the pairs bootstrap on 18 points under-covers a little (measured 35/40).
    assert covered >= 24


def test_bootstrap_is_seeded():
    y = noisy_power(2)
    a, b = fit_power_law(D, y, n_boot=50, seed=7), fit_power_law(D, y, n_boot=50, seed=7)
    assert a.ci == b.ci and a.samples == b.samples
    assert fit_power_law(D, y, n_boot=50, seed=8).ci != a.ci


def test_exact_power_law_is_fitted_exactly_and_weights_are_accepted():
    y = (40.0 / D) ** 0.5
    fit = fit_power_law(D, y, sigma_log=np.full(len(D), 0.1), n_boot=20)
    assert fit.alpha == pytest.approx(0.5, rel=1e-9)
    assert fit.xc == pytest.approx(40.0, rel=1e-9)
    assert fit.r2_log == pytest.approx(1.0)
    assert np.allclose(fit.predict(D), y)


def test_floor_variant_recovers_floor_and_wins_on_aicc():
    y = noisy_power(4, alpha=0.5, e=0.1, noise=0.02)
    floor = fit_power_law(D, y, form="power_floor", n_boot=100, seed=0)
    power = fit_power_law(D, y, form="power", n_boot=100, seed=0)
    assert floor.e == pytest.approx(0.1, abs=0.03)
    assert floor.alpha == pytest.approx(0.5, abs=0.08)
    assert floor.ci["e"][0] <= 0.1 <= floor.ci["e"][1]
    assert preferred_form([power, floor]) is floor
    # and on data without a floor, the extra parameter does not pay
    y0 = noisy_power(5)
    fits = [fit_power_law(D, y0, form=f, n_boot=0) for f in ("power", "power_floor")]
    assert preferred_form(fits).form == "power"


def test_inversion_inverts_and_gives_collection_time():
    fit = fit_power_law(D, noisy_power(6), n_boot=200)
    for target in (0.6, 0.4, 0.15):
        d = fit.invert(target)
        assert float(fit.predict(d)) == pytest.approx(target, rel=1e-9)
        lo, hi = fit.invert_interval(target)
        assert lo <= d <= hi
    req = data_requirement(fit, 0.15, hours_per_trajectory=0.5, hours_per_week=100.0, d_have=800.0)
    assert req.d_needed == pytest.approx(fit.invert(0.15)) and req.d_needed > 800.0
    assert req.hours == pytest.approx(req.d_needed * 0.5)
    assert req.weeks == pytest.approx((req.d_needed - 800.0) * 0.5 / 100.0)
    assert req.weeks_ci[0] <= req.weeks <= req.weeks_ci[1]
    with pytest.raises(ValueError, match="hours_per_week"):
        data_requirement(fit, 0.25, hours_per_trajectory=0.5, hours_per_week=0.0)


def test_floor_inversion_below_floor_is_infinite():
    y = noisy_power(4, alpha=0.5, e=0.1, noise=0.02)
    fit = fit_power_law(D, y, form="power_floor", n_boot=0)
    assert math.isinf(fit.invert(0.05))
    d = fit.invert(0.2)
    assert float(fit.predict(d)) == pytest.approx(0.2, rel=1e-9)


def test_flat_losses_fit_alpha_zero():
    fit = fit_power_law(D, np.full(len(D), 0.3), n_boot=20)
    assert fit.alpha == pytest.approx(0.0, abs=1e-12) and math.isinf(fit.xc)
    assert np.allclose(fit.predict(D), 0.3) and math.isinf(fit.invert(0.2))


def test_loss_rising_with_scale_inverts_to_infinity():
    y = (D / 10.0) ** 0.1 * np.exp(np.random.default_rng(9).normal(0, 0.02, len(D)))  # alpha = -0.1
    fit = fit_power_law(D, y, n_boot=100)
    assert fit.alpha == pytest.approx(-0.1, abs=0.02)
    assert math.isinf(fit.invert(0.5 * y.min()))
    assert all(math.isinf(v) for v in fit.invert_interval(0.5 * y.min()))
    assert math.isinf(data_requirement(fit, 0.5 * y.min(), 0.01, 10.0).weeks)


def test_holdout_extrapolation_of_an_exact_law():
    h = holdout_error(D, (10.0 / D) ** 0.3)
    assert h["x"] == 800.0 and abs(h["relative_error"]) < 1e-9


def test_json_round_trip():
    fit = fit_power_law(D, noisy_power(7), n_boot=30)
    back = ScalingFit.from_dict(json.loads(json.dumps(fit.to_dict())))
    assert back == fit and back.n_params == 2


@pytest.mark.parametrize(
    ("x", "y", "form", "match"),
    [
        ([10, 20, 40], [0.5, -0.1, 0.3], "power", "point 1"),
        ([10, 10, 10], [0.5, 0.4, 0.3], "power", "2 distinct"),
        ([10, 20, 20], [0.5, 0.4, 0.3], "power_floor", "3 distinct"),
        ([10, 20], [0.5], "power", "differ in length"),
        ([10, 20, 40], [0.5, 0.4, 0.3], "cubic", "unknown form"),
    ],
)
def test_bad_points_are_rejected_with_a_reason(x, y, form, match):
    with pytest.raises(ValueError, match=match):
        fit_power_law(np.array(x, float), np.array(y, float), form=form)
