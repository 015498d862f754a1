"""The sim_robot node over real DDS: declared rates, JointTrajectory following, reset, and one expert end to end.

The sim and the expert run as separate processes (``gen-theta sim`` / ``gen-theta expert``); this
test process subscribes and commands like any other ROS node. Rate bounds are wide: the
machine is shared.
"""

import subprocess
import sys
import time

import numpy as np
import pytest
import rclpy
from geometry_msgs.msg import PoseArray
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.parameter_client import AsyncParameterClient
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from gen_theta_model.embodiment import load_robot
from gen_theta_model.sim.task_state import TaskState
from gen_theta_model.topics import load_topics
from gen_theta_model.trajectory import Trajectory
from gen_theta_ros.conversions import (
    image_to_numpy,
    joint_state_to_arrays,
    time_to_seconds,
    to_rgb8,
    trajectory_to_msg,
)

ROBOT = "arm6"
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
TOPICS = load_topics()


def start(verb: str, *params: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "gen_theta_ros.cli", verb, "--ros-args"]
    for p in params:
        args += ["-p", p]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.terminate()
    out, _ = proc.communicate(timeout=15)
    return out


class Probe(Node):
    """Subscribes to everything the sim publishes and keeps arrival times and the last messages."""

    def __init__(self) -> None:
        super().__init__("sim_probe")
        self.spec = load_robot(ROBOT)
        self.arrivals: dict[str, list[float]] = {}
        self.last: dict[str, object] = {}
        self.topics = {"joint_states": (JointState, TOPICS.resolve(ROBOT, TOPICS.joint_states))}
        self.topics["poses"] = (PoseArray, TOPICS.resolve(ROBOT, TOPICS.object_poses))
        for cam in self.spec.cameras:
            self.topics[cam.name] = (Image, TOPICS.camera_topic(ROBOT, cam.name))
            self.topics[f"{cam.name}/compressed"] = (CompressedImage, TOPICS.camera_topic(ROBOT, cam.name, True))
        for key, (kind, name) in self.topics.items():
            self.create_subscription(kind, name, self._keep(key), qos_profile_sensor_data)
        self.create_subscription(String, TOPICS.resolve(ROBOT, TOPICS.task), self._keep("task"), LATCHED)
        self.create_subscription(String, TOPICS.resolve(ROBOT, TOPICS.instruction), self._keep("instruction"), LATCHED)
        self.command = self.create_publisher(JointTrajectory, TOPICS.resolve(ROBOT, TOPICS.command), 10)
        self.reset = self.create_client(Trigger, TOPICS.resolve(ROBOT, TOPICS.services.sim_reset))
        self.params = AsyncParameterClient(self, "sim_robot")

    def _keep(self, key: str):
        def callback(msg) -> None:
            self.arrivals.setdefault(key, []).append(time.monotonic())
            self.last[key] = msg

        return callback

    def spin_until(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            rclpy.spin_once(self, timeout_sec=0.05)
        return predicate()

    def task_state(self) -> TaskState:
        return TaskState.from_json(self.last["task"].data)

    def joints(self) -> np.ndarray:
        names, q, _, _ = joint_state_to_arrays(self.last["joint_states"])
        return self.spec.reorder_from(names, q)

    def new_episode(self, task: str, seed: int) -> TaskState:
        future = self.params.set_parameters([Parameter("task", value=task), Parameter("seed", value=seed)])
        rclpy.spin_until_future_complete(self, future, timeout_sec=10)
        assert all(r.successful for r in future.result().results)
        future = self.reset.call_async(Trigger.Request())
        rclpy.spin_until_future_complete(self, future, timeout_sec=10)
        assert future.result().success, future.result().message
        assert self.spin_until(lambda: self.task_state().task == task and self.task_state().seed == seed, 5)
        return self.task_state()


@pytest.fixture(scope="module")
def probe():
    sim = start("sim", f"robot:={ROBOT}", "task:=stack", "camera_transport:=both")
    rclpy.init()
    node = Probe()
    try:
        ready = node.spin_until(lambda: node.reset.service_is_ready() and "joint_states" in node.arrivals, 60)
        assert ready, f"sim did not come up: {stop(sim)[-3000:]}"
        yield node
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        log = stop(sim)
        assert "Traceback" not in log, log[-3000:]


def test_publishes_at_declared_rates(probe):
    probe.arrivals.clear()
    t0 = time.monotonic()
    probe.spin_until(lambda: False, 3.0)
    span = time.monotonic() - t0
    rates = {k: len(v) / span for k, v in probe.arrivals.items()}
    assert 40.0 <= rates["joint_states"] <= 130.0, rates  # declared 100 Hz
    assert 10.0 <= rates["poses"] <= 40.0, rates  # declared 30 Hz
    for cam in probe.spec.cameras:
        assert 0.4 * cam.fps <= rates[cam.name] <= 1.3 * cam.fps, rates
        img = probe.last[cam.name]
        assert (img.encoding, img.width, img.height) == ("rgb8", cam.width, cam.height)
        assert image_to_numpy(img).shape == (cam.height, cam.width, 3)
        # camera_transport both: the same frames as JPEG too, as image_transport publishes them
        assert 0.4 * cam.fps <= rates[f"{cam.name}/compressed"] <= 1.3 * cam.fps, rates
        jpeg = probe.last[f"{cam.name}/compressed"]
        assert jpeg.format == "rgb8; jpeg compressed bgr8" and to_rgb8(jpeg).shape == (cam.height, cam.width, 3)
    js = probe.last["joint_states"]
    assert list(js.name) == probe.spec.joint_names + [f"{ROBOT}_finger_joint_mirror"]  # mimic joints included
    assert len(js.velocity) == len(js.effort) == len(js.name)
    now = probe.get_clock().now().nanoseconds * 1e-9
    assert abs(now - time_to_seconds(js.header.stamp)) < 0.5  # stamped with the node clock when sensed
    state = probe.task_state()
    assert state.robot == ROBOT and state.category == "dexterity" and state.instruction


def test_joint_trajectory_moves_the_joints(probe):
    spec = probe.spec
    start_q = probe.joints()
    target = spec.home_positions.copy()
    target[0] += 0.3  # base yaw
    target[-1] = 0.01  # close the gripper part-way
    traj = Trajectory.from_arrays(spec.joint_names, [1.0], target[None])
    probe.command.publish(trajectory_to_msg(traj))
    probe.spin_until(lambda: False, 2.5)
    np.testing.assert_allclose(probe.joints(), target, atol=0.02)
    assert not np.allclose(start_q, target, atol=0.02)
    # a command naming an unknown joint is rejected; the robot keeps its position
    bad = Trajectory.from_arrays(["no_such_joint"], [0.5], [[1.0]])
    probe.command.publish(trajectory_to_msg(bad))
    probe.spin_until(lambda: False, 0.5)
    np.testing.assert_allclose(probe.joints(), target, atol=0.02)


def test_reset_uses_the_task_and_seed_parameters(probe):
    before = probe.task_state().episode
    state = probe.new_episode("instruction_pick", 5)
    assert state.episode > before and state.category == "generalization"
    assert probe.spin_until(lambda: probe.last["instruction"].data == state.instruction, 5)
    assert not state.success and not state.done
    future = probe.params.set_parameters([Parameter("task", value="juggle")])
    rclpy.spin_until_future_complete(probe, future, timeout_sec=10)
    future = probe.reset.call_async(Trigger.Request())
    rclpy.spin_until_future_complete(probe, future, timeout_sec=10)
    assert not future.result().success and "juggle" in future.result().message


def test_expert_succeeds_end_to_end_through_topics(probe):
    probe.new_episode("pick_place_bin", 1)
    expert = start("expert", f"robot:={ROBOT}", "episodes:=1")
    try:
        expert.wait(timeout=60)
    finally:
        log = stop(expert)
    assert expert.returncode == 0, log[-3000:]
    assert probe.spin_until(lambda: probe.task_state().done, 5)
    state = probe.task_state()
    assert state.success and state.task == "pick_place_bin", state
