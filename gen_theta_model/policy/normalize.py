"""Normalise in, unnormalise out: dataset statistics applied outside the nn.Module.

Canonical positions ([-1, 1] by the URDF limits) are standardised per embodiment
and joint with the dataset's ``NormStats`` (mean, std of state and action), so a
gripper that barely moves and a shoulder that sweeps its range weigh alike in the
loss. The statistics are saved in the checkpoint and travel with the policy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from gen_theta_model import batch as K
from gen_theta_model.data.stats import NormStats
from gen_theta_model.policy.model import ANCHOR

MIN_STD = 0.01  # canonical units (0.5% of a joint's range): a static joint is not blown up to huge z-scores


class Normalizer:
    """Per-embodiment statistics stacked to (E, max_dof) tensors, indexed by EMBODIMENT_INDEX.

    ``names[i]`` is embodiment i of the policy; padded joints get mean 0, std 1.
    """

    def __init__(self, names: Sequence[str], stats: dict[str, NormStats], max_dof: int) -> None:
        missing = [n for n in names if n not in stats]
        if missing:
            raise ValueError(f"no normalisation statistics for embodiment '{missing[0]}' (have {sorted(stats)})")
        self.names = list(names)
        self.stats = {n: stats[n] for n in names}
        arrays = {key: np.zeros((len(names), max_dof), np.float32) for key in ("sm", "ss", "am", "as")}
        arrays["ss"][:] = arrays["as"][:] = 1.0
        for i, n in enumerate(names):
            s = stats[n]
            dof = len(s.action_mean)
            if dof > max_dof:
                raise ValueError(f"embodiment '{n}' has {dof} joints, more than max_dof={max_dof}")
            arrays["sm"][i, :dof], arrays["ss"][i, :dof] = s.state_mean, np.maximum(s.state_std, MIN_STD)
            arrays["am"][i, :dof], arrays["as"][i, :dof] = s.action_mean, np.maximum(s.action_std, MIN_STD)
        self._t = {k: torch.from_numpy(v) for k, v in arrays.items()}

    def to(self, device: torch.device | str) -> Normalizer:
        self._t = {k: v.to(device) for k, v in self._t.items()}
        return self

    def action_scale_shift(self, embodiment: torch.Tensor, dof: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(std, mean) of the actions (B, dof) for embodiment indices (B,)."""
        return self._t["as"][embodiment, :dof], self._t["am"][embodiment, :dof]

    def normalize_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Return a copy of ``batch`` with STATE, ACTION and KEYPOSE standardised; padded joints stay 0."""
        e = batch[K.EMBODIMENT_INDEX]
        jmask = batch[K.JOINT_MASK].to(torch.float32)  # (B, D)
        dof = jmask.shape[1]
        out = dict(batch)
        sm, ss = self._t["sm"][e, :dof], self._t["ss"][e, :dof]  # (B, D)
        out[K.STATE] = (batch[K.STATE] - sm[:, None]) / ss[:, None] * jmask[:, None]
        if K.ACTION in batch:
            std, mean = self.action_scale_shift(e, dof)
            out[K.ACTION] = (batch[K.ACTION] - mean[:, None]) / std[:, None] * jmask[:, None]
            out[ANCHOR] = last_committed(out[K.ACTION], batch[K.DELAY])
            if K.KEYPOSE in batch:
                out[K.KEYPOSE] = (batch[K.KEYPOSE] - mean) / std * jmask
        return out


def last_committed(actions: torch.Tensor, delay: torch.Tensor) -> torch.Tensor:
    """(B, D): ``actions[b, delay[b] - 1]``, the last committed action, and 0 where delay is 0.

    The residual head predicts the chunk relative to it (``PolicyConfig.residual``): where
    the robot will be when the new chunk takes over. Without a prefix (0, in normalised
    units: the mean action) the chunk is predicted as is.
    """
    last = actions[torch.arange(delay.shape[0], device=delay.device), (delay - 1).clamp_min(0)]  # (B, D)
    return last * (delay > 0).to(last.dtype)[:, None]
