"""TrajectoryFollower: JointTrajectoryController semantics (interpolation, replacement, limits)."""

import numpy as np
import pytest

from gen_theta_model.embodiment import EmbodimentSpec, JointSpec
from gen_theta_model.trajectory import (
    Trajectory,
    TrajectoryError,
    TrajectoryFollower,
    TrajectoryPoint,
    resample_commands,
)

NAMES = ("a", "b", "c")


def make_spec() -> EmbodimentSpec:
    joints = tuple(
        JointSpec(name=n, type="revolute", lower=-2.0, upper=2.0, velocity=3.0, effort=10.0, axis=(0, 0, 1), depth=i)
        for i, n in enumerate(NAMES)
    )
    return EmbodimentSpec(name="toy", urdf_path="toy.urdf", urdf_sha256="0", joints=joints, home=(0.0, 0.0, 0.0))


def point(q, t, v=None, a=None) -> TrajectoryPoint:
    return TrajectoryPoint(np.asarray(q, float), t, None if v is None else np.asarray(v, float), a)


def test_linear_interpolation_from_state_then_hold():
    f = TrajectoryFollower(make_spec())
    traj = Trajectory(NAMES, (point([1.0, 0.0, -1.0], 1.0), point([1.0, 1.0, -1.0], 2.0)))
    assert f.set_trajectory(traj, now=10.0)
    q, qd = f.sample(10.5)
    np.testing.assert_allclose(q, [0.5, 0.0, -0.5])
    np.testing.assert_allclose(qd, [1.0, 0.0, -1.0])
    np.testing.assert_allclose(f.sample(11.5)[0], [1.0, 0.5, -1.0])
    q, qd = f.sample(20.0)  # after the end: hold the last point, zero velocity
    np.testing.assert_allclose(q, [1.0, 1.0, -1.0])
    np.testing.assert_allclose(qd, 0.0)
    assert f.end_time() == pytest.approx(12.0)


def test_cubic_with_velocities_matches_endpoints_and_derivatives():
    f = TrajectoryFollower(make_spec())
    traj = Trajectory(NAMES, (point([1.0, 0.5, 0.0], 1.0, v=[0.5, 0.0, 0.2]), point([1.5, 0.5, 0.0], 2.0, v=[0, 0, 0])))
    f.set_trajectory(traj, now=0.0)
    q, qd = f.sample(1.0)
    np.testing.assert_allclose(q, [1.0, 0.5, 0.0], atol=1e-12)
    np.testing.assert_allclose(qd, [0.5, 0.0, 0.2], atol=1e-12)
    # derivative of the sampled position equals the sampled velocity
    eps = 1e-6
    dq = (f.sample(1.3 + eps)[0] - f.sample(1.3 - eps)[0]) / (2 * eps)
    np.testing.assert_allclose(dq, f.sample(1.3)[1], atol=1e-6)
    # not linear: mid-segment position differs from the chord where velocities differ from the slope
    assert not np.allclose(f.sample(1.5)[0][2], 0.0)


def test_quintic_with_accelerations():
    f = TrajectoryFollower(make_spec())
    p0 = TrajectoryPoint(np.zeros(3), 0.5, np.zeros(3), np.zeros(3))
    p1 = TrajectoryPoint(np.array([1.0, -1.0, 0.5]), 1.5, np.zeros(3), np.zeros(3))
    f.set_trajectory(Trajectory(NAMES, (p0, p1)), now=0.0)
    np.testing.assert_allclose(f.sample(1.0)[0], [0.5, -0.5, 0.25], atol=1e-12)  # symmetric minimum-jerk
    eps = 1e-6
    for t in (0.5 + eps, 1.5 - eps):
        np.testing.assert_allclose(f.sample(t)[1], 0.0, atol=1e-4)
    q_lin_quarter = 0.25
    assert f.sample(0.75)[0][0] < q_lin_quarter  # slow start, unlike linear


def test_replacement_mid_trajectory_at_future_start_time():
    f = TrajectoryFollower(make_spec())
    f.set_trajectory(Trajectory(NAMES, (point([2.0, 0.0, 0.0], 2.0),)), now=0.0)
    # A new trajectory stamped to start at t=1.0, received at t=0.5: the old one runs until 1.0.
    new = Trajectory(NAMES, (point([0.0, 1.0, 0.0], 1.0),), start_time=1.0)
    assert f.set_trajectory(new, now=0.5)
    np.testing.assert_allclose(f.sample(0.75)[0], [0.75, 0.0, 0.0])  # still the old plan
    np.testing.assert_allclose(f.sample(1.0)[0], [1.0, 0.0, 0.0])  # the switch: old plan's state
    np.testing.assert_allclose(f.sample(1.5)[0], [0.5, 0.5, 0.0])  # from the switch state to the new point
    np.testing.assert_allclose(f.sample(5.0)[0], [0.0, 1.0, 0.0])


