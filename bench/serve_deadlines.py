"""Command deadlines of the policy server while it infers, with the sim robot on the same machine.

For each command rate (50, 100 Hz) and added inference delay (0, 300 ms) it brings up the
graph of gen_theta_ros/graph.py (sim_robot + policy_server, harmonic mode), lets it drive
for ``--seconds`` and prints what the server reports on /diagnostics: commands sent,
missed deadlines (control slots without a command), inter-command jitter p50/p99 and
inference latency p50/p99, plus the machine's load average.

    .venv/bin/python bench/serve_deadlines.py [--checkpoint RUN] [--robot arm6] [--seconds 20]

Without --checkpoint a tiny policy with untrained weights is saved to a temp dir (timing
does not depend on the weights).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

import rclpy
import torch
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor

from gen_theta_model.checkpoint import save_checkpoint
from gen_theta_model.cli_args import ExtendAction
from gen_theta_model.embodiment import load_robot
from gen_theta_model.policy.config import preset
from gen_theta_model.policy.example import example_norm_stats
from gen_theta_model.policy.policy import build_policy
from gen_theta_model.topics import load_topics
from gen_theta_model.train_config import TrainConfig
from gen_theta_ros.graph import BringupArgs, GraphProcesses, bringup_graph, default_params_file
from gen_theta_ros.runtime import use_project_dds_profile


def untrained_checkpoint(robot: str, out: Path) -> Path:
    spec = load_robot(robot)
    policy = build_policy(preset("tiny"), [spec], {spec.name: example_norm_stats(spec)})
    return save_checkpoint(out, 1, policy, TrainConfig(), policy.model.state_dict())


def measure(robot: str, checkpoint: str, rate: float, delay: float, seconds: float, tmp: Path) -> dict[str, str]:
    doc = yaml.safe_load(default_params_file().read_text())
    doc["policy_server"]["ros__parameters"].update(command_rate_hz=rate, added_delay_ms=delay)
    params = tmp / f"params_{rate:.0f}_{delay:.0f}.yaml"
    params.write_text(yaml.safe_dump(doc))
    latest: dict[str, str] = {}
    with GraphProcesses(bringup_graph(BringupArgs((robot,), checkpoint, True, str(params))), log_dir=tmp / "logs"):
        node = rclpy.create_node("serve_deadlines_bench")
        node.create_subscription(
            DiagnosticArray, load_topics().diagnostics,
            lambda m: latest.update({kv.key: kv.value for s in m.status if s.hardware_id == robot for kv in s.values}),
            10,
        )
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        spin = threading.Thread(target=executor.spin, daemon=True)
        spin.start()
        end = time.monotonic() + 120.0
        while int(latest.get("chunks", "0")) < 3:  # model loaded, first chunks executing
            if time.monotonic() > end:
                raise RuntimeError(f"the server did not start driving within 120 s: {latest}; logs in {tmp / 'logs'}")
            time.sleep(0.2)
        start = dict(latest)
        time.sleep(seconds)
        stop = dict(latest)
        executor.shutdown()
        node.destroy_node()
    return {
        "ticks": str(int(stop["ticks"]) - int(start["ticks"])),
        "missed": str(int(stop["missed_deadlines"]) - int(start["missed_deadlines"])),
        "jitter p50/p99 ms": f"{stop['jitter_p50_ms']} / {stop['jitter_p99_ms']}",
        "latency p50/p99 ms": f"{stop['latency_p50_ms']} / {stop['latency_p99_ms']}",
        "late chunks": str(int(stop["late_chunks"]) - int(start["late_chunks"])),
        "load avg": f"{os.getloadavg()[0]:.1f}",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default="")
    ap.add_argument("--robot", default="arm6")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rates", type=float, nargs="+", action=ExtendAction, default=[50.0, 100.0])
    ap.add_argument("--delays-ms", type=float, nargs="+", action=ExtendAction, default=[0.0, 300.0])
    args = ap.parse_args()
    torch.set_num_threads(1)
    use_project_dds_profile()
    with tempfile.TemporaryDirectory(prefix="serve_deadlines_") as tmp:
        checkpoint = args.checkpoint or str(untrained_checkpoint(args.robot, Path(tmp) / "run"))
        rclpy.init()
        rows = []
        for rate in args.rates:
            for delay in args.delays_ms:
                rows.append({"rate Hz": f"{rate:.0f}", "added delay ms": f"{delay:.0f}",
                             **measure(args.robot, checkpoint, rate, delay, args.seconds, Path(tmp))})
                print(rows[-1], flush=True)
        rclpy.shutdown()
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(r[k] for k in keys) + " |")


if __name__ == "__main__":
    main()
