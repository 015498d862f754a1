"""The scaling report: ``scaling.json`` (everything, strict JSON) and ``scaling.md``.

Non-finite numbers (a target below the fitted floor needs infinite data) are
written as JSON ``null``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from gen_theta_model.scaling.analysis import PresetFits, ScalingAnalysis
from gen_theta_model.scaling.fit import ScalingFit


def json_safe(obj: Any) -> Any:
    """Nested data with every non-finite float replaced by None (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_json(data: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_safe(data), indent=1, allow_nan=False))
    return path


def _g(v: float | None, fmt: str = ".4g") -> str:
    if v is None or not math.isfinite(v):
        return "inf" if v is not None and v > 0 else "-"
    return format(v, fmt)


def _ci(fit: ScalingFit | None, name: str) -> str:
    if fit is None or name not in fit.ci:
        return "-"
    lo, hi = fit.ci[name]
    return f"[{_g(lo)}, {_g(hi)}]"


def _fit_rows(pf: PresetFits) -> list[str]:
    rows = []
    for fit in (pf.power, pf.power_floor):
        if fit is None:
            continue
        e = _g(fit.e) + f" {_ci(fit, 'e')}" if fit.form == "power_floor" else "-"
        rows.append(
            f"| {pf.preset} | {pf.n_params:,} | {fit.form} | {_g(fit.xc)} {_ci(fit, 'xc')} | "
            f"{_g(fit.alpha)} {_ci(fit, 'alpha')} | {e} | {_g(fit.r2_log)} | {_g(fit.rmse)} | "
            f"{_g(fit.aic, '.2f')} | {_g(fit.aicc, '.2f')} | {'yes' if pf.preferred == fit.form else ''} |"
        )
    return rows


def markdown(analysis: ScalingAnalysis, plots: list[Path], base: Path) -> str:
    """Render the report as markdown; plot links are relative to ``base`` (the .md's folder)."""
    lv = f"{100 * analysis.options.level:.0f}%"
    out = [
        "# Data scaling report",
        "",
        f"L = mean downstream validation MSE after fine-tuning; {lv} pairs-bootstrap intervals "
        f"({analysis.options.n_boot} resamples, seed {analysis.options.seed}).",
        "",
        "## L(D) = (Dc/D)^alphaD and L(D) = E + (Dc/D)^alphaD per model size",
        "",
        "| preset | params | form | Dc | alphaD | E | R2 (log) | RMSE | AIC | AICc | preferred |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for pf in analysis.presets:
        out += _fit_rows(pf)
    out += ["", "Extrapolation check (power form fitted without the largest D, predicting it):", ""]
    for pf in analysis.presets:
        h = pf.holdout
        if h is None:
            out.append(f"- {pf.preset}: not possible (fewer than 3 distinct D)")
        else:
            out.append(
                f"- {pf.preset}: at D={h['x']:.0f} observed {h['observed']:.4g}, predicted "
                f"{h['predicted']:.4g} ({100 * h['relative_error']:+.1f}%)"
            )
    out += ["", "## Data needed for a target (power form)", "",
            "| preset | target L | D needed | interval | hours | weeks beyond the largest D | interval |",
            "|---|---|---|---|---|---|---|"]
    for pf in analysis.presets:
        for r in pf.requirements:
            dci = r["d_ci"] and f"[{_g(r['d_ci'][0])}, {_g(r['d_ci'][1])}]"
            wci = r["weeks_ci"] and f"[{_g(r['weeks_ci'][0])}, {_g(r['weeks_ci'][1])}]"
            out.append(
                f"| {pf.preset} | {_g(r['target'])} | {_g(r['d_needed'])} | {dci or '-'} | {_g(r['hours'])} | "
                f"{_g(r['weeks'])} | {wci or '-'} |"
            )
    if analysis.presets and analysis.presets[0].requirements:
        r = analysis.presets[0].requirements[0]
        out += ["", f"At {r['hours_per_trajectory'] * 3600:.0f} s per trajectory and "
                    f"{r['hours_per_week']:,.0f} collection hours per week."]
    out += ["", "## Model size", ""]
    if analysis.loss_vs_size is not None:
        f = analysis.loss_vs_size
        out.append(f"- L(N) at D={analysis.loss_vs_size_d}: Nc={_g(f.xc)} {_ci(f, 'xc')}, "
                   f"alphaN={_g(f.alpha)} {_ci(f, 'alpha')}, R2={_g(f.r2_log)}")
    if analysis.ft_target is not None:
        steps = ", ".join(f"{p}: {_g(s, '.0f') if s is not None else 'not reached'}"
                          for p, s in analysis.ft_steps.items())
        out.append(f"- fine-tuning steps to reach MSE {analysis.ft_target:.4g}: {steps}")
    if analysis.ft_steps_vs_size is not None:
        f = analysis.ft_steps_vs_size
        out.append(f"- steps(N) = (Nc/N)^beta: beta={_g(f.alpha)} {_ci(f, 'alpha')} "
                   "(beta > 0: bigger models need fewer steps)")
    if analysis.ossification is not None:
        o = analysis.ossification
        out += ["", "## Ossification (pretraining plateau)", "",
                f"Slope of validation MSE against log10(step) over the last {o.window} checkpoints; "
                f"improving = interval below zero and >= {100 * o.threshold:.1f}% lower loss per decade.", "",
                "| preset | params | slope / decade | interval | improvement / decade | plateaued |",
                "|---|---|---|---|---|---|"]
        for t in o.tests:
            out.append(f"| {t.label} | {t.n_params:,} | {_g(t.slope_per_decade)} | "
                       f"[{_g(t.slope_ci[0])}, {_g(t.slope_ci[1])}] | {100 * t.relative_improvement:.2f}% | "
                       f"{'yes' if t.plateaued else 'no'} |")
        out += ["", f"Ossified (plateaued while a larger model still improves): {', '.join(o.ossified) or 'none'}."]
        out += [f"- {n}" for n in o.notes]
    if analysis.notes:
        out += ["", "## Notes", ""] + [f"- {n}" for n in analysis.notes]
    out += ["", "## Plots", ""] + [f"![{p.stem}]({_rel(p, base)})" for p in plots]
    return "\n".join(out) + "\n"


def write_report(analysis: ScalingAnalysis, plots: list[Path], out_dir: Path) -> tuple[Path, Path]:
    """Write ``out_dir/scaling.json`` and ``out_dir/scaling.md``."""
    js = write_json(analysis.to_dict(), out_dir / "scaling.json")
    md = out_dir / "scaling.md"
    md.write_text(markdown(analysis, plots, out_dir))
    return js, md


def _rel(p: Path, base: Path) -> str:
    try:
        return str(p.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(p)
