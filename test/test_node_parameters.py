"""Every node's parameters file under config/ states the defaults the node declares."""

from __future__ import annotations

import pytest
import rclpy
import yaml

from gen_theta_model.config import share_dir
from gen_theta_model.node_parameters import NODES, params_file_text
from gen_theta_model.policy_server_config import parameter_defaults as server_defaults
from gen_theta_ros.recorder import Recorder


@pytest.mark.parametrize("node", sorted(NODES))
def test_params_file_is_what_the_dataclass_says(node: str) -> None:
    path = share_dir() / "config" / f"{node}.yaml"
    assert path.read_text() == params_file_text(node), (
        f"{path} differs from gen_theta_model/node_parameters.py: run `python -m gen_theta_model.node_parameters`")


def test_recorder_declares_exactly_the_parameters_of_its_file() -> None:
    """The node as ROS sees it (its declared parameters) against config/recorder.yaml."""
    rclpy.init()
    try:
        node = Recorder()  # a managed node's constructor only declares its parameters
        [(key, doc)] = yaml.safe_load((share_dir() / "config" / "recorder.yaml").read_text()).items()
        plain = rclpy.create_node("plain")  # the parameters rclpy declares on every node
        own = set(node.list_parameters([], 0).names) - set(plain.list_parameters([], 0).names)
        declared = {name: node.get_parameter(name).value for name in own}
        assert key == "/**/recorder" and declared == doc["ros__parameters"]
        node.destroy_node()
        plain.destroy_node()
    finally:
        rclpy.try_shutdown()


def test_policy_server_params_file_sets_declared_parameters_only() -> None:
    """config/policy_server.yaml states what the bring-up sets differently; every default stays in
    gen_theta_model/policy_server_config.py.
    """
    doc = yaml.safe_load((share_dir() / "config" / "policy_server.yaml").read_text())
    assert set(doc["policy_server"]["ros__parameters"]) <= set(server_defaults())
