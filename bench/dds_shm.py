"""Fast DDS: 640x480 rgb8 images across processes, default transports vs config/fastdds.xml.

A publisher process sends 301 frames at 30 Hz; a subscriber process (best-effort,
sensor-data QoS, and reliable for reference) counts them and measures latency
(receive time - header stamp). Run: `.venv/bin/python bench/dds_shm.py`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FRAMES, RATE = 301, 30.0


def publisher(topic: str, reliable: bool) -> None:
    import numpy as np
    import rclpy
    from sensor_msgs.msg import Image

    from gen_theta_ros.conversions import numpy_to_image

    rclpy.init()
    node = rclpy.create_node("bench_pub")
    pub = node.create_publisher(Image, topic, qos(reliable))
    img = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    while pub.get_subscription_count() == 0:
        time.sleep(0.05)
    time.sleep(1.0)  # let discovery settle on both sides
    t0 = time.monotonic()
    for i in range(FRAMES):
        time.sleep(max(0.0, t0 + i / RATE - time.monotonic()))
        pub.publish(numpy_to_image(img, "rgb8", stamp=time.time()))
    time.sleep(1.0)
    rclpy.shutdown()


def qos(reliable: bool):
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

    return QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE) if reliable else qos_profile_sensor_data


def subscriber(topic: str, reliable: bool) -> None:
    import rclpy
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("bench_sub")
    lat: list[float] = []

    def cb(msg: Image) -> None:
        lat.append(time.time() - (msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9))

    node.create_subscription(Image, topic, cb, qos(reliable))
    deadline = time.monotonic() + 30
    last = time.monotonic()  # time of the last frame (or of the start)
    while time.monotonic() < deadline and (not lat or time.monotonic() - last < 2.0):
        n = len(lat)
        rclpy.spin_once(node, timeout_sec=0.1)
        if len(lat) != n:
            last = time.monotonic()
    lat.sort()
    out = {"received": len(lat)}
    if lat:
        out.update(p50_ms=1e3 * lat[len(lat) // 2], p95_ms=1e3 * lat[int(len(lat) * 0.95)])
    print(json.dumps(out))
    rclpy.shutdown()


def run(profile: bool, reliable: bool, domain: int) -> dict:
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               RMW_IMPLEMENTATION="rmw_fastrtps_cpp")
    env.pop("FASTDDS_DEFAULT_PROFILES_FILE", None)
    if profile:
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(ROOT / "config" / "fastdds.xml")
    topic = "/bench/image"
    sub = subprocess.Popen([sys.executable, __file__, "sub", topic, str(int(reliable))], env=env,
                           stdout=subprocess.PIPE, text=True)
    pub = subprocess.Popen([sys.executable, __file__, "pub", topic, str(int(reliable))], env=env)
    pub.wait(timeout=120)
    out, _ = sub.communicate(timeout=120)
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    print(f"{FRAMES} frames 640x480 rgb8 (921,600 B) at {RATE:.0f} Hz, publisher and subscriber in two processes")
    for i, (profile, reliable) in enumerate([(False, False), (True, False), (False, True), (True, True)]):
        r = run(profile, reliable, domain=150 + i)
        name = "config/fastdds.xml (10 MB SHM)" if profile else "Fast DDS default"
        lat = f"latency p50 {r['p50_ms']:.1f} ms, p95 {r['p95_ms']:.1f} ms" if r["received"] else ""
        print(f"{name:32s} {'reliable   ' if reliable else 'best-effort'}  received {r['received']:3d}/{FRAMES}  {lat}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "pub":
        publisher(sys.argv[2], bool(int(sys.argv[3])))
    elif len(sys.argv) > 1 and sys.argv[1] == "sub":
        subscriber(sys.argv[2], bool(int(sys.argv[3])))
    else:
        main()
