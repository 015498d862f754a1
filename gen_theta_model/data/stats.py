"""Normalisation statistics per embodiment: ``NormStats``.

Positions and actions are already canonical ([-1, 1] by the URDF limits); these
statistics (per joint, over a dataset) let a trainer standardise further and are
saved with a checkpoint so that serving uses the training statistics.
Files: ``<name>.json`` (readable) and ``<name>.safetensors`` (exact float32).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save

ARRAY_FIELDS = ("state_mean", "state_std", "state_min", "state_max",
                "action_mean", "action_std", "action_min", "action_max")


@dataclass(frozen=True)
class NormStats:
    """Per-joint statistics of canonical state and action, each array (dof,) float32."""

    embodiment: str
    count_state: int
    count_action: int
    state_mean: np.ndarray
    state_std: np.ndarray
    state_min: np.ndarray
    state_max: np.ndarray
    action_mean: np.ndarray
    action_std: np.ndarray
    action_min: np.ndarray
    action_max: np.ndarray

    def save(self, directory: str | Path) -> Path:
        """Write ``<directory>/<embodiment>.json`` and ``.safetensors``; returns the json path."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        arrays = {k: np.asarray(getattr(self, k), dtype=np.float32) for k in ARRAY_FIELDS}
        meta = {"embodiment": self.embodiment, "count_state": str(self.count_state),
                "count_action": str(self.count_action)}
        doc = {"embodiment": self.embodiment, "count_state": self.count_state, "count_action": self.count_action}
        doc.update({k: [float(v) for v in arrays[k]] for k in ARRAY_FIELDS})
        path = d / f"{self.embodiment}.json"
        # Each file replaced whole (a full disk leaves the previous one), and written by Python
        # so that a write error is an OSError.
        files = {d / f"{self.embodiment}.safetensors": save(arrays, metadata=meta),
                 path: json.dumps(doc, indent=1).encode()}
        for file, data in files.items():
            tmp = file.with_name(file.name + ".tmp")
            tmp.write_bytes(data)
            tmp.replace(file)
        return path

    @classmethod
    def load(cls, path: str | Path) -> NormStats:
        """Load from a ``.json`` or ``.safetensors`` file written by ``save``."""
        p = Path(path)
        if p.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(p), framework="numpy") as f:
                meta = f.metadata()
            arrays = load_file(str(p))
            return cls(embodiment=meta["embodiment"], count_state=int(meta["count_state"]),
                       count_action=int(meta["count_action"]), **arrays)
        try:
            doc = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{p}: cannot read normalisation statistics: {err}") from err
        names = {f.name for f in fields(cls)}
        if set(doc) != names:
            raise ValueError(f"{p}: expected keys {sorted(names)}, got {sorted(doc)}")
        return cls(**{k: np.asarray(v, dtype=np.float32) if k in ARRAY_FIELDS else v for k, v in doc.items()})

    def to_dict(self) -> dict:
        """Plain form (lists), e.g. for a checkpoint's YAML."""
        return {f.name: (np.asarray(getattr(self, f.name)).tolist() if f.name in ARRAY_FIELDS
                         else getattr(self, f.name)) for f in fields(self)}


@dataclass
class Moments:
    """Sufficient statistics of a (N, dof) stream: mergeable across episodes."""

    count: int
    total: np.ndarray  # (dof,) float64 sum
    total_sq: np.ndarray  # (dof,) float64 sum of squares
    low: np.ndarray
    high: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray) -> Moments:
        x = np.asarray(x, dtype=np.float64)
        if len(x) == 0:
            dof = x.shape[-1]
            return cls(0, np.zeros(dof), np.zeros(dof), np.full(dof, np.inf), np.full(dof, -np.inf))
        return cls(len(x), x.sum(0), (x * x).sum(0), x.min(0), x.max(0))

    def merge(self, other: Moments) -> Moments:
        return Moments(self.count + other.count, self.total + other.total, self.total_sq + other.total_sq,
                       np.minimum(self.low, other.low), np.maximum(self.high, other.high))

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        mean = self.total / max(self.count, 1)
        var = np.maximum(self.total_sq / max(self.count, 1) - mean * mean, 0.0)
        return mean, np.sqrt(var)

    def to_dict(self) -> dict:
        return {"count": self.count, "sum": self.total.tolist(), "sum_sq": self.total_sq.tolist(),
                "min": self.low.tolist(), "max": self.high.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> Moments:
        return cls(int(d["count"]), np.asarray(d["sum"], float), np.asarray(d["sum_sq"], float),
                   np.asarray(d["min"], float), np.asarray(d["max"], float))


def norm_stats(embodiment: str, state: Moments, action: Moments) -> NormStats:
    """Build ``NormStats`` from merged moments; std is floored at 1e-6."""
    s_mean, s_std = state.mean_std()
    a_mean, a_std = action.mean_std()
    f = np.float32
    return NormStats(
        embodiment=embodiment, count_state=state.count, count_action=action.count,
        state_mean=s_mean.astype(f), state_std=np.maximum(s_std, 1e-6).astype(f),
        state_min=state.low.astype(f), state_max=state.high.astype(f),
        action_mean=a_mean.astype(f), action_std=np.maximum(a_std, 1e-6).astype(f),
        action_min=action.low.astype(f), action_max=action.high.astype(f),
    )
