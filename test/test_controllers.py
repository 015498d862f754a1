"""How commands reach controllers (gen_theta_model/controllers.py) and the sim's own gripper controller, no ROS."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from gen_theta_model.config import share_dir
from gen_theta_model.controllers import (
    GOAL_LEAD_S,
    STATUS_ABORTED,
    STATUS_CANCELED,
    STATUS_SUCCEEDED,
    GoalPacer,
    GripperStream,
    arm_trajectory,
    controlled_joints,
    goal_fault,
    goal_rejection,
    goal_trajectory,
    gripper_joint,
    gripper_outcome,
    per_robot,
)
from gen_theta_model.embodiment import COMMAND_INTERFACES, RobotConfig, load_robot, load_robot_config
from gen_theta_model.sim.robot import SimRobot
from gen_theta_model.trajectory import Trajectory

ARM6 = load_robot("arm6")
ARMS = ARM6.joint_names[:-1]
GRIPPER = ARM6.joint_names[-1]


def window(q: np.ndarray, start: float = 10.0) -> Trajectory:
    """Return a 3-point window of arm6 from ``q`` (dof,), with velocities and accelerations."""
    qs = np.stack([q, q + 0.01, q + 0.02])
    return Trajectory.from_arrays(ARM6.joint_names, [0.02, 0.04, 0.06], qs, np.ones_like(qs), np.zeros_like(qs),
                                  start_time=start)


def test_per_robot_values_expand_and_are_checked() -> None:
    assert per_robot(["action"], ["a", "b"], "command_interfaces", COMMAND_INTERFACES) == ["action", "action"]
    assert per_robot(["", "action"], ["a", "b"], "command_interfaces", COMMAND_INTERFACES) == ["topic", "action"]
    with pytest.raises(ValueError, match="'command_interfaces' has 3 values for 2 robots"):
        per_robot(["topic"] * 3, ["a", "b"], "command_interfaces", COMMAND_INTERFACES)
    with pytest.raises(ValueError, match="unknown value 'service'"):
        per_robot(["service"], ["a"], "command_interfaces", COMMAND_INTERFACES)
    with pytest.raises(ValueError, match="command_interface must be one of"):
        RobotConfig(name="x", urdf="x.urdf", command_interface="serial")


def test_a_gripper_action_takes_the_gripper_joint_out_of_the_trajectory() -> None:
    assert gripper_joint(ARM6, "trajectory") == ""
    assert gripper_joint(ARM6, "gripper_command") == GRIPPER
    assert controlled_joints(ARM6, "gripper_command") == ARMS
    with pytest.raises(ValueError, match="needs exactly one gripper joint, the robot has"):
        gripper_joint(load_robot("humanoid16"), "parallel_gripper_command")
    traj = window(ARM6.home_positions)
    arm = arm_trajectory(traj, GRIPPER)
    assert list(arm.joint_names) == ARMS and arm.start_time == traj.start_time
    for p, q in zip(arm.points, traj.points):
        np.testing.assert_array_equal(p.positions, q.positions[:-1])
        np.testing.assert_array_equal(p.accelerations, q.accelerations[:-1])
        assert p.time_from_start == q.time_from_start
    assert arm_trajectory(traj, "") is traj
    sent = goal_trajectory(traj, GRIPPER)
    assert sent.joint_names == arm.joint_names and sent.start_time == traj.start_time
    stop = Trajectory.from_arrays(ARM6.joint_names, [0.02], ARM6.home_positions[None], start_time=10.0)
    hold = goal_trajectory(stop, GRIPPER)  # one point: starts when the controller receives it, never in the past
    assert hold.start_time == 0.0 and hold.joint_names == arm.joint_names
    np.testing.assert_array_equal(hold.points[0].positions, ARM6.home_positions[:-1])
    assert goal_rejection(hold, ARMS, now=99.0) == ""


def test_gripper_goals_go_out_when_the_target_moves_past_the_deadband() -> None:
    stream = GripperStream(ARM6, GRIPPER)
    assert stream.max_effort == 40.0
    q = ARM6.home_positions.copy()
    assert stream.target(window(q)) == pytest.approx(q[-1])  # the window's first point
    q[-1] -= 0.0003  # under 1% of the 4 cm range
    assert stream.target(window(q)) is None
    q[-1] -= 0.001
    assert stream.target(window(q)) == pytest.approx(q[-1])
    stream.forget()
    assert stream.target(window(q)) == pytest.approx(q[-1])


def plan_window(now: float, plan, steps: int = 25, period: float = 0.02) -> Trajectory:
    """Return the window at tick ``now`` of ``plan`` (time s -> (dof,) positions): the next ``steps``
    grid points, with central-difference velocities, stamped ``now``.
    """
    k0 = int(np.floor(now / period + 1e-9)) + 1
    grid = (k0 + np.arange(steps)) * period
    q = np.stack([plan(t) for t in grid])
    qd = np.stack([(plan(t + period) - plan(t - period)) / (2 * period) for t in grid])
    return Trajectory.from_arrays(ARM6.joint_names, grid - now, q, qd, start_time=now)


def test_only_windows_that_change_the_plan_go_out_as_goals() -> None:
    pacer = GoalPacer()
    plan = lambda t: ARM6.home_positions + 0.1 * np.sin(t)  # noqa: E731
    sent = [t for t in np.arange(100) * 0.02 + 10.0 if pacer.due(plan_window(t, plan), t)]
    # one goal, then a refresh whenever the last goal would end within GOAL_LEAD_S: every 0.3 s
    assert len(sent) == 7 and np.allclose(np.diff(sent), 0.5 - GOAL_LEAD_S, atol=0.021)
    replanned = lambda t: plan(t) + (0.01 if t > 12.1 else 0.0)  # noqa: E731  a new chunk takes over at 12.1 s
    assert pacer.due(plan_window(12.0, replanned), 12.0)  # the change enters the window: it goes out at once
    assert not pacer.due(plan_window(12.02, replanned), 12.02)
    stop = Trajectory.from_arrays(ARM6.joint_names, [0.02], ARM6.home_positions[None], start_time=12.04)
    assert pacer.due(stop, 12.04)  # a hold goes out
    again = Trajectory.from_arrays(ARM6.joint_names, [0.02], ARM6.home_positions[None], start_time=12.06)
    assert not pacer.due(again, 12.06)  # and holds for ever: the same stop is not sent again
    assert pacer.due(plan_window(12.08, replanned), 12.08)
    pacer.forget()
    assert pacer.due(plan_window(12.1, replanned), 12.1)


def test_the_end_of_a_plan_goes_out_once() -> None:
    """The windows of a plan that ends shrink to its last points: no refresh per tick then, since
    each would end closer to ``now`` and one delivered late would be rejected as in the past.
    """
    pacer = GoalPacer()
    plan = lambda t: ARM6.home_positions + 0.1 * np.sin(t)  # noqa: E731
    end = 10.6  # the plan's last grid point

    def tail(now: float) -> Trajectory:
        w = plan_window(now, plan)
        keep = [p for p in w.points if w.start_time + p.time_from_start <= end + 1e-9]
        return Trajectory(w.joint_names, keep, w.start_time)

    sent = [t for t in np.arange(28) * 0.02 + 10.0 if pacer.due(tail(t), t)]
    # the first goal, and one refresh that reaches the plan's end (without the rule: one per tick after it)
    assert np.allclose(sent, [10.0, 10.3])


def test_goals_a_trajectory_controller_rejects() -> None:
    arm = arm_trajectory(window(ARM6.home_positions), GRIPPER)
    assert goal_rejection(arm, ARMS, now=10.0) == ""
    assert "do not match the controller's joints" in goal_rejection(window(ARM6.home_positions), ARMS, now=10.0)
    assert "in the past" in goal_rejection(arm, ARMS, now=11.0)
    assert goal_rejection(arm_trajectory(window(ARM6.home_positions, start=0.0), GRIPPER), ARMS, now=99.0) == ""


def test_what_a_goal_result_means() -> None:
    action = "/arm6/joint_trajectory_controller/follow_joint_trajectory"
    assert goal_fault(STATUS_SUCCEEDED, 0, "", action) == ""
    assert goal_fault(STATUS_ABORTED, -4, "joint 2 off its path", action) == (
        f"{action} goal aborted PATH_TOLERANCE_VIOLATED: joint 2 off its path")
    assert goal_fault(STATUS_CANCELED, 0, "", action) == f"{action} goal canceled"


def test_gripper_outcome() -> None:
    assert gripper_outcome(0.0201, 0.0, 0.02, ARM6, GRIPPER) == "reached"
    assert gripper_outcome(0.03, 0.0, 0.0, ARM6, GRIPPER) == "stalled"  # stopped on an object
    assert gripper_outcome(0.03, -0.1, 0.0, ARM6, GRIPPER) == ""  # still closing


def test_sim_gripper_with_its_own_controller_ignores_arm_trajectories() -> None:
    sim = SimRobot(ARM6, gripper=GRIPPER)
    try:
        sim.reset("stack", 0, 0.0)
        home = ARM6.home_positions
        target = home.copy()
        target[0] += 0.2
        target[-1] = 0.0  # the arm trajectory says "close"; only the gripper controller may
        assert sim.command(Trajectory.from_arrays(ARM6.joint_names, [0.5], target[None]), 0.0)
        q, _ = sim.commanded(1.0)
        assert q[0] == pytest.approx(target[0]) and q[-1] == pytest.approx(home[-1])
        assert sim.command_gripper(Trajectory.from_arrays([GRIPPER], [0.2], [[0.01]]), 1.0)
        assert sim.commanded(1.5)[0][-1] == pytest.approx(0.01)
        sim.hold(1.6)  # the arm holds; the gripper keeps its goal
        assert sim.commanded(2.0)[0][0] == pytest.approx(target[0]) and sim.commanded(2.0)[0][-1] == pytest.approx(0.01)
    finally:
        sim.close()


def test_the_ur5e_controllers_drive_what_its_robot_yaml_says() -> None:
    """config/ros2_control/ur5e_controllers.yaml: the trajectory controller takes every joint but the gripper,
    whole goals only; the gripper controller takes the gripper joint, as the server sends them.
    """
    cfg = load_robot_config(share_dir() / "config" / "robots" / "ur5e.yaml")
    spec = load_robot("ur5e")
    assert (cfg.command_interface, cfg.gripper_interface) == ("action", "gripper_command")
    doc = yaml.safe_load((share_dir() / "config" / "ros2_control" / "ur5e_controllers.yaml").read_text())
    manager = doc["/ur5e/controller_manager"]["ros__parameters"]
    jtc = doc["/ur5e/joint_trajectory_controller"]["ros__parameters"]
    gripper = doc["/ur5e/gripper_controller"]["ros__parameters"]
    assert manager["joint_trajectory_controller"]["type"] == "joint_trajectory_controller/JointTrajectoryController"
    assert manager["gripper_controller"]["type"] == "position_controllers/GripperActionController"
    assert jtc["joints"] == controlled_joints(spec, "gripper_command")
    assert jtc["allow_partial_joints_goal"] is False
    assert set(jtc["constraints"]) - {"stopped_velocity_tolerance", "goal_time"} == set(jtc["joints"])
    assert gripper["joint"] == gripper_joint(spec, "gripper_command")
    assert gripper["max_effort"] == GripperStream(spec, gripper["joint"]).max_effort
