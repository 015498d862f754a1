"""Recorder node: one rosbag2 (MCAP) episode per start/stop, written off the callback thread.

Subscribes (raw, serialized CDR, no conversion) to a robot's topics from
config/topics.yaml: every camera (Image, or CompressedImage with
``compressed:=true``), joint_states, the JointTrajectory command stream, the
instruction, the sim's task announcements and its object poses (a training target, absent on a
real robot); for teleoperation also a leader
arm's sensor_msgs/JointState topic (``action_topic:=/leader/joint_states``), named
in each episode.yaml as its ``action_topic`` so that ingest takes the actions from it. Services (names in topics.yaml):
recorder/start and recorder/stop (std_srvs/Trigger), recorder/mark_success
(std_srvs/SetBool). A start while an episode is being recorded answers with that
episode (a re-sent request whose first answer was lost gets the same episode). Bags go
to ``<output_dir>/<robot>_<task>_<UTC time>``; the storage and crash/disk-full
behaviour is gen_theta_model/data/recording.py. An episode that reaches
``max_episode_s`` or ``max_episode_mb`` (EpisodeLimits) is closed as ``truncated``.

Camera frames lost in transport (gaps in header stamps against each camera's fps,
gen_theta_model/data/camera_losses.py; ``camera_fps`` overrides the robot YAML's fps) are
counted per topic from each episode's start:
in episode.yaml (``camera_losses``), the stop reply, and on /diagnostics (one status per
camera topic, every second, with the arrival rate); a camera whose frames arrive at under
half its fps is logged as a warning once, until its rate recovers.

A managed node (lifecycle: gen_theta_ros/lifecycle.py): configure creates the subscriptions and
services, activate allows recording (a start while inactive is refused), deactivate closes the
open episode cleanly. ``autostart`` (default true) goes to active at once; ``autostart:=false``
leaves it unconfigured for a lifecycle manager (`ros2 lifecycle set /recorder configure`).
"""

from __future__ import annotations

import importlib
import json
import threading
import time
from pathlib import Path

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseArray
from rcl_interfaces.msg import ParameterDescriptor
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import String
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory

from gen_theta_model.data.camera_losses import CameraWatch, cdr_header_stamp, low_rate_warning
from gen_theta_model.data.recording import (
    BagEpisodeWriter,
    EpisodeLimits,
    EpisodeRecord,
    TopicSpec,
    read_record,
    update_custom_data,
    write_record,
)
from gen_theta_model.embodiment import load_robot
from gen_theta_model.node_parameters import RecorderParameters, parameter_defaults
from gen_theta_model.topics import load_topics
from gen_theta_ros.lifecycle import ManagedNode
from gen_theta_ros.qos import COMMAND_QOS, LATCHED_QOS, RECORD_QOS
from gen_theta_ros.runtime import run_node


def message_class(msgtype: str) -> type:
    """'pkg/msg/Type' -> the message class."""
    pkg, _, name = msgtype.partition("/msg/")
    try:
        return getattr(importlib.import_module(f"{pkg}.msg"), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"unknown message type '{msgtype}' (expected pkg/msg/Type): {err}") from err


def type_name(cls: type) -> str:
    """Message class -> 'pkg/msg/Type'."""
    module = cls.__module__.split(".")
    return f"{module[0]}/msg/{cls.__name__}"


