"""Plausibility checks on an episode's joint values before they enter a dataset.

One bad value ruins far more than its episode: a NaN joint position makes the
embodiment's statistics NaN and every training run on them stops at step 1; one
flipped byte (-8.9e9 rad) blows that joint's std up by nine orders of magnitude.
Ingest therefore checks every joint state and every commanded trajectory point:

- finite (a velocity row may be all NaN: the message had no velocities);
- positions within the URDF limits widened by ``LIMIT_MARGIN`` of the range on
  each side (encoders overshoot, grippers squeeze); continuous joints are unbounded;
- commanded speeds, and speeds implied by two consecutive joint states, at most
  ``SPEED_FACTOR`` x the URDF velocity limit; the implied speed allows a jump of
  ``JUMP_ALLOWANCE`` of the range on top, for sensor noise and stamp jitter. Gripper joints
  are not held to the implied speed: fingers are pushed by what they touch, many gripper
  drivers report their width in steps, and the sim's arm6 finger moved 7.6 mm (19% of its
  range) in 12 ms at the start of an expert episode on a loaded machine (a full test run; the cause
  in the sim is not found). Their positions stay bounded, finite and within the limits;
- reported speeds (a joint state's velocity) at most ``REPORTED_SPEED_FACTOR`` x the
  limit: a driver's velocity is an estimate (filtered, or differenced over one cycle),
  and a hard stop or an impact spikes it for a sample while the joint goes nowhere.
  The sim's open finger bouncing off its stop as the arm sets off read 0.25 m/s, and
  in one CI run more than 0.4 m/s, against a 0.2 m/s limit: a good episode, rejected
  when this bound was 2x. The positions still bound how far the joint really moved.

A failed check raises ``ImplausibleValueError`` naming the stream, the joint, the value
and the time, so that ingest can reject the episode with a message a person acts on.
The sim's expert episodes stay inside these bounds (positions at most 3% of the range past
a limit, commanded speeds at most 1.3 x the limit).
"""

from __future__ import annotations

import numpy as np

from gen_theta_model.embodiment import EmbodimentSpec
from gen_theta_model.trajectory import Trajectory

LIMIT_MARGIN = 0.1  # of a joint's range, beyond each URDF position limit
SPEED_FACTOR = 2.0  # x the URDF velocity limit
REPORTED_SPEED_FACTOR = 10.0  # x the URDF velocity limit, for a joint state's own velocity
JUMP_ALLOWANCE = 0.02  # of a joint's range, between two consecutive joint states beyond the speed bound


def sensed_before_start(stamps_ns: np.ndarray, recv_ns: np.ndarray, start_ns: int, window_ns: int = 10**9) -> int:
    """How many leading messages of one stream were sensed before the recording started.

    ``stamps_ns`` (N,) increasing header stamps on the sender's clock, ``recv_ns`` (N,) receive
    times on the recorder's clock, ``start_ns`` the recording's start on the recorder's clock.
    A message in flight when the recorder starts arrives after the start although it describes
    the time before it: after a simulator reset, the pose before the reset, which would read as
    a jump of the whole arm in milliseconds. Sensed time on the recorder's clock is taken as
    stamp + offset, the offset being the smallest receive-minus-stamp among the messages
    received in the stream's first ``window_ns``: the sender-recorder clock offset plus the
    least transport delay. So a constant clock offset between machines changes nothing, and a
    message sensed less than that least delay before the start is kept. 0 when ``start_ns`` is
    0 (no recorder start) or when every message would go (a start that does not match the
    stream's clock: nothing is trimmed on a guess).
    """
    if not start_ns or not len(stamps_ns):
        return 0
    stamps, recv = np.asarray(stamps_ns, np.int64), np.asarray(recv_ns, np.int64)
    first = recv < recv[0] + window_ns
    offset = int(np.min(recv[first] - stamps[first]))
    n = int(np.count_nonzero(stamps + offset < start_ns))  # stamps increase: these are the leading ones
    return n if n < len(stamps) else 0


class ImplausibleValueError(ValueError):
    """A joint value cannot be right; the message names stream, joint, value and time."""


