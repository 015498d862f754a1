"""One trial: pretrain a model on a data view, fine-tune it on each downstream suite,
record the validation curves; the same function for sweeps and mixture ablations.

Training is the project's trainer (``gen_theta_model.train.train``) driven by the
usual training YAMLs with ``--set``-style overrides; the curves are read back from
each run's ``train_log.jsonl`` (``val/all/mse_d<delay>``, ``val/all/kl_d<delay>``).
A trial runs in its own process (pool worker or Ray task) and receives a
``TrialSpec`` as JSON text, so nothing but plain data crosses the process boundary.
Re-running an interrupted trial resumes its runs from their latest checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gen_theta_model.checkpoint import latest_checkpoint, load_policy, read_checkpoint_config
from gen_theta_model.config import ConfigError, from_mapping, to_mapping
from gen_theta_model.data.loader import make_dataloaders
from gen_theta_model.distributed import setup, teardown
from gen_theta_model.evaluate import ALL, EvalConfig, evaluate_policy, summarise
from gen_theta_model.policy.model import HarmonicTransformer
from gen_theta_model.scaling.results import CurvePoint, SuiteResult, TrialResult, write_result
from gen_theta_model.train import train
from gen_theta_model.train_config import TrainConfig, load_train_config

TRAIN_LOG = "train_log.jsonl"
VALIDATION_KL_SAMPLES = 8  # as the trainer's periodic validation (gen_theta_model.train.validate)


class TrialError(RuntimeError):
    """A training run of a trial did not finish (e.g. stopped by a non-finite loss)."""


@dataclass(frozen=True)
class SuiteSpec:
    """A downstream suite as a trial sees it: its data view(s) and task category."""

    name: str
    category: str
    data: list[str]


@dataclass(frozen=True)
class TrialSpec:
    """Everything one trial needs, as plain data (paths are strings)."""

    trial_id: str
    trial_dir: str
    model: str  # the label of the model in reports
    preset: str
    policy: dict[str, Any]
    d: int  # pretraining trajectories (episodes)
    seed: int
    pretrain_data: list[str]
    suites: list[SuiteSpec]
    pretrain_config: str
    finetune_config: str
    pretrain_set: dict[str, Any] = field(default_factory=dict)
    finetune_set: dict[str, Any] = field(default_factory=dict)
    metric_delay: int = 0
    mixture: str = ""  # the mixture YAML of an ablation trial ("" for a sweep trial)
    threads: int = 1  # torch intra-op threads in this trial's process
    info: dict[str, Any] = field(default_factory=dict)  # copied into the result (data facts)

    def to_json(self) -> str:
        return json.dumps(to_mapping(self))

    @classmethod
    def from_json(cls, text: str) -> TrialSpec:
        return from_mapping(cls, json.loads(text), source="<trial spec>")


def _overrides(values: dict[str, Any]) -> list[str]:
    """{dotted key: value} -> ``key=value`` items for load_train_config (values as JSON, a YAML subset)."""
    return [f"{k}={json.dumps(v)}" for k, v in values.items()]


def _config(config: str, values: dict[str, Any], user: dict[str, Any]) -> TrainConfig:
    """``config`` + user overrides + the trial's own keys (which win)."""
    return load_train_config(config, _overrides(user) + _overrides(values))


def _run(cfg: TrainConfig) -> None:
    """Train ``cfg``; raise TrialError if the run stops early."""
    env = setup(cfg.device)
    try:
        code = train(cfg, env)
    finally:
        teardown(env)
    if code != 0:
        raise TrialError(f"training run {cfg.out_dir} stopped early (exit code {code}); see its train_log.jsonl")


