"""The sim robot's controller actions, as ros2_control serves them (used by the sim_robot node).

- ``<robot>/joint_trajectory_controller/follow_joint_trajectory``
  (control_msgs/FollowJointTrajectory), as JointTrajectoryController with
  ``allow_partial_joints_goal: false``: a goal is rejected when its joints are not
  exactly the controller's joints (every actuated joint but an action-driven gripper),
  when it is malformed, or when it ends in the past
  (gen_theta_model.controllers.goal_rejection). An accepted goal replaces the active one
  (which ends aborted, INVALID_GOAL, "Current goal cancelled due to new incoming action.")
  and its trajectory replaces the plan from its start on (TrajectoryFollower semantics,
  docs/sim.md). It succeeds once its last point's time has passed; a cancel request
  holds the joints where they are commanded to be. Feedback (desired, actual, error
  positions) at ``POLL_S``.
- with ``gripper_interface`` ``gripper_command`` / ``parallel_gripper_command``:
  ``<robot>/gripper_controller/gripper_cmd`` (control_msgs GripperCommand /
  ParallelGripperCommand), as gripper_action_controller with ``allow_stalling: false``:
  a goal moves the gripper joint to its position at the URDF velocity limit, replacing
  the active goal; it succeeds (``reached_goal``) within 1% of the joint's range, or is
  aborted with ``stalled`` when the fingers stop short (on an object).

The servers live on a node of their own (``sim_controllers``) spun by a multi-threaded
executor on a thread of its own: an action goal occupies its execute callback for as long
as it runs, which a single-threaded executor could not afford. Each server's requests are
handled one at a time, in the order they come (a mutually exclusive callback group), so a
newer goal always replaces an older one; the execute callbacks run beside them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node

from gen_theta_model.controllers import controlled_joints, goal_rejection, gripper_joint, gripper_outcome
from gen_theta_model.sim.robot import SimRobot
from gen_theta_model.topics import load_topics
from gen_theta_model.trajectory import Trajectory, TrajectoryError
from gen_theta_ros.action_commander import FollowJointTrajectory, GripperCommand, ParallelGripperCommand
from gen_theta_ros.conversions import trajectory_from_msg

POLL_S = 0.05  # how often goals are checked for their end and feedback is published (JTC's action_monitor_rate 20 Hz)
PREEMPTED = "Current goal cancelled due to new incoming action."
SHUTDOWN = "shutdown"  # a goal's outcome when the node closes


class _Goal:
    """An accepted goal: its handle, when its motion ends (s) and how it ended."""

    def __init__(self, handle: Any, end: float, target: float = 0.0) -> None:
        self.handle = handle
        self.end = end
        self.target = target  # gripper goals: position, rad|m
        self.outcome = ""
        self._done = threading.Event()

    def finish(self, outcome: str) -> None:
        if not self.outcome:
            self.outcome = outcome
            self._done.set()

    def wait(self) -> str:
        self._done.wait()
        return self.outcome


class SimControllers:
    """The action servers of one sim robot (module docstring). ``lock`` guards ``sim``; ``now()`` is the
    node clock in s.
    """

    def __init__(self, parent: Node, sim: SimRobot, lock: threading.Lock, now: Callable[[], float],
                 gripper_interface: str) -> None:
        spec = sim.spec
        names = load_topics()
        self.sim, self._sim_lock, self._now = sim, lock, now
        self.node = Node("sim_controllers", namespace=parent.get_namespace(), context=parent.context,
                         use_global_arguments=False)
        self._arm_joints = controlled_joints(spec, gripper_interface)
        self._arm_index = [spec.joint_names.index(n) for n in self._arm_joints]
        self._gripper = gripper_joint(spec, gripper_interface)
        self._lock = threading.Lock()
        self._active: dict[str, _Goal | None] = {"arm": None, "gripper": None}
        self.arm_action = names.resolve(spec.name, names.actions.follow_joint_trajectory)
        self._servers = [ActionServer(
            self.node, FollowJointTrajectory, self.arm_action, self._execute_arm,
            callback_group=MutuallyExclusiveCallbackGroup(),
            goal_callback=self._arm_goal, handle_accepted_callback=self._arm_accepted,
            cancel_callback=self._cancel,
        )]
        self.gripper_action = ""
        if self._gripper:
            self.gripper_action = names.resolve(spec.name, names.actions.gripper_command)
            self._parallel = gripper_interface == "parallel_gripper_command"
            kind = ParallelGripperCommand if self._parallel else GripperCommand
            self._servers.append(ActionServer(
                self.node, kind, self.gripper_action, self._execute_gripper,
                callback_group=MutuallyExclusiveCallbackGroup(),
                goal_callback=self._gripper_goal, handle_accepted_callback=self._gripper_accepted,
                cancel_callback=self._cancel,
            ))
        self.node.create_timer(POLL_S, self._poll)
        self._executor = MultiThreadedExecutor(num_threads=4, context=parent.context)
        self._executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, name="controllers", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            self._executor.spin()
        except ExternalShutdownException:
            pass
        except Exception:
            # A shutdown (SIGINT/SIGTERM) while the executor builds its wait set raises RCLError
            # ("the given context is not valid") instead; only an error of a valid context is one.
            if self.node.context.ok():
                raise

    # -- FollowJointTrajectory -----------------------------------------------------------
    def _arm_goal(self, goal: Any) -> GoalResponse:
        try:
            why = goal_rejection(trajectory_from_msg(goal.trajectory), self._arm_joints, self._now())
        except TrajectoryError as err:
            why = str(err)
        if why:
            self.node.get_logger().error(f"{self.arm_action}: rejected goal: {why}")
            return GoalResponse.REJECT
        return GoalResponse.ACCEPT

    def _arm_accepted(self, handle: Any) -> None:
        traj = trajectory_from_msg(handle.request.trajectory)
        now = self._now()
        goal = _Goal(handle, (traj.start_time or now) + traj.duration)
        self._replace("arm", goal)
        with self._sim_lock:
            if not self.sim.command(traj, now):
                goal.finish("old")
        handle.execute()

    def _execute_arm(self, handle: Any) -> Any:
        goal = self._find(handle)
        outcome = goal.wait()
        result = FollowJointTrajectory.Result()
        if outcome == SHUTDOWN:  # the context is gone: no state can be published any more
            pass
        elif outcome == "succeeded":
            handle.succeed()
        elif outcome == "canceled":
            handle.canceled()
        else:
            result.error_code = (FollowJointTrajectory.Result.OLD_HEADER_TIMESTAMP if outcome == "old"
                                 else FollowJointTrajectory.Result.INVALID_GOAL)
            result.error_string = "every point lies in the past" if outcome == "old" else PREEMPTED
            handle.abort()
        return result

    # -- gripper action ------------------------------------------------------------------
    def _gripper_target(self, goal: Any) -> float:
        """Return the goal's position (rad|m); TrajectoryError when it names another joint or is not finite."""
        if self._parallel:
            if list(goal.command.name) not in ([], [self._gripper]) or len(goal.command.position) != 1:
                raise TrajectoryError(f"a goal must give one position of joint '{self._gripper}', got "
                                      f"{list(goal.command.name)} {list(goal.command.position)}")
            target = float(goal.command.position[0])
        else:
            target = float(goal.command.position)
        if not np.isfinite(target):
            raise TrajectoryError(f"non-finite gripper position {target}")
        return target

    def _gripper_goal(self, goal: Any) -> GoalResponse:
        try:
            self._gripper_target(goal)
        except TrajectoryError as err:
            self.node.get_logger().error(f"{self.gripper_action}: rejected goal: {err}")
            return GoalResponse.REJECT
        return GoalResponse.ACCEPT

    def _gripper_accepted(self, handle: Any) -> None:
        spec, i = self.sim.spec, self.sim.spec.joint_names.index(self._gripper)
        target = float(np.clip(self._gripper_target(handle.request), spec.lower[i], spec.upper[i]))
        now = self._now()
        with self._sim_lock:
            start = self.sim.commanded(now)[0][i]
            duration = max(abs(target - start) / spec.velocity_limits[i], POLL_S)
            self.sim.command_gripper(Trajectory.from_arrays([self._gripper], [duration], [[target]]), now)
        self._replace("gripper", _Goal(handle, now + duration, target))
        handle.execute()

    def _execute_gripper(self, handle: Any) -> Any:
        goal = self._find(handle)
        outcome = goal.wait()
        kind = ParallelGripperCommand if self._parallel else GripperCommand
        result = kind.Result()
        i = self.sim.spec.joint_names.index(self._gripper)
        with self._sim_lock:
            q = float(self.sim.commanded(self._now())[0][i])
        if self._parallel:
            result.state.name, result.state.position = [self._gripper], [q]
        else:
            result.position = q
        result.reached_goal = outcome == "reached"
        result.stalled = outcome == "stalled"
        if outcome == SHUTDOWN:
            pass
        elif outcome == "reached":
            handle.succeed()
        elif outcome == "canceled":
            handle.canceled()
        else:  # stalled (allow_stalling: false), or replaced by a newer goal
            handle.abort()
        return result

    # -- both --------------------------------------------------------------------------------
    def _replace(self, which: str, goal: _Goal) -> None:
        with self._lock:
            previous, self._active[which] = self._active[which], goal
        if previous is not None:
            previous.finish("preempted")

    def _find(self, handle: Any) -> _Goal:
        with self._lock:
            for goal in self._active.values():
                if goal is not None and goal.handle is handle:
                    return goal
        done = _Goal(handle, 0.0)  # replaced before it started to execute
        done.finish("preempted")
        return done

    def _cancel(self, handle: Any) -> CancelResponse:
        """Accept a cancel request: the joints hold where they are commanded to be."""
        now = self._now()
        goal = self._find(handle)
        if goal.outcome:
            return CancelResponse.REJECT
        with self._sim_lock:
            self.sim.hold(now, gripper=goal is self._active["gripper"])
        goal.finish("canceled")
        return CancelResponse.ACCEPT

    def _poll(self) -> None:
        """End goals whose motion is over; publish the trajectory goal's feedback."""
        now = self._now()
        with self._lock:
            arm, gripper = self._active["arm"], self._active["gripper"]
        if arm is not None and not arm.outcome:
            if now >= arm.end:
                arm.finish("succeeded")
            else:
                self._feedback(arm, now)
        if gripper is not None and not gripper.outcome and now >= gripper.end:
            i = self.sim.spec.joint_names.index(self._gripper)
            with self._sim_lock:
                q, qd, _ = self.sim.world.joint_state()
            outcome = gripper_outcome(q[i], qd[i], gripper.target, self.sim.spec, self._gripper)
            if outcome:
                gripper.finish(outcome)

    def _feedback(self, goal: _Goal, now: float) -> None:
        with self._sim_lock:
            desired = self.sim.commanded(now)[0][self._arm_index]
            actual = self.sim.world.actuated_positions()[self._arm_index]
        msg = FollowJointTrajectory.Feedback()
        msg.joint_names = self._arm_joints
        msg.desired.positions, msg.actual.positions = desired.tolist(), actual.tolist()
        msg.error.positions = (desired - actual).tolist()
        goal.handle.publish_feedback(msg)

    def close(self) -> None:
        """Release the goals' execute callbacks, stop the executor and destroy the node (after the
        context shut down: the goals end with the process).
        """
        with self._lock:
            goals = [g for g in self._active.values() if g is not None]
        for goal in goals:
            goal.finish(SHUTDOWN)
        self._executor.shutdown(timeout_sec=2.0)
        # Executor.shutdown does not wait for the spin thread to leave rclpy's wait. A daemon thread
        # still inside it when the interpreter finalizes aborts the process as it takes the GIL back
        # (std::terminate; sim_robot exited with SIGABRT after SIGINT, seen in a core dump), and
        # destroying a node a thread still spins segfaults: join it first, as ``spinning`` does.
        self._thread.join(timeout=2.0)
        for server in self._servers:
            server.destroy()
        self.node.destroy_node()
