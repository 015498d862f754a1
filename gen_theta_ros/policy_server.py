"""policy_server node: a harmonic policy drives one or several robots (`ros2 run gen_theta policy_server`).

Thin shell around gen_theta_model.serving.HarmonicServer: parameters, topics, QoS,
message <-> numpy. Per robot namespace ``/<robot>`` (names from config/topics.yaml):

- subscribes: cameras (sensor_msgs/Image, or sensor_msgs/CompressedImage on
  camera/<name>/image_raw/compressed for ``compressed_cameras``) and joint_states
  (sensor-data QoS), the instruction (std_msgs/String, transient-local) and estop
  (std_msgs/Bool, reliable);
- commands at ``command_rate_hz`` (JointTrajectory windows with positions, velocities,
  accelerations), per robot's ``command_interfaces``: ``topic`` publishes them on
  joint_trajectory_controller/joint_trajectory (reliable), ``action`` sends them as
  control_msgs FollowJointTrajectory goals, and a gripper to a gripper action
  (gen_theta_ros/action_commander.py); a rejected or aborted goal holds that robot
  until it is enabled again;
- serves: policy_server/enable (std_srvs/SetBool).

JointStates may carry only some of a robot's joints (merged by name). A message the
server cannot use (a non-finite joint position, an image it cannot decode) is refused,
counted, and holds that robot until its input is good again; it never stops the node.
Diagnostics (diagnostic_msgs/DiagnosticArray on /diagnostics, one status per robot) once
per ``diagnostics_period_s``, and one per camera ("<robot>/<camera>") with its frames lost in
transport (gaps in header stamps against its fps: gen_theta_model/data/camera_losses.py, as
the recorder counts them), WARN while its frames arrive at under half its fps.

A managed node (lifecycle: gen_theta_ros/lifecycle.py): configure loads the model and creates
the topics, activate starts the commands, deactivate holds every robot where it is, cleanup
lets the model go. ``autostart`` (default true) goes to active at once; ``autostart:=false``
leaves it unconfigured for a lifecycle manager (`ros2 lifecycle set /policy_server configure`).

The model runs on another machine (``inference_host``, a `gen-theta infer-server`), else in a
child process (``inference_process``), else on a thread, fed by the engine's inference thread;
commands have a thread of their own; neither the callbacks nor the command stream ever wait
for inference (docs/serving.md).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
from pathlib import Path

import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.parameter import Parameter
from rclpy.publisher import Publisher
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Bool, String
from std_srvs.srv import SetBool
from trajectory_msgs.msg import JointTrajectory

from gen_theta_model.adapter import INACTIVE, JOINT_STATES, camera_input, diagnostic_level
from gen_theta_model.checkpoint import load_policy, read_checkpoint_config
from gen_theta_model.data.camera_losses import CameraWatch, low_rate_warning
from gen_theta_model.embodiment import EmbodimentSpec
from gen_theta_model.inference_worker import WorkerError, WorkerPolicy
from gen_theta_model.messages import ConversionError
from gen_theta_model.policy_server_config import (
    RECONFIGURABLE,
    PolicyServerConfig,
    configs_from_parameters,
    parameter_defaults,
    served_robots,
)
from gen_theta_model.remote_inference import RemotePolicy, read_token
from gen_theta_model.serving import ChunkPolicy, HarmonicServer
from gen_theta_model.topics import load_topics
from gen_theta_ros.action_commander import ActionCommander, require_control_msgs
from gen_theta_ros.conversions import joint_state_to_arrays, time_to_seconds, to_rgb8, trajectory_to_msg
from gen_theta_ros.lifecycle import ManagedNode
from gen_theta_ros.qos import COMMAND_QOS, LATCHED_QOS, SENSOR_QOS
from gen_theta_ros.runtime import run_node


class PolicyServer(ManagedNode):
    """The node: parameters (gen_theta_model/policy_server_config.py) -> engine, topics, command thread.

    A managed node (gen_theta_ros/lifecycle.py): ``configure`` loads the policy (here, in a
    child process, or on the inference host), warms it up and creates the topics; ``activate``
    starts the command thread; ``deactivate`` stops it and sends every robot one hold where
    it is (the engine's INACTIVE hold, as when disabled); ``release`` stops inference and
    lets the model go. ``failure`` is set when the command stream or inference failed for
    good; the node then shuts the context down and ``main`` exits 1.
    """

    configure_errors = (ValueError, OSError, WorkerError)  # bad parameters or checkpoint, URDF, host

    def __init__(self) -> None:
        super().__init__("policy_server")
        self.failure: str | None = None
        for name, default in parameter_defaults().items():
            self.declare_parameter(name, default)
        self.server: HarmonicServer | None = None
        self._worker: WorkerPolicy | RemotePolicy | None = None
        self._outputs: dict[str, Publisher | ActionCommander] = {}
        self._cameras = CameraWatch({})
        self._fault = ""  # the engine's inference fault when last logged ("": none)
        self._tick_lock = threading.RLock()  # a controller fault never lands between a tick and its send
        self._stop = threading.Event()
        self._commands: threading.Thread | None = None
        self.add_on_set_parameters_callback(self._on_set_parameters)
        # The command thread waits at most ~1 ms for the GIL held by another thread (default 5 ms).
        sys.setswitchinterval(0.001)

    # -- lifecycle ------------------------------------------------------------------------
    def configure(self) -> None:
        node_cfg, cfg = configs_from_parameters({n: self.get_parameter(n).value for n in parameter_defaults()})
        self._inference = node_cfg.inference_host or ("child process" if node_cfg.inference_process else "thread")
        self._realtime_priority = node_cfg.realtime_priority
        if any(node_cfg.interfaces(r)[0] == "action" for r in node_cfg.robots):
            require_control_msgs()  # before the model loads: fail at once, in one line
        policy = self._load_policy(node_cfg)
        served = served_robots(node_cfg, policy.embodiments)
        train_cfg, _, _ = read_checkpoint_config(node_cfg.checkpoint)
        cfg = dataclasses.replace(cfg, max_delay_steps=train_cfg.data.harmonic.max_delay_steps)
        self.server = HarmonicServer(policy, served, cfg, self._now, node_cfg.enabled, active=False)
        warm = self.server.warm_up()
        self._cameras = CameraWatch({f"{r}/{c.name}": c.fps for r, spec in served for c in spec.cameras})
        self._outputs = self._wire(served, node_cfg)
        self.own(self.create_timer(node_cfg.diagnostics_period_s, self._publish_diagnostics))
        self.server.start(on_error=self._on_inference_error)
        self.get_logger().info(
            f"configured: {[r for r, _ in served]} ({[s.name for _, s in served]}) from {node_cfg.checkpoint}, "
            f"mode {cfg.mode}, {cfg.command_rate_hz:.0f} Hz commands, warm-up inference {warm * 1e3:.0f} ms"
        )

    def activate(self) -> None:
        with self._tick_lock:
            self.server.active = True
        self._stop.clear()
        self._commands = threading.Thread(target=self._command_loop, name="commands", daemon=True)
        self._commands.start()
        self.get_logger().info(f"serving {list(self._outputs)}: active, commanding")

    def deactivate(self) -> None:
        self._stop_commands()
        with self._tick_lock:
            self.server.active = False
        self._on_tick()  # one hold where each robot is (the engine's INACTIVE hold), then no command
        for out in self._outputs.values():  # on this (the executor's) thread, before the spin may end
            if isinstance(out, ActionCommander):
                out.flush()
        self.get_logger().info(f"inactive: {list(self._outputs)} hold where they are")

    def release(self) -> None:
        self._stop_commands()
        if self.server is not None:
            self.server.stop()
        if self._worker is not None:
            self._worker.close()
        self.server, self._worker, self._outputs = None, None, {}

    def _stop_commands(self) -> None:
        self._stop.set()
        if self._commands is not None:
            self._commands.join(timeout=2.0)
        self._commands = None

    def _load_policy(self, cfg: PolicyServerConfig) -> ChunkPolicy:
        """Load the checkpoint's policy: on an inference server (``inference_host``), in a child
        process (``inference_process``), else in this one.
        """
        if cfg.inference_host:
            token = read_token(cfg.inference_token_file) if cfg.inference_token_file else ""
            ca = Path(cfg.inference_tls_ca).expanduser().read_bytes() if cfg.inference_tls_ca else b""
            self._worker = RemotePolicy(cfg.inference_host, cfg.checkpoint, token, cfg.inference_timeout_s, tls_ca=ca)
        elif cfg.inference_process:  # the model never holds this process's interpreter lock
            self._worker = WorkerPolicy(cfg.checkpoint, cfg.device, cfg.torch_threads)
        if self._worker is not None:
            self._realtime([int(t) for t in os.listdir("/proc/self/task")])
            return self._worker
        torch.set_num_threads(cfg.torch_threads)
        return load_policy(cfg.checkpoint, device=cfg.device)

    def _wire(self, served: list[tuple[str, EmbodimentSpec]],
              cfg: PolicyServerConfig) -> dict[str, Publisher | ActionCommander]:
        """Create each robot's subscriptions, service and command output; returns robot -> publisher or
        action commander (``command_interfaces``).

        Every callback runs on the one executor thread (gen_theta_ros/runtime.py); they only
        hand a message to the engine, which locks what the other threads read.
        """
        names = load_topics()
        outputs: dict[str, Publisher | ActionCommander] = {}
        for robot, spec in served:
            interface, gripper = cfg.interfaces(robot)
            if interface == "action":
                outputs[robot] = ActionCommander(self, robot, spec, gripper,
                                                 lambda why, r=robot: self._on_controller_fault(r, why))
                for entity in outputs[robot].entities:
                    self.own(entity)
            else:
                outputs[robot] = self.own(self.create_publisher(JointTrajectory, names.resolve(robot, names.command),
                                                                COMMAND_QOS))
            self.own(self.create_subscription(JointState, names.resolve(robot, names.joint_states),
                                              lambda m, r=robot: self._on_joint_state(r, m), SENSOR_QOS))
            self.own(self.create_subscription(String, names.resolve(robot, names.instruction),
                                              lambda m, r=robot: self.server.on_instruction(r, m.data), LATCHED_QOS))
            self.own(self.create_subscription(Bool, names.resolve(robot, names.estop),
                                              lambda m, r=robot: self._on_estop(r, m), COMMAND_QOS))
            self.own(self.create_service(SetBool, names.resolve(robot, names.services.policy_enable),
                                         lambda req, res, r=robot: self._on_enable(r, req, res)))
            for cam in spec.cameras:
                compressed = cfg.compressed(robot, cam.name)
                self.own(self.create_subscription(
                    CompressedImage if compressed else Image, names.camera_topic(robot, cam.name, compressed),
                    lambda m, r=robot, c=cam.name: self._on_image(r, c, m), SENSOR_QOS))
        self._diag = self.own(self.create_publisher(DiagnosticArray, names.diagnostics, 10))
        return outputs

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    # -- callbacks ---------------------------------------------------------------------
    def _on_joint_state(self, robot: str, msg: JointState) -> None:
        now = self._now()
        try:
            names, q, _, _ = joint_state_to_arrays(msg)
        except ConversionError as err:
            self.server.reject(robot, JOINT_STATES, str(err))
            return
        self.server.on_joint_state(robot, names, q, time_to_seconds(msg.header.stamp) or now, now)

    def _on_image(self, robot: str, camera: str, msg: Image | CompressedImage) -> None:
        now = self._now()
        stamp = time_to_seconds(msg.header.stamp)
        if stamp:  # frames lost in transport show as gaps in the stamps (an unstamped frame tells nothing)
            self._cameras.gaps[f"{robot}/{camera}"].add(stamp, time.monotonic())
        try:
            frame = to_rgb8(msg)
        except ConversionError as err:
            self.server.reject(robot, camera_input(camera), str(err))
            return
        self.server.on_image(robot, camera, frame, stamp or now, now)

    def _on_estop(self, robot: str, msg: Bool) -> None:
        self.server.set_estop(robot, bool(msg.data))
        if msg.data:
            self.get_logger().warning(f"{robot}: e-stop: holding until released and re-enabled")

    def _on_controller_fault(self, robot: str, why: str) -> None:
        """Hold ``robot`` after a rejected or aborted goal (its controller holds) until it is enabled again."""
        with self._tick_lock:
            self.server.controller(robot, fault=why)
            self._outputs[robot].stop()
        self.get_logger().error(f"{robot}: {why}: holding until enabled again (policy_server/enable)")

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
            self._realtime([0])
        deadline = time.monotonic()
        try:
            while not self._stop.is_set():
                deadline += period
                wait = deadline - time.monotonic()
                if wait > 0.0 and self._stop.wait(wait):
                    return  # deactivated: ``deactivate`` sends the hold
                elif wait < -period:  # fell behind by more than a period: re-anchor instead of bursting
                    deadline = time.monotonic()
                self._on_tick()
        except Exception as err:
            # The context was shut down from inside between the stop check and a publish (a lifecycle
            # shutdown, or a failure on the inference thread); stop signals no longer do that (runtime.py).
            if not self.context.ok():
                return
            self._fail(f"command loop failed: {err!r}")
            raise

    def _on_inference_error(self, err: BaseException) -> None:
        self._fail(f"inference failed: {err}; the robots hold their last plans")

    def _fail(self, what: str) -> None:
        """End the node for good: ``main`` then exits 1 (bring-up takes 0 for a clean stop)."""
        self.failure = what
        self.get_logger().fatal(f"{what}; shutting down")
        rclpy.try_shutdown()

    def _on_tick(self) -> None:
        now = self._now()
        for robot, out in self._outputs.items():
            with self._tick_lock:
                if isinstance(out, ActionCommander):
                    self.server.controller(robot, missing=out.missing())
                cmd = self.server.tick(robot, now)
                if cmd is None:
                    continue
                if isinstance(out, ActionCommander):
                    out.send(cmd)
                else:
                    out.publish(trajectory_to_msg(cmd.trajectory))

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        if self.server is None:  # not configured: configure reads them
            return SetParametersResult(successful=True)
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
        """One status per robot (its hold reason, counters, and each camera's ``camera_lost_<camera>``,
        ``camera_fps_<camera>``), and one per camera "<robot>/<camera>": frames lost in transport
        since configure, arrival rate; WARN while its frames arrive at under half its fps (logged
        once, until the rate recovers).
        """
        fault = self.server.inference_fault
        if bool(fault) != bool(self._fault):  # log when it fails and when it is back, not each retry
            self._fault = fault
            if fault:
                self.get_logger().error(f"{fault}: the robots hold; trying again")
            else:
                self.get_logger().info("inference is back: driving again")
        now = time.monotonic()
        for camera in self._cameras.newly_slow(now):
            self.get_logger().warning(low_rate_warning(camera, self._cameras.gaps[camera], now))
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        for robot, s in self.server.sessions.items():
            values = s.counters.values(s.clock)
            values["mode"] = self.server.cfg.mode
            values["added_delay_ms"] = f"{self.server.cfg.added_delay_ms:g}"
            values["inference"] = self._inference
            out = self._outputs[robot]
            if isinstance(out, ActionCommander):
                values.update(out.counts())
            cameras = {cam.name: self._cameras.values(f"{robot}/{cam.name}", now) for cam in s.spec.cameras}
            for cam, v in cameras.items():
                values[f"camera_lost_{cam}"], values[f"camera_fps_{cam}"] = v["lost"], v["arrival_fps"]
            reason = s.counters.hold_reason if self.server.active else INACTIVE
            status = DiagnosticStatus(name=f"policy_server: {robot}", hardware_id=robot)
            status.level = bytes([diagnostic_level(reason)])
            status.message = f"holding: {reason}" if reason else "driving"
            status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
            msg.status.append(status)
            for cam, v in cameras.items():
                key = f"{robot}/{cam}"
                slow = key in self._cameras.slow
                status = DiagnosticStatus(name=f"policy_server: {key}", hardware_id=key)
                status.level = DiagnosticStatus.WARN if slow else DiagnosticStatus.OK
                status.message = (f"arriving at {v['arrival_fps']} of {v['fps']} fps" if slow
                                  else f"{v['lost']} frames lost in transport")
                status.values = [KeyValue(key=k, value=x) for k, x in v.items()]
                msg.status.append(status)
        self._diag.publish(msg)

    def _realtime(self, threads: list[int]) -> None:
        """SCHED_FIFO ``realtime_priority`` for ``threads`` (Linux thread ids; 0: the calling thread).

        With the model in its own process every thread here is light, so all of them (DDS,
        executor, commands, and the threads they start) run real-time; otherwise only commands.
        """
        priority = self._realtime_priority
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


USAGE = """usage: gen-theta serve CHECKPOINT [--ros-args -p robots:=[arm6] -p mode:=harmonic ...]
       ros2 run gen_theta policy_server --ros-args -p checkpoint:=CHECKPOINT [...]

CHECKPOINT is a checkpoint directory or a training run directory (its latest checkpoint).
Parameters and their defaults: gen_theta_model/policy_server_config.py, docs/serving.md."""


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
