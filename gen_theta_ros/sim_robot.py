"""Node ``sim_robot``: the pybullet robot behind the same topics a real robot driver offers.

Run: ``ros2 run gen_theta sim_robot --ros-args -p robot:=arm6 -p task:=stack`` or
``gen-theta sim --ros-args -p robot:=arm6``. Topics (names from config/topics.yaml, in the
namespace /<robot>): joint_states, camera/<name>/image_raw (``camera_transport`` raw or
both) and camera/<name>/image_raw/compressed (compressed or both; ``camera_format`` jpeg
or png), sim/object_poses, sim/task, instruction; it follows JointTrajectory commands on
joint_trajectory_controller/joint_trajectory and, where control_msgs is installed, serves
the controllers' actions as ros2_control does (FollowJointTrajectory, and GripperCommand or
ParallelGripperCommand with ``gripper_interface``; gen_theta_ros/sim_controllers.py).
Service sim/reset (std_srvs/Trigger) starts a new episode with the *current* ``task`` and
``seed`` parameters: set them, then call reset. See docs/sim.md.

Threads: physics runs in its own thread, stepping in real time and publishing the
sensors with the node-clock time they were sensed; commands, the reset service and the
task-state timer run in the executor. One lock guards the SimRobot. The physics thread
stops when the ROS context shuts down (Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import json
import threading
import time

from geometry_msgs.msg import PoseArray
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rclpy.publisher import Publisher
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from gen_theta_model.config import ConfigError
from gen_theta_model.controllers import gripper_joint
from gen_theta_model.embodiment import GRIPPER_INTERFACES, CameraConfig, load_robot
from gen_theta_model.node_parameters import SimRobotParameters, parameter_defaults
from gen_theta_model.sim.camera import render
from gen_theta_model.sim.disturbance import DisturbanceConfig
from gen_theta_model.sim.robot import SimRobot
from gen_theta_model.sim.task_state import TaskState
from gen_theta_model.sim.tasks import TASKS
from gen_theta_model.topics import load_topics
from gen_theta_model.trajectory import TrajectoryError
from gen_theta_ros.action_commander import MISSING_CONTROL_MSGS, FollowJointTrajectory
from gen_theta_ros.conversions import (
    arrays_to_joint_state,
    numpy_to_compressed,
    numpy_to_image,
    poses_to_msg,
    trajectory_from_msg,
)
from gen_theta_ros.qos import COMMAND_QOS, LATCHED_QOS, SENSOR_PUBLISH_QOS
from gen_theta_ros.runtime import run_node
from gen_theta_ros.sim_controllers import SimControllers

TASK_POLL_S = 0.05  # how soon the end of an episode is announced on sim/task
MAX_CATCH_UP_STEPS = 24  # at most 0.1 s of physics per loop turn; beyond that the sim slows down
CAMERA_TRANSPORTS = ("raw", "compressed", "both")
CAMERA_FORMATS = ("jpeg", "png")


class Schedule:
    """Fixed-rate deadlines on a monotonic clock; skips missed periods instead of bursting."""

    def __init__(self, rate_hz: float, start: float) -> None:
        self.period = 1.0 / rate_hz
        self.next = start

    def due(self, now: float) -> bool:
        if now < self.next:
            return False
        self.next += self.period
        if self.next < now:  # fell behind by more than a period: re-anchor
            self.next = now + self.period
        return True


class SimRobotNode(Node):
    def __init__(self) -> None:
        super().__init__("sim_robot")
        fixed = ParameterDescriptor(read_only=True, description="a shipped robot name or a robot YAML path")
        for name, default in parameter_defaults(SimRobotParameters).items():  # config/sim_robot.yaml
            self.declare_parameter(name, default, fixed if name == "robot" else None)
        param = self.get_parameter
        self.spec = load_robot(param("robot").value)
        self.robot_name = self.spec.name
        gripper_interface = param("gripper_interface").value
        transport, self._camera_format = param("camera_transport").value, param("camera_format").value
        for name, value, allowed in (("gripper_interface", gripper_interface, GRIPPER_INTERFACES),
                                     ("camera_transport", transport, CAMERA_TRANSPORTS),
                                     ("camera_format", self._camera_format, CAMERA_FORMATS)):
            if value not in allowed:
                raise ConfigError(f"parameter {name} must be one of {list(allowed)}, got '{value}'")
        if gripper_interface != "trajectory" and FollowJointTrajectory is None:
            raise ConfigError(f"gripper_interface '{gripper_interface}': {MISSING_CONTROL_MSGS}")
        self.sim = SimRobot(self.spec, gripper=gripper_joint(self.spec, gripper_interface),
                            disturbance=DisturbanceConfig(std=float(param("dart_std").value),
                                                          fade_m=tuple(param("dart_fade_m").value)),
                            preroll_s=tuple(param("preroll_s").value))
        self._rtf = float(param("realtime_factor").value)
        if not 0.01 <= self._rtf <= 100.0:
            raise ValueError(f"parameter realtime_factor must be in [0.01, 100], got {self._rtf}")
        self._lock = threading.Lock()
        topics = load_topics()
        ns = self.robot_name
        self.pub_joints = self.create_publisher(JointState, topics.resolve(ns, topics.joint_states), SENSOR_PUBLISH_QOS)
        self.pub_poses = self.create_publisher(PoseArray, topics.resolve(ns, topics.object_poses), SENSOR_PUBLISH_QOS)
        self.pub_task = self.create_publisher(String, topics.resolve(ns, topics.task), LATCHED_QOS)
        self.pub_instruction = self.create_publisher(String, topics.resolve(ns, topics.instruction), LATCHED_QOS)
        cam_rate = float(param("camera_rate_hz").value)
        self.cameras = []
        if param("cameras").value:
            for cam in self.spec.cameras:
                raw, compressed = (
                    self.create_publisher(kind, topics.camera_topic(ns, cam.name, kind is CompressedImage),
                                          SENSOR_PUBLISH_QOS)
                    if transport in (name, "both") else None
                    for kind, name in ((Image, "raw"), (CompressedImage, "compressed"))
                )
                self.cameras.append((cam, (raw, compressed), cam_rate or cam.fps))
        self.command_topic = topics.resolve(ns, topics.command)
        self.create_subscription(JointTrajectory, self.command_topic, self._on_command, COMMAND_QOS)
        self.create_service(Trigger, topics.resolve(ns, topics.services.sim_reset), self._on_reset)
        self._rates = {
            "joints": float(param("joint_state_rate_hz").value),
            "poses": float(param("object_pose_rate_hz").value),
        }
        self._task_schedule = Schedule(float(param("task_state_rate_hz").value), time.monotonic())
        self._last_done = False
        self.create_timer(TASK_POLL_S, self._on_task_timer)
        self._reset_episode(param("task").value, int(param("seed").value))
        self._running = True
        self.context.on_shutdown(self._stop)
        self._thread = threading.Thread(target=self._physics_loop, name="physics", daemon=True)
        self._thread.start()
        self.controllers = None
        if FollowJointTrajectory is None:
            self.get_logger().warning(f"no controller actions: {MISSING_CONTROL_MSGS}")
        else:
            self.controllers = SimControllers(self, self.sim, self._lock, self._now, gripper_interface)
        actions = [] if self.controllers is None else [self.controllers.arm_action, self.controllers.gripper_action]
        self.get_logger().info(
            f"{self.robot_name}: {self.spec.dof} joints, cameras {[c.name for c, _, _ in self.cameras]} "
            f"({transport}), workspace {self.sim.workspace}, commands on {self.command_topic} "
            f"and actions {[a for a in actions if a]}"
            + (f"; executed targets disturbed, std {self.sim.disturbance.config.std} rad, fading within "
               f"{self.sim.disturbance.config.fade_m} m of the grasp (DART)"
               if self.sim.disturbance.config.std else "")
            + (f"; each scene runs {self.sim.preroll_s[0]}-{self.sim.preroll_s[1]} s (seeded) before its episode "
               "starts" if self.sim.preroll_s[1] else "")
        )

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    # -- episodes and commands --------------------------------------------------------------
    def _reset_episode(self, task: str, seed: int) -> str:
        if task not in TASKS:
            raise ValueError(f"unknown task '{task}'; known tasks: {', '.join(TASKS)}")
        with self._lock:
            self.sim.reset(task, seed, self._now())
            state = self.sim.state()
        self.pub_instruction.publish(String(data=state.instruction))
        self._publish_task(state)
        return state.instruction

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        task, seed = self.get_parameter("task").value, int(self.get_parameter("seed").value)
        try:
            instruction = self._reset_episode(task, seed)
        except ValueError as err:
            response.success, response.message = False, str(err)
            return response
        response.success = True
        response.message = json.dumps({"task": task, "seed": seed, "instruction": instruction})
        self.get_logger().info(f"episode {self.sim.episode}: {task} seed {seed}: {instruction!r}")
        return response

    def _on_command(self, msg: JointTrajectory) -> None:
        try:
            traj = trajectory_from_msg(msg)
            if self.sim.gripper in traj.joint_names:  # as a JTC that does not drive that joint
                raise TrajectoryError(f"joint '{self.sim.gripper}' has a gripper controller of its own")
            with self._lock:
                accepted = self.sim.command(traj, self._now())
        except TrajectoryError as err:
            self.get_logger().error(f"{self.command_topic}: rejected trajectory: {err}")
            return
        if not accepted:
            self.get_logger().warning(f"{self.command_topic}: every point lies in the past; trajectory ignored")

    # -- the real-time loop ----------------------------------------------------------------
    def _physics_loop(self) -> None:
        try:
            self._run_physics()
        except Exception:
            if self.context.ok():
                raise
            # else: the context was shut down (SIGINT/SIGTERM) before close() stopped this
            # thread, and a publish found it invalid: nothing is lost, the node is going down.

    def _run_physics(self) -> None:
        dt = self.sim.world.dt
        start = time.monotonic()
        done_steps = 0
        schedules = {k: Schedule(r, start) for k, r in self._rates.items() if r > 0}
        cam_schedules = [Schedule(rate, start) for _, _, rate in self.cameras]
        while self._running:
            mono = time.monotonic()
            due = int((mono - start) * self._rtf / dt)
            if due - done_steps > MAX_CATCH_UP_STEPS:  # cannot keep up: let simulated time slip
                done_steps = due - MAX_CATCH_UP_STEPS
            n = max(due - done_steps, 0)
            now = self._now()
            with self._lock:
                for k in range(n):
                    self.sim.step(now - (n - 1 - k) * dt / self._rtf)
                done_steps += n
                if "joints" in schedules and schedules["joints"].due(mono):
                    self._publish_joints(now)
                if "poses" in schedules and schedules["poses"].due(mono):
                    self._publish_poses(now)
                for (cam, pubs, _), sched in zip(self.cameras, cam_schedules):
                    if sched.due(mono):
                        self._publish_camera(cam, pubs, now)
            next_step = start + (done_steps + 1) * dt / self._rtf
            time.sleep(max(0.0, next_step - time.monotonic()))

    def _on_task_timer(self) -> None:
        """Publish the task state at ``task_state_rate_hz``, and at once when the episode ends."""
        with self._lock:
            done = self.sim.done
            periodic = self._task_schedule.due(time.monotonic())
            state = self.sim.state() if periodic or done != self._last_done else None
            self._last_done = done
        if state is not None:
            self._publish_task(state)

    def _publish_camera(self, cam: CameraConfig, pubs: tuple[Publisher | None, Publisher | None],
                        stamp: float) -> None:
        """Render ``cam`` and publish it raw (rgb8) and/or compressed (``camera_format``), stamped ``stamp`` s."""
        rgb = render(self.sim.world, cam)
        raw, compressed = pubs
        frame = cam.link or "world"
        if raw is not None:
            raw.publish(numpy_to_image(rgb, "rgb8", stamp, frame))
        if compressed is not None:
            compressed.publish(numpy_to_compressed(rgb, self._camera_format, stamp=stamp, frame_id=frame))

    def _publish_joints(self, stamp: float) -> None:
        q, qd, effort = self.sim.world.joint_state()
        self.pub_joints.publish(arrays_to_joint_state(self.sim.world.joint_names, q, qd, effort, stamp))

    def _publish_poses(self, stamp: float) -> None:
        _, pos, quat = self.sim.world.object_poses()
        self.pub_poses.publish(poses_to_msg(pos, quat, stamp, "world"))

    def _publish_task(self, state: TaskState) -> None:
        self.pub_task.publish(String(data=state.to_json()))

    def _stop(self) -> None:
        self._running = False
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=2.0)

    def close(self) -> None:
        """Stop the controllers and the physics thread, disconnect pybullet (called by run_node on shutdown)."""
        if self.controllers is not None:
            self.controllers.close()
        self._stop()
        with self._lock:
            self.sim.close()


def main(argv: list[str] | None = None) -> int:
    """Run the sim_robot node; ROS arguments (``--ros-args -p robot:=arm7``) configure it."""
    return run_node(SimRobotNode, argv)
