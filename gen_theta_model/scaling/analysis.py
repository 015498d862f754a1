"""From trial results to the scaling analysis: L(D) per model size, size dependence,
fine-tuning steps to a target, ossification and data requirements.

``analyze(trials, options)`` returns a ``ScalingAnalysis`` (JSON-serialisable),
which report.py writes as markdown and JSON and plots.py draws.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gen_theta_model.scaling.fit import (
    ScalingFit,
    data_requirement,
    fit_power_law,
    holdout_error,
    preferred_form,
)
from gen_theta_model.scaling.ossification import OssificationReport, ossification_report
from gen_theta_model.scaling.results import TrialResult


@dataclass(frozen=True)
class AnalysisOptions:
    """Knobs of ``gen-theta scaling fit`` (defaults carry their reason)."""

    n_boot: int = 1000
    level: float = 0.95
    seed: int = 0
    targets: list[float] = field(default_factory=list)  # losses to invert; empty: 0.9x the best observed
    hours_per_trajectory: float | None = None  # None: the trials' mean episode duration (info.mean_episode_s)
    hours_per_week: float = 10_000.0  # the seed's weekly collection rate
    ft_target: float | None = None  # None: 1.1x the loosest minimum, so every preset reaches it
    plateau_window: int = 5
    plateau_threshold: float = 0.02  # 2% lower loss per 10x steps counts as improving

    def __post_init__(self) -> None:
        if not 0 < self.level < 1:
            raise ValueError(f"level must be in (0, 1), got {self.level}")
        if (self.hours_per_trajectory is not None and self.hours_per_trajectory <= 0) or self.hours_per_week <= 0:
            raise ValueError(
                f"hours_per_trajectory and hours_per_week must be > 0, got "
                f"{self.hours_per_trajectory}, {self.hours_per_week}"
            )


@dataclass(frozen=True)
class PresetFits:
    """L(D) fits of one model preset (both forms) and their checks."""

    preset: str
    n_params: int
    n_trials: int
    power: ScalingFit | None
    power_floor: ScalingFit | None
    preferred: str
    holdout: dict[str, float] | None
    requirements: list[dict[str, Any]]


@dataclass(frozen=True)
class ScalingAnalysis:
    """Everything ``gen-theta scaling fit`` reports."""

    presets: list[PresetFits]
    loss_vs_size: ScalingFit | None
    loss_vs_size_d: int | None
    ft_target: float | None
    ft_steps: dict[str, float | None]
    ft_steps_vs_size: ScalingFit | None
    ossification: OssificationReport | None
    options: AnalysisOptions
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def steps_to_target(steps: np.ndarray, losses: np.ndarray, target: float) -> float | None:
    """First step at which the curve reaches ``target`` (linear between checkpoints), or None."""
    order = np.argsort(steps)
    steps, losses = np.asarray(steps, float)[order], np.asarray(losses, float)[order]
    hit = np.nonzero(losses <= target)[0]
    if len(hit) == 0:
        return None
    i = int(hit[0])
    if i == 0:
        return float(steps[0])
    s0, s1, l0, l1 = steps[i - 1], steps[i], losses[i - 1], losses[i]
    return float(s0 + (s1 - s0) * (l0 - target) / (l0 - l1))


def mean_curve(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Mean of several (steps, values) curves over the steps they all share."""
    common = sorted(set.intersection(*(set(s.tolist()) for s, _ in curves)))
    vals = [np.interp(common, s, v) for s, v in curves]
    return np.array(common, dtype=float), np.mean(vals, axis=0)


def analyze(trials: list[TrialResult], options: AnalysisOptions | None = None) -> ScalingAnalysis:
    """Fit and test everything the sweep results support; what they cannot support is a note."""
    opt = options or AnalysisOptions()
    if not trials:
        raise ValueError("no trial results to analyse")
    notes: list[str] = []
    if opt.hours_per_trajectory is None:
        seconds = [t.info["mean_episode_s"] for t in trials if t.info.get("mean_episode_s")]
        if not seconds:
            raise ValueError("the trial results do not record episode durations (info.mean_episode_s): "
                             "give the experience per trajectory (--seconds-per-trajectory)")
        opt = dataclasses.replace(opt, hours_per_trajectory=float(np.mean(seconds)) / 3600.0)
        notes.append(f"experience per trajectory: {np.mean(seconds):.1f} s, the mean episode of the trials' data")
    by_preset: dict[str, list[TrialResult]] = defaultdict(list)
    for t in trials:
        by_preset[t.preset].append(t)
    presets = sorted(by_preset, key=lambda p: by_preset[p][0].n_params)
    fits = [_fit_preset(p, by_preset[p], opt, notes) for p in presets]

    loss_vs_size, common_d = _fit_loss_vs_size(by_preset, presets, opt, notes)
    ft_target, ft_steps, ft_fit = _finetune_steps(by_preset, presets, common_d, opt, notes)
    ossification = _ossification(by_preset, presets, common_d, opt, notes)
    return ScalingAnalysis(
        presets=fits, loss_vs_size=loss_vs_size, loss_vs_size_d=common_d,
        ft_target=ft_target, ft_steps=ft_steps, ft_steps_vs_size=ft_fit,
        ossification=ossification, options=opt, notes=notes,
    )


