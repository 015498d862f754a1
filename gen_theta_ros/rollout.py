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
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import rclpy
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.srv import SetParameters
from rclpy.subscription import MessageInfo
from sensor_msgs.msg import Image, JointState
from std_srvs.srv import SetBool
from trajectory_msgs.msg import JointTrajectory

from gen_theta_model.cli_args import ExtendAction
from gen_theta_model.closed_loop import (
    EpisodeFigures,
    aggregate,
    episode_figures,
    markdown_table,
    parse_seeds,
    results_json,
)
from gen_theta_model.embodiment import EmbodimentSpec, load_robot
from gen_theta_model.lerobot_serving import LeRobotChunkPolicy, is_lerobot_checkpoint
from gen_theta_model.rollout_media import EpisodeTrace, overlay_video, switch_figure
from gen_theta_model.topics import load_topics
from gen_theta_ros.conversions import joint_state_to_arrays, time_to_seconds, to_rgb8, trajectory_from_msg
from gen_theta_ros.episode_client import EpisodeClient, spinning
from gen_theta_ros.graph import BringupArgs, GraphProcesses, bringup_graph, default_params_file
from gen_theta_ros.qos import COMMAND_QOS, SENSOR_QOS
from gen_theta_ros.runtime import use_project_dds_profile

MODE_ORDER = ("sync", "naive_async", "harmonic")


@dataclass(frozen=True)
class RolloutConfig:
    checkpoint: str
    robots: tuple[str, ...] = ("arm6",)
    tasks: tuple[str, ...] = ("conveyor_pack",)  # the dynamic task: acting while perceiving decides success
    seeds: tuple[int, ...] = (0, 1, 2)
    modes: tuple[str, ...] = MODE_ORDER
    delays_ms: tuple[float, ...] = (0.0, 100.0, 300.0)
    max_seconds: float = 20.0  # cap per episode: wall clock over DDS, simulated in-process
    command_rate_hz: float = 50.0
    out: str = "runs/rollout"
    params_file: str = ""  # policy_server parameters; "" the package's
    server: tuple[tuple[str, object], ...] = ()  # policy_server parameter overrides (name, value)
    video: bool = True
    realtime_priority: int = 5  # SCHED_FIFO priority of the listener (below the server's command thread)
    in_process: bool = False  # SimRobot + HarmonicServer in this process on simulated time (no DDS)
    expert: bool = False  # in-process: serve the scripted expert instead of the checkpoint
    inference_ms: float | None = None  # in-process: fixed model latency (reproducible); None: measured
    lerobot_python: str = ""  # in-process: the LeRobot venv's Python, for a LeRobot checkpoint (the baseline)
    hand_over: str = ""  # in-process: the scripted expert drives until this phase, the checkpoint after it
    settle_s: float = 0.5  # in-process: simulated seconds the sensors flow before the server drives
    jobs: int = 1  # in-process: worker processes the episodes are spread over (one core each)


class RolloutNode(EpisodeClient):
    """The episode client of one robot's sim, plus what rollout watches (commands, joint states,
    scene camera, diagnostics) and the policy server's services.
    """

    def __init__(self, robot: str, spec: EmbodimentSpec) -> None:
        super().__init__(robot, name="rollout")
        t = load_topics()
        self.spec = spec
        self.lock = threading.Lock()
        self.recording = False
        self.keep_frames = False
        self.commands: list[tuple[float, object]] = []
        self.joints: list[tuple[float, np.ndarray, np.ndarray]] = []
        self.frames: list[tuple[float, np.ndarray]] = []
        self.diag: tuple[float, dict[str, str]] = (0.0, {})
        self.camera = spec.cameras[0].name if spec.cameras else ""
        self.create_subscription(JointTrajectory, t.resolve(robot, t.command), self._on_command, COMMAND_QOS)
        self.create_subscription(JointState, t.resolve(robot, t.joint_states), self._on_joints, SENSOR_QOS)
        self.create_subscription(DiagnosticArray, t.diagnostics, lambda m: self._on_diag(robot, m), 10)
        if self.camera:
            self.create_subscription(Image, t.camera_topic(robot, self.camera), self._on_image, SENSOR_QOS)
        self.enable_client = self.create_client(SetBool, t.resolve(robot, t.services.policy_enable))
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

    def _on_diag(self, robot: str, msg: DiagnosticArray) -> None:
        for s in msg.status:
            if s.hardware_id == robot:
                with self.lock:
                    self.diag = (self.now(), {kv.key: kv.value for kv in s.values})
                self.notify()

    # -- the policy server (called from the main thread while an executor spins this node) ---
    def enable(self, on: bool) -> None:
        res = self.call(self.enable_client, SetBool.Request(data=on))
        if not res.success:
            raise RuntimeError(f"policy_server enable({on}) refused: {res.message}")


