"""`gen-theta collect` / `ros2 run gen_theta collect`: record expert episodes in the sim.

For each robot it starts three processes talking over DDS, as on a real robot with
a teleoperator: the sim robot (``gen-theta sim``), the scripted expert
(``gen-theta expert``) and the recorder (``gen-theta record``). For each task and
episode it resets the sim to (task, seed), starts a recording, waits for the episode
to end on sim/task, marks success and stops the recording: one rosbag2 MCAP episode
per run under ``--out``. Then: ``gen-theta ingest OUT --out DATASET``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import rclpy
from tqdm import tqdm

from gen_theta_model.embodiment import load_robot
from gen_theta_model.sim.disturbance import DisturbanceConfig
from gen_theta_model.sim.tasks import TASKS, preroll_range
from gen_theta_ros.episode_client import EpisodeClient, print_table, spinning
from gen_theta_ros.processes import Processes
from gen_theta_ros.runtime import use_project_dds_profile

SHIPPED_ROBOTS = ("arm6", "arm7", "humanoid16")


STARTUP_TIMEOUT_S = 60.0
END_MARGIN_S = 15.0  # beyond a task's own time limit, for the sim's last task-state message
DISCOVERY_S = 2.0  # how long to look for another sim or robot on this robot's topics before starting one


class RobotInUseError(RuntimeError):
    """Another sim or robot already publishes the topics of the robot to collect on."""


def check_free(client: EpisodeClient, busy: str) -> None:
    """Raise RobotInUseError if ``busy`` (``EpisodeClient.in_use``) names another user of the robot's topics."""
    if busy:
        raise RobotInUseError(f"{busy} in ROS_DOMAIN_ID={os.environ.get('ROS_DOMAIN_ID', '0')}: another sim or "
                              f"robot drives /{client.robot}; collecting here would mix both into the episodes. "
                              "Stop it, or collect in another domain (ROS_DOMAIN_ID=N gen-theta collect ...)")


