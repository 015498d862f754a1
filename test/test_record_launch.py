"""`ros2 launch gen_theta record.launch.py` from a colcon workspace: arguments, and a real recording.

Collected only where ros2cli and launch_ros are installed (conftest.py).
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
from lifecycle_msgs.msg import Transition
from ros_helpers import Feeder, call, change_state, ros_node, start_episode, state, stop_or_kill, wait_on_disk
from std_srvs.srv import Trigger
from workspace import build_workspace, workspace_env

from gen_theta_model.data.bag import open_bag
from gen_theta_model.data.recording import read_record
from gen_theta_model.embodiment import load_robot
from gen_theta_model.topics import load_topics


@pytest.fixture(scope="module")
def install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_workspace(tmp_path_factory.mktemp("ros2_ws"))


def test_launch_arguments_have_descriptions(install: Path) -> None:
    out = subprocess.run(["ros2", "launch", "gen_theta", "record.launch.py", "--show-args"],
                         env=workspace_env(install), capture_output=True, text=True, check=True, timeout=120).stdout
    for name in ("robot", "output_dir", "topics", "compressed", "task", "category", "action_topic", "params_file",
                 "lifecycle"):
        assert f"'{name}':" in out
    assert "directory for the episode bags" in out


def test_launch_records_an_episode(install: Path, tmp_path: Path) -> None:
    robot = "arm7"
    log = tmp_path / "launch.log"
    proc = subprocess.Popen(["ros2", "launch", "gen_theta", "record.launch.py", f"robot:={robot}",
                             f"output_dir:={tmp_path / 'bags'}", "task:=stack", "category:=dexterity",
                             "action_topic:=/leader/joint_states"],
                            env=workspace_env(install), stdout=log.open("w"), stderr=subprocess.STDOUT)
    names = load_topics()
    try:
        with ros_node("record_launch_test") as node:
            feeder = Feeder(node, robot, load_robot(robot))
            try:
                try:
                    bag = start_episode(node, robot, 60)
                except AssertionError as err:
                    raise AssertionError(f"{err}\n{log.read_text()}") from None
                feeder.start()
                wait_on_disk(bag, {names.resolve(robot, names.joint_states): 21})
            finally:
                feeder.stop()
            assert call(node, Trigger, names.resolve(robot, names.services.recorder_stop), Trigger.Request()).success
    finally:
        assert stop_or_kill(proc, signal.SIGINT, 30) == 0, log.read_text()
    record = read_record(bag)
    assert (record.robot, record.task, record.category, record.status) == (robot, "stack", "dexterity", "complete")
    assert record.action_topic == "/leader/joint_states"
    source = open_bag(bag)
    assert source.topics["/leader/joint_states"] == "sensor_msgs/msg/JointState"
    assert not source.recovered and source.custom_data["gen_theta.task"] == "stack"
    assert sum(1 for m in source.messages() if m.msgtype == "sensor_msgs/msg/JointState") > 20


def test_launch_with_lifecycle_manual_leaves_the_recorder_to_a_manager(install: Path, tmp_path: Path) -> None:
    log = tmp_path / "launch.log"
    proc = subprocess.Popen(["ros2", "launch", "gen_theta", "record.launch.py", f"output_dir:={tmp_path / 'bags'}",
                             "lifecycle:=manual"], env=workspace_env(install), stdout=log.open("w"),
                            stderr=subprocess.STDOUT)
    try:
        with ros_node("record_launch_lifecycle_test") as node:
            assert state(node, "/recorder", timeout=120) == "unconfigured", log.read_text()
            assert change_state(node, "/recorder", Transition.TRANSITION_CONFIGURE), log.read_text()
            assert change_state(node, "/recorder", Transition.TRANSITION_ACTIVATE)
            assert state(node, "/recorder") == "active"
    finally:
        assert stop_or_kill(proc, signal.SIGINT, 30) == 0, log.read_text()
