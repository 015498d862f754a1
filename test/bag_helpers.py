"""Bags written with rosbags for ingest tests: the recorder's layout, `ros2 bag record`'s, and faulty ones."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory
from PIL import Image as PILImage
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from gen_theta_model.data.recording import BagEpisodeWriter, EpisodeRecord, TopicSpec, read_record, write_record
from gen_theta_model.embodiment import EmbodimentSpec
from gen_theta_model.topics import load_topics

T0 = 1_700_000_000_000_000_000
STORE = get_typestore(Stores.ROS2_KILTED)


def _time(ns: int):
    return STORE.types["builtin_interfaces/msg/Time"](sec=ns // 10**9, nanosec=ns % 10**9)


def _header(ns: int):
    return STORE.types["std_msgs/msg/Header"](stamp=_time(ns), frame_id="")


def target(spec: EmbodimentSpec) -> np.ndarray:
    """Return the position the bag's one command moves to."""
    return spec.home_positions + 0.2 * (spec.upper - spec.home_positions)


def frame_value(i: int) -> int:
    return (50 + 11 * i) % 200


def leader_positions(spec: EmbodimentSpec, t: np.ndarray) -> np.ndarray:
    """(N, dof) positions of a leader arm at times t (s) for teleop bags: a slow swing about home."""
    phase = 2 * np.pi * 0.5 * np.asarray(t)[:, None] + np.arange(spec.dof)[None, :]
    return spec.home_positions + 0.15 * (spec.upper - spec.lower) * np.sin(phase) * (spec.upper > spec.home_positions)


LEADER_HZ = 200.0  # leader arm joint states (GELLO, SO-100 and ALOHA leaders publish at 100-1000 Hz)
BAD_JOINT = 2  # the joint (spec order) that the value faults damage
BAD_MESSAGE = 80  # the joint_states message they damage (0.8 s into the episode)


