"""Commands as control_msgs actions, for the policy server (``command_interfaces: [action]``).

Each command window becomes a control_msgs/action/FollowJointTrajectory goal on
``/<robot>/joint_trajectory_controller/follow_joint_trajectory`` (config/topics.yaml);
a JointTrajectoryController accepts each new goal in place of the one before (goal
replacement). Only windows that change the plan go out, and a refresh before the last
goal runs out (gen_theta_model.controllers.GoalPacer): about one goal per chunk instead
of one per command tick, the same motion. A hold (one point, one control step ahead)
goes out stamped 0, to start when it arrives: stamped, a hold that arrives a few ms late
would end in the past, and the controller would reject it. With a gripper action
(``gripper_interfaces``: ``gripper_command`` or ``parallel_gripper_command``) the
gripper joint leaves the trajectory and goes to ``/<robot>/gripper_controller/gripper_cmd``
as control_msgs GripperCommand / ParallelGripperCommand goals, one whenever its target
moves (gen_theta_model/controllers.py).

Faults: a rejected goal, or the newest goal aborted (path or goal tolerance violated, the
controller stopped) or canceled by someone else, is reported to ``on_fault(reason)``;
the server then holds the robot (sends nothing, the controller holds) until it is enabled
again. A gripper that stalls on an object is no fault. Results of goals a newer goal has
replaced are ignored, and so are responses to goals sent before the hold (``stop``): a late
refusal of one must not latch a new fault after the robot was enabled again, and one
accepted late is canceled, since nothing of the old plan may run once the robot holds.

Threads: rclpy's ActionClient is not safe to call from a thread other than the executor's
(ros2/rclpy#1123: a goal response that arrives while ``send_goal_async`` registers its future
is handled twice; it crashed the command loop with "list.remove(x): x not in list" when a
controller rejected a goal at once). So ``send``, on the server's command thread, only queues
the goals and wakes the executor through a guard condition; ``flush`` sends them from the
executor's thread, where responses and results arrive too.

control_msgs comes with a ROS 2 install; where it is missing, ``require_control_msgs``
says so in one line and the topic interface still works.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from rclpy.action import ActionClient
from rclpy.guard_condition import GuardCondition
from rclpy.node import Node
from rclpy.task import Future

from gen_theta_model.adapter import Command
from gen_theta_model.config import ConfigError
from gen_theta_model.controllers import (
    STATUS_ABORTED,
    GoalPacer,
    GripperStream,
    goal_fault,
    goal_trajectory,
    gripper_joint,
)
from gen_theta_model.embodiment import EmbodimentSpec
from gen_theta_model.topics import load_topics
from gen_theta_ros.conversions import trajectory_to_msg

try:  # a ROS 2 install has control_msgs; a plain venv gets it from the ros_control_msgs wheel
    from control_msgs.action import FollowJointTrajectory, GripperCommand, ParallelGripperCommand
except ImportError:
    FollowJointTrajectory = GripperCommand = ParallelGripperCommand = None

MISSING_CONTROL_MSGS = (
    "the action interface needs the control_msgs interfaces, which are not installed: a ROS 2 "
    "install has them (ros-<distro>-control-msgs); in a plain venv install the ros_control_msgs "
    "wheel (../shared/ros2-wheels/install.sh). The topic interface works without them"
)


def require_control_msgs() -> None:
    """Raise ConfigError (one line, what to install) when control_msgs cannot be imported."""
    if FollowJointTrajectory is None:
        raise ConfigError(MISSING_CONTROL_MSGS)


class ActionCommander:
    """One robot's command windows -> FollowJointTrajectory (and gripper) goals; see the module docstring.

    ``send`` runs on the server's command thread and queues; ``flush`` (the guard condition
    ``wake``) sends on the executor thread, where goal responses and results arrive and
    ``on_fault`` is called. Call ``flush`` directly only where no executor spins this node
    concurrently (its own callbacks, or after the spin has ended).
    """

    def __init__(self, node: Node, robot: str, spec: EmbodimentSpec, gripper_interface: str,
                 on_fault: Callable[[str], None]) -> None:
        require_control_msgs()
        names = load_topics()
        self._on_fault = on_fault
        self._lock = threading.Lock()
        self._latest: dict[str, Future] = {}  # action name -> send future of the newest goal
        self._epoch = 0  # ``stop`` calls so far: a response to a goal sent before the last one is stale
        self._queue: deque[tuple[str, Any, int]] = deque()  # (action, goal, epoch) queued by ``send``
        self.wake = node.create_guard_condition(self.flush)
        self.arm_action = names.resolve(robot, names.actions.follow_joint_trajectory)
        self._clients: dict[str, ActionClient] = {
            self.arm_action: ActionClient(node, FollowJointTrajectory, self.arm_action)
        }
        self._gripper = gripper_joint(spec, gripper_interface)
        self.gripper_action = ""
        if self._gripper:
            self.gripper_action = names.resolve(robot, names.actions.gripper_command)
            self._gripper_kind = GripperCommand if gripper_interface == "gripper_command" else ParallelGripperCommand
            self._clients[self.gripper_action] = ActionClient(node, self._gripper_kind, self.gripper_action)
            self._stream = GripperStream(spec, self._gripper)
        self._pacer = GoalPacer()
        self.sent = {name: 0 for name in self._clients}  # goals per action
        self.accepted = {name: 0 for name in self._clients}

    @property
    def entities(self) -> list[ActionClient | GuardCondition]:
        """The action clients and the guard condition (the node destroys them at cleanup)."""
        return [*self._clients.values(), self.wake]

    def missing(self) -> str:
        """Name the action servers that cannot be reached ("" when every one can)."""
        gone = [name for name, client in self._clients.items() if not client.server_is_ready()]
        return f"no action server {', '.join(gone)}" if gone else ""

    def send(self, cmd: Command) -> None:
        """Send ``cmd``'s window as the new trajectory goal if it changes the plan or the last goal runs
        short (``GoalPacer``), and a gripper goal if the gripper's target moved.
        """
        arm = goal_trajectory(cmd.trajectory, self._gripper)
        goals = []
        if self._pacer.due(arm, cmd.window.stamp):
            goal = FollowJointTrajectory.Goal()
            goal.trajectory = trajectory_to_msg(arm)
            goals.append((self.arm_action, goal))
        if self._gripper:
            target = self._stream.target(cmd.trajectory)
            if target is not None:
                goals.append((self.gripper_action, self._gripper_goal(target)))
        if goals:
            with self._lock:
                self._queue.extend((action, goal, self._epoch) for action, goal in goals)
            self.wake.trigger()

    def flush(self) -> None:
        """Send the queued goals, oldest first; a goal queued before the last ``stop`` is dropped
        (nothing of the old plan may run once the robot holds).
        """
        while True:
            with self._lock:
                if not self._queue:
                    return
                action, goal, epoch = self._queue.popleft()
                if epoch != self._epoch:
                    continue
            self._send(action, goal, epoch)

    def _gripper_goal(self, position: float) -> Any:
        if self._gripper_kind is GripperCommand:
            goal = GripperCommand.Goal()
            goal.command.position = position
            goal.command.max_effort = self._stream.max_effort
            return goal
        goal = ParallelGripperCommand.Goal()
        goal.command.name = [self._gripper]
        goal.command.position = [position]
        return goal

    def _send(self, action: str, goal: Any, epoch: int) -> None:
        future = self._clients[action].send_goal_async(goal)
        with self._lock:
            self._latest[action] = future
            self.sent[action] += 1
        future.add_done_callback(lambda f: self._on_response(action, f, epoch))

    def _on_response(self, action: str, sent: Future, epoch: int) -> None:
        handle = sent.result()
        with self._lock:
            stale = epoch != self._epoch
            self.accepted[action] += int(handle.accepted)
        if stale:  # sent before the hold: its refusal says nothing now, and it must not run
            if handle.accepted:
                handle.cancel_goal_async()
            return
        if not handle.accepted:
            self._on_fault(f"{action} rejected the goal (the controller's log says why)")
            return
        handle.get_result_async().add_done_callback(lambda f: self._on_result(action, sent, f))

    def _on_result(self, action: str, sent: Future, future: Future) -> None:
        with self._lock:
            if self._latest.get(action) is not sent:  # a newer goal replaced it (or ``stop`` let it go)
                return
        response = future.result()
        result = response.result
        if response.status == STATUS_ABORTED and getattr(result, "stalled", False):
            return  # a gripper stopped by what it holds
        fault = goal_fault(response.status, getattr(result, "error_code", 0), getattr(result, "error_string", ""),
                           action)
        if fault:
            self._on_fault(fault)

    def counts(self) -> dict[str, str]:
        """Goals sent and accepted, for the diagnostics: ``goals_*`` of the trajectory, ``gripper_goals_*``."""
        with self._lock:
            out = {"goals_sent": self.sent[self.arm_action], "goals_accepted": self.accepted[self.arm_action]}
            if self._gripper:
                out["gripper_goals_sent"] = self.sent[self.gripper_action]
                out["gripper_goals_accepted"] = self.accepted[self.gripper_action]
        return {k: str(v) for k, v in out.items()}

    def stop(self) -> None:
        """Cancel the goals in progress (the controllers hold where they are); their results are ignored."""
        with self._lock:
            sent = list(self._latest.values())
            self._latest.clear()
            self._epoch += 1
        for future in sent:
            if future.done() and future.result().accepted:
                future.result().cancel_goal_async()
        self._pacer.forget()
        if self._gripper:
            self._stream.forget()
