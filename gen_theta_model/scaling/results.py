"""The result of one sweep or ablation trial, as written to ``<trial>/result.json``.

One trial = pretrain a model preset on a data subset (D trajectories, or a
mixture), fine-tune the checkpoint on each downstream task suite, and record
validation curves. ``gen-theta scaling fit`` reads only these files, so results
from any machine (or from Ray workers) can be fitted together.

``result.json``::

    {"trial_id": "tiny-D100-s0", "preset": "tiny", "n_params": 812345,
     "d": 100, "seed": 0, "mixture": "",
     "pretrain_curve": [{"step": 50, "mse": 0.41, "rkl": 3.2}, ...],
     "suites": [{"suite": "pick_place", "category": "dexterity", "mse": 0.12, "rkl": 1.9,
                 "curve": [{"step": 0, "mse": 0.3, "rkl": 2.5}, ...]}, ...],
     "wall_s": 63.2, "info": {"checkpoint": "..."}}

``mse`` is validation next-action MSE in normalised action units, ``rkl`` the
reverse KL to a Gaussian at the ground truth (gen_theta_model.evaluate); steps
are optimizer steps.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gen_theta_model.config import ConfigError, from_mapping, to_mapping

RESULT_FILE = "result.json"


@dataclass(frozen=True)
class CurvePoint:
    """Validation figures at one optimizer step."""

    step: int
    mse: float
    rkl: float | None = None


@dataclass(frozen=True)
class SuiteResult:
    """Fine-tuning on one downstream task suite: the curve and its final figures."""

    suite: str
    category: str
    mse: float
    rkl: float | None
    curve: list[CurvePoint] = field(default_factory=list)


@dataclass(frozen=True)
class TrialResult:
    """One pretrain -> fine-tune -> evaluate trial (see the module docstring)."""

    trial_id: str
    preset: str
    n_params: int
    d: int
    seed: int
    pretrain_curve: list[CurvePoint]
    suites: list[SuiteResult]
    mixture: str = ""
    wall_s: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.suites:
            raise ValueError(f"trial {self.trial_id!r} has no fine-tuning suites")

    @property
    def downstream_mse(self) -> float:
        """L: mean final validation MSE over the downstream suites."""
        return float(np.mean([s.mse for s in self.suites]))

    def finetune_curve(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean validation MSE over suites at the steps every suite has: (steps (K,), mse (K,))."""
        common = set.intersection(*({p.step for p in s.curve} for s in self.suites))
        steps = np.array(sorted(common), dtype=float)
        by_suite = [{p.step: p.mse for p in s.curve} for s in self.suites]
        return steps, np.array([np.mean([c[int(k)] for c in by_suite]) for k in steps])

    def to_dict(self) -> dict[str, Any]:
        return to_mapping(self)


def write_result(result: TrialResult, trial_dir: Path) -> Path:
    """Write ``trial_dir/result.json`` atomically (a finished trial is all or nothing)."""
    trial_dir.mkdir(parents=True, exist_ok=True)
    path = trial_dir / RESULT_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result.to_dict(), indent=1))
    tmp.replace(path)
    return path


def read_result(path: Path) -> TrialResult:
    """Read one ``result.json``; a malformed file is a ConfigError naming it."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: cannot read trial result: {err}") from err
    return from_mapping(TrialResult, data, source=str(path))


def load_results(paths: list[Path]) -> list[TrialResult]:
    """Trial results from result.json files and/or sweep directories (searched recursively)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.rglob(RESULT_FILE))
            if not found:
                raise ConfigError(f"{p}: no {RESULT_FILE} under this directory")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise ConfigError(f"{p}: no such file or directory")
    return [read_result(f) for f in files]
