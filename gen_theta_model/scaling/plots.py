"""PNG plots of a scaling analysis: L(D) with fits and intervals, size dependence,
pretraining curves with the plateau window, fine-tuning curves.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot, no display), so
plotting works headless and in worker processes.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from gen_theta_model.scaling.analysis import ScalingAnalysis, mean_curve
from gen_theta_model.scaling.fit import ScalingFit
from gen_theta_model.scaling.results import TrialResult

DPI = 120


def _save(fig: Figure, path: Path) -> Path:
    for ax in fig.axes:  # log x axes: label decades only, minor labels overlap side by side
        ax.xaxis.set_minor_formatter(NullFormatter())
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def _draw_fit(ax, fit: ScalingFit, color: str, label: str, dashed: bool = False) -> None:
    """Fit line over the data range (extended 2x right) and its bootstrap band."""
    lo, hi = min(fit.x), max(fit.x)
    grid = np.geomspace(lo, hi * 2.0, 100)
    ax.plot(grid, fit.predict(grid), color=color, ls="--" if dashed else "-", lw=1.5, label=label)
    band = fit.predict_band(grid)
    if band is not None and not dashed:
        ax.fill_between(grid, band[0], band[1], color=color, alpha=0.15, lw=0)


def _fit_label(fit: ScalingFit) -> str:
    x = fit.x_name
    ci = fit.ci.get("alpha")
    ci_txt = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
    if fit.form == "power":
        return f"({x}c/{x})^a: {x}c={fit.xc:.3g}, a={fit.alpha:.3f}{ci_txt}, R2={fit.r2_log:.3f}"
    return f"E+({x}c/{x})^a: E={fit.e:.3g}, a={fit.alpha:.3f}"


def plot_loss_vs_d(analysis: ScalingAnalysis, trials: list[TrialResult], path: Path) -> Path:
    """Downstream validation MSE against D (log-log): points, both fits, the power fit's band."""
    fig = Figure(figsize=(7.5, 5))
    ax = fig.subplots()
    colors = _colors([p.preset for p in analysis.presets])
    for pf in analysis.presets:
        c = colors[pf.preset]
        pts = [(t.d, t.downstream_mse) for t in trials if t.preset == pf.preset]
        ax.scatter(*zip(*pts), color=c, s=22, zorder=3, label=f"{pf.preset} ({pf.n_params / 1e6:.2f}M params)")
        if pf.power is not None:
            _draw_fit(ax, pf.power, c, _fit_label(pf.power))
        if pf.power_floor is not None:
            _draw_fit(ax, pf.power_floor, c, _fit_label(pf.power_floor), dashed=True)
    ax.set(xscale="log", yscale="log", xlabel="D: pretraining trajectories",
           ylabel="downstream validation MSE (normalised)",
           title=f"L(D) = (Dc/D)^alphaD, {100 * analysis.options.level:.0f}% bootstrap band")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_pretrain_curves(analysis: ScalingAnalysis, trials: list[TrialResult], path: Path) -> Path:
    """Pretraining validation MSE against step per preset at the common D; plateau window marked."""
    fig = Figure(figsize=(7.5, 5))
    ax = fig.subplots()
    colors = _colors([p.preset for p in analysis.presets])
    tests = {t.label: t for t in analysis.ossification.tests} if analysis.ossification else {}
    for preset, (s, v) in _pretrain_curves(trials, analysis.loss_vs_size_d).items():
        test = tests.get(preset)
        state = "" if test is None else (" plateaued" if test.plateaued else " improving")
        ax.plot(s, v, marker=".", color=colors[preset], label=f"{preset}{state}")
        if test is not None:
            ax.plot(test.window_steps, test.window_losses, color=colors[preset], lw=5, alpha=0.3)
    ax.set(xscale="log", xlabel="pretraining step", ylabel="pretraining validation MSE",
           title=f"Ossification check at D={analysis.loss_vs_size_d} (thick: slope-test window)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_finetune_curves(analysis: ScalingAnalysis, trials: list[TrialResult], path: Path) -> Path:
    """Mean fine-tuning validation MSE over suites against step per preset, with the target."""
    fig = Figure(figsize=(7.5, 5))
    ax = fig.subplots()
    colors = _colors([p.preset for p in analysis.presets])
    for pf in analysis.presets:
        runs = [t.finetune_curve() for t in trials if t.preset == pf.preset and t.d == analysis.loss_vs_size_d]
        if runs:
            s, v = mean_curve(runs)
            reach = analysis.ft_steps.get(pf.preset)
            txt = f", target at step {reach:.0f}" if reach is not None else ", target not reached"
            ax.plot(s, v, marker=".", color=colors[pf.preset], label=f"{pf.preset}{txt}")
    if analysis.ft_target is not None:
        ax.axhline(analysis.ft_target, color="k", ls=":", lw=1, label=f"target {analysis.ft_target:.4g}")
    ax.set(xlabel="fine-tuning step", ylabel="validation MSE (mean over suites)", yscale="log",
           title=f"Fine-tuning from the D={analysis.loss_vs_size_d} checkpoints")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_size(analysis: ScalingAnalysis, path: Path) -> Path:
    """Plot alphaD per preset, L(N) at the common D, and fine-tuning steps to target against N."""
    fig = Figure(figsize=(13, 4))
    ax_a, ax_n, ax_s = fig.subplots(1, 3)
    with_fit = [p for p in analysis.presets if p.power is not None]
    if with_fit:
        n = [p.n_params for p in with_fit]
        alpha = np.array([p.power.alpha for p in with_fit])
        ci = np.array([p.power.ci.get("alpha", [p.power.alpha] * 2) for p in with_fit])
        ax_a.errorbar(n, alpha, yerr=[alpha - ci[:, 0], ci[:, 1] - alpha], fmt="o", capsize=4)
        ax_a.set_xlim(min(n) / 2, max(n) * 2)
    ax_a.set(xscale="log", xlabel="N: parameters", ylabel="alphaD", title="Data exponent vs model size")
    for ax, fit, ylabel, title in (
        (ax_n, analysis.loss_vs_size, "downstream MSE", f"L(N) at D={analysis.loss_vs_size_d}"),
        (ax_s, analysis.ft_steps_vs_size, "fine-tuning steps", f"Steps to MSE {analysis.ft_target or 0:.4g}"),
    ):
        if fit is not None:
            ax.scatter(fit.x, fit.y, zorder=3)
            _draw_fit(ax, fit, "C0", _fit_label(fit))
            ax.legend(fontsize=7)
        ax.set(xscale="log", yscale="log", xlabel="N: parameters", ylabel=ylabel, title=title)
    if analysis.ft_steps_vs_size is None:
        pts = [(p.n_params, analysis.ft_steps.get(p.preset)) for p in analysis.presets]
        pts = [(n, s) for n, s in pts if s]
        if pts:
            ax_s.scatter(*zip(*pts), zorder=3)
    for ax in (ax_a, ax_n, ax_s):
        ax.grid(True, which="both", alpha=0.3)
    return _save(fig, path)


def plot_all(analysis: ScalingAnalysis, trials: list[TrialResult], out_dir: Path) -> list[Path]:
    """Every plot of the analysis into ``out_dir``; returns the PNG paths."""
    return [
        plot_loss_vs_d(analysis, trials, out_dir / "loss_vs_d.png"),
        plot_pretrain_curves(analysis, trials, out_dir / "pretrain_curves.png"),
        plot_finetune_curves(analysis, trials, out_dir / "finetune_curves.png"),
        plot_size(analysis, out_dir / "size.png"),
    ]


def _colors(labels: list[str]) -> dict[str, str]:
    return {label: f"C{i % 10}" for i, label in enumerate(labels)}


def _pretrain_curves(trials: list[TrialResult], d: int | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    runs: dict[str, list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
    for t in trials:
        if t.d == d and t.pretrain_curve:
            runs[t.preset].append(
                (np.array([c.step for c in t.pretrain_curve], float), np.array([c.mse for c in t.pretrain_curve]))
            )
    return {p: mean_curve(r) for p, r in runs.items()}
