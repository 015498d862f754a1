"""policy_server parameters and robot checks without ROS (gen_theta_model/policy_server_config.py)."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from gen_theta_model.adapter import SafetyConfig
from gen_theta_model.config import ConfigError, resolve_path, share_dir
from gen_theta_model.embodiment import load_robot
from gen_theta_model.harmonic import SchedulerConfig
from gen_theta_model.policy_server_config import (
    PolicyServerConfig,
    configs_from_parameters,
    parameter_defaults,
    served_robots,
)
from gen_theta_model.serving import ServerConfig


def params(**changes) -> dict:
    return {**parameter_defaults(), "checkpoint": "runs/x", **changes}


def test_defaults_are_the_dataclasses():
    node, server = configs_from_parameters(params())
    assert node == PolicyServerConfig(checkpoint="runs/x")
    assert server == ServerConfig()
    assert server.safety == SafetyConfig()
    assert (server.execute_steps, server.window_steps, server.mode) == (
        SchedulerConfig.execute_steps, SchedulerConfig.window_steps, SchedulerConfig.mode)
    assert parameter_defaults()["realtime_priority"] == 0 and parameter_defaults()["robots"] == ["arm6"]


def test_the_shipped_params_file_names_parameters_and_restates_no_default():
    doc = yaml.safe_load((share_dir() / "config" / "policy_server.yaml").read_text())
    values = doc["policy_server"]["ros__parameters"]
    defaults = parameter_defaults()
    assert set(values) <= set(defaults), sorted(set(values) - set(defaults))
    assert not {k: v for k, v in values.items() if defaults[k] == v}
    configs_from_parameters(params(**values))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"checkpoint": ""}, "'checkpoint' is empty"),
        ({"robots": ["a", "b"], "embodiments": ["arm6"]}, "2 robots .* but 1 embodiments"),
        ({"robot_descriptions": ["<robot/>", "<robot/>"]}, "1 robots but 2 robot_descriptions"),
        ({"mode": "fast"}, "mode must be one of"),
        ({"joint_timeout_s": 0.0}, "joint_timeout_s must be > 0"),
        ({"command_rate_hz": "fast"}, "key 'command_rate_hz': expected float"),
        ({"realtime_priority": 120}, r"realtime_priority must be in \[0, 99\]"),
        ({"command_interfaces": ["service"]}, "'command_interfaces': unknown value 'service'"),
        ({"robots": ["a", "b", "c"], "embodiments": ["arm6"] * 3, "gripper_interfaces": ["trajectory"] * 2},
         "'gripper_interfaces' has 2 values for 3 robots"),
    ],
)
def test_bad_parameters_are_named(changes, message):
    with pytest.raises(ConfigError, match=message):
        configs_from_parameters(params(**changes))


def test_robots_are_checked_against_the_checkpoint():
    arm6, h16 = load_robot("arm6"), load_robot("humanoid16")
    cfg = PolicyServerConfig(checkpoint="ck", robots=("left", "torso"), embodiments=("arm6", "humanoid16"))
    assert served_robots(cfg, [arm6, h16]) == [("left", arm6), ("torso", h16)]
    with pytest.raises(ConfigError, match="robot 'torso': checkpoint ck knows \\['arm6'\\], not 'humanoid16'"):
        served_robots(cfg, [arm6])
    urdf = resolve_path(arm6.urdf_path).read_text()
    same = dataclasses.replace(cfg, robots=("arm6",), embodiments=("",), robot_descriptions=(urdf,))
    assert served_robots(same, [arm6]) == [("arm6", arm6)]
    other = dataclasses.replace(same, robot_descriptions=(urdf + " ",))
    with pytest.raises(ConfigError, match="robot 'arm6': its robot_description differs"):
        served_robots(other, [arm6])


def test_command_interfaces_and_compressed_cameras_per_robot():
    arm6, h16 = load_robot("arm6"), load_robot("humanoid16")
    cfg = PolicyServerConfig(checkpoint="ck", robots=("left", "torso"), embodiments=("arm6", "humanoid16"),
                             command_interfaces=("action", "topic"), gripper_interfaces=("gripper_command", ""),
                             compressed_cameras=("left/scene", "head"))
    assert cfg.interfaces("left") == ("action", "gripper_command")
    assert cfg.interfaces("torso") == ("topic", "trajectory")  # "": the default
    assert [cfg.compressed(r, c) for r, c in (("left", "scene"), ("left", "wrist"), ("torso", "head"))] == [
        True, False, True]
    assert served_robots(cfg, [arm6, h16]) == [("left", arm6), ("torso", h16)]
    two_grippers = dataclasses.replace(cfg, gripper_interfaces=("parallel_gripper_command",))
    with pytest.raises(ConfigError, match="robot 'torso': humanoid16: gripper_interface 'parallel_gripper_command' "
                                          "needs exactly one gripper joint"):
        served_robots(two_grippers, [arm6, h16])
