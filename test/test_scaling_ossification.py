"""The plateau detector on synthetic pretraining curves: plateaued vs still improving."""

import numpy as np
import pytest

from gen_theta_model.scaling.ossification import OssificationReport, ossification_report, plateau_test

STEPS = np.array([0, 100, 200, 400, 800, 1600, 3200, 6400, 12800], dtype=float)


def plateaued_curve(seed: int = 0) -> np.ndarray:
    """Drop fast early, then stay flat at 0.5 with small noise."""
    rng = np.random.default_rng(seed)
    return 0.5 + 0.4 * np.exp(-STEPS / 150.0) + rng.normal(0.0, 0.003, len(STEPS))


def improving_curve(seed: int = 0) -> np.ndarray:
    """Follow a power law in steps: ~20% lower loss per decade, all the way."""
    rng = np.random.default_rng(seed)
    return 2.0 * (np.maximum(STEPS, 1.0) / 10.0) ** -0.1 * np.exp(rng.normal(0.0, 0.005, len(STEPS)))


def test_flat_tail_is_plateaued():
    test = plateau_test(STEPS, plateaued_curve(), label="small", window=5)
    assert test.plateaued
    assert test.window_steps == [800, 1600, 3200, 6400, 12800]
    assert test.slope_ci[0] <= 0.0 <= test.slope_ci[1] or test.relative_improvement < 0.02


def test_power_law_curve_is_still_improving():
    test = plateau_test(STEPS, improving_curve(), label="big", window=5)
    assert not test.plateaued
    assert test.slope_ci[1] < 0.0
    assert test.relative_improvement == pytest.approx(1 - 10**-0.1, abs=0.05)


def test_slow_but_significant_improvement_below_threshold_is_a_plateau():
    losses = 1.0 - 0.005 * np.log10(np.maximum(STEPS, 1.0))  # 0.5% per decade, noiseless
    test = plateau_test(STEPS, losses, window=5, threshold=0.02)
    assert test.slope_ci[1] < 0.0 and test.plateaued and "per decade <" in test.reason
    assert not plateau_test(STEPS, losses, window=5, threshold=0.001).plateaued


def test_report_calls_the_small_model_ossified_when_the_larger_improves():
    report = ossification_report(
        {"big": (6_000_000, STEPS, improving_curve(1)), "small": (1_000_000, STEPS, plateaued_curve(1))},
        window=5,
    )
    assert [t.label for t in report.tests] == ["small", "big"]
    assert report.ossified == ["small"]
    assert OssificationReport.from_dict(report.to_dict()) == report
    # Both plateaued: nothing is ossified (the data, not capacity, limits them).
    both = ossification_report({"a": (1, STEPS, plateaued_curve(2)), "b": (2, STEPS, plateaued_curve(3))})
    assert both.ossified == [] and all(t.plateaued for t in both.tests)


def test_too_few_checkpoints_or_window_is_an_error():
    with pytest.raises(ValueError, match="window must be >= 3"):
        plateau_test(STEPS, plateaued_curve(), window=2)
    with pytest.raises(ValueError, match="tiny: plateau test needs 5 checkpoints"):
        plateau_test(STEPS[:4], plateaued_curve()[:4], label="tiny", window=5)
