"""Joint trajectories and a follower with ros2_control JointTrajectoryController semantics.

Pure Python/numpy: the simulated robot follows commands with it, the dataset
ingest turns a recorded command stream into a dense action series with it
(``resample_commands``), and the policy server predicts what the robot will do
with it. All times are float seconds on one clock (the node clock, or a bag's
receive times).

Semantics (as JointTrajectoryController, with ROS 1 JTC's trajectory replacement):

- A ``Trajectory`` has joint names, points with ``time_from_start`` (strictly
  increasing, >= 0) and a ``start_time``; ``start_time == 0`` (a header stamp of
  zero) means "start when received".
- ``TrajectoryFollower.set_trajectory(traj, now)``: the new trajectory takes over
  at its switch time ``max(start, now)``; what was planned before the switch is
  kept, everything planned from the switch on is replaced. Points whose time is
  before the switch are dropped; if no point is left the trajectory is rejected
  and the plan is unchanged.
- From the commanded state at the switch the follower interpolates to the first
  point, then from point to point: linear when a point has positions only, cubic
  Hermite when it has velocities, quintic when it also has accelerations.
  After the last point it holds the last positions with zero velocity.
- Joints are matched by name; a trajectory may name a subset of the joints (the
  others hold their position at the switch); an unknown name is an error.
- Every sample is clamped to the URDF limits (``EmbodimentSpec.clamp_positions``
  and ``clamp_velocities``).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gen_theta_model.embodiment import EmbodimentSpec


class TrajectoryError(ValueError):
    """A trajectory is malformed or names joints the robot does not have."""


def _vector(values: Sequence[float] | np.ndarray | None, n: int, what: str, index: int) -> np.ndarray | None:
    if values is None:
        return None
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.shape != (n,):
        raise TrajectoryError(f"point {index}: {what} has {arr.shape[0]} values for {n} joints")
    if not np.all(np.isfinite(arr)):
        raise TrajectoryError(f"point {index}: {what} contains non-finite values {arr.tolist()}")
    return arr


@dataclass(frozen=True)
class TrajectoryPoint:
    """One waypoint: positions (n,) rad|m, optional velocities and accelerations (n,), reached at
    ``time_from_start`` seconds after the trajectory's start.
    """

    positions: np.ndarray
    time_from_start: float
    velocities: np.ndarray | None = None
    accelerations: np.ndarray | None = None


@dataclass(frozen=True)
class Trajectory:
    """A JointTrajectory: ``joint_names`` (n), ``points`` and ``start_time`` (s; 0 = when received)."""

    joint_names: tuple[str, ...]
    points: tuple[TrajectoryPoint, ...]
    start_time: float = 0.0

    def __post_init__(self) -> None:
        names = tuple(self.joint_names)
        object.__setattr__(self, "joint_names", names)
        if not names:
            raise TrajectoryError("trajectory has no joint names")
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise TrajectoryError(f"trajectory names joint '{dup}' twice")
        if not self.points:
            raise TrajectoryError("trajectory has no points")
        n = len(names)
        checked = []
        last = -np.inf
        for i, p in enumerate(self.points):
            t = float(p.time_from_start)
            if not np.isfinite(t) or t < 0.0:
                raise TrajectoryError(f"point {i}: time_from_start must be finite and >= 0, got {t}")
            if t <= last:
                raise TrajectoryError(f"point {i}: time_from_start {t} s does not increase (previous {last} s)")
            last = t
            if p.accelerations is not None and p.velocities is None:
                raise TrajectoryError(f"point {i}: accelerations given without velocities")
            checked.append(
                TrajectoryPoint(
                    positions=_vector(p.positions, n, "positions", i),
                    time_from_start=t,
                    velocities=_vector(p.velocities, n, "velocities", i),
                    accelerations=_vector(p.accelerations, n, "accelerations", i),
                )
            )
        object.__setattr__(self, "points", tuple(checked))

    @classmethod
    def from_arrays(
        cls,
        joint_names: Sequence[str],
        times: np.ndarray,
        positions: np.ndarray,
        velocities: np.ndarray | None = None,
        accelerations: np.ndarray | None = None,
        start_time: float = 0.0,
    ) -> Trajectory:
        """Build from arrays: ``times`` (T,) s from start, ``positions`` (T, n), optional (T, n) derivatives."""
        times = np.asarray(times, dtype=np.float64).reshape(-1)
        positions = np.asarray(positions, dtype=np.float64)
        if positions.ndim != 2 or positions.shape[0] != times.shape[0]:
            raise TrajectoryError(f"positions must be (T={times.shape[0]}, n), got shape {positions.shape}")
        points = tuple(
            TrajectoryPoint(
                positions=positions[i],
                time_from_start=float(times[i]),
                velocities=None if velocities is None else np.asarray(velocities)[i],
                accelerations=None if accelerations is None else np.asarray(accelerations)[i],
            )
            for i in range(times.shape[0])
        )
        return cls(tuple(joint_names), points, float(start_time))

    @property
    def duration(self) -> float:
        """Seconds from start to the last point."""
        return self.points[-1].time_from_start


@dataclass(frozen=True)
class _Piece:
    """The plan from ``switch`` on: interpolate from the origin state to each point in turn.

    ``times`` (P+1,) absolute s with times[0] = switch; ``q``, ``qd``, ``qdd`` (P+1, k) for the
    k commanded joints ``index`` (spec order), row 0 being the origin. ``kind[i]`` is the
    interpolation of segment i -> i+1: 1 linear, 3 cubic, 5 quintic. ``hold`` (dof,) is the
    full origin position (joints the trajectory does not name keep it).
    """

    switch: float
    index: np.ndarray
    times: np.ndarray
    q: np.ndarray
    qd: np.ndarray
    qdd: np.ndarray
    kind: tuple[int, ...]
    hold: np.ndarray


def _interpolate(kind: int, t0: float, t1: float, a: tuple, b: tuple, t: float) -> tuple[np.ndarray, ...]:
    """Interpolate states a=(q, qd, qdd) at t0 and b at t1 at time t: (q, qd, qdd)."""
    h = t1 - t0
    s = t - t0
    q0, v0, a0 = a
    q1, v1, a1 = b
    if kind == 1 or h <= 0.0:
        if h <= 0.0:
            return q1.copy(), np.zeros_like(q1), np.zeros_like(q1)
        v = (q1 - q0) / h
        return q0 + v * s, v, np.zeros_like(q0)
    if kind == 3:
        c2 = (3.0 * (q1 - q0) - (2.0 * v0 + v1) * h) / h**2
        c3 = (2.0 * (q0 - q1) + (v0 + v1) * h) / h**3
        q = q0 + v0 * s + c2 * s**2 + c3 * s**3
        return q, v0 + 2.0 * c2 * s + 3.0 * c3 * s**2, 2.0 * c2 + 6.0 * c3 * s
    # quintic: position, velocity and acceleration matched at both ends
    c2 = a0 / 2.0
    d = q1 - q0 - v0 * h - c2 * h**2
    dv = v1 - v0 - a0 * h
    da = a1 - a0
    c3 = (10.0 * d - 4.0 * dv * h + 0.5 * da * h**2) / h**3
    c4 = (-15.0 * d + 7.0 * dv * h - da * h**2) / h**4
    c5 = (6.0 * d - 3.0 * dv * h + 0.5 * da * h**2) / h**5
    q = q0 + v0 * s + c2 * s**2 + c3 * s**3 + c4 * s**4 + c5 * s**5
    qd = v0 + 2.0 * c2 * s + 3.0 * c3 * s**2 + 4.0 * c4 * s**3 + 5.0 * c5 * s**4
    qdd = 2.0 * c2 + 6.0 * c3 * s + 12.0 * c4 * s**2 + 20.0 * c5 * s**3
    return q, qd, qdd


class TrajectoryFollower:
    """Follows trajectories for one robot the way JointTrajectoryController does (module docstring).

    ``sample(t)`` gives the commanded (q, qd), each (dof,) in spec joint order, clamped to
    the URDF limits. Times are seconds on the caller's clock.
    """

    def __init__(self, spec: EmbodimentSpec, initial: np.ndarray | None = None, t0: float = 0.0) -> None:
        self.spec = spec
        self._index = {n: i for i, n in enumerate(spec.joint_names)}
        self._pieces: list[_Piece] = []
        self.reset(spec.home_positions if initial is None else initial, t0)

    def reset(self, q: np.ndarray, t: float = 0.0) -> None:
        """Forget every trajectory and hold positions ``q`` (dof,) from time ``t``."""
        q = self.spec.clamp_positions(np.asarray(q, dtype=np.float64).reshape(-1))
        zero = np.zeros((1, self.spec.dof))
        self._pieces = [_Piece(float(t), np.arange(self.spec.dof), np.array([float(t)]), q[None], zero, zero, (), q)]

    def set_trajectory(self, traj: Trajectory, now: float) -> bool:
        """Make ``traj`` (received at ``now`` s) replace the plan from its switch time on.

        Returns False, leaving the plan unchanged, when every point lies before the switch.
        Raises TrajectoryError if ``traj`` names a joint this robot does not have.
        """
        unknown = [n for n in traj.joint_names if n not in self._index]
        if unknown:
            raise TrajectoryError(
                f"{self.spec.name}: trajectory names unknown joint '{unknown[0]}' (known: {self.spec.joint_names})"
            )
        start = float(now) if traj.start_time == 0.0 else float(traj.start_time)
        switch = max(start, float(now))
        points = [p for p in traj.points if start + p.time_from_start >= switch]
        if not points:
            return False
        q_s, qd_s, qdd_s = self._state(switch)
        index = np.array([self._index[n] for n in traj.joint_names])
        times = [switch] + [start + p.time_from_start for p in points]
        q = [q_s[index]] + [p.positions for p in points]
        qd = [qd_s[index]] + [p.velocities if p.velocities is not None else np.zeros(len(index)) for p in points]
        qdd = [qdd_s[index]] + [
            p.accelerations if p.accelerations is not None else np.zeros(len(index)) for p in points
        ]
        kinds = []
        prev_v, prev_a = True, True  # the origin state has all derivatives
        for p in points:
            has_v, has_a = p.velocities is not None, p.accelerations is not None
            kinds.append(5 if (has_a and prev_a) else 3 if (has_v and prev_v) else 1)
            prev_v, prev_a = has_v, has_a
        piece = _Piece(
            switch, index, np.array(times), np.stack(q), np.stack(qd), np.stack(qdd), tuple(kinds), q_s.copy()
        )
        # Keep what is planned before the switch; drop pieces made unreachable by `now`.
        kept = [p for p in self._pieces if p.switch < switch]
        while len(kept) > 1 and kept[1].switch <= now:
            kept.pop(0)
        self._pieces = kept + [piece]
        return True

    def sample(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Commanded positions and velocities at time ``t`` s: two (dof,) arrays, within limits."""
        q, qd, _ = self._state(t)
        return q, qd

    def end_time(self) -> float:
        """Time (s) of the last planned point; after it the follower holds."""
        return float(self._pieces[-1].times[-1])

    def _state(self, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(q, qd, qdd), each (dof,), clamped, at time ``t``."""
        switches = [p.switch for p in self._pieces]
        piece = self._pieces[max(bisect.bisect_right(switches, t) - 1, 0)]
        q = piece.hold.copy()
        qd = np.zeros(self.spec.dof)
        qdd = np.zeros(self.spec.dof)
        times = piece.times
        if t <= times[0]:
            q[piece.index], qd[piece.index], qdd[piece.index] = piece.q[0], piece.qd[0], piece.qdd[0]
        elif t >= times[-1]:
            q[piece.index] = piece.q[-1]
        else:
            i = int(np.searchsorted(times, t, side="right")) - 1
            a = (piece.q[i], piece.qd[i], piece.qdd[i])
            b = (piece.q[i + 1], piece.qd[i + 1], piece.qdd[i + 1])
            q[piece.index], qd[piece.index], qdd[piece.index] = _interpolate(
                piece.kind[i], times[i], times[i + 1], a, b, t
            )
        return self.spec.clamp_positions(q), self.spec.clamp_velocities(qd), qdd


def resample_commands(
    spec: EmbodimentSpec,
    initial: np.ndarray,
    commands: Sequence[tuple[float, Trajectory]],
    times: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Replay a command stream through a follower and sample it on a time grid.

    ``commands``: (receive time s, trajectory) in receive order; ``initial`` (dof,) the
    positions held before the first command; ``times`` (T,) increasing sample times s.
    Returns commanded positions and velocities, each (T, dof). Each trajectory is applied
    before the samples at or after its receive time, as a controller would have seen it.
    """
    times = np.asarray(times, dtype=np.float64).reshape(-1)
    if np.any(np.diff(times) < 0):
        raise TrajectoryError("resample_commands: sample times must not decrease")
    t0 = min(times[0] if times.size else 0.0, commands[0][0] if commands else 0.0)
    follower = TrajectoryFollower(spec, initial, t0)
    q = np.zeros((times.size, spec.dof))
    qd = np.zeros((times.size, spec.dof))
    k = 0
    for i, t in enumerate(times):
        while k < len(commands) and commands[k][0] <= t:
            follower.set_trajectory(commands[k][1], commands[k][0])
            k += 1
        q[i], qd[i] = follower.sample(t)
    return q, qd


def resample_positions(stamps_ns: np.ndarray, q: np.ndarray, grid_ns: np.ndarray,
                       continuous: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sample a measured position series (a leader arm's joint states, a dataset's actions) on a time grid.

    ``stamps_ns`` (N,) increasing int64 ns, ``q`` (N, dof) rad or m, ``grid_ns`` (T,) increasing int64 ns.
    Linear interpolation between samples; the first (last) sample is held before (after) them.
    ``continuous`` (dof,) bool: joints unwrapped before interpolating (no sweep the long way round
    at +-pi). Returns positions (T, dof) and their finite-difference velocities (T, dof) per s
    (zeros for a single grid point).
    """
    q = np.array(q, dtype=np.float64)
    if continuous is not None and continuous.any():
        q[:, continuous] = np.unwrap(q[:, continuous], axis=0)
    t = (np.asarray(stamps_ns, np.int64) - grid_ns[0]) * 1e-9  # relative: ns since the epoch lose digits
    tg = (np.asarray(grid_ns, np.int64) - grid_ns[0]) * 1e-9
    out = np.stack([np.interp(tg, t, q[:, j]) for j in range(q.shape[1])], axis=1)
    qd = np.gradient(out, tg, axis=0) if len(tg) > 1 else np.zeros_like(out)
    return out, qd
