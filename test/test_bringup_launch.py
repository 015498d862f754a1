"""`ros2 launch gen_theta bringup.launch.py` starts the same graph as `gen-theta bringup`.

Both come from gen_theta_ros/graph.py; this test runs both in a colcon workspace and
compares the running nodes and their parameters over DDS. Collected only where ros2cli
and launch_ros are installed (conftest.py).
"""

from __future__ import annotations

import importlib.util
import signal
import subprocess
from pathlib import Path

import pytest
import yaml
from ros_helpers import ros_node, state, stop_or_kill, wait_for
from server_helpers import graph_snapshot, tiny_checkpoint
from workspace import build_workspace, workspace_env

from gen_theta_ros.graph import ARGUMENTS, default_params_file

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_workspace(tmp_path_factory.mktemp("ros2_ws"))


def run_and_snapshot(cmd: list[str], env: dict[str, str], log: Path, params: dict[str, list[str]]) -> dict:
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        with ros_node("bringup_launch_test") as node:
            snapshot = graph_snapshot(node, params)
            # lifecycle:=auto: the managed policy server reaches active by itself, under launch too
            wait_for(lambda: state(node, "/policy_server") == "active", 120, "the policy server active")
            return snapshot
    finally:
        assert stop_or_kill(proc, signal.SIGINT, 30) == 0, log.read_text()


def test_launch_file_declares_every_argument_with_a_description(install: Path) -> None:
    out = subprocess.run(["ros2", "launch", "gen_theta", "bringup.launch.py", "--show-args"],
                         env=workspace_env(install), capture_output=True, text=True, check=True, timeout=120).stdout
    for name, (_, description) in ARGUMENTS.items():
        assert f"'{name}':" in out and description.split(";")[0] in out


def test_launch_and_gen_theta_bringup_start_the_same_graph(install: Path, tmp_path: Path) -> None:
    ckpt = tiny_checkpoint(tmp_path / "run", {"arm6": 0.0, "humanoid16": 0.0})
    doc = yaml.safe_load(default_params_file().read_text())
    doc["policy_server"]["ros__parameters"]["mode"] = "naive_async"
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(doc))
    names = ["checkpoint", "robots", *doc["policy_server"]["ros__parameters"]]
    env = workspace_env(install)
    actions = ["command_interface:=action", "gripper_interface:=gripper_command", "camera_transport:=compressed"]
    for robots, sim in (("arm6,humanoid16", "false"), ("arm6", "true")):
        args = [f"robot:={robots}", f"checkpoint:={ckpt}", f"sim:={sim}", f"params_file:={params_file}"]
        nodes = {"/policy_server": names}
        if sim == "true":  # ros2_control's actions and compressed cameras, sim included
            args += actions
            nodes["/policy_server"] = [*names, "command_interfaces", "gripper_interfaces", "compressed_cameras"]
            nodes["/arm6/sim_robot"] = ["robot", "task", "seed", "gripper_interface", "camera_transport"]
        launched = run_and_snapshot(["ros2", "launch", "gen_theta", "bringup.launch.py", *args], env,
                                    tmp_path / "launch.log", nodes)
        plain = run_and_snapshot(["gen-theta", "bringup", *args], env, tmp_path / "bringup.log", nodes)
        assert launched == plain
        assert launched["/policy_server"]["mode"] == "naive_async"
        assert launched["/policy_server"]["robots"] == robots.split(",")
        if sim == "true":
            assert launched["/policy_server"]["command_interfaces"] == ["action"]
            assert launched["/policy_server"]["compressed_cameras"] == ["arm6/scene", "arm6/wrist"]
            assert launched["/arm6/sim_robot"]["gripper_interface"] == "gripper_command"


def test_launch_file_keeps_a_users_fastdds_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    """The README promises it: FASTDDS_DEFAULT_PROFILES_FILE is set only when the user has not."""
    from launch.actions import SetEnvironmentVariable

    from launch import LaunchContext

    launch_file = importlib.util.spec_from_file_location("bringup_launch", ROOT / "launch" / "bringup.launch.py")
    module = importlib.util.module_from_spec(launch_file)
    launch_file.loader.exec_module(module)
    monkeypatch.setenv("FASTDDS_DEFAULT_PROFILES_FILE", "/home/user/my_profile.xml")
    assert module.dds_profile(LaunchContext()) == []
    monkeypatch.delenv("FASTDDS_DEFAULT_PROFILES_FILE")
    [action] = module.dds_profile(LaunchContext())
    assert isinstance(action, SetEnvironmentVariable)
