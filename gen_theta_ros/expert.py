"""Node ``expert``: a scripted expert that drives a robot only through its ROS topics.

Run: ``ros2 run gen_theta expert --ros-args -p robot:=arm6`` or ``gen-theta expert
--ros-args -p robot:=arm6 -p episodes:=1``. It reads joint_states, sim/object_poses and
sim/task (the sim's privileged state) and publishes JointTrajectory commands on
joint_trajectory_controller/joint_trajectory, exactly as a teleoperator or a policy
would, so a recorder sees the same traffic. It starts over on every new episode (a new
``episode`` number on sim/task), logs each episode's outcome, and exits after
``episodes`` finished episodes (0: never) with status 0 if all succeeded, else 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import rclpy
from geometry_msgs.msg import PoseArray
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import String
from trajectory_msgs.msg import JointTrajectory

from gen_theta_model.embodiment import EmbodimentError, load_robot
from gen_theta_model.node_parameters import ExpertParameters, parameter_defaults
from gen_theta_model.sim.experts import ExpertConfig, ScriptedExpert
from gen_theta_model.sim.task_state import TaskState
from gen_theta_model.topics import load_topics
from gen_theta_ros.conversions import joint_state_to_arrays, msg_to_poses, time_to_seconds, trajectory_to_msg
from gen_theta_ros.qos import COMMAND_QOS, LATCHED_QOS, SENSOR_QOS
from gen_theta_ros.runtime import run_node


@dataclass(frozen=True)
class Outcome:
    episode: int
    task: str
    seed: int
    success: bool
    time: float  # s of the episode until success or the end


class ExpertNode(Node):
    def __init__(self) -> None:
        super().__init__("expert")
        for name, default in parameter_defaults(ExpertParameters).items():  # config/expert.yaml
            self.declare_parameter(name, default)
        self.spec = load_robot(self.get_parameter("robot").value)
        self.expert = ScriptedExpert(self.spec, config=ExpertConfig(miss_prob=self.get_parameter("miss_prob").value))
        self.episodes = int(self.get_parameter("episodes").value)
        topics = load_topics()
        ns = self.spec.name
        self.create_subscription(
            JointState, topics.resolve(ns, topics.joint_states), self._on_joints, SENSOR_QOS
        )
        self.create_subscription(
            PoseArray, topics.resolve(ns, topics.object_poses), self._on_poses, SENSOR_QOS
        )
        self.create_subscription(String, topics.resolve(ns, topics.task), self._on_task, LATCHED_QOS)
        self.command_topic = topics.resolve(ns, topics.command)
        self.pub = self.create_publisher(JointTrajectory, self.command_topic, COMMAND_QOS)
        self.create_timer(1.0 / float(self.get_parameter("rate_hz").value), self._tick)
        self.outcomes: list[Outcome] = []
        self._joints: JointState | None = None
        self._poses: PoseArray | None = None
        self._state: TaskState | None = None
        self._episode = -1
        self._finished = -1

    def _on_joints(self, msg: JointState) -> None:
        self._joints = msg

    def _on_poses(self, msg: PoseArray) -> None:
        self._poses = msg

    def _on_task(self, msg: String) -> None:
        self._state = TaskState.from_json(msg.data)
        if self._state.done and self._state.episode == self._episode:
            self._finish(self._state)

    def _tick(self) -> None:
        state = self._state
        if state is None or self._joints is None or self._poses is None:
            return
        if state.episode != self._episode:
            self._episode = state.episode
            self.expert.reset(state)
            self.get_logger().info(f"episode {self._episode}: {state.task} seed {state.seed}: {state.instruction!r}")
        if state.done:
            return
        stamp = time_to_seconds(self._poses.header.stamp)
        if stamp < state.episode_start or time_to_seconds(self._joints.header.stamp) < state.episode_start:
            return  # sensed before this episode's reset
        names, q_all, _, _ = joint_state_to_arrays(self._joints)
        try:
            q = self.spec.reorder_from(names, q_all)
        except EmbodimentError as err:
            self.get_logger().error(f"joint_states does not match robot {self.spec.name}: {err}")
            return
        pos, quat = msg_to_poses(self._poses)
        objects = [o.name for o in state.objects]
        traj = self.expert.act(stamp, q, objects, pos, quat)
        if traj is not None:
            self.pub.publish(trajectory_to_msg(traj))
            self.get_logger().debug(f"phase {self.expert.phase}: {len(traj.points)} points over {traj.duration:.2f} s")

    def _finish(self, state: TaskState) -> None:
        if self._finished == state.episode:
            return
        self._finished = state.episode
        elapsed = state.success_time if state.success else state.elapsed
        self.outcomes.append(Outcome(state.episode, state.task, state.seed, state.success, elapsed))
        self.get_logger().info(
            f"episode {state.episode} {state.task}: {'success' if state.success else 'failure'} after {elapsed:.2f} s"
        )
        if self.episodes and len(self.outcomes) >= self.episodes:
            rclpy.try_shutdown()

    def close(self) -> None:
        """Release the kinematics client (called by run_node on shutdown)."""
        self.expert.close()


def main(argv: list[str] | None = None) -> int:
    """Run the expert node; exit status 0 when every finished episode succeeded."""
    nodes: list[ExpertNode] = []

    def make() -> ExpertNode:
        nodes.append(ExpertNode())
        return nodes[0]

    code = run_node(make, argv)
    if not nodes:  # --help: no node was made
        return code
    return 0 if nodes[0].outcomes and all(o.success for o in nodes[0].outcomes) else 1