def run_episode(node: RolloutNode, cfg: RolloutConfig, task: str, mode: str, delay: float, seed: int,
                keep_frames: bool) -> tuple[EpisodeFigures, EpisodeTrace]:
    node.enable(False)
    time.sleep(0.3)  # the last hold reaches the robot before the reset
    episode = node.reset(task, seed).episode
    node.set_params(node.server_params, mode=mode, added_delay_ms=float(delay))
    time.sleep(0.5)  # fresh joint states and frames of the new scene reach the server
    with node.lock:
        node.commands, node.joints, node.frames = [], [], []
        node.keep_frames = keep_frames
        node.recording = True
    start = node.now()
    node.enable(True)
    try:
        node.wait_done(episode, cfg.max_seconds)
    except TimeoutError:
        pass  # the wall-clock cap of a rollout episode
    stopped = node.now()
    node.enable(False)
    node.recording = False
    diag = node.wait_for(lambda: node.diag[1] if node.diag[0] > stopped else None, 5.0, "diagnostics")
    state = node.state
    with node.lock:
        commands, joints, frames = list(node.commands), list(node.joints), list(node.frames)
    initial = joints[0][1] if joints else node.spec.home_positions
    success = state is not None and state.episode == episode and state.success
    figures = episode_figures(
        node.spec, initial, commands, 1.0 / node.spec.control_rate_hz,
        mode=mode, added_delay_ms=float(delay), seed=seed, task=task, success=success,
        time_to_success=state.success_time if success else None,
        latency_p50_ms=float(diag["latency_p50_ms"]), latency_p99_ms=float(diag["latency_p99_ms"]),
        server_missed_deadlines=float(diag["missed_deadlines"]), robot=node.spec.name,
    )
    trace = EpisodeTrace(
        mode, node.spec, initial, commands,
        np.array([j[0] for j in joints]), np.array([j[1] for j in joints]).reshape(-1, node.spec.dof),
        np.array([j[2] for j in joints]).reshape(-1, node.spec.dof), frames,
    )
    report(figures, stopped - start)
    return figures, trace


def report(figures: EpisodeFigures, seconds: float) -> None:
    """Print one episode's line as it ends."""
    f = figures
    print(f"  {f.robot} {f.task} {f.mode:<11} +{f.added_delay_ms:>3.0f} ms seed {f.seed}: "
          f"{'success' if f.success else 'failure'}{f' ({f.progress})' if f.progress and not f.success else ''} "
          f"after {seconds:4.1f} s, idle {f.idle_fraction:.0%}, "
          f"{f.switches} switches, jump max/mean {f.max_jump:.3f}/{f.mean_jump:.3f}, missed "
          f"{f.server_missed_deadlines:.0f} sent / {f.missed_deadlines:.0f} received", flush=True)


def server_parameters(cfg: RolloutConfig) -> dict:
    """Read the policy_server parameter file of the rollout (the user's or the package's) as a document,
    its ``ros__parameters`` with ``cfg.server`` overrides and the rollout's command rate.
    """
    source = Path(cfg.params_file) if cfg.params_file else default_params_file()
    doc = yaml.safe_load(source.read_text())
    doc["policy_server"]["ros__parameters"].update(dict(cfg.server), command_rate_hz=float(cfg.command_rate_hz))
    return doc