def check_joint_states(spec: EmbodimentSpec, topic: str, stamps_ns: np.ndarray, q: np.ndarray, qd: np.ndarray,
                       t0_ns: int) -> None:
    """Check joint states: stamps (N,) int64 ns, positions q and velocities qd (N, dof) in spec order.

    Units rad (rad/s) or m (m/s); ``t0_ns`` is the start of the bag, for the times in messages.
    """
    _check_positions(spec, topic, "position", stamps_ns, q, t0_ns)
    given = ~np.isnan(qd).all(axis=1)  # all NaN: the message had no velocities
    _check_speeds(spec, topic, "velocity", stamps_ns[given], qd[given], t0_ns, REPORTED_SPEED_FACTOR)
    if len(q) > 1:
        step = np.diff(q, axis=0)
        cont = spec.continuous_mask
        step[:, cont] = (step[:, cont] + np.pi) % (2 * np.pi) - np.pi
        dt = np.diff(stamps_ns) * 1e-9
        allowed = SPEED_FACTOR * spec.velocity_limits * dt[:, None] + JUMP_ALLOWANCE * (spec.upper - spec.lower)
        bad = (np.abs(step) > allowed) & ~spec.gripper_mask
        if bad.any():
            i, j = np.argwhere(bad)[0]
            speed = abs(step[i, j]) / max(dt[i], 1e-9)
            _fail(spec, topic, stamps_ns[i + 1], t0_ns, j, f"position jumps by {step[i, j]:.6g} in "
                  f"{dt[i] * 1e3:.3g} ms ({speed:.4g}/s; the URDF velocity limit is {spec.velocity_limits[j]:.4g}/s)")


def check_command(spec: EmbodimentSpec, topic: str, recv_ns: int, traj: Trajectory, t0_ns: int) -> None:
    """Check every point of one commanded trajectory (received at ``recv_ns``) against the URDF limits."""
    index = {n: i for i, n in enumerate(spec.joint_names)}
    cols = [c for c, n in enumerate(traj.joint_names) if n in index]  # unknown joints: the follower rejects them
    joints = np.array([index[traj.joint_names[c]] for c in cols], dtype=int)
    for k, point in enumerate(traj.points):
        what = f"point {k} (+{point.time_from_start:.3f} s)"
        q = np.full((1, spec.dof), np.nan)
        q[0, joints] = point.positions[cols]
        _check_positions(spec, topic, f"{what} position", np.array([recv_ns]), q, t0_ns, only=joints)
        if point.velocities is not None:
            qd = np.zeros((1, spec.dof))
            qd[0, joints] = point.velocities[cols]
            _check_speeds(spec, topic, f"{what} velocity", np.array([recv_ns]), qd, t0_ns, SPEED_FACTOR)


def _check_positions(spec: EmbodimentSpec, topic: str, what: str, stamps_ns: np.ndarray, q: np.ndarray, t0_ns: int,
                     only: np.ndarray | None = None) -> None:
    cols = np.arange(spec.dof) if only is None else only
    sub = q[:, cols]
    bad = ~np.isfinite(sub)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        _fail(spec, topic, stamps_ns[i], t0_ns, cols[j], f"{what} is {sub[i, j]}")
    margin = LIMIT_MARGIN * (spec.upper - spec.lower)
    lo, hi = (spec.lower - margin)[cols], (spec.upper + margin)[cols]
    bad = ((sub < lo) | (sub > hi)) & ~spec.continuous_mask[cols]
    if bad.any():
        i, j = np.argwhere(bad)[0]
        c = cols[j]
        _fail(spec, topic, stamps_ns[i], t0_ns, c, f"{what} {sub[i, j]:.6g} is outside the URDF limits "
              f"[{spec.lower[c]:.4g}, {spec.upper[c]:.4g}] (+-{LIMIT_MARGIN:.0%} of the range allowed)")


def _check_speeds(spec: EmbodimentSpec, topic: str, what: str, stamps_ns: np.ndarray, qd: np.ndarray,
                  t0_ns: int, factor: float) -> None:
    bad = ~np.isfinite(qd)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        _fail(spec, topic, stamps_ns[i], t0_ns, j, f"{what} is {qd[i, j]}")
    bad = np.abs(qd) > factor * spec.velocity_limits
    if bad.any():
        i, j = np.argwhere(bad)[0]
        _fail(spec, topic, stamps_ns[i], t0_ns, j, f"{what} {qd[i, j]:.6g}/s exceeds {factor:g} x the URDF "
              f"velocity limit {spec.velocity_limits[j]:.4g}/s")


def _fail(spec: EmbodimentSpec, topic: str, stamp_ns: int, t0_ns: int, joint: int, text: str) -> None:
    t = (int(stamp_ns) - t0_ns) * 1e-9
    raise ImplausibleValueError(f"{topic}: joint '{spec.joint_names[joint]}' {text} at t={t:.3f} s "
                           f"(stamp {int(stamp_ns)} ns): not a plausible value; episode rejected")
