"""Server, bring-up and rollout tests: a real tiny checkpoint (untrained weights, real files), graph reads,
and a listener to a policy server's commands and diagnostics.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.srv import GetParameters
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import parameter_value_to_python
from rclpy.qos import QoSProfile, ReliabilityPolicy
from ros_helpers import Feeder, start_exe, wait_for
from std_srvs.srv import SetBool
from trajectory_msgs.msg import JointTrajectory

from gen_theta_model.checkpoint import save_checkpoint
from gen_theta_model.embodiment import load_robot
from gen_theta_model.policy.config import preset
from gen_theta_model.policy.example import example_norm_stats
from gen_theta_model.policy.policy import build_policy
from gen_theta_model.topics import load_topics
from gen_theta_model.train_config import TrainConfig

TOPICS = load_topics()


def tiny_checkpoint(run_dir: Path, robots: dict[str, float | np.ndarray], **policy_fields: object) -> Path:
    """Save a tiny policy for ``robots`` (name -> action mean in canonical units, one for every joint
    or (dof,); a mean beyond +-1 makes the policy command positions outside the URDF limits);
    ``policy_fields`` override the tiny preset's. Returns the checkpoint dir.
    """
    torch.manual_seed(0)
    specs = [load_robot(name) for name in robots]
    stats = {s.name: example_norm_stats(s, mean=robots[s.name], std=0.05) for s in specs}
    policy = build_policy(preset("tiny", **policy_fields), specs, stats)
    return save_checkpoint(run_dir, 1, policy, TrainConfig(), policy.model.state_dict())


def free_port() -> int:
    """Return a TCP port of 47100-47199 free on 127.0.0.1 now (the range the remote-inference tests use)."""
    for port in random.sample(range(47100, 47200), 100):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 47100-47199")


@contextmanager
def infer_server(ckpt: Path, port: int, log: Path, token_file: Path | None = None,
                 extra: Sequence[str] = ()) -> Iterator[subprocess.Popen]:
    """Run `gen-theta infer-server ckpt` (``extra`` arguments) on 127.0.0.1:``port`` until the block
    ends; yields once it serves.
    """
    args = ["infer-server", str(ckpt), "--port", str(port), *extra]
    args += ["--token-file", str(token_file)] if token_file else []
    proc = start_exe(args, log)
    try:
        wait_for(lambda: "serving" in log.read_text() or proc.poll() is not None, 120.0, "infer-server started")
        assert proc.poll() is None, log.read_text()
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)


@contextmanager
def serving(tmp: Path, ckpt: Path, robots: Sequence[str], params: Sequence[str], fed: Sequence[str],
            node_name: str) -> Iterator[dict]:
    """Run a ``gen-theta serve`` process for ``robots`` (more ``params`` as NAME:=VALUE), this process's
    rclpy node spun on a thread with a Listener, and a started Feeder for each robot in ``fed``.

    Yields {node, listener, feeders, specs, proc, log, ckpt, tmp}; a test may replace feeders in
    ``feeders``, and every feeder there is stopped at the end, with the server, node and rclpy.
    """
    log = tmp / "server.log"
    args = ["serve", str(ckpt), "--ros-args", "-p", f"robots:=[{','.join(robots)}]"]
    for param in params:
        args += ["-p", param]
    proc = start_exe(args, log)
    rclpy.init()
    node = rclpy.create_node(node_name)
    listener = Listener(node, robots)
    specs = {r: load_robot(r) for r in robots}
    feeders = {r: Feeder(node, r, specs[r]) for r in fed}
    for f in feeders.values():
        f.announce("stack", "dexterity", "stack the red cube on the blue cube")
        f.start()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    env = {"node": node, "listener": listener, "feeders": feeders, "specs": specs, "proc": proc, "log": log,
           "ckpt": ckpt, "tmp": tmp}
    try:
        yield env
    except BaseException:
        print(f"--- {log} (tail) ---\n{log.read_text()[-4000:]}")  # pytest shows it with the failure
        raise
    finally:
        for f in env["feeders"].values():
            f.stop()
        if proc.poll() is None:  # (a test may have ended it)
            os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=20)
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown()


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


class Listener:
    """Commands (receive time, message) per robot, and the latest diagnostics per robot: its
    ``message``, ``level`` (0 OK, 1 WARN, 2 ERROR) and values; ``diagnostics`` counts the arrays heard.
    """

    def __init__(self, node, robots: Sequence[str]) -> None:
        self.lock = threading.RLock()  # ``wait`` conditions may call ``since``
        self.commands = {r: [] for r in robots}
        self.diag: dict[str, dict[str, str]] = {}
        self.diagnostics = 0
        for r in robots:
            node.create_subscription(
                JointTrajectory, TOPICS.resolve(r, TOPICS.command), lambda m, r=r: self._cmd(r, m),
                QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE),
            )
        node.create_subscription(DiagnosticArray, TOPICS.diagnostics, self._diag, 10)

    def _cmd(self, robot, msg) -> None:
        with self.lock:
            self.commands[robot].append((time.monotonic(), msg))

    def _diag(self, msg) -> None:
        with self.lock:
            self.diagnostics += 1
            for s in msg.status:
                self.diag[s.hardware_id] = {"message": s.message, "level": s.level[0],
                                            **{kv.key: kv.value for kv in s.values}}

    def since(self, robot: str, t: float) -> list[JointTrajectory]:
        return [m for _, m in self.arrivals(robot, t)]

    def arrivals(self, robot: str, t: float) -> list[tuple[float, JointTrajectory]]:
        """(receive time, command) of ``robot`` received at or after monotonic time ``t``."""
        with self.lock:
            return [(r, m) for (r, m) in self.commands[robot] if r >= t]

    def wait(self, what, timeout: float = 20.0, poll: float = 0.1):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self.lock:
                value = what()
            if value:
                return value
            time.sleep(poll)
        with self.lock:  # what the server said last: the hold reason a failing test needs
            last = {key: {k: v for k, v in d.items() if not k.startswith("camera_")} for key, d in self.diag.items()}
        raise AssertionError(f"timed out after {timeout} s waiting for {what.__doc__ or 'a condition'}; "
                             f"last diagnostics {last}")


def set_enabled(node, robot: str, on: bool) -> SetBool.Response:
    client = node.create_client(SetBool, TOPICS.resolve(robot, TOPICS.services.policy_enable))
    assert client.wait_for_service(timeout_sec=20.0)
    future = client.call_async(SetBool.Request(data=on))
    end = time.monotonic() + 20.0
    while not future.done() and time.monotonic() < end:
        time.sleep(0.05)
    node.destroy_client(client)
    assert future.done(), "enable service did not answer"
    return future.result()


def driving(listener: Listener, robot: str):
    def check():
        """multi-point command windows (a chunk is executing)"""
        return bool(listener.commands[robot]) and len(listener.commands[robot][-1][1].points) > 1
    return check
