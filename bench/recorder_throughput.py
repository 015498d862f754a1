"""Recorder throughput: 3 cameras 640x480 rgb8 at 30 Hz + joint_states at 500 Hz from another process.

Starts the recorder node (humanoid16: cameras scene, head, wrist) and a publisher
process, records one episode of DURATION s, and prints per topic what was sent,
written and dropped, plus sustained MB/s and messages/s, and the frames the recorder
counted as lost in transport (stamp gaps, gen_theta_model/data/camera_losses.py) next to
those really lost (sent - written). Twice: the publisher with Fast DDS's default
settings, as a camera driver that gen_theta does not start, and with config/fastdds.xml.
Run: `.venv/bin/python bench/recorder_throughput.py [seconds]`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROBOT = "humanoid16"
ROOT = Path(__file__).resolve().parent.parent


def publish(seconds: float) -> None:
    import numpy as np
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image, JointState

    from gen_theta_model.embodiment import load_robot
    from gen_theta_model.topics import load_topics
    from gen_theta_ros.conversions import arrays_to_joint_state, numpy_to_image

    rclpy.init()
    node = rclpy.create_node("bench_publisher")
    spec, names = load_robot(ROBOT), load_topics()
    cams = [node.create_publisher(Image, names.camera_topic(ROBOT, c.name), qos_profile_sensor_data)
            for c in spec.cameras]
    js = node.create_publisher(JointState, names.resolve(ROBOT, names.joint_states), qos_profile_sensor_data)
    img = numpy_to_image(np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8), "rgb8")
    while any(p.get_subscription_count() == 0 for p in cams):
        time.sleep(0.05)
    time.sleep(1.0)
    sent = {"images": 0, "joint_states": 0}
    t0, wall0 = time.monotonic(), time.time_ns()
    next_img, next_js = t0, t0
    while (now := time.monotonic()) < t0 + seconds:
        if now >= next_img:
            # Stamped when the frame was due, as a camera stamps its capture time, however late it is sent.
            img.header.stamp.sec, img.header.stamp.nanosec = divmod(wall0 + round((next_img - t0) * 1e9), 10**9)
            for p in cams:
                p.publish(img)
            sent["images"] += len(cams)
            next_img += 1 / 30
        if now >= next_js:
            js.publish(arrays_to_joint_state(spec.joint_names, spec.home_positions, stamp=time.time()))
            sent["joint_states"] += 1
            next_js += 1 / 500
        time.sleep(max(0.0, min(next_img, next_js) - time.monotonic()))
    print(json.dumps(sent), flush=True)
    time.sleep(1.0)
    rclpy.shutdown()


def run(seconds: float, profile: Path, domain: int, publisher_profile: bool) -> None:
    import rclpy
    from std_srvs.srv import Trigger

    from gen_theta_model.data.recording import read_record
    from gen_theta_model.topics import load_topics

    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               FASTDDS_DEFAULT_PROFILES_FILE=str(profile))
    os.environ.update(env)
    out = Path(tempfile.mkdtemp(prefix="recorder_bench_"))
    gen_theta = Path(sys.executable).parent / "gen-theta"
    rec = subprocess.Popen([str(gen_theta), "record", "--ros-args", "-p", f"robot:={ROBOT}", "-p",
                            f"output_dir:={out}", "-p", "camera_fps:=30.0"],  # the publisher's rate, not the YAML's
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    rclpy.init()
    node = rclpy.create_node(f"bench_control_{domain}")
    names = load_topics()

    def call(service: str) -> Trigger.Response:
        client = node.create_client(Trigger, names.resolve(ROBOT, service))
        assert client.wait_for_service(timeout_sec=30)
        future = client.call_async(Trigger.Request())
        rclpy.spin_until_future_complete(node, future, timeout_sec=60)
        return future.result()

    start = call(names.services.recorder_start)
    bag = Path(start.message)
    pub_env = dict(env) if publisher_profile else {k: v for k, v in env.items() if k != "FASTDDS_DEFAULT_PROFILES_FILE"}
    pub = subprocess.Popen([sys.executable, __file__, "publish", str(seconds)], env=pub_env, stdout=subprocess.PIPE,
                           text=True)
    sent = json.loads(pub.communicate(timeout=seconds + 120)[0].strip().splitlines()[-1])
    t_stop = time.monotonic()
    stop = call(names.services.recorder_stop)
    close_s = time.monotonic() - t_stop
    rec.send_signal(signal.SIGINT)
    rec.wait(timeout=30)
    rclpy.shutdown()
    record = read_record(bag)
    size = sum(p.stat().st_size for p in bag.iterdir())
    info = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    dur = info["duration"]["nanoseconds"] * 1e-9  # first to last message
    images = {t: n for t, n in record.messages.items() if "camera" in t}
    js = next(n for t, n in record.messages.items() if t.endswith("joint_states"))
    total = sum(record.messages.values())
    segment = re.search(r"<segment_size>(\d+)</segment_size>", profile.read_text()).group(1)
    print(f"recorder bench: {ROBOT}, 3 cameras 640x480 rgb8 @30 Hz + joint_states @500 Hz, {seconds:.0f} s, "
          f"publisher in another process ({profile.name if publisher_profile else 'default DDS settings'}), "
          f"recorder SHM segment {int(segment) / 2**20:.0f} MiB ({profile.name}); "
          f"status {record.status}, stop took {close_s:.2f} s")
    print(f"  sent     images {sent['images']}, joint_states {sent['joint_states']}")
    print(f"  written  images {sum(images.values())} {images}, joint_states {js}")
    print(f"  dropped by the recorder queue: {sum(record.drops.values())} {record.drops}")
    print(f"  lost before the recorder (DDS): images {sent['images'] - sum(images.values())}, "
          f"joint_states {sent['joint_states'] - js}")
    print("  lost in transport as the recorder counted them (stamp gaps): "
          f"{sum(r['lost'] for r in record.camera_losses.values())} "
          f"{ {t: r['lost'] for t, r in record.camera_losses.items()} }")
    print(f"  bag {size / 1e6:.0f} MB, messages over {dur:.1f} s: {size / 1e6 / dur:.1f} MB/s, "
          f"{total / dur:.0f} msgs/s")
    print(f"  stop response: {json.loads(stop.message)['status']}")
    for p in bag.iterdir():
        p.unlink()
    bag.rmdir()
    out.rmdir()


def main(seconds: float) -> None:
    run(seconds, ROOT / "config" / "fastdds.xml", 171, publisher_profile=False)
    run(seconds, ROOT / "config" / "fastdds.xml", 171, publisher_profile=True)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "publish":
        publish(float(sys.argv[2]))
    else:
        main(float(sys.argv[1]) if len(sys.argv) > 1 else 10.0)
