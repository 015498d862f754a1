"""`gen-theta scaling sweep CONFIG` and `gen-theta scaling fit RESULTS...`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gen_theta_model.config import ConfigError


def _fit_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fit", help="fit L(D) and friends to sweep results; write plots and a report")
    p.add_argument("results", nargs="+", type=Path, help="sweep directories and/or result.json files")
    p.add_argument("--out", type=Path, help="report directory (default: <first RESULTS>/report)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--level", type=float, default=0.95, help="interval level (default 0.95)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--target", type=float, action="append", default=[],
                   help="target loss to invert into data and weeks (repeatable; default 0.9x best observed)")
    p.add_argument("--seconds-per-trajectory", type=float,
                   help="experience per trajectory, seconds (default: the mean episode of the trials' data)")
    p.add_argument("--hours-per-week", type=float, default=10_000.0,
                   help="collection rate, hours of experience per week (default 10000, the seed's figure)")
    p.add_argument("--ft-target", type=float,
                   help="fine-tuning target MSE (default: 1.1x the highest final MSE among presets)")
    p.add_argument("--window", type=int, default=5, help="checkpoints in the plateau slope test (default 5)")
    p.add_argument("--threshold", type=float, default=0.02,
                   help="relative improvement per decade of steps that counts as improving (default 0.02)")


def _sweep_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="train, fine-tune and evaluate a grid of data subsets x model presets")
    p.add_argument("config", type=Path, help="sweep YAML (docs/scaling.md)")
    p.add_argument("--out", type=Path, help="sweep directory (overrides the config's out_dir)")
    p.add_argument("--engine", choices=["local", "ray"], help="overrides the config's engine")
    p.add_argument("--workers", type=int, help="parallel trials (overrides the config's workers)")
    p.add_argument("--ray-address", help="Ray cluster to join, HOST:PORT / auto / ray://... (overrides the "
                   "config's run.ray_address; docs/cluster.md)")
    p.add_argument("--no-fit", action="store_true", help="do not run `scaling fit` after the sweep")


def run_fit(args: argparse.Namespace) -> int:
    from gen_theta_model.scaling.analysis import AnalysisOptions, analyze
    from gen_theta_model.scaling.plots import plot_all
    from gen_theta_model.scaling.report import write_report
    from gen_theta_model.scaling.results import load_results

    trials = load_results(args.results)
    options = AnalysisOptions(
        n_boot=args.n_boot, level=args.level, seed=args.seed, targets=args.target,
        hours_per_trajectory=args.seconds_per_trajectory and args.seconds_per_trajectory / 3600.0,
        hours_per_week=args.hours_per_week,
        ft_target=args.ft_target, plateau_window=args.window, plateau_threshold=args.threshold,
    )
    analysis = analyze(trials, options)
    out = args.out or (args.results[0] if args.results[0].is_dir() else args.results[0].parent) / "report"
    plots = plot_all(analysis, trials, out)
    js, md = write_report(analysis, plots, out)
    print(md.read_text())
    print(f"wrote {md}, {js} and {len(plots)} plots in {out}")
    return 0


def run_sweep(args: argparse.Namespace) -> int:
    from gen_theta_model.config import load_config
    from gen_theta_model.scaling.sweep import SweepConfig, run_sweep_config

    overrides = {k: v for k, v in (("out_dir", args.out and str(args.out)), ("run.engine", args.engine),
                                   ("run.workers", args.workers), ("run.ray_address", args.ray_address))
                 if v is not None}
    config = load_config(SweepConfig, args.config, overrides=overrides)
    out_dir = run_sweep_config(config)
    if args.no_fit:
        return 0
    return run_fit(_fit_parser_defaults([str(out_dir)]))


def _fit_parser_defaults(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gen-theta scaling")
    _fit_parser(parser.add_subparsers(dest="cmd", required=True))
    return parser.parse_args(["fit", *argv])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gen-theta scaling", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    _fit_parser(sub)
    _sweep_parser(sub)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return run_fit(args) if args.cmd == "fit" else run_sweep(args)
    except (ConfigError, ValueError) as err:
        print(f"gen-theta scaling {args.cmd}: {err}", file=sys.stderr)
        return 2
