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
and written with its PNG and mp4 into ``--out``/rollout. Last, the shipped checkpoint
(models/gen_theta_sim) on the same task at 300 ms, each mode on ``--shipped-seeds`` seeds;
the final table labels each row with its policy. ``--expert-only`` stops after the first step.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import rclpy

from gen_theta_model.embodiment import load_robot
from gen_theta_model.sim.tasks import TASKS
from gen_theta_ros import demo_loop
from gen_theta_ros.collect import END_MARGIN_S, STARTUP_TIMEOUT_S
from gen_theta_ros.episode_client import EpisodeClient, print_table, spinning
from gen_theta_ros.processes import Processes
from gen_theta_ros.runtime import use_project_dds_profile


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
    rollout_rows: list[dict] = field(default_factory=list)
    shipped_seeds: int = 10


def step_sim_episodes(ctx: DemoContext) -> None:
    """Run the expert on each task through the ROS topics; add one result row per episode."""
    name = load_robot(ctx.robot).name
    procs = Processes(ctx.log_dir)
    procs.start("sim", ["sim", "--ros-args", "-r", f"__ns:=/{name}", "-p", f"robot:={ctx.robot}",
                        "-p", f"task:={ctx.tasks[0]}"])
    procs.start("expert", ["expert", "--ros-args", "-p", f"robot:={ctx.robot}"])
    rclpy.init()
    try:
        with spinning(EpisodeClient(name, name="demo")) as client:
            client.wait_ready(STARTUP_TIMEOUT_S, procs.check_alive)
            for task in ctx.tasks:
                for k in range(ctx.episodes):
                    state = client.reset(task, ctx.seed + k)
                    final = client.wait_done(state.episode, state.time_limit + END_MARGIN_S, procs.check_alive)
                    elapsed = final.success_time if final.success else final.elapsed
                    ctx.rows.append({"task": task, "category": final.category, "robot": final.robot,
                                     "seed": final.seed, "success": "yes" if final.success else "no",
                                     "time [s]": f"{elapsed:.2f}"})
                    print(f"  {task} seed {final.seed}: {'success' if final.success else 'failure'} in {elapsed:.2f} s")
    finally:
        rclpy.try_shutdown()
        procs.stop()
    print_table(ctx.rows)


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
    loop.add_argument("--shipped-seeds", type=int, default=10,
                      help="episodes per mode of the shipped checkpoint (models/gen_theta_sim) at 300 ms")
    args = parser.parse_args(argv)
    if args.episodes < 1:
        parser.error("--episodes must be >= 1")
    use_project_dds_profile()
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="gen_theta_demo_"))
    log_dir.mkdir(parents=True, exist_ok=True)
    ctx = DemoContext(args.robot, args.task or list(TASKS), args.episodes, args.seed, log_dir, out=args.out,
                      learn_task=args.learn_task, collect_episodes=args.collect_episodes,
                      train_steps=args.train_steps, rollout_seeds=args.rollout_seeds,
                      rollout_seconds=args.rollout_seconds, shipped_seeds=args.shipped_seeds)
    print(
        f"gen_theta demo: robot {args.robot}, ROS_DOMAIN_ID={os.environ.get('ROS_DOMAIN_ID', '0')}, logs in {log_dir}"
    )
    start = time.monotonic()
    for name, step in STEPS[:1] if args.expert_only else STEPS:
        print(f"== {name}", flush=True)
        step(ctx)
    print(f"demo finished in {time.monotonic() - start:.1f} s")
    return 0 if all(r["success"] == "yes" for r in ctx.rows) else 1
