"""Recorder node over real DDS: episodes as rosbag2 MCAP, read back by rosbags and by mcap."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import rclpy
import yaml
from bag_helpers import read_mcap, read_rosbags
from diagnostic_msgs.msg import DiagnosticArray
from ros_helpers import Feeder, call, ros_node, start_episode, start_exe, stop_or_kill, wait_for, wait_on_disk
from sensor_msgs.msg import JointState
from std_srvs.srv import SetBool, Trigger

from gen_theta_model.data.episode import ACTION_POSITION, ACTION_STAMP
from gen_theta_model.data.ingest import IngestOptions, ingest
from gen_theta_model.data.manifest import read_episode
from gen_theta_model.data.recording import read_record, readable_counts
from gen_theta_model.embodiment import load_robot
from gen_theta_model.topics import load_topics
from gen_theta_ros.conversions import arrays_to_joint_state
from gen_theta_ros.qos import SENSOR_QOS

ROBOT = "arm6"


@pytest.fixture(scope="module")
def ros():
    with ros_node("recorder_test") as node:
        yield node


def service(name: str) -> str:
    t = load_topics()
    return t.resolve(ROBOT, getattr(t.services, name))


def test_record_episodes_and_sigterm(ros, tmp_path):
    spec = load_robot(ROBOT)
    names = load_topics()
    js_topic = names.resolve(ROBOT, names.joint_states)
    proc = start_exe(["record", "--ros-args", "-p", f"robot:={ROBOT}", "-p", f"output_dir:={tmp_path}"],
                     tmp_path / "recorder.log")
    feeder = Feeder(ros, ROBOT, spec)
    try:
        feeder.announce("pick", "real_world", "pick the red cube")
        bag = start_episode(ros, ROBOT)
        assert read_record(bag).status == "recording"
        again = call(ros, Trigger, service("recorder_start"), Trigger.Request())  # a re-sent start: same episode
        assert again.success and Path(again.message) == bag, again.message
        feeder.start()
        wait_for(lambda: feeder.sent.get("joint_states", 0) > 0, 10, "the feeder's first joint state")
        feeder.command()
        wait_on_disk(bag, {**{names.camera_topic(ROBOT, c.name): 4 for c in spec.cameras},
                           js_topic: 50, names.resolve(ROBOT, names.command): 1})
        assert call(ros, SetBool, service("recorder_mark_success"), SetBool.Request(data=True)).success
        feeder.stop()
        stop = call(ros, Trigger, service("recorder_stop"), Trigger.Request())
        assert stop.success, stop.message
        summary = json.loads(stop.message)
        assert summary["status"] == "complete" and not any(summary["drops"].values())

        # A second episode, ended by SIGTERM: the node closes it cleanly.
        bag2 = start_episode(ros, ROBOT)
        assert bag2 != bag
        feeder2 = Feeder(ros, ROBOT, spec)
        feeder2.start()
        wait_on_disk(bag2, {js_topic: 51})
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, (tmp_path / "recorder.log").read_text()
        feeder2.stop()
    finally:
        feeder.stop()
        if proc.poll() is None:
            proc.kill()
    log = (tmp_path / "recorder.log").read_text()

    topics = {names.camera_topic(ROBOT, c.name) for c in spec.cameras}
    topics |= {names.resolve(ROBOT, names.joint_states), names.resolve(ROBOT, names.command)}
    by_rosbags, by_mcap = read_rosbags(bag), read_mcap(bag)
    assert topics <= set(by_rosbags), log
    for topic in topics | {names.resolve(ROBOT, names.instruction)}:
        assert len(by_rosbags[topic]) == len(by_mcap[topic]) > 0, topic
    js = by_mcap[names.resolve(ROBOT, names.joint_states)]
    assert 50 <= len(js) <= feeder.sent["joint_states"] and list(js[0].name) == spec.joint_names
    np.testing.assert_allclose(js[-1].position, spec.home_positions)
    img = by_rosbags[names.camera_topic(ROBOT, "scene")][3]
    assert (img.height, img.width, img.encoding) == (96, 96, "rgb8") and len(set(img.data.tolist())) == 1
    assert by_mcap[names.resolve(ROBOT, names.instruction)][0].data == "pick the red cube"

    meta = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["storage_identifier"] == "mcap" and meta["version"] == 9
    custom = meta["custom_data"]
    assert custom["gen_theta.success"] == "true" and custom["gen_theta.task"] == "pick"
    assert custom["gen_theta.category"] == "real_world" and custom["gen_theta.urdf_sha256"] == spec.urdf_sha256
    assert custom["gen_theta.instruction"] == "pick the red cube"
    record = read_record(bag)
    assert record.status == "complete" and record.success is True and record.end_ns > record.start_ns
    assert record.messages[names.resolve(ROBOT, names.joint_states)] == len(js)

    record2 = read_record(bag2)
    assert record2.status == "complete" and record2.success is None, log
    assert len(read_mcap(bag2)[names.resolve(ROBOT, names.joint_states)]) > 50
    assert read_rosbags(bag2).keys() == read_mcap(bag2).keys()


def test_camera_frames_lost_on_the_way_are_counted_and_named(ros, tmp_path):
    """Frames a camera stamped but that never arrived: episode.yaml, the stop reply, /diagnostics."""
    spec = load_robot(ROBOT)
    names = load_topics()
    heard: dict[str, dict[str, str]] = {}

    def on_diagnostics(msg: DiagnosticArray) -> None:
        for s in msg.status:
            heard[s.name] = {"level": s.level[0], "message": s.message, **{kv.key: kv.value for kv in s.values}}

    sub = ros.create_subscription(DiagnosticArray, names.diagnostics, on_diagnostics, 10)
    proc = start_exe(["record", "--ros-args", "-p", f"robot:={ROBOT}", "-p", f"output_dir:={tmp_path}"],
                     tmp_path / "recorder.log")
    feeder = Feeder(ros, ROBOT, spec)
    feeder.skip = {20, 21, 22, 40}
    try:
        start_episode(ros, ROBOT)
        feeder.start()
        wait_for(lambda: all(len(v) == len(feeder.skip) for v in feeder.unsent.values()) and feeder.frames >= 100,
                 30, "the feeder past its skipped frames")
        topics = {c.name: names.camera_topic(ROBOT, c.name) for c in spec.cameras}

        def reported() -> bool:
            rclpy.spin_once(ros, timeout_sec=0.2)
            return all(int(heard.get(f"recorder: {t}", {}).get("lost", 0)) >= 4 for t in topics.values())

        wait_for(reported, 30, "/diagnostics reporting the lost frames")
        assert all(heard[f"recorder: {t}"]["level"] == 1 for t in topics.values())  # WARN
        first = feeder.frames
        feeder.skip = {*feeder.skip, *(i for i in range(first, 10**6) if i % 4)}  # from now on 3 in 4 are lost

        def slow() -> bool:
            rclpy.spin_once(ros, timeout_sec=0.2)
            return all(heard[f"recorder: {t}"]["message"].startswith("arriving at") for t in topics.values())

        wait_for(slow, 30, "/diagnostics reporting a low arrival rate")
        feeder.stop()
        stop = call(ros, Trigger, service("recorder_stop"), Trigger.Request())
    finally:
        feeder.stop()
        ros.destroy_subscription(sub)
        stop_or_kill(proc, signal.SIGINT, 30)
    summary = json.loads(stop.message)
    record = read_record(Path(summary["path"]))
    log = (tmp_path / "recorder.log").read_text()
    assert all(f"{t}: frames arrive at" in log for t in topics.values()), log
    assert summary["camera_losses"] == record.camera_losses
    for camera, topic in topics.items():
        losses = record.camera_losses[topic]
        assert losses["fps"] == 15.0 and losses["out_of_order"] == 0
        assert losses["received"] == record.messages[topic] + record.drops[topic]
        # Every frame not sent but the last 3 at most (no frame came after them to show the gap);
        # more if DDS lost frames too.
        assert losses["lost"] >= len(feeder.unsent[camera]) - 3, (losses, len(feeder.unsent[camera]))
        for stamp in feeder.unsent[camera][:4]:  # each of the first frames that were not sent is named
            assert min(abs(stamp - named) for named in losses["lost_stamps"]) < 1e-3, (stamp, losses)


def test_teleop_leader_topic_recorded_then_ingested_as_actions(ros, tmp_path):
    spec = load_robot(ROBOT)
    leader = "/leader/joint_states"
    proc = start_exe(["record", "--ros-args", "-p", f"robot:={ROBOT}", "-p", f"output_dir:={tmp_path}",
                      "-p", f"action_topic:={leader}"], tmp_path / "recorder.log")
    feeder = Feeder(ros, ROBOT, spec)  # the follower's cameras and joint_states
    pub = ros.create_publisher(JointState, leader, SENSOR_QOS)
    sent = 0

    def publish_until_20_on_disk() -> bool:  # the leader moves 0.5% of each range per message
        nonlocal sent
        q = spec.home_positions + 0.05 * (spec.upper - spec.lower) * np.sin(0.1 * sent)
        pub.publish(arrays_to_joint_state(spec.joint_names, q, stamp=time.time()))
        sent += 1
        return readable_counts(next(bag.glob("*.mcap"))).get(leader, 0) >= 20

    try:
        bag = start_episode(ros, ROBOT)
        feeder.start()
        wait_for(lambda: feeder.sent.get("joint_states", 0) > 0, 10, "the feeder's first joint state")
        wait_for(publish_until_20_on_disk, 30, "20 leader joint states on disk")
        feeder.stop()
        assert call(ros, Trigger, service("recorder_stop"), Trigger.Request()).success
    finally:
        feeder.stop()
        assert stop_or_kill(proc, signal.SIGTERM, 30) == 0, (tmp_path / "recorder.log").read_text()
    assert read_record(bag).action_topic == leader
    report = ingest([bag], tmp_path / "ds", IngestOptions(include_unknown=True), jobs=1, progress=False)
    assert report.added == [bag.name], report.failed
    ep = read_episode(tmp_path / "ds", bag.name)
    msgs = read_mcap(bag)[leader]
    t = np.array([m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in msgs])
    q = np.array([m.position for m in msgs])
    grid = ep.arrays[ACTION_STAMP]
    want = np.stack([np.interp((grid - t[0]) * 1e-9, (t - t[0]) * 1e-9, q[:, j]) for j in range(spec.dof)], 1)
    np.testing.assert_allclose(ep.arrays[ACTION_POSITION], want, atol=1e-6)
