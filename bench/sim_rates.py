"""Achieved sim_robot rates per embodiment: joint_states, each camera, and the real-time factor.

For each shipped robot this starts ``gen-theta sim`` in its own process, subscribes from
this process (sensor-data QoS), waits 2 s for warm-up and measures for ``--seconds``:
message rates, the age of each message on arrival (receive time - header stamp), the
sim's real-time factor (simulated seconds per wall second, from ``sim_time`` on sim/task)
and the sim process's CPU use. Run: ``.venv/bin/python bench/sim_rates.py [--seconds 5]
[--camera-rate-hz 30]``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time

from gen_theta_model.cli_args import ExtendAction

ROBOTS = ("arm6", "arm7", "humanoid16")
WARMUP_S = 2.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(robot: str, seconds: float, camera_rate_hz: float) -> dict:
    import rclpy
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import String

    from gen_theta_model.embodiment import load_robot
    from gen_theta_model.topics import load_topics

    spec = load_robot(robot)
    topics = load_topics()
    sim = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gen_theta_ros.cli",
            "sim",
            "--ros-args",
            "-p",
            f"robot:={robot}",
            "-p",
            f"camera_rate_hz:={camera_rate_hz}",
        ],  # fmt: skip
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    rclpy.init()
    node = rclpy.create_node("sim_rates_bench")
    counts: dict[str, int] = {}
    ages: dict[str, list[float]] = {}
    sim_times: list[tuple[float, float]] = []
    measuring = False

    def on_sensor(key: str):
        def callback(msg) -> None:
            if measuring:
                counts[key] = counts.get(key, 0) + 1
                stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
                ages.setdefault(key, []).append(time.time() - stamp)

        return callback

    def on_task(msg: String) -> None:
        if measuring:
            sim_times.append((time.monotonic(), json.loads(msg.data)["sim_time"]))

    node.create_subscription(
        JointState, topics.resolve(robot, topics.joint_states), on_sensor("joint_states"), qos_profile_sensor_data
    )
    for cam in spec.cameras:
        node.create_subscription(
            Image, topics.camera_topic(robot, cam.name), on_sensor(cam.name), qos_profile_sensor_data
        )
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    node.create_subscription(String, topics.resolve(robot, topics.task), on_task, latched)
    try:
        deadline = time.monotonic() + 60.0
        while node.count_publishers(topics.resolve(robot, topics.joint_states)) == 0 and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.1)
        end = time.monotonic() + WARMUP_S
        while time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.05)
        measuring = True
        t0, cpu0 = time.monotonic(), cpu_seconds(sim.pid)
        while time.monotonic() < t0 + seconds:
            rclpy.spin_once(node, timeout_sec=0.05)
        span, cpu = time.monotonic() - t0, cpu_seconds(sim.pid) - cpu0
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        sim.terminate()
        sim.wait(timeout=15)
    rtf = float("nan")
    if len(sim_times) >= 2:
        (w0, s0), (w1, s1) = sim_times[0], sim_times[-1]
        rtf = (s1 - s0) / (w1 - w0)
    rates = {k: counts.get(k, 0) / span for k in ["joint_states"] + [c.name for c in spec.cameras]}
    mean_age = {k: 1000.0 * sum(v) / len(v) for k, v in ages.items()}
    declared = {"joint_states": 100.0, **{c.name: camera_rate_hz or c.fps for c in spec.cameras}}
    sizes = {c.name: f"{c.width}x{c.height}" for c in spec.cameras}
    return {"robot": robot, "rates": rates, "declared": declared, "age_ms": mean_age, "rtf": rtf,
            "cpu": cpu / span, "sizes": sizes}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measurement window per robot")
    parser.add_argument("--robots", nargs="+", action=ExtendAction, default=list(ROBOTS))
    parser.add_argument("--camera-rate-hz", type=float, default=0.0, help="override every camera's rate (0: YAML fps)")
    args = parser.parse_args()
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(1, 100)))  # keep clear of other graphs
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    from gen_theta_ros.runtime import use_project_dds_profile

    use_project_dds_profile()
    print(f"sim_robot rates, {args.seconds:.0f} s per robot after {WARMUP_S:.0f} s warm-up, {os.cpu_count()} CPUs")
    print(f"{'robot':<11} {'stream':<13} {'size':<7} {'declared Hz':>11} {'achieved Hz':>11} {'age ms':>7}")
    for robot in args.robots:
        r = measure(robot, args.seconds, args.camera_rate_hz)
        for key, rate in r["rates"].items():
            size = r["sizes"].get(key, "")
            age = r["age_ms"].get(key, float("nan"))
            print(f"{robot:<11} {key:<13} {size:<7} {r['declared'][key]:>11.1f} {rate:>11.1f} {age:>7.1f}")
        print(f"{robot:<11} real-time factor {r['rtf']:.3f}, sim process CPU {100 * r['cpu']:.0f}% of one core")


if __name__ == "__main__":
    main()