def zero_shot_point(checkpoint: Path, ft_cfg: TrainConfig, delay: int) -> CurvePoint:
    """Step 0 of a fine-tuning curve: the pretrained checkpoint on the fine-tuning run's validation batches.

    Unlike ``evaluate.evaluate_checkpoint`` (the checkpoint's own data split), this
    uses the fine-tuning config's split, keys and batch count, so step 0 and the
    curve the trainer logs are measured on the same validation samples.
    """
    policy = load_policy(checkpoint)
    _, val, info = make_dataloaders(list(ft_cfg.dataset), dataclasses.replace(ft_cfg.data, num_workers=0))
    categories = sorted({m.category for m in info.episodes})
    ecfg = EvalConfig(delays=(delay,), kl_samples=VALIDATION_KL_SAMPLES)
    totals, _ = evaluate_policy(
        policy, val, policy.embodiment_map([info.specs[n] for n in info.embodiment_names]), categories,
        [categories.index(m.category) for m in info.episodes], ecfg, ft_cfg.eval_batches,
    )
    row = next(r for r in summarise(totals, categories, ecfg) if r["category"] == ALL)
    return CurvePoint(0, row["mse"], row["kl"])


def read_curve(run_dir: Path, delay: int) -> list[CurvePoint]:
    """Read the validation points of a run's train_log.jsonl at ``delay``; the last entry per step wins (resumes)."""
    mse_key, kl_key = f"val/all/mse_d{delay}", f"val/all/kl_d{delay}"
    points: dict[int, CurvePoint] = {}
    path = run_dir / TRAIN_LOG
    seen: set[str] = set()
    for line in path.read_text().splitlines():
        row = json.loads(line)
        seen |= {k for k in row if k.startswith("val/all/")}
        if mse_key in row:
            points[int(row["step"])] = CurvePoint(int(row["step"]), float(row[mse_key]), row.get(kl_key))
    if not points:
        raise ConfigError(f"{path}: no '{mse_key}' entries (validation keys there: {sorted(seen) or 'none'}); "
                          "metric_delay must be 0 or the training config's validation delay")
    return [points[s] for s in sorted(points)]


def count_parameters(run_dir: Path) -> int:
    """Parameters of the policy in a run's latest checkpoint (built on the meta device)."""
    _, policy_cfg, _ = read_checkpoint_config(latest_checkpoint(run_dir))
    with torch.device("meta"):
        model = HarmonicTransformer(policy_cfg)
    return sum(p.numel() for p in model.parameters())


def run_trial(spec: TrialSpec) -> TrialResult:
    """Pretrain, fine-tune on every suite, write and return ``<trial_dir>/result.json``."""
    torch.set_num_threads(spec.threads)
    start = time.monotonic()
    root = Path(spec.trial_dir)
    pre_dir = root / "pretrain"
    common = {"seed": spec.seed, "data.seed": spec.seed, "progress": False}
    _run(_config(spec.pretrain_config, {
        "dataset": spec.pretrain_data, "out_dir": str(pre_dir), "preset": spec.preset, "policy": spec.policy,
        **common,
    }, spec.pretrain_set))
    suites = []
    for suite in spec.suites:
        ft_dir = root / "finetune" / suite.name
        ft_cfg = _config(spec.finetune_config, {
            "dataset": suite.data, "out_dir": str(ft_dir), "init_from": str(pre_dir), **common,
        }, spec.finetune_set)
        start_point = zero_shot_point(latest_checkpoint(pre_dir), ft_cfg, spec.metric_delay)
        _run(ft_cfg)
        curve = [start_point, *read_curve(ft_dir, spec.metric_delay)]
        suites.append(SuiteResult(suite.name, suite.category, curve[-1].mse, curve[-1].rkl, curve))
    result = TrialResult(
        trial_id=spec.trial_id, preset=spec.model, n_params=count_parameters(pre_dir), d=spec.d, seed=spec.seed,
        pretrain_curve=read_curve(pre_dir, spec.metric_delay), suites=suites, mixture=spec.mixture,
        wall_s=time.monotonic() - start,
        info={**spec.info, "base_preset": spec.preset, "policy": spec.policy, "metric_delay": spec.metric_delay},
    )
    write_result(result, root)
    return result


def run_trial_json(spec_json: str) -> str:
    """Process entry point: a TrialSpec as JSON in, the result.json path out."""
    spec = TrialSpec.from_json(spec_json)
    run_trial(spec)
    return str(Path(spec.trial_dir) / "result.json")
