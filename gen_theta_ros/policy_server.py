"""policy_server node: a harmonic policy drives one or several robots (`ros2 run gen_theta policy_server`).

Thin shell around gen_theta_model.serving.HarmonicServer: parameters, topics, QoS,
message <-> numpy. Per robot namespace ``/<robot>`` (names from config/topics.yaml):

- subscribes: cameras (sensor_msgs/Image) and joint_states (sensor-data QoS), the
  instruction (std_msgs/String, transient-local) and estop (std_msgs/Bool, reliable);
- publishes: joint_trajectory_controller/joint_trajectory (JointTrajectory windows with
  positions, velocities, accelerations; reliable) at ``command_rate_hz``;
- serves: policy_server/enable (std_srvs/SetBool).

Diagnostics (diagnostic_msgs/DiagnosticArray on /diagnostics, one status per robot) once
per ``diagnostics_period_s``. The model runs in a child process (``inference_process``, else
on a thread), fed by the engine's inference thread; commands have a thread of their own;
neither the callbacks nor the command stream ever wait for inference (docs/serving.md).
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time

import numpy as np
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, String
from std_srvs.srv import SetBool
from trajectory_msgs.msg import JointTrajectory

from gen_theta_model.adapter import SafetyConfig
from gen_theta_model.checkpoint import load_policy, read_checkpoint_config
from gen_theta_model.config import ConfigError
from gen_theta_model.embodiment import EmbodimentSpec
from gen_theta_model.inference_worker import WorkerPolicy
from gen_theta_model.serving import HarmonicServer, ServerConfig
from gen_theta_model.topics import load_topics
from gen_theta_ros.conversions import image_to_numpy, joint_state_to_arrays, time_to_seconds, trajectory_to_msg
from gen_theta_ros.runtime import run_node

COMMAND_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
LATCHED_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
RECONFIGURABLE = ("mode", "added_delay_ms", "execute_steps", "delay_percentile", "min_prefix_steps")


def rgb(msg: Image) -> np.ndarray:
    """sensor_msgs/Image -> (H, W, 3) uint8 RGB (rgb8, bgr8 and mono8 accepted)."""
    arr = image_to_numpy(msg)
    if msg.encoding == "bgr8":
        return np.ascontiguousarray(arr[..., ::-1])
    if msg.encoding in ("mono8", "8UC1"):
        return np.repeat(arr[..., None], 3, axis=2)
    if msg.encoding != "rgb8":
        raise ValueError(f"camera image encoding '{msg.encoding}' is not supported (rgb8, bgr8, mono8)")
    return arr


class PolicyServer(Node):
    def __init__(self) -> None:
        super().__init__("policy_server")
        self.declare_parameter("checkpoint", "")  # checkpoint directory or training run directory
        self.declare_parameter("robots", ["arm6"])  # robot namespaces served
        self.declare_parameter("embodiments", [""])  # embodiment name per robot; empty: the namespace
        self.declare_parameter("robot_descriptions", [""])  # URDF text per robot, checked against the checkpoint
        self.declare_parameter("mode", "harmonic")  # harmonic | sync | naive_async
        self.declare_parameter("command_rate_hz", 50.0)
        self.declare_parameter("execute_steps", 10)
        self.declare_parameter("window_steps", 25)
        self.declare_parameter("delay_percentile", 95.0)
        self.declare_parameter("min_prefix_steps", 15)  # harmonic: commit at least this many steps
        self.declare_parameter("added_delay_ms", 0.0)
        self.declare_parameter("sample", False)
        self.declare_parameter("joint_timeout_s", 0.25)
        self.declare_parameter("camera_timeout_s", 0.5)
        self.declare_parameter("velocity_scale", 1.0)
        self.declare_parameter("enabled", True)
        self.declare_parameter("device", "cpu")
        self.declare_parameter("torch_threads", 1)  # leave the other cores to callbacks and the robot
        self.declare_parameter("diagnostics_period_s", 1.0)
        self.declare_parameter("realtime_priority", 0)  # SCHED_FIFO priority of the server's threads; 0: normal
        self.declare_parameter("inference_process", True)  # run the model in a child process (else a thread)
        p = lambda name: self.get_parameter(name).value  # noqa: E731
        checkpoint = p("checkpoint")
        if not checkpoint:
            raise ConfigError("policy_server: parameter 'checkpoint' is empty (a checkpoint or run directory)")
        robots = list(p("robots"))
        embodiments = [e for e in p("embodiments") if e] or robots
        if len(embodiments) != len(robots):
            raise ConfigError(f"policy_server: {len(robots)} robots {robots} but {len(embodiments)} embodiments")
        # The command thread waits at most ~1 ms for the GIL held by another thread (default 5 ms).
        sys.setswitchinterval(0.001)
        self._worker: WorkerPolicy | None = None
        if p("inference_process"):  # the model never holds this process's interpreter lock
            self._worker = policy = WorkerPolicy(checkpoint, p("device"), int(p("torch_threads")))
            self._realtime(int(p("realtime_priority")), [int(t) for t in os.listdir("/proc/self/task")])
        else:
            torch.set_num_threads(int(p("torch_threads")))
            policy = load_policy(checkpoint, device=p("device"))
        train_cfg, _, _ = read_checkpoint_config(checkpoint)
        specs = {e.name: e for e in policy.embodiments}
        descriptions = [d for d in p("robot_descriptions") if d]
        if descriptions and len(descriptions) != len(robots):
            raise ConfigError(f"policy_server: {len(robots)} robots but {len(descriptions)} robot_descriptions")
        served: list[tuple[str, EmbodimentSpec]] = []
        for i, (robot, emb) in enumerate(zip(robots, embodiments)):
            if emb not in specs:
                raise ConfigError(
                    f"policy_server: robot '{robot}': checkpoint {checkpoint} knows {list(specs)}, not '{emb}'"
                )
            if descriptions and hashlib.sha256(descriptions[i].encode()).hexdigest() != specs[emb].urdf_sha256:
                raise ConfigError(
                    f"policy_server: robot '{robot}': its robot_description differs from the URDF the checkpoint "
                    f"was trained on ({specs[emb].urdf_path}, sha256 {specs[emb].urdf_sha256[:12]})"
                )
            served.append((robot, specs[emb]))
        cfg = ServerConfig(
            mode=p("mode"),
            command_rate_hz=float(p("command_rate_hz")),
            execute_steps=int(p("execute_steps")),
            window_steps=int(p("window_steps")),
            delay_percentile=float(p("delay_percentile")),
            min_prefix_steps=int(p("min_prefix_steps")),
            added_delay_ms=float(p("added_delay_ms")),
            sample=bool(p("sample")),
            max_delay_steps=train_cfg.data.harmonic.max_delay_steps,
            safety=SafetyConfig(
                joint_timeout_s=float(p("joint_timeout_s")),
                camera_timeout_s=float(p("camera_timeout_s")),
                velocity_scale=float(p("velocity_scale")),
            ),
        )
        self.server = HarmonicServer(policy, served, cfg, self._now, bool(p("enabled")))
        warm = self.server.warm_up()

        names = load_topics()
        # Inputs may run on any executor thread (the engine locks); commands have a thread of their own.
        inputs = ReentrantCallbackGroup()
        self._pubs: dict[str, object] = {}
        self._keep = []
        for robot, spec in served:
            self._pubs[robot] = self.create_publisher(JointTrajectory, names.resolve(robot, names.command), COMMAND_QOS)
            self._keep += [
                self.create_subscription(
                    JointState,
                    names.resolve(robot, names.joint_states),
                    lambda m, r=robot: self._on_joint_state(r, m),
                    qos_profile_sensor_data,
                    callback_group=inputs,
                ),
                self.create_subscription(
                    String,
                    names.resolve(robot, names.instruction),
                    lambda m, r=robot: self.server.on_instruction(r, m.data),
                    LATCHED_QOS,
                    callback_group=inputs,
                ),
                self.create_subscription(
                    Bool,
                    names.resolve(robot, names.estop),
                    lambda m, r=robot: self._on_estop(r, m),
                    COMMAND_QOS,
                    callback_group=inputs,
                ),
                self.create_service(
                    SetBool,
                    names.resolve(robot, names.services.policy_enable),
                    lambda req, res, r=robot: self._on_enable(r, req, res),
                    callback_group=inputs,
                ),
            ]
            for cam in spec.cameras:
                self._keep.append(
                    self.create_subscription(
                        Image,
                        names.camera_topic(robot, cam.name),
                        lambda m, r=robot, c=cam.name: self._on_image(r, c, m),
                        qos_profile_sensor_data,
                        callback_group=inputs,
                    )
                )
        self._diag = self.create_publisher(DiagnosticArray, names.diagnostics, 10)
        self.create_timer(float(p("diagnostics_period_s")), self._publish_diagnostics, callback_group=inputs)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.server.start(on_error=self._on_inference_error)
        self._stop = threading.Event()
        self._commands = threading.Thread(target=self._command_loop, name="commands", daemon=True)
        self._commands.start()
        self.get_logger().info(
            f"serving {[r for r, _ in served]} ({[s.name for _, s in served]}) from {checkpoint}, mode {cfg.mode}, "
            f"{cfg.command_rate_hz:.0f} Hz commands, warm-up inference {warm * 1e3:.0f} ms"
        )

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    # -- callbacks ---------------------------------------------------------------------
    def _on_joint_state(self, robot: str, msg: JointState) -> None:
        names, q, _, _ = joint_state_to_arrays(msg)
        stamp = time_to_seconds(msg.header.stamp)
        now = self._now()
        self.server.on_joint_state(robot, names, q, stamp or now, now)

    def _on_image(self, robot: str, camera: str, msg: Image) -> None:
        now = self._now()
        self.server.on_image(robot, camera, rgb(msg), time_to_seconds(msg.header.stamp) or now, now)

    def _on_estop(self, robot: str, msg: Bool) -> None:
        self.server.set_estop(robot, bool(msg.data))
        if msg.data:
            self.get_logger().warning(f"{robot}: e-stop: holding until released and re-enabled")

    def _on_enable(self, robot: str, req: SetBool.Request, res: SetBool.Response) -> SetBool.Response:
        res.success, res.message = self.server.set_enabled(robot, bool(req.data))
        self.get_logger().info(f"{robot}: {res.message}")
        return res

    def _command_loop(self) -> None:
        """Publish every robot's window on absolute deadlines (no drift, no catch-up bursts).

        Its own thread rather than an executor timer: callbacks queued in the executor never
        delay a command. An unexpected error ends the node (the robot then holds its last window).
        """
        period = 1.0 / self.server.cfg.command_rate_hz
        if self._worker is None:  # inference is a thread of this process: only commands run real-time
            self._realtime(int(self.get_parameter("realtime_priority").value), [0])
        deadline = time.monotonic()
        try:
            while not self._stop.is_set():
                deadline += period
                wait = deadline - time.monotonic()
                if wait > 0.0:
                    self._stop.wait(wait)
                elif wait < -period:  # fell behind by more than a period: re-anchor instead of bursting
                    deadline = time.monotonic()
                self._on_tick()
        except Exception:
            if not self.context.ok():  # shut down (SIGINT/SIGTERM) between the stop check and a publish
                return
            self.get_logger().fatal("command loop failed; shutting down")
            rclpy.try_shutdown()
            raise

    def _on_inference_error(self, err: BaseException) -> None:
        self.get_logger().fatal(f"inference failed: {err!r}; shutting down (the robots hold their last plans)")
        rclpy.try_shutdown()

    def _on_tick(self) -> None:
        now = self._now()
        for robot, pub in self._pubs.items():
            cmd = self.server.tick(robot, now)
            if cmd is not None:
                pub.publish(trajectory_to_msg(cmd.trajectory))

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        changes = {p.name: p.value for p in params if p.name in RECONFIGURABLE}
        fixed = [p.name for p in params if p.name not in RECONFIGURABLE]
        if fixed:
            return SetParametersResult(
                successful=False, reason=f"{fixed} cannot change at run time ({RECONFIGURABLE} can)"
            )
        try:
            self.server.reconfigure(**changes)
        except (ValueError, TypeError) as err:
            return SetParametersResult(successful=False, reason=str(err))
        self.get_logger().info(f"reconfigured: {changes}")
        return SetParametersResult(successful=True)

    def _publish_diagnostics(self) -> None:
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        for robot, s in self.server.sessions.items():
            values = s.counters.values(s.clock)
            values["mode"] = self.server.cfg.mode
            values["added_delay_ms"] = f"{self.server.cfg.added_delay_ms:g}"
            status = DiagnosticStatus(name=f"policy_server: {robot}", hardware_id=robot)
            reason = s.counters.hold_reason
            level = DiagnosticStatus.ERROR if reason == "e-stop" else DiagnosticStatus.WARN
            status.level = level if reason else DiagnosticStatus.OK
            status.message = f"holding: {reason}" if reason else "driving"
            status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
            msg.status.append(status)
        self._diag.publish(msg)

    def _realtime(self, priority: int, threads: list[int]) -> None:
        """SCHED_FIFO ``priority`` for ``threads`` (Linux thread ids; 0: the calling thread).

        With the model in its own process every thread here is light, so all of them (DDS,
        executor, commands, and the threads they start) run real-time; otherwise only commands.
        """
        if priority <= 0:
            return
        try:
            for tid in threads:
                os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(priority))
        except PermissionError:
            self.get_logger().warning(
                f"no permission for SCHED_FIFO priority {priority} (needs CAP_SYS_NICE or an rtprio limit): "
                "running at normal priority"
            )

    def close(self) -> None:
        self._stop.set()
        self._commands.join(timeout=2.0)
        self.server.stop()
        if self._worker is not None:
            self._worker.close()


USAGE = """usage: gen-theta serve CHECKPOINT [--ros-args -p robots:=[arm6] -p mode:=harmonic ...]
       ros2 run gen_theta policy_server --ros-args -p checkpoint:=CHECKPOINT [...]

CHECKPOINT is a checkpoint directory or a training run directory (its latest checkpoint).
Parameters and their defaults: config/policy_server.yaml, docs/serving.md."""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if args and args[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if args and not args[0].startswith("-"):  # `gen-theta serve CHECKPOINT [--ros-args ...]`
        rest = args[1:]
        ros = rest[rest.index("--ros-args") + 1 :] if "--ros-args" in rest else []
        before = rest[: rest.index("--ros-args")] if "--ros-args" in rest else rest
        args = [*before, "--ros-args", "-p", f"checkpoint:={args[0]}", *ros]
    return run_node(PolicyServer, args)
