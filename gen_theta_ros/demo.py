"""`gen-theta demo`: the embedded demo, run as a list of steps.

Step "sim episodes": start the simulated robot (``gen-theta sim``) and a scripted expert
(``gen-theta expert``) as two processes talking over DDS, then for each task and episode
set the sim's ``task``/``seed`` parameters, call its ``sim/reset`` service, wait for the
episode to end on ``sim/task`` and print a table: task, category, robot, success, time.
The expert drives the robot only through the ROS topics.

Then the learning loop (gen_theta_ros/demo_loop.py): collect expert episodes of one task
through the recorder, ingest them, train the tiny harmonic policy, bring up the policy
server on the sim robot and roll out synchronous, naive asynchronous and harmonic
execution at 0, 100 and 300 ms of added inference delay; the results table is printed
and written with its PNG and mp4 into ``--out``/rollout. ``--expert-only`` stops after
the first step.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import rclpy
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.parameter_client import AsyncParameterClient
from std_msgs.msg import String
from std_srvs.srv import Trigger

from gen_theta_model.embodiment import load_robot
from gen_theta_model.sim.tasks import TASKS
from gen_theta_model.topics import load_topics
from gen_theta_ros import demo_loop
from gen_theta_ros.qos import LATCHED_QOS
from gen_theta_ros.runtime import use_project_dds_profile

STARTUP_TIMEOUT_S = 60.0


@dataclass
class DemoContext:
    """What the steps share: the options, a log folder and each step's result rows."""

    robot: str
    tasks: list[str]
    episodes: int
    seed: int
    log_dir: Path
    rows: list[dict] = field(default_factory=list)
    # the learning loop (demo_loop.py)
    out: Path = Path("runs/demo")
    learn_task: str = "conveyor_pack"
    collect_episodes: int = 12
    train_steps: int = 300
    rollout_seeds: int = 1
    rollout_seconds: float = 12.0


class Processes:
    """Child processes started by the demo, each logging to a file; stopped with SIGINT."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: list = []

    def start(self, name: str, args: list[str]) -> None:
        log = open(self.log_dir / f"{name}.log", "w")
        self.logs.append(log)
        cmd = [sys.executable, "-m", "gen_theta_ros.cli", *args]
        self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.log_dir / f"{name}.log").read_text()[-2000:]
                raise RuntimeError(f"'{name}' exited with status {proc.returncode}; its log ends:\n{tail}")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in self.logs:
            log.close()


class EpisodeDriver(Node):
    """The demo's own node: sets the sim's parameters, resets episodes, watches sim/task."""

    def __init__(self, robot: str) -> None:
        super().__init__("demo")
        topics = load_topics()
        self.reset_client = self.create_client(Trigger, topics.resolve(robot, topics.services.sim_reset))
        self.params = AsyncParameterClient(self, "sim_robot")
        self.command_topic = topics.resolve(robot, topics.command)
        self.state: dict | None = None
        self.create_subscription(String, topics.resolve(robot, topics.task), self._on_task, LATCHED_QOS)

    def _on_task(self, msg: String) -> None:
        self.state = json.loads(msg.data)

    def wait_ready(self, procs: Processes) -> None:
        """Block until the sim's services and the expert's command publisher are up."""
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            procs.check_alive()
            if (
                self.reset_client.service_is_ready()
                and self.params.services_are_ready()
                and self.count_publishers(self.command_topic) > 0
            ):
                return
            rclpy.spin_once(self, timeout_sec=0.2)
        raise RuntimeError(f"the sim and the expert did not come up within {STARTUP_TIMEOUT_S:.0f} s")

    def run_episode(self, task: str, seed: int, procs: Processes) -> dict:
        """Reset the sim to ``task``/``seed`` and wait for the episode's end; returns the final task state."""
        future = self.params.set_parameters([Parameter("task", value=task), Parameter("seed", value=seed)])
        rclpy.spin_until_future_complete(self, future, timeout_sec=10.0)
        result = future.result()
        if result is None or not all(r.successful for r in result.results):
            raise RuntimeError(f"cannot set the sim's task/seed parameters to {task}/{seed}: {result}")
        future = self.reset_client.call_async(Trigger.Request())
        rclpy.spin_until_future_complete(self, future, timeout_sec=10.0)
        response = future.result()
        if response is None or not response.success:
            raise RuntimeError(f"sim/reset failed: {response.message if response else 'no answer in 10 s'}")
        episode = None
        deadline = time.monotonic() + TASKS[task].time_limit + 15.0
        while time.monotonic() < deadline:
            procs.check_alive()
            rclpy.spin_once(self, timeout_sec=0.1)
            state = self.state
            if state is None or state["task"] != task or state["seed"] != seed:
                continue
            if episode is None:
                episode = state["episode"]
            if state["episode"] == episode and state["done"]:
                return state
        raise RuntimeError(f"episode {task}/{seed} did not end within its time limit")


