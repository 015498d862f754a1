"""Embodiment adapter and safety logic for the policy server (pure code, no ROS).

``EmbodimentAdapter`` maps one robot between the policy's canonical per-joint actions
and the robot's joint names and units, and makes every command safe to send:

- canonical -> rad/m with ``EmbodimentSpec.denormalize``, clamped to the URDF position
  limits; velocities clamped to the URDF velocity limits;
- jumps rate-limited: no point may be further from the one before it (the first from
  the position the controller is commanded to hold at the window's stamp) than the
  velocity limit times the time between them;
- non-finite values never leave: the command becomes a hold.

It mirrors what it sent in a ``TrajectoryFollower`` (the controller's semantics), so it
always knows the position the robot is commanded to be at, which is where it holds.

``SafetyMonitor`` decides whether the server may drive a robot right now: enabled,
e-stop not latched, no input rejected since the last good message of that input, joint
and camera input fresh. ``ServerCounters`` and ``TickClock`` count what the diagnostics
report; ``diagnostic_level`` grades a hold reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from gen_theta_model.embodiment import EmbodimentSpec
from gen_theta_model.harmonic import CommandWindow, LatencyTracker
from gen_theta_model.trajectory import Trajectory, TrajectoryFollower


@dataclass(frozen=True)
class SafetyConfig:
    joint_timeout_s: float = 0.25  # joint_states older than this (receive time) -> hold
    camera_timeout_s: float = 0.5  # any camera frame older than this -> hold (~7 frames at 15 fps)
    velocity_scale: float = 1.0  # share of the URDF velocity limits commands may use

    def __post_init__(self) -> None:
        for key in ("joint_timeout_s", "camera_timeout_s"):
            if not getattr(self, key) > 0.0:
                raise ValueError(f"{key} must be > 0 s, got {getattr(self, key)}")
        if not 0.0 < self.velocity_scale <= 1.0:
            raise ValueError(f"velocity_scale must be in (0, 1], got {self.velocity_scale}")


@dataclass(frozen=True)
class Command:
    """A window in joint units for ``EmbodimentAdapter.spec``'s joints, the same as a
    Trajectory (start time = the window's stamp), and what happened to it.
    """

    window: CommandWindow
    trajectory: Trajectory
    clamped: bool  # a position or velocity hit a limit, or a jump was rate-limited
    hold_reason: str = ""  # non-empty: this is a hold, and why


class EmbodimentAdapter:
    """One robot: canonical (dof,) <-> joint units, clamped and rate-limited commands."""

    def __init__(self, spec: EmbodimentSpec, cfg: SafetyConfig | None = None) -> None:
        self.spec = spec
        self.cfg = cfg or SafetyConfig()
        self._vmax = spec.velocity_limits * self.cfg.velocity_scale
        self._mirror: TrajectoryFollower | None = None

    # -- state in ------------------------------------------------------------------------
    def canonical_state(self, names: list[str], positions: np.ndarray) -> np.ndarray:
        """JointState ``names`` / ``positions`` (n,) rad|m -> canonical (dof,) in spec order.

        Raises EmbodimentError naming a missing joint.
        """
        return self.spec.normalize(self.spec.reorder_from(names, np.asarray(positions, dtype=np.float64)))

    # -- commands out --------------------------------------------------------------------
    @property
    def started(self) -> bool:
        """Whether a reference position is known (``reset`` was called)."""
        return self._mirror is not None

    def reset(self, positions: np.ndarray, now: float) -> None:
        """Take ``positions`` (dof,) rad|m, e.g. measured, as the commanded position at ``now``."""
        self._mirror = TrajectoryFollower(self.spec, np.asarray(positions, dtype=np.float64), now)

    def commanded(self, now: float) -> np.ndarray:
        """Position (dof,) rad|m the controller is commanded to be at, at ``now`` s."""
        if self._mirror is None:
            raise RuntimeError(f"{self.spec.name}: adapter has no reference position yet; call reset()")
        return self._mirror.sample(now)[0]

    def command(self, window: CommandWindow) -> Command:
        """Canonical ``window`` -> a safe window in joint units (a hold if it is not finite)."""
        spec = self.spec
        start = self.commanded(window.stamp)
        if not all(np.all(np.isfinite(a)) for a in (window.positions, window.velocities, window.accelerations)):
            return self._send(self.hold_window(window.stamp, period=float(window.times[0])), False, "non-finite")
        q = spec.denormalize(window.positions)
        q_safe = spec.clamp_positions(q)
        times = np.concatenate([[0.0], window.times])
        limited = rate_limit(np.vstack([start, q_safe]), times, self._vmax)[1:]
        modified = not np.array_equal(limited, q)
        if modified:  # derivatives of what is actually sent, from the commanded position on
            path = np.vstack([start, limited])
            vel = np.gradient(path, times, axis=0)[1:]
            acc = np.gradient(vel, window.times, axis=0) if len(vel) > 1 else np.zeros_like(vel)
            if not np.any(window.velocities[-1]):  # the window ends in a stop
                vel[-1], acc[-1] = 0.0, 0.0
        else:
            vel = spec.denormalize_velocity(window.velocities)
            acc = spec.denormalize_velocity(window.accelerations)
        vel_safe = np.clip(vel, -self._vmax, self._vmax)
        clamped = modified or not np.array_equal(vel_safe, vel)
        out = CommandWindow(window.stamp, window.times.copy(), limited, vel_safe, acc)
        return self._send(out, clamped, "")

    def hold(self, now: float, period: float, reason: str) -> Command:
        """Hold at the commanded position (recorded in the mirror); ``reason`` says why."""
        return self._send(self.hold_window(now, period), False, reason)

    def hold_window(self, now: float, period: float) -> CommandWindow:
        """One point ``period`` s after ``now`` at the commanded position, zero velocity."""
        q = self.commanded(now)[None]
        zero = np.zeros_like(q)
        return CommandWindow(now, np.array([period]), q, zero, zero.copy())

    def trajectory(self, window: CommandWindow) -> Trajectory:
        """Turn a joint-unit window into a Trajectory for the robot's joints (start time = stamp)."""
        return Trajectory.from_arrays(
            self.spec.joint_names,
            window.times,
            window.positions,
            window.velocities,
            window.accelerations,
            start_time=window.stamp,
        )

    def _send(self, window: CommandWindow, clamped: bool, reason: str) -> Command:
        if self._mirror is None:
            raise RuntimeError(f"{self.spec.name}: adapter has no reference position yet; call reset()")
        traj = self.trajectory(window)
        self._mirror.set_trajectory(traj, window.stamp)
        return Command(window, traj, clamped, reason)


def rate_limit(points: np.ndarray, times: np.ndarray, vmax: np.ndarray) -> np.ndarray:
    """Limit each step of ``points`` (N, n) at ``times`` (N,) s to ``vmax`` (n,) times the time
    step; point 0 is the fixed reference. Returns a new (N, n) array.
    """
    out = np.array(points, dtype=np.float64)
    for i in range(1, len(out)):
        step = vmax * (times[i] - times[i - 1])
        diff = out[i] - out[i - 1]
        out[i] = np.where(np.abs(diff) > step, out[i - 1] + np.sign(diff) * step, out[i])
    return out


class SafetyMonitor:
    """Enable, e-stop latch, rejected input and input freshness for one robot. Times are s on one clock.

    The e-stop latches: once triggered, the robot holds until the e-stop is released
    *and* the server is enabled again. A rejected message of an input (``reject``) holds
    the robot until that input's next good message. ``check`` returns a reason string
    to hold, "" to drive.
    """

    def __init__(self, cfg: SafetyConfig, cameras: tuple[str, ...], enabled: bool = True) -> None:
        self.cfg = cfg
        self.cameras = cameras
        self.enabled = enabled
        self.estop_active = False
        self.estop_latched = False
        self.joint_received: float | None = None
        self.camera_received: dict[str, float] = {}
        self.rejected: dict[str, str] = {}  # input ("joint_states", "camera 'x'") -> why its message was refused
        self.controller_fault = ""  # latched: the controller refused or aborted a command (until enabled again)
        self.controller_missing = ""  # the controller cannot be reached now (not latched)

    def set_enabled(self, on: bool) -> tuple[bool, str]:
        """Enable or disable; enabling is refused while the e-stop is active. (success, message)."""
        if on and self.estop_active:
            return False, "e-stop is active: release it before enabling"
        self.enabled = on
        if on:
            self.estop_latched = False
            self.controller_fault = ""
        return True, "enabled" if on else "disabled"

    def set_estop(self, active: bool) -> None:
        self.estop_active = active
        if active:
            self.estop_latched = True
            self.enabled = False

    def controller(self, fault: str = "", missing: str = "") -> None:
        """Report the robot's controller: a ``fault`` (a rejected or aborted goal) latches a hold
        until enabled again; ``missing`` (not reachable, "" once it is) holds while it lasts.
        """
        if fault:
            self.controller_fault = fault
        self.controller_missing = missing

    def joint_state(self, received: float | None) -> None:
        """Note a good JointState; ``received``: receive time (s) of the stalest joint, None if some has none yet."""
        self.rejected.pop(JOINT_STATES, None)
        self.joint_received = received

    def camera(self, name: str, now: float) -> None:
        self.rejected.pop(camera_input(name), None)
        self.camera_received[name] = now

    def reject(self, source: str, reason: str) -> None:
        """Refuse a message of input ``source`` (``reason``): hold until that input's next good message."""
        self.rejected[source] = reason

    def check(self, now: float) -> str:
        """Why the robot must hold at ``now`` ("" when it may be driven)."""
        if self.estop_latched:
            return "e-stop"
        if not self.enabled:
            return "disabled"
        if self.controller_fault:
            return f"{CONTROLLER_FAULT}: {self.controller_fault}"
        if self.controller_missing:
            return f"{CONTROLLER_MISSING}: {self.controller_missing}"
        for source, why in self.rejected.items():
            return f"{REJECTED} {source}: {why}"
        if self.joint_received is None:
            return "no joint_states yet"
        age = now - self.joint_received
        if age > self.cfg.joint_timeout_s:
            return f"joint_states stale ({age * 1e3:.0f} ms)"
        for cam in self.cameras:
            t = self.camera_received.get(cam)
            if t is None:
                return f"no image from camera '{cam}' yet"
            if now - t > self.cfg.camera_timeout_s:
                return f"camera '{cam}' stale ({(now - t) * 1e3:.0f} ms)"
        return ""


JOINT_STATES = "joint_states"
REJECTED = "rejected"  # hold reasons that start with it: a message was refused
CONTROLLER_FAULT = "controller fault"  # hold reasons: the controller refused or aborted a goal (latched)
CONTROLLER_MISSING = "controller not available"  # hold reasons: the controller cannot be reached
INFERENCE_UNAVAILABLE = "inference unavailable"  # hold reasons that start with it: no chunks can be had for now
INACTIVE = "inactive"  # hold reason: the server's lifecycle state is not active (one hold, then silence)
HANDED_OVER = ("disabled", INACTIVE)  # hold reasons that send one hold and then nothing


def hands_over(hold_reason: str) -> bool:
    """Tell whether a hold for ``hold_reason`` leaves the robot to others: no command is sent
    (after one hold when disabled or inactive) and driving resumes from the robot's measured position.
    """
    return hold_reason in (*HANDED_OVER, "e-stop") or hold_reason.startswith((CONTROLLER_FAULT, CONTROLLER_MISSING))


def camera_input(name: str) -> str:
    """Return the input name of camera ``name`` in hold reasons and ``SafetyMonitor.reject``."""
    return f"camera '{name}'"


def diagnostic_level(hold_reason: str) -> int:
    """diagnostic_msgs/DiagnosticStatus level for a robot holding for ``hold_reason`` ("" = driving).

    0 (OK) when driving, 2 (ERROR) on e-stop, a refused message, a controller fault or unavailable
    inference, 1 (WARN) otherwise.
    """
    if not hold_reason:
        return 0
    return 2 if hold_reason == "e-stop" or hold_reason.startswith((REJECTED, CONTROLLER_FAULT,
                                                                  INFERENCE_UNAVAILABLE)) else 1


class TickClock:
    """Command-stream timing: a deadline is missed for every control slot of ``period`` s
    that passed without a command (a gap of more than 1.5 periods misses one, ...).
    """

    def __init__(self, period: float, window: int = 500) -> None:
        self.period = period
        self.last: float | None = None
        self.missed = 0
        self.jitter = LatencyTracker(window=window)  # |gap - period|, s

    def pause(self) -> None:
        """Mark a deliberate stop of the stream (disabled): the gap until the next tick is no miss."""
        self.last = None

    def tick(self, now: float) -> None:
        if self.last is not None:
            gap = now - self.last
            self.missed += max(0, math.floor(gap / self.period + 0.5) - 1)
            self.jitter.add(abs(gap - self.period))
        self.last = now


@dataclass
class ServerCounters:
    """What the diagnostics report for one robot (latencies in s, counts since start)."""

    latency: LatencyTracker = field(default_factory=lambda: LatencyTracker(window=200))
    delay_steps: int = 0
    chunks: int = 0
    late_chunks: int = 0  # chunks that arrived after their takeover time
    nonfinite_chunks: int = 0
    rejected_joint_states: int = 0  # JointStates refused (non-finite, malformed)
    rejected_images: int = 0  # frames refused (unsupported encoding, malformed)
    last_rejected: str = ""  # why the latest refused message was refused
    controller_faults: int = 0  # goals the controller rejected or aborted (action interface)
    last_controller_fault: str = ""
    ticks: int = 0
    holds: int = 0  # ticks held by safety (stale input, disabled, e-stop, non-finite)
    idle_ticks: int = 0  # ticks the robot waited for a plan
    clamped_ticks: int = 0
    hold_reason: str = ""

    def values(self, clock: TickClock) -> dict[str, str]:
        """Key/value pairs for a diagnostic_msgs/DiagnosticStatus."""
        return {
            "latency_p50_ms": f"{self.latency.percentile(50) * 1e3:.1f}",
            "latency_p99_ms": f"{self.latency.percentile(99) * 1e3:.1f}",
            "delay_steps": str(self.delay_steps),
            "chunks": str(self.chunks),
            "late_chunks": str(self.late_chunks),
            "nonfinite_chunks": str(self.nonfinite_chunks),
            "rejected_joint_states": str(self.rejected_joint_states),
            "rejected_images": str(self.rejected_images),
            "last_rejected": self.last_rejected,
            "controller_faults": str(self.controller_faults),
            "last_controller_fault": self.last_controller_fault,
            "ticks": str(self.ticks),
            "missed_deadlines": str(clock.missed),
            "jitter_p50_ms": f"{clock.jitter.percentile(50) * 1e3:.2f}",
            "jitter_p99_ms": f"{clock.jitter.percentile(99) * 1e3:.2f}",
            "holds": str(self.holds),
            "idle_ticks": str(self.idle_ticks),
            "clamped_ticks": str(self.clamped_ticks),
            "hold_reason": self.hold_reason,
        }
