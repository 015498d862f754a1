"""EmbodimentAdapter, SafetyMonitor and TickClock on a shipped robot: pure code, no ROS."""

import numpy as np
import pytest

from gen_theta_model.adapter import (
    EmbodimentAdapter,
    SafetyConfig,
    SafetyMonitor,
    ServerCounters,
    TickClock,
    diagnostic_level,
    rate_limit,
)
from gen_theta_model.embodiment import EmbodimentError, load_robot
from gen_theta_model.harmonic import CommandWindow, finite_differences

DT = 0.02


@pytest.fixture(scope="module")
def spec():
    return load_robot("arm6")


def canonical_window(spec, positions: np.ndarray, stamp: float = 1.0) -> CommandWindow:
    """Grid window of canonical ``positions`` (N, dof) starting one period after ``stamp``."""
    vel, acc = finite_differences(positions, DT, before=None, after=None)
    return CommandWindow(stamp, DT * np.arange(1, len(positions) + 1), positions, vel, acc)


def test_canonical_state_reorders_and_normalizes(spec):
    names = list(reversed(spec.joint_names)) + ["some_mimic_joint"]
    q = spec.home_positions
    values = np.concatenate([q[::-1], [0.3]])
    adapter = EmbodimentAdapter(spec)
    np.testing.assert_allclose(adapter.canonical_state(names, values), spec.normalize(q))
    with pytest.raises(EmbodimentError, match=spec.joint_names[0]):
        adapter.canonical_state(names[1:], values[1:])


def test_in_limit_window_passes_unchanged(spec):
    adapter = EmbodimentAdapter(spec)
    home = spec.home_positions
    adapter.reset(home, now=1.0)
    x0 = spec.normalize(home)
    targets = x0 * (1.0 - np.linspace(0.0, 0.01, 10)[:, None])  # slow ramp towards mid-range
    cmd = adapter.command(canonical_window(spec, targets))
    assert not cmd.clamped and cmd.hold_reason == ""
    np.testing.assert_allclose(cmd.window.positions, spec.denormalize(targets))
    np.testing.assert_allclose(
        cmd.window.velocities, spec.denormalize_velocity(finite_differences(targets, DT, None, None)[0])
    )
    traj = adapter.trajectory(cmd.window)
    assert traj.joint_names == tuple(spec.joint_names) and traj.start_time == 1.0


def test_out_of_limit_and_jumps_are_clamped_and_rate_limited(spec):
    adapter = EmbodimentAdapter(spec)
    home = spec.home_positions
    adapter.reset(home, now=1.0)
    far = np.tile(np.full(spec.dof, 1.7), (10, 1))  # beyond the upper limits, one big jump away
    cmd = adapter.command(canonical_window(spec, far))
    assert cmd.clamped
    q = cmd.window.positions
    assert np.all(q <= spec.upper + 1e-12) and np.all(q >= spec.lower - 1e-12)
    times = np.concatenate([[0.0], cmd.window.times])
    steps = np.abs(np.diff(np.vstack([home, q]), axis=0))
    assert np.all(steps <= spec.velocity_limits * np.diff(times)[:, None] + 1e-9)
    assert np.all(np.abs(cmd.window.velocities) <= spec.velocity_limits + 1e-9)
    # The mirror knows where the controller now heads: the next command starts from there.
    moved = adapter.commanded(1.0 + 10 * DT)
    np.testing.assert_allclose(moved, q[-1])


def test_nonfinite_output_holds_at_commanded_position(spec):
    adapter = EmbodimentAdapter(spec)
    home = spec.home_positions
    adapter.reset(home, now=0.0)
    bad = np.tile(spec.normalize(home), (5, 1))
    bad[2, 1] = np.nan
    cmd = adapter.command(canonical_window(spec, bad, stamp=0.5))
    assert cmd.hold_reason == "non-finite"
    assert cmd.window.positions.shape == (1, spec.dof)
    np.testing.assert_allclose(cmd.window.positions[0], home)
    assert not np.any(cmd.window.velocities)
    with pytest.raises(RuntimeError, match="reset"):
        EmbodimentAdapter(spec).commanded(0.0)


def test_rate_limit_reaches_far_targets_at_the_limit():
    pts = np.array([[0.0], [1.0], [1.0], [1.0]])
    out = rate_limit(pts, np.array([0.0, 0.1, 0.2, 0.3]), np.array([2.0]))
    np.testing.assert_allclose(out[:, 0], [0.0, 0.2, 0.4, 0.6])


def test_safety_monitor_stale_inputs_estop_and_enable():
    mon = SafetyMonitor(SafetyConfig(joint_timeout_s=0.1, camera_timeout_s=0.3), cameras=("scene",))
    assert mon.check(0.0) == "no joint_states yet"
    mon.joint_state(0.0)
    assert "camera 'scene'" in mon.check(0.0)
    mon.camera("scene", 0.0)
    assert mon.check(0.05) == ""
    assert mon.check(0.2).startswith("joint_states stale")
    mon.joint_state(0.35)
    assert mon.check(0.4).startswith("camera 'scene' stale")
    mon.camera("scene", 0.4)
    assert mon.check(0.41) == ""  # resumes as soon as input is fresh again
    mon.set_estop(True)
    assert mon.check(0.42) == "e-stop"
    ok, msg = mon.set_enabled(True)
    assert not ok and "e-stop" in msg
    mon.set_estop(False)
    assert mon.check(0.43) == "e-stop"  # latched until enabled again
    assert mon.set_enabled(True)[0] and mon.check(0.44) == ""
    mon.set_enabled(False)
    assert mon.check(0.45) == "disabled"


def test_tick_clock_counts_slots_without_a_command():
    clock = TickClock(period=0.01)
    for t in (0.0, 0.01, 0.02, 0.034, 0.04, 0.06):  # 0.034 is late (no miss); 0.06 follows a skipped slot
        clock.tick(t)
    assert clock.missed == 1
    assert clock.jitter.percentile(100) == pytest.approx(0.01)
    values = ServerCounters().values(clock)
    assert values["missed_deadlines"] == "1" and "latency_p99_ms" in values


def test_diagnostic_levels():
    assert diagnostic_level("") == 0
    assert diagnostic_level("joint_states stale (300 ms)") == 1
    assert diagnostic_level("e-stop") == 2
    assert diagnostic_level("rejected joint_states: non-finite position of joint(s) ['j1']") == 2
