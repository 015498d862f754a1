"""`gen-theta rollout CHECKPOINT`: closed-loop evaluation on the simulated robot, over DDS.

Brings up the graph of gen_theta_ros/graph.py (sim_robot + policy_server) and, for every
mode (synchronous, naive asynchronous, harmonic) and added inference delay, runs the same
seeds of a task: disable the server, reset the sim (task, seed), set the server's mode and
delay, enable it, and watch until the sim reports success or the time runs out. It records
what the robot received (commands, joint states, the scene camera) and writes beside each
other in ``--out``: results.md and results.json (gen_theta_model.closed_loop), switches.png
and rollout.mp4 (gen_theta_model.rollout_media, the largest delay, the first seed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import rclpy
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.srv import SetParameters
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.subscription import MessageInfo
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory

from gen_theta_model.closed_loop import EpisodeFigures, aggregate, episode_figures, markdown_table, results_json
from gen_theta_model.embodiment import EmbodimentSpec, load_robot
from gen_theta_model.rollout_media import EpisodeTrace, overlay_video, switch_figure
from gen_theta_model.topics import load_topics
from gen_theta_ros.conversions import joint_state_to_arrays, time_to_seconds, to_rgb8, trajectory_from_msg
from gen_theta_ros.graph import BringupArgs, GraphProcesses, bringup_graph, default_params_file
from gen_theta_ros.qos import COMMAND_QOS, LATCHED_QOS, SENSOR_QOS
from gen_theta_ros.runtime import use_project_dds_profile

MODE_ORDER = ("sync", "naive_async", "harmonic")


@dataclass(frozen=True)
class RolloutConfig:
    checkpoint: str
    robot: str = "arm6"
    task: str = "conveyor_pack"  # the dynamic task: acting while perceiving decides success
    seeds: tuple[int, ...] = (0, 1, 2)
    modes: tuple[str, ...] = MODE_ORDER
    delays_ms: tuple[float, ...] = (0.0, 100.0, 300.0)
    max_seconds: float = 20.0  # wall-clock cap per episode (the task's own limit may end it sooner)
    command_rate_hz: float = 50.0
    out: str = "runs/rollout"
    params_file: str = ""  # policy_server parameters; "" the package's
    video: bool = True
    realtime_priority: int = 5  # SCHED_FIFO priority of the listener (below the server's command thread)


class RolloutNode(Node):
    """Watches one robot (commands, joint states, scene camera, task state, diagnostics) and
    drives the sim and the server through their services.
    """

    def __init__(self, robot: str, spec: EmbodimentSpec) -> None:
        super().__init__("rollout")
        t = load_topics()
        self.spec = spec
        self.lock = threading.Lock()
        self.recording = False
        self.keep_frames = False
        self.commands: list[tuple[float, object]] = []
        self.joints: list[tuple[float, np.ndarray, np.ndarray]] = []
        self.frames: list[tuple[float, np.ndarray]] = []
        self.task_state: dict = {}
        self.diag: tuple[float, dict[str, str]] = (0.0, {})
        self.camera = spec.cameras[0].name if spec.cameras else ""
        self.create_subscription(JointTrajectory, t.resolve(robot, t.command), self._on_command, COMMAND_QOS)
        self.create_subscription(JointState, t.resolve(robot, t.joint_states), self._on_joints, SENSOR_QOS)
        self.create_subscription(String, t.resolve(robot, t.task), self._on_task, LATCHED_QOS)
        self.create_subscription(DiagnosticArray, t.diagnostics, lambda m: self._on_diag(robot, m), 10)
        if self.camera:
            self.create_subscription(Image, t.camera_topic(robot, self.camera), self._on_image, SENSOR_QOS)
        self.reset_client = self.create_client(Trigger, t.resolve(robot, t.services.sim_reset))
        self.enable_client = self.create_client(SetBool, t.resolve(robot, t.services.policy_enable))
        self.sim_params = self.create_client(SetParameters, f"/{robot}/sim_robot/set_parameters")
        self.server_params = self.create_client(SetParameters, "/policy_server/set_parameters")

    def now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_command(self, msg: JointTrajectory, info: MessageInfo) -> None:
        if self.recording:  # the middleware's reception time: DDS delivery, not this executor's backlog
            with self.lock:
                self.commands.append((info["received_timestamp"] * 1e-9, trajectory_from_msg(msg)))

    def _on_joints(self, msg: JointState) -> None:
        if self.recording:
            names, q, qd, _ = joint_state_to_arrays(msg)
            with self.lock:
                self.joints.append((time_to_seconds(msg.header.stamp), self.spec.reorder_from(names, q),
                                    self.spec.reorder_from(names, qd)))

    def _on_image(self, msg: Image) -> None:
        if self.recording and self.keep_frames:
            frame = to_rgb8(msg)
            with self.lock:
                self.frames.append((time_to_seconds(msg.header.stamp), frame))

    def _on_task(self, msg: String) -> None:
        with self.lock:
            self.task_state = json.loads(msg.data)

    def _on_diag(self, robot: str, msg: DiagnosticArray) -> None:
        for s in msg.status:
            if s.hardware_id == robot:
                with self.lock:
                    self.diag = (self.now(), {kv.key: kv.value for kv in s.values})

    # -- services (called from the main thread while an executor spins this node) ------------
    def call(self, client, request, timeout: float = 30.0):
        if not client.wait_for_service(timeout_sec=timeout):
            raise RuntimeError(f"service {client.srv_name} is not available after {timeout} s")
        future = client.call_async(request)
        end = time.monotonic() + timeout
        while not future.done():
            if time.monotonic() > end:
                raise RuntimeError(f"service {client.srv_name} did not answer within {timeout} s")
            time.sleep(0.01)
        return future.result()

    def set_params(self, client, **values: object) -> None:
        req = SetParameters.Request(parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()])
        results = self.call(client, req).results
        failed = [r.reason for r in results if not r.successful]
        if failed:
            raise RuntimeError(f"{client.srv_name}: {failed[0]}")

    def enable(self, on: bool) -> None:
        res = self.call(self.enable_client, SetBool.Request(data=on))
        if not res.success:
            raise RuntimeError(f"policy_server enable({on}) refused: {res.message}")

    def wait_for(self, condition, timeout: float, what: str):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self.lock:
                value = condition()
            if value:
                return value
            time.sleep(0.02)
        raise RuntimeError(f"rollout: timed out after {timeout} s waiting for {what}")


def run_episode(node: RolloutNode, cfg: RolloutConfig, mode: str, delay: float, seed: int,
                keep_frames: bool) -> tuple[EpisodeFigures, EpisodeTrace]:
    node.enable(False)
    time.sleep(0.3)  # the last hold reaches the robot before the reset
    node.set_params(node.sim_params, task=cfg.task, seed=seed)
    before = node.task_state.get("episode", 0)
    res = node.call(node.reset_client, Trigger.Request())
    if not res.success:
        raise RuntimeError(f"sim reset failed: {res.message}")
    node.wait_for(lambda: node.task_state.get("episode", 0) > before, 10.0, "the new episode")
    node.set_params(node.server_params, mode=mode, added_delay_ms=float(delay))
    time.sleep(0.5)  # fresh joint states and frames of the new scene reach the server
    with node.lock:
        node.commands, node.joints, node.frames = [], [], []
        node.keep_frames = keep_frames
        node.recording = True
    start = node.now()
    node.enable(True)
    episode = node.task_state["episode"]
    end = time.monotonic() + cfg.max_seconds
    while time.monotonic() < end:
        with node.lock:
            state = node.task_state
        if state.get("episode") == episode and state.get("done"):
            break
        time.sleep(0.05)
    stopped = node.now()
    node.enable(False)
    node.recording = False
    diag = node.wait_for(lambda: node.diag[1] if node.diag[0] > stopped else None, 5.0, "diagnostics")
    with node.lock:
        state, commands = dict(node.task_state), list(node.commands)
        joints, frames = list(node.joints), list(node.frames)
    initial = joints[0][1] if joints else node.spec.home_positions
    success = bool(state.get("episode") == episode and state.get("success"))
    figures = episode_figures(
        node.spec, initial, commands, 1.0 / node.spec.control_rate_hz,
        mode=mode, added_delay_ms=float(delay), seed=seed, task=cfg.task, success=success,
        time_to_success=state.get("success_time") if success else None,
        latency_p50_ms=float(diag["latency_p50_ms"]), latency_p99_ms=float(diag["latency_p99_ms"]),
        server_missed_deadlines=float(diag["missed_deadlines"]),
    )
    trace = EpisodeTrace(
        mode, node.spec, initial, commands,
        np.array([j[0] for j in joints]), np.array([j[1] for j in joints]).reshape(-1, node.spec.dof),
        np.array([j[2] for j in joints]).reshape(-1, node.spec.dof), frames,
    )
    print(f"  {mode:<11} +{delay:>3.0f} ms seed {seed}: {'success' if success else 'failure'} after "
          f"{stopped - start:4.1f} s, idle {figures.idle_fraction:.0%}, {figures.switches} switches, "
          f"jump max/mean {figures.max_jump:.3f}/{figures.mean_jump:.3f}, missed {figures.server_missed_deadlines:.0f} "
          f"sent / {figures.missed_deadlines:.0f} received", flush=True)
    return figures, trace


def listen(executor: SingleThreadedExecutor, priority: int) -> None:
    """Spin the rollout node, with SCHED_FIFO ``priority`` (if permitted) so that receive times
    measure the command stream as a real-time robot driver would see it, not this process's load.
    """
    if priority > 0:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
        except PermissionError:
            print(f"rollout: no permission for SCHED_FIFO priority {priority}; receive times include "
                  "this process's scheduling delays", file=sys.stderr)
    executor.spin()


def rollout_params(cfg: RolloutConfig, out: Path) -> Path:
    """Write the server's parameter file for the rollout: the user's, disabled at start, fast diagnostics."""
    source = Path(cfg.params_file) if cfg.params_file else default_params_file()
    doc = yaml.safe_load(source.read_text())
    params = doc["policy_server"]["ros__parameters"]
    params.update(enabled=False, diagnostics_period_s=0.25, command_rate_hz=float(cfg.command_rate_hz))
    path = out / "policy_server.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def run_rollout(cfg: RolloutConfig) -> list[dict]:
    """Run every (mode, delay, seed) episode; write the results into ``cfg.out``; return the rows."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    spec = load_robot(cfg.robot)
    args = BringupArgs((cfg.robot,), cfg.checkpoint, True, str(rollout_params(cfg, out)))
    use_project_dds_profile()
    episodes, traces = [], {}
    with GraphProcesses(bringup_graph(args), log_dir=out / "logs") as graph:
        rclpy.init()
        node = RolloutNode(cfg.robot, spec)
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        spin = threading.Thread(target=listen, args=(executor, cfg.realtime_priority), daemon=True)
        spin.start()
        try:
            node.wait_for(lambda: bool(node.task_state), 120.0, "the sim's task state")
            node.call(node.enable_client, SetBool.Request(data=False), timeout=180.0)  # server up
            time.sleep(2.0)  # let the freshly started processes settle before the first episode
            for delay in cfg.delays_ms:
                for mode in cfg.modes:
                    for seed in cfg.seeds:
                        if graph.exited():
                            raise RuntimeError(f"a node ended during the rollout: {graph.exited()}; logs in {out}/logs")
                        keep = cfg.video and delay == max(cfg.delays_ms) and seed == cfg.seeds[0]
                        figures, trace = run_episode(node, cfg, mode, delay, seed, keep)
                        episodes.append(figures)
                        if keep:
                            traces[mode] = trace
        finally:
            executor.shutdown()
            node.destroy_node()
            rclpy.try_shutdown()
    rows = aggregate(episodes)
    (out / "results.md").write_text(markdown_table(rows))
    (out / "results.json").write_text(results_json(rows, episodes, asdict(cfg)))
    ordered = [traces[m] for m in cfg.modes if m in traces]
    if ordered:
        switch_figure(ordered, out / "switches.png")
        overlay_video(ordered, out / "rollout.mp4")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gen-theta rollout", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="checkpoint or training run directory")
    parser.add_argument("--robot", default="arm6", help="robot (config/robots/<robot>.yaml)")
    parser.add_argument("--task", default="conveyor_pack", help="sim task (default: the dynamic conveyor task)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="episode seeds, the same per mode")
    parser.add_argument("--modes", nargs="+", default=list(MODE_ORDER), choices=MODE_ORDER)
    parser.add_argument("--delays-ms", type=float, nargs="+", default=[0.0, 100.0, 300.0],
                        help="added inference delays standing in for larger models")
    parser.add_argument("--max-seconds", type=float, default=20.0, help="wall-clock cap per episode")
    parser.add_argument("--command-rate-hz", type=float, default=50.0)
    parser.add_argument("--params-file", default="", help="policy_server parameters (default: the package's)")
    parser.add_argument("--out", default="runs/rollout", help="directory for results.md/.json, PNG and mp4")
    parser.add_argument("--no-video", action="store_true", help="skip the PNG and the mp4")
    a = parser.parse_args(sys.argv[1:] if argv is None else argv)
    cfg = RolloutConfig(
        checkpoint=a.checkpoint, robot=a.robot, task=a.task, seeds=tuple(a.seeds), modes=tuple(a.modes),
        delays_ms=tuple(a.delays_ms), max_seconds=a.max_seconds, command_rate_hz=a.command_rate_hz,
        out=a.out, params_file=a.params_file, video=not a.no_video,
    )
    rows = run_rollout(cfg)
    print(markdown_table(rows))
    print(f"results, switches.png and rollout.mp4 in {cfg.out}")
    return 0
