"""Disturbances of the executed joint targets: demonstrations that visit states off the expert's path.

DART (Laskey et al., 2017): while demonstrating, the robot executes the demonstrator's command
plus a perturbation, and the command alone is recorded as the action. The demonstrations then
visit states beside the expert's path, each labelled with the way back to it; a cloned policy
that drifts finds its states in the data. Here it has a second use: in clean demonstrations the
arm's own pose along the approach is a function of where the object is, so a policy can find the
object from the arm (docs/policy.md, "Noise on the arm's own pose"); a disturbance that does not
depend on the object takes that away in the data itself, with images and joint states that agree.

``JointDisturbance`` draws, per episode and from the episode's seed, a smooth random offset for
every non-gripper joint (a cubic spline through normal knots ``knot_s`` apart, zero at the start)
and scales it by an envelope: full while the tool is far from the object to pick, fading to zero
within ``fade_m`` of its grasp point (so the grasp itself is the expert's), and zero for the rest
of the episode once that object has been grasped. ``SimRobot`` adds it to the targets it sends to
the motors; its ``commanded()`` (what a controller reports, what the recorder sees on the command
topic) stays the clean command.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.interpolate import CubicSpline

from gen_theta_model.embodiment import EmbodimentSpec

GRASP_ABOVE_CENTRE_M = 0.04  # the finger centre sits this far above a grasped cube's centre (SimWorld)


@dataclass(frozen=True)
class DisturbanceConfig:
    std: float = 0.0  # rad (m for prismatic joints): std of each non-gripper joint's offset at a knot; 0: off
    knot_s: float = 0.4  # s between the offset's random knots (its smoothness)
    fade_m: tuple[float, float] = (0.03, 0.10)  # m from the grasp point: no offset within the first, full beyond

    def __post_init__(self) -> None:
        if self.std < 0.0 or self.knot_s <= 0.0 or not 0.0 <= self.fade_m[0] < self.fade_m[1]:
            raise ValueError(f"need std >= 0, knot_s > 0 and 0 <= fade_m[0] < fade_m[1], got {self}")


class JointDisturbance:
    """Per-episode smooth offsets of the executed joint targets (see module docstring)."""

    def __init__(self, spec: EmbodimentSpec, config: DisturbanceConfig) -> None:
        self.spec = spec
        self.config = config
        self._mask = ~spec.gripper_mask  # (dof,) True: disturbed
        self._spline: CubicSpline | None = None
        self.finished = True  # the offset is zero for the rest of the episode

    def reset(self, seed: int, duration: float) -> None:
        """Draw the offsets of an episode of ``duration`` s from ``seed`` (same seed, same offsets)."""
        cfg = self.config
        if cfg.std == 0.0:
            self._spline, self.finished = None, True
            return
        rng = np.random.default_rng([seed, 0xDA27])
        times = np.arange(0.0, duration + 2 * cfg.knot_s, cfg.knot_s)
        knots = rng.normal(0.0, cfg.std, size=(len(times), self.spec.dof)) * self._mask
        knots[0] = 0.0  # every episode starts where the robot stands
        self._spline = CubicSpline(times, knots, axis=0)
        self.finished = False

    def envelope(self, tool: np.ndarray, pick: np.ndarray, holding: bool) -> float:
        """Scale in [0, 1] of the offset for the tool (finger centre, (3,) m) and the pick object's
        centre (3,) m; ``holding``: the pick object is grasped (from then on 0 for the episode).
        """
        if holding:
            self.finished = True
        if self.finished:
            return 0.0
        near, far = self.config.fade_m
        distance = float(np.linalg.norm(tool - pick - np.array([0.0, 0.0, GRASP_ABOVE_CENTRE_M])))
        return float(np.clip((distance - near) / (far - near), 0.0, 1.0))

    def offset(self, t: float, scale: float) -> tuple[np.ndarray, np.ndarray]:
        """Position (dof,) and velocity (dof,) offsets at ``t`` s into the episode, times ``scale``."""
        if self._spline is None or scale == 0.0:
            return np.zeros(self.spec.dof), np.zeros(self.spec.dof)
        return scale * self._spline(t), scale * self._spline(t, 1)
