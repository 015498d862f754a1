"""The mixture-ablation report: tables and heatmaps per task category, and the
MSE-reverse-KL scatter of the pretrained checkpoints with the SFT/RL call.

Per (mixture, suite), averaged over seeds:

* ``mse``, ``rkl``: validation next-action MSE and reverse KL after fine-tuning on
  the suite (the strengths of the mixture per task category);
* ``mse0``, ``rkl0``: the pretrained checkpoint on the same validation samples
  before fine-tuning (step 0).

The SFT/RL call is ``gen_theta_model.evaluate.recommend`` on each mixture's
pretrained checkpoint (``mse0``, ``rkl0`` averaged over suites): low MSE and low
KL, an SFT candidate; higher MSE with low KL, an RL candidate.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from gen_theta_model.evaluate import EvalConfig, recommend, scatter_plot
from gen_theta_model.scaling.report import write_json
from gen_theta_model.scaling.results import TrialResult


@dataclass(frozen=True)
class AblationRow:
    mixture: str
    suite: str
    category: str
    seeds: int
    mse: float
    rkl: float | None
    mse0: float | None
    rkl0: float | None


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def ablation_rows(trials: list[TrialResult]) -> list[AblationRow]:
    """One row per (mixture, suite), figures averaged over the trials' seeds."""
    groups: dict[tuple[str, str, str], list[Any]] = defaultdict(list)
    for t in trials:
        for s in t.suites:
            start = s.curve[0] if s.curve and s.curve[0].step == 0 else None
            groups[(t.mixture, s.suite, s.category)].append((s, start))
    return [
        AblationRow(
            mixture=m, suite=suite, category=cat, seeds=len(runs),
            mse=float(np.mean([s.mse for s, _ in runs])), rkl=_mean([s.rkl for s, _ in runs]),
            mse0=_mean([p.mse if p else None for _, p in runs]), rkl0=_mean([p.rkl if p else None for _, p in runs]),
        )
        for (m, suite, cat), runs in sorted(groups.items())
    ]


def mixture_calls(rows: list[AblationRow], ecfg: EvalConfig) -> dict[str, dict[str, Any]]:
    """Per mixture: the pretrained checkpoint's mean MSE and KL over suites, and the SFT/RL call."""
    out = {}
    for m in sorted({r.mixture for r in rows}):
        mse0, rkl0 = _mean([r.mse0 for r in rows if r.mixture == m]), _mean([r.rkl0 for r in rows if r.mixture == m])
        call = recommend(mse0, rkl0, ecfg) if mse0 is not None and rkl0 is not None else "not measured"
        out[m] = {"mse0": mse0, "rkl0": rkl0, "call": call}
    return out


def _g(v: float | None) -> str:
    return "-" if v is None else f"{v:.4g}"


def markdown(rows: list[AblationRow], calls: dict[str, dict[str, Any]], ecfg: EvalConfig, plots: list[str]) -> str:
    """Render the report: per category, mixtures x suites; then the SFT/RL call per mixture."""
    out = ["# Pretraining data-mixture ablation", "",
           "Validation next-action MSE and reverse KL (nats per scalar) after fine-tuning on each suite; "
           "zero-shot = the pretrained checkpoint on the same validation samples before fine-tuning.", ""]
    for cat in sorted({r.category for r in rows}):
        mine = [r for r in rows if r.category == cat]
        out += [f"## {cat}", "", "| mixture | suite | MSE | reverse KL | zero-shot MSE | zero-shot KL | seeds |",
                "|---|---|---|---|---|---|---|"]
        out += [f"| {r.mixture} | {r.suite} | {_g(r.mse)} | {_g(r.rkl)} | {_g(r.mse0)} | {_g(r.rkl0)} | {r.seeds} |"
                for r in mine]
        best = min(mine, key=lambda r: r.mse)
        out += ["", f"Best after fine-tuning: {best.mixture} on {best.suite} (MSE {best.mse:.4g}).", ""]
    out += ["## SFT or RL", "",
            f"Pretrained checkpoints, mean over suites; thresholds MSE {ecfg.mse_threshold:g}, "
            f"KL {ecfg.kl_threshold:g} nats (gen_theta_model.evaluate.recommend).", "",
            "| mixture | MSE | reverse KL | call |", "|---|---|---|---|"]
    out += [f"| {m} | {_g(c['mse0'])} | {_g(c['rkl0'])} | {c['call']} |" for m, c in calls.items()]
    out += ["", *[f"![{Path(p).stem}]({p})" for p in plots]]
    return "\n".join(out) + "\n"


def plot_heatmaps(rows: list[AblationRow], path: Path) -> Path:
    """One panel per task category: mixtures x suites, final MSE (annotated); lighter = lower = better."""
    cats = sorted({r.category for r in rows})
    mixtures = sorted({r.mixture for r in rows})
    fig = Figure(figsize=(4.2 * len(cats) + 1, 0.6 * len(mixtures) + 2))
    axes = np.atleast_1d(fig.subplots(1, len(cats)))
    for ax, cat in zip(axes, cats):
        suites = sorted({r.suite for r in rows if r.category == cat})
        grid = np.full((len(mixtures), len(suites)), np.nan)
        for r in rows:
            if r.category == cat:
                grid[mixtures.index(r.mixture), suites.index(r.suite)] = r.mse
        im = ax.imshow(grid, cmap="viridis_r", aspect="auto")
        for (i, j), v in np.ndenumerate(grid):
            if np.isfinite(v):
                light = im.norm(v) < 0.5  # viridis_r: low values are light
                ax.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=8, color="k" if light else "w")
        ax.set_xticks(range(len(suites)), suites, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(len(mixtures)), mixtures, fontsize=8)
        ax.set_title(f"{cat}: MSE after fine-tuning", fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def write_ablation_report(trials: list[TrialResult], cfg: Any, out: Path) -> Path:
    """Write ablation.json, ablation.md, heatmap.png and mse_kl.png into ``out``; returns the .md path."""
    ecfg = EvalConfig(delays=(cfg.metric_delay,), mse_threshold=cfg.mse_threshold, kl_threshold=cfg.kl_threshold)
    rows = ablation_rows(trials)
    calls = mixture_calls(rows, ecfg)
    out.mkdir(parents=True, exist_ok=True)
    plot_heatmaps(rows, out / "heatmap.png")
    points = [(m, c["mse0"], c["rkl0"]) for m, c in calls.items() if c["mse0"] is not None and c["rkl0"] is not None]
    scatter_plot(points, ecfg, out / "mse_kl.png", "pretrained checkpoints per mixture (mean over suites)")
    write_json({"rows": [asdict(r) for r in rows], "calls": calls,
                "thresholds": {"mse": ecfg.mse_threshold, "kl": ecfg.kl_threshold}}, out / "ablation.json")
    md = out / "ablation.md"
    md.write_text(markdown(rows, calls, ecfg, ["heatmap.png", "mse_kl.png"]))
    return md