def test_stamp_zero_means_now_and_later_switch_overrides_pending():
    f = TrajectoryFollower(make_spec())
    f.set_trajectory(Trajectory(NAMES, (point([1.0, 0, 0], 1.0),), start_time=5.0), now=0.0)  # pending
    f.set_trajectory(Trajectory(NAMES, (point([0, 1.0, 0], 1.0),)), now=1.0)  # starts now: pending one dropped
    np.testing.assert_allclose(f.sample(2.0)[0], [0.0, 1.0, 0.0])
    np.testing.assert_allclose(f.sample(7.0)[0], [0.0, 1.0, 0.0])


def test_points_in_the_past_are_dropped_and_all_past_is_rejected():
    f = TrajectoryFollower(make_spec())
    # Stamped at t=0, received at t=1.5: the point at 1.0 is in the past, the one at 2.0 is kept.
    traj = Trajectory(NAMES, (point([1.0, 0, 0], 1.0), point([1.0, 1.0, 0], 2.0)), start_time=1e-9)
    assert f.set_trajectory(traj, now=1.5)
    np.testing.assert_allclose(f.sample(1.5)[0], [0.0, 0.0, 0.0])  # interpolation starts from the state at 1.5
    np.testing.assert_allclose(f.sample(1.75)[0], [0.5, 0.5, 0.0])
    stale = Trajectory(NAMES, (point([-1.0, 0, 0], 1.0),), start_time=1e-9)
    assert not f.set_trajectory(stale, now=3.0)
    np.testing.assert_allclose(f.sample(3.0)[0], [1.0, 1.0, 0.0])  # plan unchanged


def test_reorder_partial_and_unknown_joints():
    f = TrajectoryFollower(make_spec(), initial=np.array([0.1, 0.2, 0.3]))
    f.set_trajectory(Trajectory(("c", "a"), (point([1.0, -1.0], 1.0),)), now=0.0)
    np.testing.assert_allclose(f.sample(1.0)[0], [-1.0, 0.2, 1.0])  # b holds its position
    with pytest.raises(TrajectoryError, match="unknown joint 'elbow'"):
        f.set_trajectory(Trajectory(("a", "elbow"), (point([0, 0], 1.0),)), now=0.0)


def test_limits_are_enforced():
    f = TrajectoryFollower(make_spec())
    f.set_trajectory(Trajectory(NAMES, (point([5.0, -5.0, 0.0], 0.1),)), now=0.0)
    q, qd = f.sample(0.05)
    assert np.all(np.abs(qd) <= 3.0 + 1e-12)  # velocity limit 3 rad/s
    q, _ = f.sample(1.0)
    np.testing.assert_allclose(q, [2.0, -2.0, 0.0])  # position limits [-2, 2]


@pytest.mark.parametrize(
    "points, match",
    [
        ((), "no points"),
        ((point([0, 0, 0], 1.0), point([0, 0, 0], 1.0)), "does not increase"),
        ((point([0, 0], 1.0),), "2 values for 3 joints"),
        ((point([0, 0, 0], -1.0),), ">= 0"),
        ((TrajectoryPoint(np.zeros(3), 1.0, None, np.zeros(3)),), "without velocities"),
        ((point([0, np.nan, 0], 1.0),), "non-finite"),
    ],
)
def test_malformed_trajectories(points, match):
    with pytest.raises(TrajectoryError, match=match):
        Trajectory(NAMES, points)


def test_duplicate_names_rejected():
    with pytest.raises(TrajectoryError, match="joint 'a' twice"):
        Trajectory(("a", "a", "b"), (point([0, 0, 0], 1.0),))


def test_resample_commands_replays_a_stream():
    spec = make_spec()
    commands = [
        (0.0, Trajectory.from_arrays(NAMES, [1.0], [[1.0, 0.0, 0.0]])),
        (0.5, Trajectory.from_arrays(NAMES, [0.5], [[0.0, 0.0, 1.0]])),
    ]
    times = np.arange(0.0, 2.01, 0.25)
    q, qd = resample_commands(spec, np.zeros(3), commands, times)
    assert q.shape == qd.shape == (times.size, 3)
    np.testing.assert_allclose(q[1], [0.25, 0, 0])  # first command, before the second arrives
    np.testing.assert_allclose(q[2], [0.5, 0, 0])  # switch at 0.5
    np.testing.assert_allclose(q[3], [0.25, 0, 0.5])  # halfway to the second command
    np.testing.assert_allclose(q[-1], [0, 0, 1.0])
