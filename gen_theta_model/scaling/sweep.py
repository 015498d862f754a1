"""`gen-theta scaling sweep CONFIG`: nested pretraining subsets x model sizes x seeds.

The sweep directory (``out_dir``)::

    sweep.yaml                    the configuration used (resolved)
    subsets.json                  {suites: {name: [episode ids]}, sizes: {D: [episode ids]}}
    views/suites/<suite>/<src>/   downstream suite data (taken out of the pretraining pool)
    views/pretrain/D<d>/<src>/    the nested subset of D episodes
    trials/<model>-D<d>-s<seed>/  pretrain/ and finetune/<suite>/ runs, and result.json

Then `gen-theta scaling fit <out_dir>` (run at the end unless --no-fit).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gen_theta_model.config import resolve_path, to_mapping
from gen_theta_model.scaling.engine import EngineConfig, run_trials
from gen_theta_model.scaling.subsets import (
    EpisodeKey,
    list_episodes,
    materialize_view,
    nested_order,
    nested_subsets,
    split_suites,
)
from gen_theta_model.scaling.trial import SuiteSpec, TrialSpec


@dataclass(frozen=True)
class ModelEntry:
    """A model size of the sweep: a policy preset, optionally with PolicyConfig overrides."""

    name: str
    preset: str = "tiny"
    policy: dict[str, Any] = field(default_factory=dict)
    sizes: list[int] = field(default_factory=list)  # D values this model trains on; empty: all the sweep's


@dataclass(frozen=True)
class SuiteEntry:
    """A downstream suite: ``episodes`` episodes of ``tasks``, held out of pretraining."""

    name: str
    tasks: list[str]
    episodes: int

    def __post_init__(self) -> None:
        if self.episodes < 2 or not self.tasks:
            raise ValueError(f"suite '{self.name}': needs tasks and episodes >= 2 (fine-tune + validation)")


@dataclass(frozen=True)
class SweepConfig:
    data: list[str]  # source dataset directories (gen-theta ingest output)
    sizes: list[int]  # D: pretraining trajectories (episodes) per subset
    models: list[ModelEntry]
    suites: list[SuiteEntry]
    seeds: list[int] = field(default_factory=lambda: [0])  # model init and data order; subsets use subset_seed
    subset_seed: int = 0  # fixes the nested subsets and the suites, whatever the trial seeds
    pretrain_config: str = "config/train/tiny_pretrain.yaml"
    finetune_config: str = "config/train/tiny_sft.yaml"
    pretrain_set: dict[str, Any] = field(default_factory=dict)  # dotted overrides, e.g. {max_steps: 400}
    finetune_set: dict[str, Any] = field(default_factory=dict)
    metric_delay: int = 0  # validation delay whose MSE is L (0, or the training config's validation delay)
    out_dir: str = "runs/scaling"
    run: EngineConfig = field(default_factory=EngineConfig)

    def __post_init__(self) -> None:
        if not (self.data and self.sizes and self.models and self.suites and self.seeds):
            raise ValueError("data, sizes, models, suites and seeds must each list at least one entry")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be distinct, got {names}")
        for m in self.models:
            if set(m.sizes) - set(self.sizes):
                raise ValueError(f"model '{m.name}': sizes {sorted(set(m.sizes) - set(self.sizes))} are not "
                                 f"in the sweep's sizes {self.sizes}")


def _category(episodes: list[EpisodeKey]) -> str:
    return Counter(e.category for e in episodes).most_common(1)[0][0]


def _info(episodes: list[EpisodeKey]) -> dict[str, Any]:
    seconds = sum(e.duration_s for e in episodes)
    return {"episodes": len(episodes), "experience_hours": seconds / 3600.0,
            "mean_episode_s": seconds / max(len(episodes), 1)}


@dataclass(frozen=True)
class Views:
    """The data views of a sweep or ablation: downstream suites and pretraining subsets."""

    suites: list[SuiteSpec]
    pretrain: dict[int, list[str]]  # D -> view directories
    info: dict[int, dict[str, Any]]  # D -> data facts (episodes, experience hours)


def prepare_views(
    data: list[str], suites: list[SuiteEntry], sizes: list[int] | None, subset_seed: int, out: Path
) -> Views:
    """Write the suite views and the nested subset views (``sizes`` None: the whole pool) and subsets.json."""
    sources = [resolve_path(d) for d in data]
    episodes = list_episodes(sources)
    suite_eps, pool = split_suites(episodes, {s.name: (list(s.tasks), s.episodes) for s in suites}, subset_seed)
    specs = [
        SuiteSpec(name, _category(eps), [str(v) for v in materialize_view(sources, eps, out / "views/suites" / name)])
        for name, eps in suite_eps.items()
    ]
    subsets = nested_subsets(nested_order(pool, subset_seed), list(sizes) if sizes else [len(pool)])

    def ids(eps: list[EpisodeKey]) -> list[str]:
        return [f"{sources[e.source].name}/{e.episode}" for e in eps]

    (out / "subsets.json").write_text(json.dumps({
        "suites": {n: ids(eps) for n, eps in suite_eps.items()},
        "sizes": {str(d): ids(eps) for d, eps in subsets.items()},
    }, indent=1))
    views = {d: [str(v) for v in materialize_view(sources, eps, out / "views/pretrain" / f"D{d}")]
             for d, eps in subsets.items()}
    return Views(specs, views, {d: _info(eps) for d, eps in subsets.items()})


def trial_spec(cfg: Any, model: ModelEntry, d: int, seed: int, views: Views, trial_id: str,
               mixture: str = "", extra_set: dict[str, Any] | None = None) -> TrialSpec:
    """Build the TrialSpec of one trial of a sweep or ablation config ``cfg`` (the fields both share)."""
    return TrialSpec(
        trial_id=trial_id, trial_dir=str(Path(cfg.out_dir) / "trials" / trial_id), model=model.name,
        preset=model.preset, policy=dict(model.policy), d=d, seed=seed, pretrain_data=views.pretrain[d],
        suites=views.suites, pretrain_config=str(resolve_path(cfg.pretrain_config)),
        finetune_config=str(resolve_path(cfg.finetune_config)),
        pretrain_set={**cfg.pretrain_set, **(extra_set or {})}, finetune_set=dict(cfg.finetune_set),
        metric_delay=cfg.metric_delay, mixture=mixture, info=views.info[d],
    )


def plan_sweep(cfg: SweepConfig) -> list[TrialSpec]:
    """Write the views and the sweep's record files; return the trial specs."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    views = prepare_views(cfg.data, cfg.suites, cfg.sizes, cfg.subset_seed, out)
    (out / "sweep.yaml").write_text(yaml.safe_dump(to_mapping(cfg), sort_keys=False))
    # model-major: a sweep stopped early has whole L(D) curves for the first models listed
    return [
        trial_spec(cfg, model, d, seed, views, f"{model.name}-D{d}-s{seed}")
        for model in cfg.models for seed in cfg.seeds for d in sorted(model.sizes or views.pretrain)
    ]


def run_sweep_config(cfg: SweepConfig) -> Path:
    """Plan and run (or resume) the sweep; returns its directory."""
    specs = plan_sweep(cfg)
    run_trials(specs, cfg.run)
    return Path(cfg.out_dir)
