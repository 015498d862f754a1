"""How commands reach a robot's controllers, in pure code (the rclpy clients and servers wrap it).

A robot's ``command_interface`` is ``topic`` (JointTrajectory messages on the
JointTrajectoryController's topic) or ``action`` (control_msgs/FollowJointTrajectory
goals; each new window is a new goal, which preempts the previous one, as ros2_control's
JointTrajectoryController does). Its ``gripper_interface`` is ``trajectory`` (the
gripper joint is one more joint of the trajectory), ``gripper_command``
(control_msgs/GripperCommand, ros2_control's gripper_action_controller) or
``parallel_gripper_command`` (control_msgs/ParallelGripperCommand,
parallel_gripper_action_controller).

Here: checking those settings (``per_robot``), splitting a window between the arm's
trajectory controller and the gripper controller (``goal_trajectory``, ``GripperStream``),
which windows go out as goals (``GoalPacer``),
the goal checks a JointTrajectoryController makes before it accepts a goal
(``goal_rejection``) and what a goal's result means for the robot (``goal_fault``).
Times are seconds on the node clock; positions rad|m.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gen_theta_model.embodiment import EmbodimentSpec
from gen_theta_model.trajectory import Trajectory

GRIPPER_DEADBAND = 0.01  # share of the gripper's range: smaller target changes send no new gripper goal
GOAL_LEAD_S = 0.2  # a new trajectory goal goes out at the latest when the last one ends this soon
AGREE = 1e-9  # rad|m (per s): windows that differ by less agree

# action_msgs/GoalStatus values (the ROS message constants; this module imports no ROS)
STATUS_SUCCEEDED = 4
STATUS_CANCELED = 5
STATUS_ABORTED = 6
# control_msgs/action/FollowJointTrajectory Result error codes -> names, for reports
FJT_ERRORS = {
    0: "SUCCESSFUL",
    -1: "INVALID_GOAL",
    -2: "INVALID_JOINTS",
    -3: "OLD_HEADER_TIMESTAMP",
    -4: "PATH_TOLERANCE_VIOLATED",
    -5: "GOAL_TOLERANCE_VIOLATED",
}


def per_robot(values: Sequence[str], robots: Sequence[str], name: str, allowed: Sequence[str]) -> list[str]:
    """Expand a per-robot parameter: one value for every robot, or one per robot ("" = the first allowed).

    ValueError naming the parameter on a wrong count or an unknown value.
    """
    vals = [v or allowed[0] for v in values] or [allowed[0]]
    if len(vals) == 1:
        vals = vals * len(robots)
    if len(vals) != len(robots):
        raise ValueError(f"'{name}' has {len(vals)} values for {len(robots)} robots {list(robots)}")
    bad = [v for v in vals if v not in allowed]
    if bad:
        raise ValueError(f"'{name}': unknown value '{bad[0]}' (one of {list(allowed)})")
    return vals


def gripper_joint(spec: EmbodimentSpec, interface: str) -> str:
    """Return the joint a gripper action drives for ``interface`` ("" for ``trajectory``).

    ValueError when the robot has no gripper joint, or more than one (one gripper
    controller per robot: its action name is fixed in config/topics.yaml).
    """
    if interface == "trajectory":
        return ""
    grippers = [j.name for j in spec.joints if j.gripper]
    if len(grippers) != 1:
        raise ValueError(f"{spec.name}: gripper_interface '{interface}' needs exactly one gripper joint, "
                         f"the robot has {grippers or 'none'}")
    return grippers[0]


def goal_trajectory(traj: Trajectory, gripper: str) -> Trajectory:
    """Return the trajectory of a FollowJointTrajectory goal for command window ``traj``: without
    joint ``gripper`` (when it has a controller of its own); a one-point window (a hold, or a stop
    at the end of the plan, one control step ahead) stamped 0, "start when received": a
    controller rejects a goal that ends in the past, and a hold that arrives late must still hold.
    """
    arm = arm_trajectory(traj, gripper)
    return Trajectory(arm.joint_names, arm.points, 0.0) if len(arm.points) == 1 else arm


class GoalPacer:
    """Decides which command windows go out as new goals (the others change nothing).

    Consecutive windows of one plan agree where they overlap (the same grid points of the same
    timeline), and a controller following the last goal does what the next one would say until
    that goal ends. A window goes out when there is no goal yet, when it departs from the last
    goal at a common point (a new chunk, a hold, a clamp), when the last goal ends less than
    ``GOAL_LEAD_S`` after ``now`` and the window reaches further, or when it is a stop at another
    position than the last stop.
    So goals follow the plan's changes (about one per chunk) rather than the command rate, and
    the controller and the action server are not flooded (each goal costs a goal request, a
    result request and status updates). Times in s on the node clock.
    """

    def __init__(self) -> None:
        self._last: Trajectory | None = None

    def due(self, traj: Trajectory, now: float) -> bool:
        """Tell whether window ``traj`` (stamped ``now``) must go out as a new goal; remember it if so."""
        last = self._last
        if last is None or not self._agrees(last, traj, now):
            self._last = traj
            return True
        return False

    @staticmethod
    def _agrees(last: Trajectory, traj: Trajectory, now: float) -> bool:
        if len(last.points) == 1 or len(traj.points) == 1:  # stops: the same stop holds for ever
            return len(last.points) == len(traj.points) == 1 and np.allclose(
                last.points[0].positions, traj.points[0].positions, rtol=0.0, atol=AGREE)
        # Refresh a goal about to end, but only with a window that reaches further: at a plan's end the
        # windows shrink to its last points, and a refresh per tick would send goals ending ever closer
        # to ``now``, one of which, delivered a little late, the controller rejects as in the past.
        last_end = last.start_time + last.duration
        if last_end - now < GOAL_LEAD_S and traj.start_time + traj.duration > last_end + 1e-6:
            return False
        planned = {round(last.start_time + p.time_from_start, 6): p for p in last.points}
        common = [(planned[t], p) for p in traj.points if (t := round(traj.start_time + p.time_from_start, 6))
                  in planned]
        return bool(common) and all(
            np.allclose(a.positions, b.positions, rtol=0.0, atol=AGREE)
            and np.allclose(a.velocities, b.velocities, rtol=0.0, atol=AGREE)
            for a, b in common
        )

    def forget(self) -> None:
        """Send the next window whatever the last goal was (after a fault or a cancel)."""
        self._last = None


def arm_trajectory(traj: Trajectory, gripper: str) -> Trajectory:
    """Return ``traj`` without joint ``gripper`` (the joints a trajectory controller drives); ``traj`` if "" ."""
    if not gripper:
        return traj
    keep = [i for i, n in enumerate(traj.joint_names) if n != gripper]
    points = [
        p.__class__(
            positions=p.positions[keep],
            time_from_start=p.time_from_start,
            velocities=None if p.velocities is None else p.velocities[keep],
            accelerations=None if p.accelerations is None else p.accelerations[keep],
        )
        for p in traj.points
    ]
    return Trajectory(tuple(traj.joint_names[i] for i in keep), tuple(points), traj.start_time)


class GripperStream:
    """Turns the gripper column of command windows into gripper goals.

    A gripper controller moves to one position at its own speed, so the window's first
    point (one control step ahead) is the target; a new goal goes out only when it moved
    by more than ``GRIPPER_DEADBAND`` of the joint's range since the last goal.
    """

    def __init__(self, spec: EmbodimentSpec, joint: str) -> None:
        self.joint = joint
        j = spec.joints[spec.joint_names.index(joint)]
        self.max_effort = j.effort  # N (or N m); 0 in the URDF: the controller's own limit
        self._deadband = GRIPPER_DEADBAND * (j.upper - j.lower)
        self._sent: float | None = None

    def target(self, traj: Trajectory) -> float | None:
        """Position (rad|m) to send for window ``traj``, or None when the last goal still stands."""
        q = float(traj.points[0].positions[list(traj.joint_names).index(self.joint)])
        if self._sent is not None and abs(q - self._sent) <= self._deadband:
            return None
        self._sent = q
        return q

    def forget(self) -> None:
        """Send a goal with the next window whatever the last one was (after a fault or a restart)."""
        self._sent = None


def goal_rejection(traj: Trajectory, controlled: Sequence[str], now: float) -> str:
    """Why a JointTrajectoryController driving joints ``controlled`` rejects goal ``traj`` at ``now`` ("" = accept).

    As ros2_control's JTC with ``allow_partial_joints_goal: false``: the goal must name
    exactly the controller's joints, and a goal stamped in the past must still have a
    point in the future.
    """
    names = set(traj.joint_names)
    if names != set(controlled):
        return (f"joints {sorted(names)} do not match the controller's joints {sorted(controlled)} "
                "(partial goals are not allowed)")
    if traj.start_time and traj.start_time + traj.duration < now:
        return f"trajectory ends {now - traj.start_time - traj.duration:.3f} s in the past"
    return ""


def goal_fault(status: int, error_code: int, error_string: str, action: str) -> str:
    """Say what the result of the newest goal sent to ``action`` means: "" (fine) or a fault to hold on.

    Succeeded is fine (the window ran out: the controller holds its end); aborted (path
    or goal tolerance violated, controller stopped) and canceled by someone else are faults.
    Results of goals a newer goal has replaced are not passed here.
    """
    if status == STATUS_SUCCEEDED:
        return ""
    what = {STATUS_ABORTED: "aborted", STATUS_CANCELED: "canceled"}.get(status, f"ended with status {status}")
    code = f" {FJT_ERRORS.get(error_code, error_code)}" if error_code else ""
    detail = f": {error_string}" if error_string else ""
    return f"{action} goal {what}{code}{detail}"


def controlled_joints(spec: EmbodimentSpec, gripper_interface: str) -> list[str]:
    """Return the joints the robot's trajectory controller drives (all but an action-driven gripper)."""
    gripper = gripper_joint(spec, gripper_interface)
    return [n for n in spec.joint_names if n != gripper]


def gripper_outcome(position: float, velocity: float, target: float, spec: EmbodimentSpec, joint: str) -> str:
    """Where a gripper at ``position`` (velocity ``velocity``) stands once its move to ``target`` is over.

    "reached" within 1% of the joint's range (as gripper_action_controller's goal
    tolerance), "stalled" when it stopped short (below 1% of its velocity limit: fingers
    on an object), "" while it still moves.
    """
    j = spec.joints[spec.joint_names.index(joint)]
    if abs(position - target) <= 0.01 * (j.upper - j.lower):
        return "reached"
    return "stalled" if abs(velocity) < 0.01 * j.velocity else ""