def rollout_params(cfg: RolloutConfig, out: Path) -> Path:
    """Write the server's parameter file for the rollout: ``server_parameters``, disabled at start,
    fast diagnostics.
    """
    doc = server_parameters(cfg)
    doc["policy_server"]["ros__parameters"].update(enabled=False, diagnostics_period_s=0.25)
    path = out / "policy_server.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def episode_plan(cfg: RolloutConfig, robot: str) -> list[tuple[str, float, str, int, bool]]:
    """(task, delay, mode, seed, keep frames) of every episode of ``robot``, in the order they run.
    Frames are kept for the video: the first robot and task, the largest delay, the first seed.
    """
    plan = []
    for task in cfg.tasks:
        for delay in cfg.delays_ms:
            for mode in cfg.modes:
                for seed in cfg.seeds:
                    keep = (cfg.video and robot == cfg.robots[0] and task == cfg.tasks[0]
                            and delay == max(cfg.delays_ms) and seed == cfg.seeds[0])
                    plan.append((task, delay, mode, seed, keep))
    return plan


def run_over_dds(cfg: RolloutConfig, out: Path, robot: str) -> list[tuple[EpisodeFigures, EpisodeTrace, bool]]:
    """Every episode of ``robot``: its sim_robot and a policy_server over DDS, brought up once."""
    spec = load_robot(robot)
    args = BringupArgs((robot,), cfg.checkpoint, True, str(rollout_params(cfg, out)))
    use_project_dds_profile()
    results = []
    with GraphProcesses(bringup_graph(args), log_dir=out / "logs" / robot) as graph:
        rclpy.init()
        try:
            # SCHED_FIFO for the listener, so that receive times measure the command stream as a
            # real-time robot driver would see it, not this process's load.
            with spinning(RolloutNode(robot, spec), cfg.realtime_priority) as node:
                node.wait_for(lambda: node.state, 120.0, "the sim's task state")
                node.call(node.enable_client, SetBool.Request(data=False), timeout=180.0)  # server up
                time.sleep(2.0)  # let the freshly started processes settle before the first episode
                for task, delay, mode, seed, keep in episode_plan(cfg, robot):
                    if graph.exited():
                        raise RuntimeError(f"a node ended during the rollout: {graph.exited()}; logs in {out}/logs")
                    results.append((*run_episode(node, cfg, task, mode, delay, seed, keep), keep))
        finally:
            rclpy.try_shutdown()
    return results


