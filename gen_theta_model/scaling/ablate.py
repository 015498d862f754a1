"""`gen-theta ablate MIXTURE.yaml... --config ABLATE.yaml`: pretraining data-mixture ablations.

Each mixture (the data issue's format, config/mixtures/*.yaml: weights per
sub-dataset, embodiment and task category) pretrains the same model on the same
pretraining pool; each checkpoint is evaluated zero-shot on every downstream
suite, then fine-tuned on it (one trial per mixture and seed, run like a sweep
trial: locally, on a process pool or on Ray, resumable). The report
(``<out_dir>/report``, gen_theta_model/scaling/ablate_report.py) has a table and a
heatmap per task category and the MSE-reverse-KL scatter with the SFT/RL call.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gen_theta_model.config import ConfigError, load_config, resolve_path, to_mapping
from gen_theta_model.data.sampler import Mixture, load_mixture
from gen_theta_model.evaluate import EvalConfig
from gen_theta_model.scaling.engine import EngineConfig, run_trials
from gen_theta_model.scaling.results import load_results
from gen_theta_model.scaling.subsets import list_episodes
from gen_theta_model.scaling.sweep import ModelEntry, SuiteEntry, prepare_views, trial_spec
from gen_theta_model.scaling.trial import TrialSpec


@dataclass(frozen=True)
class AblateConfig:
    data: list[str]  # source dataset directories; their directory names are the mixtures' dataset names
    suites: list[SuiteEntry]
    model: ModelEntry = field(default_factory=lambda: ModelEntry("tiny"))
    d: int = 0  # pretraining episodes taken from the pool (0: all of it)
    seeds: list[int] = field(default_factory=lambda: [0])
    subset_seed: int = 0
    pretrain_config: str = "config/train/tiny_pretrain.yaml"
    finetune_config: str = "config/train/tiny_sft.yaml"
    pretrain_set: dict[str, Any] = field(default_factory=dict)
    finetune_set: dict[str, Any] = field(default_factory=dict)
    metric_delay: int = 0
    mse_threshold: float = EvalConfig.mse_threshold  # the SFT/RL call (gen_theta_model.evaluate.recommend)
    kl_threshold: float = EvalConfig.kl_threshold
    out_dir: str = "runs/ablate"
    run: EngineConfig = field(default_factory=EngineConfig)

    def __post_init__(self) -> None:
        if not (self.data and self.suites and self.seeds) or self.d < 0:
            raise ValueError("data, suites and seeds must list at least one entry, and d must be >= 0")


def check_mixture(path: Path, mixture: Mixture, names: dict[str, set[str]]) -> None:
    """Raise ConfigError when a mixture weights a dataset, embodiment or category the data does not have."""
    for key in ("datasets", "embodiments", "categories"):
        unknown = sorted(set(getattr(mixture, key)) - names[key])
        if unknown:
            raise ConfigError(f"{path}: {key} {unknown} are not in the data; it has {sorted(names[key])}")


def plan_ablation(cfg: AblateConfig, mixtures: list[Path]) -> list[TrialSpec]:
    """Check the mixtures against the data, write the views, return one trial per mixture and seed."""
    stems = [p.stem for p in mixtures]
    if len(set(stems)) != len(stems):
        raise ConfigError(f"mixture file names must be distinct (they label the trials), got {stems}")
    sources = [resolve_path(d) for d in cfg.data]
    eps = list_episodes(sources)
    names = {"datasets": {s.name for s in sources}, "embodiments": {e.embodiment for e in eps},
             "categories": {e.category for e in eps}}
    resolved = []
    for p in mixtures:
        path = resolve_path(p)
        check_mixture(path, load_mixture(path), names)
        resolved.append(path)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    views = prepare_views(cfg.data, cfg.suites, [cfg.d] if cfg.d else None, cfg.subset_seed, out)
    (out / "ablate.yaml").write_text(yaml.safe_dump(
        {**to_mapping(cfg), "mixtures": [str(p) for p in resolved]}, sort_keys=False))
    (d,) = views.pretrain
    return [
        trial_spec(cfg, cfg.model, d, seed, views, f"{path.stem}-s{seed}", mixture=path.stem,
                   extra_set={"data.mixture": str(path)})
        for path in resolved for seed in cfg.seeds
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gen-theta ablate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mixtures", nargs="+", type=Path, help="mixture YAMLs (config/mixtures/*.yaml)")
    parser.add_argument("--config", type=Path, required=True, help="ablation YAML (docs/scaling.md)")
    parser.add_argument("--out", type=Path, help="ablation directory (overrides the config's out_dir)")
    parser.add_argument("--engine", choices=["local", "ray"], help="overrides the config's run.engine")
    parser.add_argument("--workers", type=int, help="parallel trials (overrides the config's run.workers)")
    parser.add_argument("--ray-address", help="Ray cluster to join, HOST:PORT / auto / ray://... (overrides the "
                        "config's run.ray_address; docs/cluster.md)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    from gen_theta_model.scaling.ablate_report import write_ablation_report

    overrides = {k: v for k, v in (("out_dir", args.out and str(args.out)), ("run.engine", args.engine),
                                   ("run.workers", args.workers), ("run.ray_address", args.ray_address))
                 if v is not None}
    try:
        cfg = load_config(AblateConfig, args.config, overrides=overrides)
        specs = plan_ablation(cfg, args.mixtures)
        results = run_trials(specs, cfg.run)
        md = write_ablation_report(load_results(results), cfg, Path(cfg.out_dir) / "report")
    except (ConfigError, ValueError) as err:
        print(f"gen-theta ablate: {err}", file=sys.stderr)
        return 2
    print(md.read_text())
    print(f"wrote {md.parent}")
    return 0
