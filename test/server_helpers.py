"""Server, bring-up and rollout tests: a real tiny checkpoint (untrained weights, real files), graph reads."""

from __future__ import annotations

import time
from pathlib import Path

import rclpy
import torch
from rcl_interfaces.srv import GetParameters
from rclpy.parameter import parameter_value_to_python

from gen_theta_model.checkpoint import save_checkpoint
from gen_theta_model.embodiment import load_robot
from gen_theta_model.policy.config import preset
from gen_theta_model.policy.example import example_norm_stats
from gen_theta_model.policy.policy import build_policy
from gen_theta_model.train_config import TrainConfig


def tiny_checkpoint(run_dir: Path, robots: dict[str, float]) -> Path:
    """Save a tiny policy for ``robots`` (name -> action mean in canonical units; a mean beyond
    +-1 makes the policy command positions outside the URDF limits). Returns the checkpoint dir.
    """
    torch.manual_seed(0)
    specs = [load_robot(name) for name in robots]
    stats = {s.name: example_norm_stats(s, mean=robots[s.name], std=0.05) for s in specs}
    policy = build_policy(preset("tiny"), specs, stats)
    return save_checkpoint(run_dir, 1, policy, TrainConfig(), policy.model.state_dict())


def graph_snapshot(node, params: dict[str, list[str]], timeout: float = 60.0) -> dict[str, dict]:
    """Wait until the nodes ``params`` names (full names) are up, then read those parameters:
    {node full name: {parameter: value}}, over DDS (rcl_interfaces/GetParameters).
    """
    end = time.monotonic() + timeout
    while True:
        up = {f"{ns.rstrip('/')}/{name}" for name, ns in node.get_node_names_and_namespaces()}
        if set(params) <= up:
            break
        assert time.monotonic() < end, f"nodes {sorted(set(params) - up)} did not come up in {timeout} s"
        time.sleep(0.2)
    out = {}
    for full, names in params.items():
        client = node.create_client(GetParameters, f"{full}/get_parameters")
        assert client.wait_for_service(timeout_sec=timeout), f"{full}/get_parameters not available"
        future = client.call_async(GetParameters.Request(names=names))
        rclpy.spin_until_future_complete(node, future, timeout_sec=timeout)
        assert future.done(), f"{full}/get_parameters did not answer"
        out[full] = {n: parameter_value_to_python(v) for n, v in zip(names, future.result().values)}
        node.destroy_client(client)
    return out