def run_in_process(cfg: RolloutConfig, robot: str) -> list[tuple[EpisodeFigures, EpisodeTrace, bool]]:
    """Every episode of ``robot`` in-process on simulated time (gen_theta_model.sim.policy_rollout),
    in this process or spread over ``cfg.jobs`` worker processes, results in the plan's order.

    Each episode runs on its own clock from 0 and on fresh physics (``SimWorld.reset_physics``), so with
    a fixed ``inference_ms`` and a deterministic ``decode`` (top, mean) an episode's figures do not
    depend on which process ran it, or after what.
    """
    plan = episode_plan(cfg, robot)
    jobs = min(cfg.jobs, len(plan))
    if jobs <= 1:
        return run_episodes(cfg, robot, plan)
    # Round robin: neighbouring episodes (one cell's seeds) take about as long, so the shares balance.
    shares = [plan[j::jobs] for j in range(jobs)]
    # spawn: a fresh interpreter per worker (fork would copy this process's torch threads and pybullet).
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        done = list(pool.map(run_episodes, [cfg] * jobs, [robot] * jobs, shares))
    return [done[i % jobs][i // jobs] for i in range(len(plan))]  # plan[i] is share i % jobs, at i // jobs


def run_episodes(cfg: RolloutConfig, robot: str, plan: list[tuple[str, float, str, int, bool]]
                 ) -> list[tuple[EpisodeFigures, EpisodeTrace, bool]]:
    """Run the episodes ``plan`` (of ``episode_plan``) of ``robot`` in this process, one closed loop for all."""
    import torch

    from gen_theta_model.policy_server_config import server_config
    from gen_theta_model.sim.policy_rollout import SimClosedLoop, SimLoopConfig, served_policy

    params = server_parameters(cfg)["policy_server"]["ros__parameters"]
    threads = int(params.get("torch_threads", 1))
    torch.set_num_threads(threads)  # as the server's inference child
    if not cfg.expert and is_lerobot_checkpoint(cfg.checkpoint):
        spec, longest = load_robot(robot), 0
        policy = LeRobotChunkPolicy(cfg.checkpoint, spec, cfg.lerobot_python, threads=threads)
    else:
        policy, spec, longest = served_policy(None if cfg.expert else cfg.checkpoint, robot)
    loop = SimClosedLoop(policy, spec, server_config(params, longest),
                         SimLoopConfig(inference_ms=cfg.inference_ms, max_seconds=cfg.max_seconds,
                                       hand_over_at=cfg.hand_over, settle_s=cfg.settle_s))
    results = []
    try:
        for task, delay, mode, seed, keep in plan:
            start = time.monotonic()
            figures, trace = loop.run(task, seed, mode, delay, keep_frames=keep)
            report(figures, time.monotonic() - start)
            results.append((figures, trace, keep))
    finally:
        loop.close()
        if isinstance(policy, LeRobotChunkPolicy):
            policy.close()
    return results


def run_rollout(cfg: RolloutConfig) -> list[dict]:
    """Run every (robot, task, delay, mode, seed) episode; write the results into ``cfg.out``; return the rows."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for robot in cfg.robots:
        results += run_in_process(cfg, robot) if cfg.in_process else run_over_dds(cfg, out, robot)
    episodes = [figures for figures, _, _ in results]
    rows = aggregate(episodes)
    (out / "results.md").write_text(markdown_table(rows))
    (out / "results.json").write_text(results_json(rows, episodes, asdict(cfg)))
    traces = {trace.mode: trace for _, trace, keep in results if keep}
    ordered = [traces[m] for m in cfg.modes if m in traces]
    if ordered:
        switch_figure(ordered, out / "switches.png")
        overlay_video(ordered, out / "rollout.mp4")
    return rows


def parse_overrides(items: Sequence[str]) -> tuple[tuple[str, object], ...]:
    """``['min_prefix_steps=10', 'mode=sync']`` -> ((name, YAML value), ...)."""
    pairs = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--server: expected NAME=VALUE, got '{item}'")
        pairs.append((name, yaml.safe_load(value)))
    return tuple(pairs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gen-theta rollout", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", nargs="?", default="", help="checkpoint or training run directory")
    parser.add_argument("--robot", action="append", help="robot (config/robots/<robot>.yaml; repeatable; default arm6)")
    parser.add_argument("--task", action="append",
                        help="sim task (repeatable; default: the dynamic conveyor_pack task)")
    parser.add_argument("--seeds", nargs="+", action=ExtendAction, default=["0", "1", "2"],
                        help="episode seeds, the same per cell: integers and inclusive ranges A..B (1000..1019)")
    parser.add_argument("--modes", nargs="+", action=ExtendAction, default=list(MODE_ORDER), choices=MODE_ORDER)
    parser.add_argument("--delays-ms", type=float, nargs="+", action=ExtendAction, default=[0.0, 100.0, 300.0],
                        help="added inference delays standing in for larger models")
    parser.add_argument("--max-seconds", type=float, default=20.0,
                        help="cap per episode (wall clock over DDS, simulated in-process)")
    parser.add_argument("--command-rate-hz", type=float, default=50.0)
    parser.add_argument("--params-file", default="", help="policy_server parameters (default: the package's)")
    parser.add_argument("--server", nargs="+", action=ExtendAction, default=[], metavar="NAME=VALUE",
                        help="policy_server parameter overrides, e.g. min_prefix_steps=10 execute_steps=8")
    parser.add_argument("--in-process", action="store_true",
                        help="sim and server engine in this process on simulated time: no DDS, faster than real "
                             "time, reproducible with --inference-ms")
    parser.add_argument("--inference-ms", type=float, default=None,
                        help="with --in-process: fixed model latency instead of the measured compute time")
    parser.add_argument("--expert", action="store_true",
                        help="with --in-process: serve the scripted expert (privileged state) instead of a "
                             "checkpoint: what serving leaves of a perfect imitator")
    parser.add_argument("--lerobot-python", default=os.environ.get("LEROBOT_PYTHON", ""),
                        help="with --in-process and a LeRobot checkpoint (pretrained_model directory): the "
                             "LeRobot venv's Python that runs it (default $LEROBOT_PYTHON)")
    parser.add_argument("--hand-over", default="", metavar="PHASE",
                        help="with --in-process and a checkpoint: the scripted expert drives each episode until it "
                             "enters PHASE (descend, close, lift, transfer, ...), the checkpoint from then on")
    parser.add_argument("--settle-s", type=float, default=None,
                        help="with --in-process: simulated seconds the scene runs, sensors flowing, before the "
                             "server drives (default 0.5, as over DDS)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="with --in-process: run the episodes in this many worker processes, one core "
                             "each (the same figures as one process with --inference-ms)")
    parser.add_argument("--out", default="runs/rollout", help="directory for results.md/.json, PNG and mp4")
    parser.add_argument("--no-video", action="store_true", help="skip the PNG and the mp4")
    a = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if a.expert != (not a.checkpoint):
        parser.error("give a checkpoint, or --expert (with --in-process) instead of one")
    if a.expert and not a.in_process:
        parser.error("--expert needs --in-process (the expert reads the simulator's state)")
    if a.hand_over and (a.expert or not a.in_process):
        parser.error("--hand-over hands the scripted expert's episode to a checkpoint: --in-process, not --expert")
    if a.hand_over:
        from gen_theta_model.sim.experts import PHASES

        if a.hand_over not in PHASES[:-1]:
            parser.error(f"--hand-over: a phase of the scripted expert, one of {', '.join(PHASES[:-1])}")
    if a.settle_s is not None and (not a.in_process or a.settle_s < 0.0):
        parser.error("--settle-s needs --in-process and a time >= 0 s")
    if a.jobs < 1 or (a.jobs > 1 and not a.in_process):
        parser.error("--jobs needs --in-process and a count >= 1 (over DDS one graph runs the episodes)")
    if a.inference_ms is not None and not a.in_process:
        parser.error("--inference-ms needs --in-process (over DDS the server measures its latency)")
    if a.checkpoint and is_lerobot_checkpoint(a.checkpoint):
        if not a.in_process:
            parser.error("a LeRobot checkpoint is served --in-process only")
        if "harmonic" in a.modes:
            parser.error("a LeRobot policy takes no committed prefix: --modes sync naive_async")
        if not a.lerobot_python:
            parser.error("a LeRobot checkpoint needs --lerobot-python (the LeRobot venv's Python; docs/lerobot.md)")
    try:
        seeds, server = parse_seeds(a.seeds), parse_overrides(a.server)
    except ValueError as err:
        parser.error(str(err))
    cfg = RolloutConfig(
        checkpoint=a.checkpoint, robots=tuple(a.robot or ["arm6"]), tasks=tuple(a.task or ["conveyor_pack"]),
        seeds=seeds, modes=tuple(a.modes), delays_ms=tuple(a.delays_ms), max_seconds=a.max_seconds,
        command_rate_hz=a.command_rate_hz, out=a.out, params_file=a.params_file, server=server,
        video=not a.no_video, in_process=a.in_process, inference_ms=a.inference_ms, expert=a.expert,
        lerobot_python=a.lerobot_python, hand_over=a.hand_over,
        settle_s=RolloutConfig.settle_s if a.settle_s is None else a.settle_s, jobs=a.jobs,
    )
    started = time.monotonic()
    rows = run_rollout(cfg)
    print(markdown_table(rows))
    print(f"{len(rows) * len(cfg.seeds)} episodes in {time.monotonic() - started:.0f} s; "
          f"results, switches.png and rollout.mp4 in {cfg.out}")
    return 0