def collect_robot(robot: str, tasks: list[str], episodes: int, seed: int, out: Path, log_dir: Path,
                  bar: tqdm, miss_prob: float = 0.0, dart_std: float = 0.0,
                  dart_fade_m: tuple[float, float] = DisturbanceConfig.fade_m,
                  preroll_s: tuple[float, float] = (0.0, 0.0)) -> list[dict]:
    """Record ``episodes`` per task on one robot; returns one row per episode. ``miss_prob``: the
    expert's share of corrective episodes (ExpertConfig.miss_prob); ``dart_std`` (rad) and
    ``dart_fade_m`` (m): the sim's disturbance of the executed targets (DisturbanceConfig);
    ``preroll_s`` (s): the range of the scene's run before each episode starts (SimRobot).
    """
    name = load_robot(robot).name
    procs = Processes(log_dir / robot)
    rows = []
    # Our sim has a name of its own, so that the client tells it from another sim on the topics.
    sim_node = f"sim_robot_{os.getpid()}"
    with spinning(EpisodeClient(name, recorder=True, name="collect", sim_node=sim_node)) as client:
        # A second sim on the same topics would reset this robot's episodes under the first one's
        # recorder, and both recorders would record both sims: refuse before starting anything, and
        # look again once our own sim is up, before the first reset (discovery may be slow: on a
        # loaded machine the first look missed the other sim, whose services then answered
        # wait_ready; counting publishers took it for ours, so the check goes by node name).
        check_free(client, client.in_use(DISCOVERY_S))
        try:
            procs.start("sim", ["sim", "--ros-args", "-r", f"__ns:=/{name}", "-r", f"__node:={sim_node}",
                                "-p", f"robot:={robot}",
                                "-p", f"task:={tasks[0]}", "-p", f"dart_std:={dart_std}",
                                "-p", f"dart_fade_m:=[{dart_fade_m[0]}, {dart_fade_m[1]}]",
                                "-p", f"preroll_s:=[{float(preroll_s[0])}, {float(preroll_s[1])}]"])
            procs.start("expert", ["expert", "--ros-args", "-p", f"robot:={robot}", "-p", f"miss_prob:={miss_prob}"])
            procs.start("recorder", ["record", "--ros-args", "-p", f"robot:={robot}", "-p", f"output_dir:={out}"])
            try:
                client.wait_ready(STARTUP_TIMEOUT_S, procs.check_alive)
            finally:  # also when a child exited or start-up timed out: another sim may be why, so name it first
                check_free(client, client.in_use(DISCOVERY_S, own_sim_up=True))
            for task in tasks:
                for k in range(episodes):
                    # The recorder takes task and instruction from sim/task: reset() waits for it.
                    state = client.reset(task, seed + k)
                    client.start_recording()
                    final = client.wait_done(state.episode, state.time_limit + END_MARGIN_S, procs.check_alive)
                    client.mark_success(final.success)
                    summary = client.stop_recording()
                    rows.append({"robot": name, "task": task, "seed": seed + k, "success": final.success,
                                 "status": summary.get("status", "?"), "drops": sum(summary.get("drops", {}).values()),
                                 "bag": Path(summary.get("path", "?")).name})
                    bar.update()
        finally:
            procs.stop()
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gen-theta collect", description=__doc__.split("\n\n")[0])
    ap.add_argument("--robot", action="append", help=f"robot (repeatable; default: {', '.join(SHIPPED_ROBOTS)})")
    ap.add_argument("--task", action="append", choices=list(TASKS), help="task (repeatable; default: all)")
    ap.add_argument("--episodes", type=int, default=1, help="episodes per task and robot")
    ap.add_argument("--seed", type=int, default=0, help="seed of the first episode of each task")
    ap.add_argument("--out", type=Path, default=Path("episodes"), help="directory for the episode bags")
    ap.add_argument("--log-dir", type=Path, default=None, help="logs of the child processes (default: a temp dir)")
    ap.add_argument("--miss-prob", type=float, default=0.0,
                    help="share of episodes whose first approach hovers 3-7 cm off the object, then realigns "
                         "(corrective demonstrations; docs/policy.md)")
    ap.add_argument("--dart-std", type=float, default=0.0,
                    help="rad: the sim adds a smooth seeded offset of this std to the executed joint targets until "
                         "the grasp, the recorded commands stay the expert's (DART demonstrations; docs/policy.md)")
    ap.add_argument("--dart-fade", type=float, nargs=2, default=list(DisturbanceConfig.fade_m),
                    metavar=("NEAR", "FAR"),
                    help="m from the grasp point: no offset within NEAR, all of it beyond FAR (default: %(default)s)")
    ap.add_argument("--preroll-s", type=float, nargs=2, default=[0.0, 0.0], metavar=("LOW", "HIGH"),
                    help="s: each scene runs a seeded time drawn in [LOW, HIGH] before its episode starts, so that "
                         "a conveyor's cube enters further along (later starts; docs/policy.md)")
    args = ap.parse_args(argv)
    if args.episodes < 1:
        ap.error("--episodes must be >= 1")
    if not 0.0 <= args.miss_prob <= 1.0:
        ap.error("--miss-prob must be in [0, 1]")
    try:
        DisturbanceConfig(std=args.dart_std, fade_m=tuple(args.dart_fade))
    except ValueError as err:
        ap.error(f"--dart-std / --dart-fade: {err}")
    try:
        preroll_range(*args.preroll_s)
    except ValueError as err:
        ap.error(f"--preroll-s: {err}")
    robots, tasks = args.robot or list(SHIPPED_ROBOTS), args.task or list(TASKS)
    use_project_dds_profile()
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="gen_theta_collect_"))
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    t0 = time.monotonic()
    rclpy.init()
    try:
        with tqdm(total=len(robots) * len(tasks) * args.episodes, desc="collect", unit="episode") as bar:
            for robot in robots:
                rows += collect_robot(robot, tasks, args.episodes, args.seed, args.out.resolve(), log_dir, bar,
                                      args.miss_prob, args.dart_std, tuple(args.dart_fade), tuple(args.preroll_s))
    finally:
        rclpy.try_shutdown()
    print_table(rows)
    ok = sum(r["success"] for r in rows)
    complete = sum(r["status"] == "complete" for r in rows)
    print(f"collect: {len(rows)} episodes ({ok} successful, {complete} bags complete, "
          f"{sum(r['drops'] for r in rows)} messages dropped) in {time.monotonic() - t0:.0f} s -> {args.out}; "
          f"logs in {log_dir}\nnext: gen-theta ingest {args.out} --out DATASET")
    return 0 if complete == len(rows) else 1
