"""Ossification: has a model's pretraining validation loss stopped improving?

The seed reports that ~1B-parameter models plateau early in pretraining while
larger ones keep improving. The test here, per model size:

1. take the last ``window`` checkpoints of the pretraining validation curve;
2. regress loss on log10(step): the slope is the loss change per decade of steps,
   with a Student-t interval at ``level``;
3. the model is *still improving* when the whole interval is below zero and the
   relative improvement per decade, -slope / mean loss over the window, is at
   least ``threshold``; otherwise it has *plateaued*.

A model is *ossified* when it has plateaued while a larger model (more parameters)
trained on the same data is still improving: the gap is the model's capacity,
not the data.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class PlateauTest:
    """The slope test on one pretraining curve.

    ``slope_per_decade`` is d loss / d log10(step) over ``window_steps`` (loss units
    per decade); ``relative_improvement`` is -slope / mean loss in the window.
    """

    label: str
    n_params: int
    window_steps: list[int]
    window_losses: list[float]
    slope_per_decade: float
    slope_ci: list[float]
    relative_improvement: float
    plateaued: bool
    reason: str


@dataclass(frozen=True)
class OssificationReport:
    """Plateau tests for every model size (ascending parameters) and the verdict."""

    tests: list[PlateauTest]
    ossified: list[str]
    window: int
    threshold: float
    level: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OssificationReport:
        return cls(**{**data, "tests": [PlateauTest(**t) for t in data["tests"]]})


def plateau_test(
    steps: np.ndarray,
    losses: np.ndarray,
    *,
    label: str = "",
    n_params: int = 0,
    window: int = 5,
    threshold: float = 0.02,
    level: float = 0.95,
) -> PlateauTest:
    """Slope test on the last ``window`` points of a curve (steps > 0, shape (n,)).

    ``threshold`` is the smallest relative improvement per decade of steps that
    counts as still improving (0.02: 2% lower loss for 10x the steps).
    """
    steps, losses = np.asarray(steps, dtype=float), np.asarray(losses, dtype=float)
    if window < 3:
        raise ValueError(f"window must be >= 3 checkpoints for a slope interval, got {window}")
    if steps.shape != losses.shape:
        raise ValueError(f"{label}: steps and losses differ in length: {steps.shape} vs {losses.shape}")
    keep = (steps > 0) & np.isfinite(losses)
    steps, losses = steps[keep], losses[keep]
    order = np.argsort(steps)
    steps, losses = steps[order][-window:], losses[order][-window:]
    if len(steps) < window:
        raise ValueError(
            f"{label}: plateau test needs {window} checkpoints with step > 0 and finite loss, "
            f"got {len(steps)}"
        )
    fit = stats.linregress(np.log10(steps), losses)
    half = float(stats.t.ppf(0.5 + level / 2, df=len(steps) - 2) * fit.stderr)
    lo, hi = fit.slope - half, fit.slope + half
    rel = float(-fit.slope / np.mean(losses))
    if hi >= 0:
        plateaued, reason = True, f"slope interval [{lo:.3g}, {hi:.3g}] per decade includes zero"
    elif rel < threshold:
        plateaued, reason = True, f"improves {100 * rel:.2f}% per decade < {100 * threshold:.2f}%"
    else:
        plateaued, reason = False, f"improves {100 * rel:.2f}% per decade, interval below zero"
    return PlateauTest(
        label=label, n_params=int(n_params),
        window_steps=[int(s) for s in steps], window_losses=[float(v) for v in losses],
        slope_per_decade=float(fit.slope), slope_ci=[float(lo), float(hi)],
        relative_improvement=rel, plateaued=plateaued, reason=reason,
    )


def ossification_report(
    curves: dict[str, tuple[int, np.ndarray, np.ndarray]],
    *,
    window: int = 5,
    threshold: float = 0.02,
    level: float = 0.95,
) -> OssificationReport:
    """Plateau-test each model's curve and compare it with the larger models.

    ``curves`` maps a label (preset) to (n_params, steps, losses) of its
    pretraining validation curve on the same data.
    """
    tests = sorted(
        (
            plateau_test(s, v, label=label, n_params=n, window=window, threshold=threshold, level=level)
            for label, (n, s, v) in curves.items()
        ),
        key=lambda t: t.n_params,
    )
    ossified, notes = [], []
    for i, test in enumerate(tests):
        improving_larger = [t.label for t in tests[i + 1:] if not t.plateaued and t.n_params > test.n_params]
        if test.plateaued and improving_larger:
            ossified.append(test.label)
            larger = ", ".join(improving_larger)
            notes.append(f"{test.label} has plateaued ({test.reason}); larger and still improving: {larger}")
        else:
            state = "plateaued" if test.plateaued else "still improving"
            notes.append(f"{test.label}: {state} ({test.reason})")
    return OssificationReport(
        tests=tests, ossified=ossified, window=window, threshold=threshold, level=level, notes=notes
    )
