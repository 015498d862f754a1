"""The bring-up graph (gen_theta_ros/graph.py) and `gen-theta bringup` over real DDS.

test_bringup_launch.py checks that `ros2 launch gen_theta bringup.launch.py` starts the same graph.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from lifecycle_msgs.msg import Transition
from ros_helpers import (
    alive,
    change_state,
    kill_leftovers,
    process_tree,
    ros_node,
    start_exe,
    state,
    stop_or_kill,
    wait_for,
)
from server_helpers import graph_snapshot, tiny_checkpoint

from gen_theta_model.config import ConfigError
from gen_theta_model.embodiment import load_robot
from gen_theta_ros.graph import ARGUMENTS, BringupArgs, bringup_graph, default_params_file


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("bringup") / "run", {"arm6": 0.0, "humanoid16": 0.0})


def custom_params(tmp: Path) -> tuple[Path, dict]:
    """Write the shipped params file with two values changed; return (path, its parameters)."""
    doc = yaml.safe_load(default_params_file().read_text())
    doc["policy_server"]["ros__parameters"].update(mode="sync", command_rate_hz=100.0)
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path, doc["policy_server"]["ros__parameters"]


def test_graph_nodes_and_parameters(checkpoint):
    nodes = bringup_graph(BringupArgs.from_strings({"robot": "arm6,humanoid16", "checkpoint": str(checkpoint)}))
    assert [n.full_name for n in nodes] == ["/arm6/sim_robot", "/humanoid16/sim_robot", "/policy_server"]
    sim = nodes[0]
    assert sim.parameters["robot"] == "arm6"
    assert sim.parameters["robot_description"] == Path(load_robot("arm6").urdf_path).read_text()
    assert (sim.parameters["gripper_interface"], sim.parameters["camera_transport"]) == ("trajectory", "raw")
    assert sim.params_files == (str(default_params_file("sim_robot")),)
    server = nodes[-1]
    assert server.parameters == {
        "checkpoint": str(checkpoint.resolve()),
        "robots": ["arm6", "humanoid16"],
        "robot_descriptions": [Path(load_robot(r).urdf_path).read_text() for r in ("arm6", "humanoid16")],
        "command_interfaces": ["topic", "topic"],  # the robots' YAML
        "gripper_interfaces": ["trajectory", "trajectory"],
        "autostart": True,  # lifecycle:=auto
    }
    assert server.managed and not sim.managed
    assert server.params_files == (str(default_params_file()),)
    assert [n.full_name for n in bringup_graph(BringupArgs(sim=False))] == []  # nothing without sim or policy
    assert set(ARGUMENTS) == {"robot", "checkpoint", "sim", "params_file", "command_interface", "gripper_interface",
                              "camera_transport", "inference_host", "inference_token_file", "lifecycle"}
    manual = bringup_graph(BringupArgs.from_strings({"checkpoint": str(checkpoint), "lifecycle": "manual"}))[-1]
    assert manual.parameters["autostart"] is False
    remote = bringup_graph(BringupArgs.from_strings({"checkpoint": str(checkpoint), "inference_host": "gpu-box:50051",
                                                     "inference_token_file": "token"}))[-1]
    assert remote.parameters["inference_host"] == "gpu-box:50051"
    assert remote.parameters["inference_token_file"] == str(Path("token").resolve())


def test_graph_with_actions_and_compressed_cameras(checkpoint):
    args = {"robot": "arm6", "checkpoint": str(checkpoint), "command_interface": "action",
            "gripper_interface": "gripper_command", "camera_transport": "compressed"}
    sim, server = bringup_graph(BringupArgs.from_strings(args))
    assert (sim.parameters["gripper_interface"], sim.parameters["camera_transport"]) == ("gripper_command",
                                                                                         "compressed")
    assert server.parameters["command_interfaces"] == ["action"]
    assert server.parameters["gripper_interfaces"] == ["gripper_command"]
    assert server.parameters["compressed_cameras"] == ["arm6/scene", "arm6/wrist"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"robot": "arm9"}, "unknown robot 'arm9'"),
        ({"sim": "maybe"}, "'sim' must be true or false"),
        ({"robots": "arm6"}, "unknown argument 'robots'"),
        ({"robot": " , "}, "names no robot"),
        ({"command_interface": "serial"}, "'command_interface' must be one of"),
        ({"camera_transport": "theora"}, "'camera_transport' must be one of"),
        ({"lifecycle": "later"}, "'lifecycle' must be one of"),
        ({"checkpoint": "x", "params_file": "/nonexistent.yaml"}, "does not exist"),
        ({"checkpoint": "/nonexistent/run"}, "checkpoint: /nonexistent/run: no such checkpoint"),
    ],
)
def test_bad_arguments_are_named(values, message):
    with pytest.raises(ConfigError, match=message):
        bringup_graph(BringupArgs.from_strings(values))


def test_gen_theta_bringup_starts_the_graph_and_stops_on_ctrl_c(checkpoint, tmp_path):
    params, values = custom_params(tmp_path)
    proc = start_exe(["bringup", "robot:=arm6,humanoid16", f"checkpoint:={checkpoint}", "sim:=false",
                      f"params_file:={params}"], tmp_path / "bringup.log")
    try:
        with ros_node("bringup_test") as node:
            snap = graph_snapshot(node, {"/policy_server": ["checkpoint", "robots", *values]})
            wait_for(lambda: state(node, "/policy_server") == "active", 120, "the server active (lifecycle:=auto)")
    finally:
        code = stop_or_kill(proc, signal.SIGINT, 30)
    # Every key of the params file is a declared parameter (an undeclared one would read back unset).
    expected = {"checkpoint": str(checkpoint.resolve()), "robots": ["arm6", "humanoid16"], **values}
    assert snap["/policy_server"] == expected
    assert code == 0, (tmp_path / "bringup.log").read_text()
    wait_for(lambda: str(params) not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True,
                                                       check=True).stdout, 10, "the node going with the bring-up")


def test_lifecycle_manual_leaves_the_server_to_a_lifecycle_manager(checkpoint, tmp_path):
    proc = start_exe(["bringup", "robot:=arm6", f"checkpoint:={checkpoint}", "sim:=false", "lifecycle:=manual"],
                     tmp_path / "bringup.log")
    try:
        with ros_node("bringup_lifecycle_test") as node:
            assert state(node, "/policy_server", timeout=120) == "unconfigured"
            assert change_state(node, "/policy_server", Transition.TRANSITION_CONFIGURE)
            assert change_state(node, "/policy_server", Transition.TRANSITION_ACTIVATE)
            assert state(node, "/policy_server") == "active"
            # shutdown from active: the server ends (exit 0), and with it the bring-up
            assert change_state(node, "/policy_server", Transition.TRANSITION_ACTIVE_SHUTDOWN)
        assert proc.wait(timeout=60) == 0, (tmp_path / "bringup.log").read_text()
    finally:
        if proc.poll() is None:
            stop_or_kill(proc, signal.SIGINT, 30)
    assert "exited with 0" in (tmp_path / "bringup.log").read_text()


def test_kill_9_of_bringup_ends_its_nodes(tmp_path):
    """The nodes run in sessions of their own, yet die with `gen-theta bringup` (an OOM kill, kill -9)."""
    proc = start_exe(["bringup", "robot:=arm6"], tmp_path / "bringup.log")
    nodes: list[int] = []
    try:
        wait_for(lambda: len(process_tree(proc.pid)) > 1 or proc.poll() is not None, 60, "the sim node starting")
        nodes = process_tree(proc.pid)[1:]
        assert nodes, (tmp_path / "bringup.log").read_text()
        proc.kill()
        proc.wait(timeout=10)
        wait_for(lambda: not any(map(alive, nodes)), 30, f"nodes {nodes} ending with the bring-up")
    finally:
        kill_leftovers(proc, nodes)


def test_gen_theta_bringup_rejects_bad_input(tmp_path):
    out = subprocess.run([str(Path(sys.executable).parent / "gen-theta"), "bringup", "robot"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "expected name:=value" in out.stderr
    # A missing checkpoint: one line and exit 2, before any node (here the sim) starts.
    out = subprocess.run([str(Path(sys.executable).parent / "gen-theta"), "bringup", "robot:=arm6",
                          f"checkpoint:={tmp_path / 'no_run'}"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stdout == "", out
    assert out.stderr.strip().splitlines() == [f"gen-theta bringup: bringup: checkpoint: {tmp_path / 'no_run'}: "
                                               "no such checkpoint or run directory"]


def test_server_refuses_a_robot_whose_urdf_differs_from_the_checkpoint(checkpoint, tmp_path):
    proc = start_exe(["serve", str(checkpoint), "--ros-args", "-p", "robots:=[arm6]",
                      "-p", "robot_descriptions:=['<robot name=\"other\"/>']"], tmp_path / "serve.log")
    assert proc.wait(timeout=120) != 0
    assert "robot 'arm6': its robot_description differs" in (tmp_path / "serve.log").read_text()