class Recorder(ManagedNode):
    """The recorder, a managed node (gen_theta_ros/lifecycle.py): ``configure`` reads the parameters
    and creates the subscriptions and services, ``activate`` allows episodes to start,
    ``deactivate`` closes the open episode cleanly (and refuses new ones), ``release`` too.
    """

    def __init__(self) -> None:
        super().__init__("recorder")
        number = ParameterDescriptor(dynamic_typing=True)  # 600 and 600.0 both work
        for name, default in parameter_defaults(RecorderParameters).items():  # config/recorder.yaml
            self.declare_parameter(name, default, number if name.startswith("max_episode_") else None)
        self._lock = threading.Lock()
        self._writer: BagEpisodeWriter | None = None
        self._last: Path | None = None
        self._latched: dict[str, tuple[int, bytes]] = {}  # last message of each latched topic
        self._cameras = CameraWatch({})  # camera topic -> frames lost, since the episode's start

    def configure(self) -> None:
        p = self.get_parameter
        self.limits = EpisodeLimits(float(p("max_episode_s").value), float(p("max_episode_mb").value))
        self.robot = p("robot").value
        self.output_dir = Path(p("output_dir").value).expanduser()
        self.spec = load_robot(self.robot)
        names = load_topics()
        self._meta = {"task": p("task").value, "category": p("category").value, "instruction": ""}
        self.action_topic = names.resolve(self.robot, p("action_topic").value) if p("action_topic").value else ""
        self.topics = self._topic_types(names, p("compressed").value, [t for t in p("topics").value if t])
        fps = p("camera_fps").value
        cameras = {names.camera_topic(self.robot, c.name, p("compressed").value): fps or c.fps
                   for c in self.spec.cameras}
        self._cameras = CameraWatch({t: fps for t, fps in cameras.items() if t in self.topics})
        if self.action_topic:
            self.topics[self.action_topic] = JointState
        for topic, cls in self.topics.items():
            qos = RECORD_QOS if cls in (Image, CompressedImage, JointState, PoseArray) else COMMAND_QOS
            if cls is String:
                qos = LATCHED_QOS
            callback = self._make_callback(topic, latched=cls is String)
            self.own(self.create_subscription(cls, topic, callback, qos, raw=True))
        self._diag = self.own(self.create_publisher(DiagnosticArray, names.diagnostics, 10))
        self.own(self.create_timer(1.0, self._publish_diagnostics))
        instr, task = names.resolve(self.robot, names.instruction), names.resolve(self.robot, names.task)
        # Decoded copies of the instruction and task topics fill the episode metadata.
        self.own(self.create_subscription(String, instr, self._on_instruction, LATCHED_QOS))
        self.own(self.create_subscription(String, task, self._on_task, LATCHED_QOS))
        # One executor thread (gen_theta_ros/runtime.py): start/stop/mark never interleave.
        srv = names.services
        self.own(self.create_service(Trigger, names.resolve(self.robot, srv.recorder_start), self._start))
        self.own(self.create_service(Trigger, names.resolve(self.robot, srv.recorder_stop), self._stop))
        self.own(self.create_service(SetBool, names.resolve(self.robot, srv.recorder_mark_success), self._mark))
        self.own(self.create_timer(0.5, self._check_episode))
        self.get_logger().info(f"configured: {len(self.topics)} topics of '{self.robot}' into {self.output_dir}")

    def activate(self) -> None:
        self.get_logger().info(f"active: recording {len(self.topics)} topics of '{self.robot}' on request")

    def deactivate(self) -> None:
        self._close_episode()
        self.get_logger().info("inactive: no episode starts until activated")

    def release(self) -> None:
        self._close_episode()
        self._latched.clear()
        self._cameras = CameraWatch({})

    def _close_episode(self) -> None:
        if self._writer is not None:
            self.stop_episode()

    def _topic_types(self, names, compressed: bool, chosen: list[str]) -> dict[str, type]:
        configured = {
            names.camera_topic(self.robot, c.name, compressed): CompressedImage if compressed else Image
            for c in self.spec.cameras
        }
        configured[names.resolve(self.robot, names.joint_states)] = JointState
        configured[names.resolve(self.robot, names.command)] = JointTrajectory
        configured[names.resolve(self.robot, names.instruction)] = String
        configured[names.resolve(self.robot, names.task)] = String
        # The sim's object poses: a training target only (PolicyConfig.object_weight); a real robot that
        # publishes none records an empty channel, and ingest takes the episode without them.
        configured[names.resolve(self.robot, names.object_poses)] = PoseArray
        if not chosen:
            return configured
        out = {}
        for entry in chosen:
            topic, _, msgtype = entry.partition("=")
            topic = names.resolve(self.robot, topic)
            if msgtype:
                out[topic] = message_class(msgtype)
            elif topic in configured:
                out[topic] = configured[topic]
            else:
                raise ValueError(
                    f"topic '{topic}' is not configured for '{self.robot}'; give its type as '{topic}=pkg/msg/Type'"
                )
        return out

    def _make_callback(self, topic: str, latched: bool):
        def callback(data: bytes) -> None:
            now = time.time_ns()
            if latched:  # instruction/task: the state at the episode start belongs in the episode
                self._latched[topic] = (now, data)
            gaps = self._cameras.gaps.get(topic)
            if gaps is not None:
                try:
                    gaps.add(cdr_header_stamp(data), now * 1e-9)
                except ValueError:
                    pass  # no header: nothing to count (the bag still gets the message)
            writer = self._writer
            if writer is not None:
                writer.put(topic, now, data)

        return callback

    def _on_instruction(self, msg: String) -> None:
        self._meta["instruction"] = msg.data

    def _on_task(self, msg: String) -> None:
        try:
            info = json.loads(msg.data)
        except json.JSONDecodeError:
            self.get_logger().warning(f"task announcement is not JSON: {msg.data[:80]!r}")
            return
        for key in ("task", "category", "instruction"):
            if isinstance(info.get(key), str):
                self._meta[key] = info[key]

    # -- services -----------------------------------------------------------------------
    def start_episode(self) -> Path:
        """Start an episode and return its bag directory; if one is being recorded, return that.

        RuntimeError when the node is not active.
        """
        if not self._active:
            raise RuntimeError("the recorder is not active (lifecycle): activate it to record")
        with self._lock:
            if self._writer is not None:
                self.get_logger().info(f"start: already recording {self._writer.path}")
                return self._writer.path
            stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + f"-{time.time_ns() % 10**9 // 1000:06d}"
            task = self._meta["task"] or "episode"
            path = self.output_dir / f"{self.robot}_{task}_{stamp}"
            self.output_dir.mkdir(parents=True, exist_ok=True)
            record = EpisodeRecord(
                robot=self.robot,
                embodiment=self.spec.name,
                urdf_sha256=self.spec.urdf_sha256,
                task=self._meta["task"],
                category=self._meta["category"],
                instruction=self._meta["instruction"],
                action_topic=self.action_topic,
                start_ns=time.time_ns(),
            )
            specs = [TopicSpec(t, type_name(cls)) for t, cls in self.topics.items()]
            writer = BagEpisodeWriter(path, specs, record, self.get_parameter("queue_mb").value * 2**20)
            for topic, (stamp, data) in list(self._latched.items()):
                writer.put(topic, stamp, data)
            self._cameras.reset()
            self._writer = writer
            self._last = path
            return path

    def stop_episode(self, truncated: str = "") -> EpisodeRecord:
        """Close the episode (``truncated``: the cap that ended it); raises RuntimeError if none is open."""
        with self._lock:
            writer, self._writer = self._writer, None
        if writer is None:
            raise RuntimeError("not recording")
        # The task announcement and the instruction may reach this process after start
        # (another subscriber, a loaded machine): the latest ones describe the episode.
        for key in ("task", "category", "instruction"):
            setattr(writer.record, key, self._meta[key] or getattr(writer.record, key))
        writer.record.camera_losses = {t: g.report() for t, g in self._cameras.gaps.items()}
        record = writer.close(time.time_ns(), truncated)
        total = sum(record.messages.values())
        drops = {t: n for t, n in record.drops.items() if n}
        lost = {t: r["lost"] for t, r in record.camera_losses.items() if r["lost"]}
        line = (f"episode {writer.path}: {record.status}, {total} messages, drops {drops or 'none'}, "
                f"camera frames lost in transport {lost or 'none'} {record.error}")
        # One call site per severity: rclpy refuses a call site whose severity changes.
        if record.status == "error":
            self.get_logger().error(line)
        elif record.status == "truncated":
            self.get_logger().warning(line)
        else:
            self.get_logger().info(line)
        return record

    def _start(self, _req: Trigger.Request, resp: Trigger.Response) -> Trigger.Response:
        try:
            path = self.start_episode()
            resp.success, resp.message = True, str(path)
        except (RuntimeError, FileExistsError, OSError) as err:
            resp.success, resp.message = False, str(err)
        return resp

    def _stop(self, _req: Trigger.Request, resp: Trigger.Response) -> Trigger.Response:
        try:
            record = self.stop_episode()
        except RuntimeError as err:
            resp.success, resp.message = False, str(err)
            return resp
        resp.success = record.status == "complete"
        resp.message = json.dumps(
            {
                "path": str(self._last),
                "status": record.status,
                "error": record.error,
                "messages": record.messages,
                "drops": record.drops,
                "camera_losses": record.camera_losses,
            }
        )
        return resp

    def _mark(self, req: SetBool.Request, resp: SetBool.Response) -> SetBool.Response:
        with self._lock:
            writer = self._writer
            if writer is not None:
                writer.record.success = bool(req.data)
                resp.success, resp.message = True, str(writer.path)
                return resp
        if self._last is None:
            resp.success, resp.message = False, "no episode recorded yet"
            return resp
        record = read_record(self._last)  # marked after stop: update the closed episode's files
        record.success = bool(req.data)
        write_record(self._last, record)
        if (self._last / "metadata.yaml").exists():
            update_custom_data(self._last, record)
        resp.success, resp.message = True, str(self._last)
        return resp

    def _check_episode(self) -> None:
        """End the open episode on a write error, or as truncated when it reaches a cap."""
        writer = self._writer
        if writer is None:
            return
        if writer.failed:
            self.get_logger().error(f"episode ended by a write error: {writer.record.error}")
            self.stop_episode()
            return
        cap = self.limits.reached((time.time_ns() - writer.record.start_ns) / 1e9, writer.bytes_on_disk)
        if cap:
            self.get_logger().warning(f"episode {writer.path} ends: {cap}")
            self.stop_episode(truncated=cap)

    def _publish_diagnostics(self) -> None:
        """One status per camera topic: frames received and lost since the episode's start, the
        arrival rate now; WARN when frames were lost or arrive at under half the camera's fps.
        """
        now = time.time_ns() * 1e-9
        for topic in self._cameras.newly_slow(now):
            self.get_logger().warning(low_rate_warning(topic, self._cameras.gaps[topic], now))
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        for topic, gaps in self._cameras.gaps.items():
            values = self._cameras.values(topic, now)
            slow = topic in self._cameras.slow
            status = DiagnosticStatus(name=f"recorder: {topic}", hardware_id=topic)  # the camera
            status.level = DiagnosticStatus.WARN if slow or gaps.lost else DiagnosticStatus.OK
            status.message = (f"arriving at {values['arrival_fps']} of {gaps.fps:g} fps" if slow
                              else f"{gaps.lost} frames lost" if gaps.lost else "ok")
            status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
            msg.status.append(status)
        self._diag.publish(msg)


def main(argv: list[str] | None = None) -> int:
    # Callbacks only enqueue; the writer thread does the disk work (bench/recorder_throughput.py).
    return run_node(Recorder, argv)