def step_sim_episodes(ctx: DemoContext) -> None:
    """Run the expert on each task through the ROS topics; add one result row per episode."""
    procs = Processes(ctx.log_dir)
    first = ctx.tasks[0]
    procs.start("sim", ["sim", "--ros-args", "-p", f"robot:={ctx.robot}", "-p", f"task:={first}"])
    procs.start("expert", ["expert", "--ros-args", "-p", f"robot:={ctx.robot}"])
    rclpy.init()
    driver = EpisodeDriver(load_robot(ctx.robot).name)
    try:
        driver.wait_ready(procs)
        for task in ctx.tasks:
            for k in range(ctx.episodes):
                state = driver.run_episode(task, ctx.seed + k, procs)
                elapsed = state["success_time"] if state["success"] else state["elapsed"]
                ctx.rows.append(
                    {
                        "task": task,
                        "category": state["category"],
                        "robot": state["robot"],
                        "seed": state["seed"],
                        "success": "yes" if state["success"] else "no",
                        "time [s]": f"{elapsed:.2f}",
                    }
                )
                print(
                    f"  {task} seed {state['seed']}: {'success' if state['success'] else 'failure'} in {elapsed:.2f} s"
                )
    finally:
        driver.destroy_node()
        rclpy.try_shutdown()
        procs.stop()
    print_table(ctx.rows)


def print_table(rows: list[dict]) -> None:
    """Print rows (dicts with the same keys) as a plain aligned text table."""
    if not rows:
        return
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in keys}
    print("  ".join(k.ljust(widths[k]) for k in keys))
    print("  ".join("-" * widths[k] for k in keys))
    for r in rows:
        print("  ".join(str(r[k]).ljust(widths[k]) for k in keys))


STEPS: list[tuple[str, Callable[[DemoContext], None]]] = [
    ("sim episodes: scripted expert over ROS topics", step_sim_episodes),
    *demo_loop.STEPS,
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gen-theta demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--robot", default="arm6", help="shipped robot name or robot YAML (default: arm6)")
    parser.add_argument("--task", action="append", choices=list(TASKS), help="task to run (repeatable; default: all)")
    parser.add_argument("--episodes", type=int, default=1, help="episodes per task (default: 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first episode of each task")
    parser.add_argument(
        "--log-dir", type=Path, default=None, help="where the child processes log (default: a temp dir)"
    )
    loop = parser.add_argument_group("learning loop (collect, ingest, train, serve and roll out)")
    loop.add_argument("--expert-only", action="store_true", help="stop after the scripted-expert episodes")
    loop.add_argument("--out", type=Path, default=Path("runs/demo"), help="episodes, dataset, run and rollout go here")
    loop.add_argument("--learn-task", default="conveyor_pack", choices=list(TASKS), help="task to learn and roll out")
    loop.add_argument("--collect-episodes", type=int, default=12, help="expert episodes recorded for training")
    loop.add_argument("--train-steps", type=int, default=300, help="optimizer steps of the tiny policy")
    loop.add_argument("--rollout-seeds", type=int, default=1, help="rollout episodes per mode and delay")
    loop.add_argument("--rollout-seconds", type=float, default=12.0, help="wall-clock cap per rollout episode")
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error("--episodes must be >= 1")
    use_project_dds_profile()
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="gen_theta_demo_"))
    log_dir.mkdir(parents=True, exist_ok=True)
    ctx = DemoContext(args.robot, args.task or list(TASKS), args.episodes, args.seed, log_dir, out=args.out,
                      learn_task=args.learn_task, collect_episodes=args.collect_episodes,
                      train_steps=args.train_steps, rollout_seeds=args.rollout_seeds,
                      rollout_seconds=args.rollout_seconds)
    print(
        f"gen_theta demo: robot {args.robot}, ROS_DOMAIN_ID={os.environ.get('ROS_DOMAIN_ID', '0')}, logs in {log_dir}"
    )
    start = time.monotonic()
    for name, step in STEPS[:1] if args.expert_only else STEPS:
        print(f"== {name}", flush=True)
        step(ctx)
    print(f"demo finished in {time.monotonic() - start:.1f} s")
    return 0 if all(r["success"] == "yes" for r in ctx.rows) else 1
