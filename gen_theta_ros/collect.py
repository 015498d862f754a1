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
import json
import tempfile
import time
from pathlib import Path

import rclpy
from rclpy.parameter import Parameter
from std_srvs.srv import SetBool, Trigger
from tqdm import tqdm

from gen_theta_model.embodiment import load_robot
from gen_theta_model.sim.tasks import TASKS
from gen_theta_model.topics import load_topics
from gen_theta_ros.demo import EpisodeDriver, print_table
from gen_theta_ros.processes import Processes
from gen_theta_ros.runtime import use_project_dds_profile

SHIPPED_ROBOTS = ("arm6", "arm7", "humanoid16")


class Collector(EpisodeDriver):
    """The demo's episode driver plus the recorder's services."""

    def __init__(self, robot: str) -> None:
        super().__init__(robot)
        topics = load_topics()
        srv = topics.services
        self.start_client = self.create_client(Trigger, topics.resolve(robot, srv.recorder_start))
        self.stop_client = self.create_client(Trigger, topics.resolve(robot, srv.recorder_stop))
        self.mark_client = self.create_client(SetBool, topics.resolve(robot, srv.recorder_mark_success))

    def _call(self, client, request, what: str):
        future = client.call_async(request)
        rclpy.spin_until_future_complete(self, future, timeout_sec=30.0)
        response = future.result()
        if response is None:
            raise RuntimeError(f"{what}: no answer within 30 s")
        return response

    def wait_recorder(self, procs: Processes, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not (self.start_client.service_is_ready() and self.stop_client.service_is_ready()
                   and self.mark_client.service_is_ready()):
            procs.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the recorder's services did not come up within {timeout:.0f} s")
            rclpy.spin_once(self, timeout_sec=0.2)

    def record_episode(self, task: str, seed: int, procs: Processes) -> tuple[dict, dict]:
        """Reset to task/seed, record until the episode ends; returns (final task state, stop summary)."""
        future = self.params.set_parameters([Parameter("task", value=task), Parameter("seed", value=seed)])
        rclpy.spin_until_future_complete(self, future, timeout_sec=10.0)
        result = future.result()
        if result is None or not all(r.successful for r in result.results):
            raise RuntimeError(f"cannot set the sim's task/seed parameters to {task}/{seed}: {result}")
        self.state = None
        reset = self._call(self.reset_client, Trigger.Request(), "sim/reset")
        if not reset.success:
            raise RuntimeError(f"sim/reset failed: {reset.message}")
        deadline = time.monotonic() + 10.0
        while not (self.state and self.state["task"] == task and self.state["seed"] == seed):
            if time.monotonic() > deadline:  # the recorder takes task and instruction from sim/task
                raise RuntimeError(f"sim/task did not announce {task}/{seed} within 10 s")
            rclpy.spin_once(self, timeout_sec=0.05)
        episode = self.state["episode"]
        start = self._call(self.start_client, Trigger.Request(), "recorder/start")
        if not start.success:
            raise RuntimeError(f"recorder/start failed: {start.message}")
        deadline = time.monotonic() + TASKS[task].time_limit + 15.0
        while not (self.state["episode"] == episode and self.state["done"]):
            procs.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"episode {task}/{seed} did not end within its time limit")
            rclpy.spin_once(self, timeout_sec=0.1)
        state = self.state
        self._call(self.mark_client, SetBool.Request(data=bool(state["success"])), "recorder/mark_success")
        stop = self._call(self.stop_client, Trigger.Request(), "recorder/stop")
        summary = json.loads(stop.message) if stop.message.startswith("{") else {"status": stop.message}
        return state, summary


def collect_robot(robot: str, tasks: list[str], episodes: int, seed: int, out: Path, log_dir: Path,
                  bar: tqdm) -> list[dict]:
    """Record ``episodes`` per task on one robot; returns one row per episode."""
    procs = Processes(log_dir / robot)
    procs.start("sim", ["sim", "--ros-args", "-p", f"robot:={robot}", "-p", f"task:={tasks[0]}"])
    procs.start("expert", ["expert", "--ros-args", "-p", f"robot:={robot}"])
    procs.start("recorder", ["record", "--ros-args", "-p", f"robot:={robot}", "-p", f"output_dir:={out}"])
    name = load_robot(robot).name
    node = Collector(name)
    rows = []
    try:
        node.wait_ready(procs)
        node.wait_recorder(procs)
        for task in tasks:
            for k in range(episodes):
                state, summary = node.record_episode(task, seed + k, procs)
                drops = sum(summary.get("drops", {}).values())
                rows.append({"robot": name, "task": task, "seed": seed + k, "success": state["success"],
                             "status": summary.get("status", "?"), "drops": drops,
                             "bag": Path(summary.get("path", "?")).name})
                bar.update()
    finally:
        node.destroy_node()
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
    args = ap.parse_args(argv)
    if args.episodes < 1:
        ap.error("--episodes must be >= 1")
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
                rows += collect_robot(robot, tasks, args.episodes, args.seed, args.out.resolve(), log_dir, bar)
    finally:
        rclpy.try_shutdown()
    print_table(rows)
    ok = sum(r["success"] for r in rows)
    complete = sum(r["status"] == "complete" for r in rows)
    print(f"collect: {len(rows)} episodes ({ok} successful, {complete} bags complete, "
          f"{sum(r['drops'] for r in rows)} messages dropped) in {time.monotonic() - t0:.0f} s -> {args.out}; "
          f"logs in {log_dir}\nnext: gen-theta ingest {args.out} --out DATASET")
    return 0 if complete == len(rows) else 1