def _fit_preset(preset: str, trials: list[TrialResult], opt: AnalysisOptions, notes: list[str]) -> PresetFits:
    d = np.array([t.d for t in trials], dtype=float)
    loss = np.array([t.downstream_mse for t in trials])
    kw = dict(n_boot=opt.n_boot, level=opt.level, seed=opt.seed, x_name="D")
    forms: dict[str, ScalingFit | None] = {}
    for form in ("power", "power_floor"):
        try:
            forms[form] = fit_power_law(d, loss, form=form, **kw)
        except ValueError as err:
            forms[form] = None
            notes.append(f"{preset}: no {form} fit: {err}")
    done = [f for f in forms.values() if f is not None]
    best = preferred_form(done).form if done else "none"
    requirements = []
    if forms["power"] is not None:
        targets = opt.targets or [0.9 * float(loss.min())]
        requirements = [
            data_requirement(
                forms["power"], target, opt.hours_per_trajectory, opt.hours_per_week, d_have=float(d.max())
            ).to_dict()
            for target in targets
        ]
    return PresetFits(
        preset=preset, n_params=trials[0].n_params, n_trials=len(trials),
        power=forms["power"], power_floor=forms["power_floor"], preferred=best,
        holdout=holdout_error(d, loss) if forms["power"] is not None else None,
        requirements=requirements,
    )


def _common_d(by_preset: dict[str, list[TrialResult]], presets: list[str]) -> int | None:
    shared = set.intersection(*({t.d for t in by_preset[p]} for p in presets))
    return max(shared) if shared else None


def _fit_loss_vs_size(
    by_preset: dict[str, list[TrialResult]], presets: list[str], opt: AnalysisOptions, notes: list[str]
) -> tuple[ScalingFit | None, int | None]:
    common_d = _common_d(by_preset, presets)
    if len(presets) < 2 or common_d is None:
        notes.append("L(N): needs at least two presets trained on a common D")
        return None, common_d
    n = np.array([by_preset[p][0].n_params for p in presets], dtype=float)
    loss = np.array([np.mean([t.downstream_mse for t in by_preset[p] if t.d == common_d]) for p in presets])
    return fit_power_law(n, loss, n_boot=opt.n_boot, level=opt.level, seed=opt.seed, x_name="N"), common_d


def _finetune_steps(
    by_preset: dict[str, list[TrialResult]],
    presets: list[str],
    common_d: int | None,
    opt: AnalysisOptions,
    notes: list[str],
) -> tuple[float | None, dict[str, float | None], ScalingFit | None]:
    if common_d is None:
        return None, {}, None
    curves = {p: mean_curve([t.finetune_curve() for t in by_preset[p] if t.d == common_d]) for p in presets}
    target = opt.ft_target
    if target is None:
        target = 1.1 * float(max(v.min() for _, v in curves.values()))
    steps = {p: steps_to_target(s, v, target) for p, (s, v) in curves.items()}
    reached = [p for p in presets if steps[p] is not None and steps[p] > 0]
    fit = None
    if len({by_preset[p][0].n_params for p in reached}) >= 2:
        n = np.array([by_preset[p][0].n_params for p in reached], dtype=float)
        fit = fit_power_law(
            n, np.array([steps[p] for p in reached]), n_boot=opt.n_boot, level=opt.level, seed=opt.seed, x_name="N"
        )
    else:
        notes.append(f"fine-tuning steps vs size: fewer than two presets reach {target:.4g} after step 0")
    return target, steps, fit


def _ossification(
    by_preset: dict[str, list[TrialResult]],
    presets: list[str],
    common_d: int | None,
    opt: AnalysisOptions,
    notes: list[str],
) -> OssificationReport | None:
    if common_d is None:
        notes.append("ossification: no D shared by all presets")
        return None
    curves = {}
    for p in presets:
        runs = [t for t in by_preset[p] if t.d == common_d and t.pretrain_curve]
        if not runs:
            continue
        s, v = mean_curve([
            (np.array([c.step for c in t.pretrain_curve], float), np.array([c.mse for c in t.pretrain_curve]))
            for t in runs
        ])
        curves[p] = (runs[0].n_params, s, v)
    try:
        return ossification_report(
            curves, window=opt.plateau_window, threshold=opt.plateau_threshold, level=opt.level
        )
    except ValueError as err:
        notes.append(f"ossification: {err}")
        return None