def write_bag(path: Path, spec: EmbodimentSpec, duration: float = 1.6, storage: str = "mcap",
              record: bool = True, fault: str = "", task: str = "pick", success: bool | None = True,
              compressed: bool = False, writer: str = "rosbags", leader_topic: str = "",
              leader_names: dict[str, str] | None = None) -> Path:
    """Write one episode bag. ``fault``: '', 'nonmonotonic', 'wrong_joints', 'missing_topic',
    'truncate' (damaged file with metadata.yaml), 'crash' (never closed: no summary, no metadata.yaml),
    'pre_start' (the previous episode's last joint state, another pose stamped 7 ms before the start,
    delivered first: a message in flight across a simulator reset);
    value faults in joint BAD_JOINT: 'nan' (a NaN position in message BAD_MESSAGE), 'jump' (that message
    half a range away, inside the limits), 'wild_command' (the command's target far outside the limits).
    ``writer``: 'rosbags' (rosbags' writer, CRCs 0) or 'recorder' (gen_theta's BagEpisodeWriter, MCAP only).
    ``leader_topic``: a teleop bag: a leader arm's JointState on this topic at LEADER_HZ (``leader_positions``,
    header stamps 1 ms before receipt; joint names through ``leader_names`` robot joint -> leader name, in
    reverse order, and 'leader_trigger' last when names are mapped), no JointTrajectory; episode.yaml
    names the topic as its action_topic, as the recorder does.
    """
    names = load_topics()
    robot = spec.name
    T = STORE.types
    topics = {names.resolve(robot, names.joint_states): "sensor_msgs/msg/JointState",
              names.resolve(robot, names.instruction): "std_msgs/msg/String"}
    if leader_topic:
        topics[leader_topic] = "sensor_msgs/msg/JointState"
    else:
        topics[names.resolve(robot, names.command)] = "trajectory_msgs/msg/JointTrajectory"
    cams = [] if fault == "missing_topic" else list(spec.cameras)
    for cam in cams:
        if compressed:
            topics[names.camera_topic(robot, cam.name, True)] = "sensor_msgs/msg/CompressedImage"
        else:
            topics[names.camera_topic(robot, cam.name)] = "sensor_msgs/msg/Image"
    msgs = []  # (recv ns, topic, message)
    msgs.append((T0, names.resolve(robot, names.instruction), T["std_msgs/msg/String"](data="pick the red cube")))
    joint_names = list(spec.joint_names)[::-1]  # another order than the spec's: ingest must reorder
    if fault == "wrong_joints":
        joint_names[0] = "not_a_joint"
    q = spec.home_positions[::-1].copy()
    bad = spec.dof - 1 - BAD_JOINT  # the message lists the joints in reverse
    if fault == "pre_start":
        stale = target(spec)[::-1].copy()
        msgs.append((T0 + 500_000, names.resolve(robot, names.joint_states), T["sensor_msgs/msg/JointState"](
            header=_header(T0 - 7_000_000), name=joint_names, position=stale, velocity=np.zeros(len(q)),
            effort=np.array([], dtype=np.float64))))
    for i in range(int(duration * 100)):
        recv = T0 + i * 10_000_000 + (2_000_000 if i % 3 else 0)
        stamp = recv - 50_000_000 if fault == "nonmonotonic" and i == 50 else recv  # a clock jump back
        position = q.copy()
        if i == BAD_MESSAGE and fault in ("nan", "jump"):
            position[bad] = np.nan if fault == "nan" else spec.lower[BAD_JOINT] + 0.05 * (
                spec.upper[BAD_JOINT] - spec.lower[BAD_JOINT])
        js = T["sensor_msgs/msg/JointState"](header=_header(stamp), name=joint_names, position=position,
                                             velocity=np.zeros(len(q)), effort=np.array([], dtype=np.float64))
        msgs.append((recv + 1_000_000, names.resolve(robot, names.joint_states), js))
    for cam in cams:
        for i in range(int(duration * cam.fps)):
            stamp = T0 + int(i / cam.fps * 1e9) + 3_000_000
            data = np.full(cam.height * cam.width * 3, frame_value(i), np.uint8)
            if compressed:
                jpeg = io.BytesIO()
                PILImage.fromarray(data.reshape(cam.height, cam.width, 3)).save(jpeg, format="JPEG", quality=95)
                img = T["sensor_msgs/msg/CompressedImage"](header=_header(stamp), format="rgb8; jpeg compressed bgr8",
                                                           data=np.frombuffer(jpeg.getvalue(), np.uint8))
                msgs.append((stamp + 2_000_000, names.camera_topic(robot, cam.name, True), img))
                continue
            img = T["sensor_msgs/msg/Image"](header=_header(stamp), height=cam.height, width=cam.width,
                                             encoding="rgb8", is_bigendian=0, step=cam.width * 3, data=data)
            msgs.append((stamp + 2_000_000, names.camera_topic(robot, cam.name), img))
    if leader_topic:
        lead_names = [(leader_names or {}).get(j, j) for j in spec.joint_names][::-1]
        lead_names += ["leader_trigger"] if leader_names else []
        for i in range(int(duration * LEADER_HZ)):
            recv = T0 + int(i / LEADER_HZ * 1e9) + 1_500_000
            position = leader_positions(spec, np.array([(recv - 1_000_000 - T0) * 1e-9]))[0][::-1]
            js = T["sensor_msgs/msg/JointState"](
                header=_header(recv - 1_000_000), name=lead_names,
                position=np.r_[position, [0.5] if leader_names else []], velocity=np.array([], dtype=np.float64),
                effort=np.array([], dtype=np.float64))
            msgs.append((recv, leader_topic, js))
    dur = T["builtin_interfaces/msg/Duration"]
    goal = target(spec)
    if fault == "wild_command":
        goal[BAD_JOINT] = -8.9e9
    point = T["trajectory_msgs/msg/JointTrajectoryPoint"](
        positions=goal, velocities=np.array([], float), accelerations=np.array([], float),
        effort=np.array([], float), time_from_start=dur(sec=0, nanosec=500_000_000))
    cmd = T["trajectory_msgs/msg/JointTrajectory"](header=_header(0), joint_names=list(spec.joint_names),
                                                   points=[point])
    if not leader_topic:
        msgs.append((T0 + 200_000_000, names.resolve(robot, names.command), cmd))
    msgs.sort(key=lambda m: m[0])
    if writer == "recorder":
        rec = BagEpisodeWriter(path, [TopicSpec(t, ty) for t, ty in topics.items()], EpisodeRecord(
            robot=robot, embodiment=spec.name, urdf_sha256=spec.urdf_sha256, task=task, category="real_world",
            instruction="pick the red cube", action_topic=leader_topic, success=success, start_ns=T0))
        for recv, topic, msg in msgs:
            assert rec.put(topic, recv, STORE.serialize_cdr(msg, topics[topic]))
        assert rec.close(T0 + int(duration * 1e9)).status == "complete"
        return path
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    w = Writer(path, version=9, storage_plugin=plugin)
    w.open()
    conns = {t: w.add_connection(t, ty, typestore=STORE) for t, ty in topics.items()}
    for recv, topic, msg in msgs:
        w.write(conns[topic], recv, STORE.serialize_cdr(msg, topics[topic]))
    if fault == "crash":
        mcap = w.storage  # on disk at a crash: the header and every complete chunk
        mcap.close_chunk()
        w.abort()
        f = path / f"{path.name}.mcap"
        f.write_bytes(f.read_bytes() + b"\x05\x10")  # and a record cut short
    else:
        w.close()
    if fault == "truncate":
        f = path / f"{path.name}.mcap"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    if record:
        write_record(path, EpisodeRecord(robot=robot, embodiment=spec.name, urdf_sha256=spec.urdf_sha256,
                                         task=task, category="real_world", instruction="pick the red cube",
                                         action_topic=leader_topic, success=success, start_ns=T0,
                                         end_ns=T0 + int(duration * 1e9),
                                         status="complete" if fault != "crash" else "recording"))
    return path



def read_rosbags(bag: Path) -> dict[str, list]:
    """Topic -> deserialized messages, with the rosbags reader (needs metadata.yaml)."""
    out: dict[str, list] = {}
    with Reader(bag) as reader:
        for conn, _, data in reader.messages():
            out.setdefault(conn.topic, []).append(STORE.deserialize_cdr(data, conn.msgtype))
    return out


def read_mcap(bag: Path) -> dict[str, list]:
    """Topic -> decoded messages, with the mcap library and mcap-ros2-support."""
    (path,) = bag.glob("*.mcap")
    out: dict[str, list] = {}
    with path.open("rb") as f:
        for _, channel, _, msg in make_reader(f, decoder_factories=[DecoderFactory()]).iter_decoded_messages():
            out.setdefault(channel.topic, []).append(msg)
    return out


def assert_counts_on_disk(bag: Path) -> None:
    """episode.yaml's message counts are what rosbags and mcap read back from the closed bag."""
    record = read_record(bag)
    by_rosbags, by_mcap = read_rosbags(bag), read_mcap(bag)
    for topic, n in record.messages.items():
        assert n == len(by_rosbags.get(topic, [])) == len(by_mcap.get(topic, [])), (topic, n)
    assert sum(record.messages.values()) > 0
