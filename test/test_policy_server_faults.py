"""policy_server over real DDS, fed bad input the way a faulty driver would send it.

One server process serves arm6 and arm7 from a real tiny checkpoint; ros_helpers.Feeder
publishes their cameras and joint_states and is changed while it runs to inject a fault:
a NaN joint position (at start-up, while driving, at re-enable after an e-stop), a
gripper published by a driver of its own, images of every common encoding and of one
the server cannot decode. Each time the server must keep running, hold the robot (keep
commanding where it is), say on /diagnostics what is wrong, and drive again once the
input is good. A fatal error (the inference process killed) must end it with exit 1.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
from ros_helpers import Feeder, process_tree, start_exe
from sensor_msgs.msg import Image
from server_helpers import Listener, driving, serving, set_enabled, tiny_checkpoint
from std_msgs.msg import Bool

from gen_theta_model.topics import load_topics
from gen_theta_ros.conversions import numpy_to_image

ROBOTS = ("arm6", "arm7")
TOPICS = load_topics()
WARN, ERROR = 1, 2


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("server_faults")
    ckpt = tiny_checkpoint(tmp / "run", {"arm6": 0.0, "arm7": 0.0})
    params = ["diagnostics_period_s:=0.2", "joint_timeout_s:=0.3", "camera_timeout_s:=0.6"]
    with serving(tmp, ckpt, ROBOTS, params, ["arm6"], "policy_server_faults_test") as env:
        # Up first (start-up takes long on a loaded machine): each test's waits are then about its fault.
        env["listener"].wait(driving(env["listener"], "arm6"), timeout=120.0)
        yield env


def alive(system) -> None:
    assert system["proc"].poll() is None, system["log"].read_text()


def diag_says(listener: Listener, robot: str, level: int, *words: str):
    def check():
        """Diagnostics of the robot at the level, naming the fault"""
        d = listener.diag.get(robot, {})
        return d.get("level") == level and all(w in d.get("message", "") for w in words) and d
    check.__doc__ = f"{robot} diagnostics at level {level} saying {words}"
    return check


def recovered(listener: Listener, robot: str):
    def check():
        """Wait for: the robot driving again, diagnostics OK."""
        return driving(listener, robot)() and listener.diag.get(robot, {}).get("message") == "driving"
    return check


def holding_at_rate(listener: Listener, robot: str, n: int = 10) -> None:
    """Wait for ``n`` more commands to ``robot``, all single-point holds with finite positions."""
    t0 = time.monotonic()
    listener.wait(lambda: len(listener.since(robot, t0)) >= n, timeout=10.0)
    held = listener.since(robot, t0)
    assert all(len(m.points) == 1 for m in held), [len(m.points) for m in held]
    assert np.all(np.isfinite([m.points[0].positions for m in held]))
    assert not np.any([m.points[0].velocities for m in held])


def with_nan(spec) -> np.ndarray:
    q = spec.home_positions.copy()
    q[1] = np.nan
    return q


def test_nan_joint_state_at_start_up_is_refused_and_the_server_recovers(system):
    listener, spec = system["listener"], system["specs"]["arm7"]
    feeder = system["feeders"]["arm7"] = Feeder(system["node"], "arm7", spec)
    feeder.positions = with_nan(spec)
    feeder.announce("stack", "dexterity", "stack the red cube on the blue cube")
    feeder.start()
    d = listener.wait(diag_says(listener, "arm7", ERROR, "rejected joint_states", "non-finite", spec.joint_names[1]))
    assert int(d["rejected_joint_states"]) > 0 and spec.joint_names[1] in d["last_rejected"]
    alive(system)
    listener.wait(driving(listener, "arm6"), timeout=60.0)  # the other robot goes on
    feeder.positions = spec.home_positions.copy()
    listener.wait(recovered(listener, "arm7"), timeout=60.0)


def test_nan_joint_state_while_driving_is_held_and_reported(system):
    listener, feeder, spec = system["listener"], system["feeders"]["arm6"], system["specs"]["arm6"]
    listener.wait(driving(listener, "arm6"), timeout=60.0)
    feeder.positions = with_nan(spec)
    listener.wait(diag_says(listener, "arm6", ERROR, "rejected joint_states", "non-finite"))
    holding_at_rate(listener, "arm6")
    alive(system)
    feeder.positions = spec.home_positions.copy()
    listener.wait(recovered(listener, "arm6"))


def test_nan_joint_state_at_re_enable_after_an_estop_is_held(system):
    node, listener = system["node"], system["listener"]
    feeder, spec = system["feeders"]["arm6"], system["specs"]["arm6"]
    listener.wait(driving(listener, "arm6"), timeout=60.0)
    estop = node.create_publisher(Bool, TOPICS.resolve("arm6", TOPICS.estop), 10)
    listener.wait(lambda: estop.get_subscription_count() > 0)
    estop.publish(Bool(data=True))
    listener.wait(diag_says(listener, "arm6", ERROR, "e-stop"))
    feeder.positions = with_nan(spec)
    estop.publish(Bool(data=False))

    end = time.monotonic() + 20.0
    while not set_enabled(node, "arm6", True).success:  # refused until the e-stop release has arrived
        assert time.monotonic() < end, "enable still refused 20 s after the e-stop was released"
    listener.wait(diag_says(listener, "arm6", ERROR, "rejected joint_states", "non-finite"))
    holding_at_rate(listener, "arm6")
    alive(system)
    feeder.positions = spec.home_positions.copy()
    listener.wait(recovered(listener, "arm6"))
    node.destroy_publisher(estop)


def test_partial_joint_states_from_two_drivers_are_merged(system):
    node, listener, spec = system["node"], system["listener"], system["specs"]["arm7"]
    listener.wait(driving(listener, "arm7"), timeout=60.0)
    system["feeders"].pop("arm7").stop()
    listener.wait(diag_says(listener, "arm7", WARN, "joint_states stale"))
    arm, gripper = spec.joint_names[:-1], spec.joint_names[-1:]
    system["feeders"]["arm7"] = Feeder(node, "arm7", spec, joints=arm)
    system["feeders"]["arm7 gripper"] = Feeder(node, "arm7", spec, joint_rate=50.0, joints=gripper, cameras=False)
    system["feeders"]["arm7"].start()
    system["feeders"]["arm7 gripper"].start()
    listener.wait(recovered(listener, "arm7"), timeout=30.0)
    alive(system)
    system["feeders"].pop("arm7 gripper").stop()  # the gripper driver dies: its joint goes stale
    listener.wait(diag_says(listener, "arm7", WARN, "joint_states stale"))
    holding_at_rate(listener, "arm7")
    system["feeders"]["arm7 gripper"] = Feeder(node, "arm7", spec, joints=gripper, cameras=False)
    system["feeders"]["arm7 gripper"].start()
    listener.wait(recovered(listener, "arm7"), timeout=30.0)


ENCODERS = {
    "rgba8": lambda f: numpy_to_image(np.concatenate([f, np.full_like(f[..., :1], 255)], axis=2), "rgba8"),
    "bgra8": lambda f: numpy_to_image(np.concatenate([f[..., ::-1], np.full_like(f[..., :1], 255)], axis=2), "bgra8"),
    "bgr8": lambda f: numpy_to_image(np.ascontiguousarray(f[..., ::-1]), "bgr8"),
    "mono8": lambda f: numpy_to_image(np.ascontiguousarray(f[..., 0]), "mono8"),
    "mono16": lambda f: numpy_to_image(f[..., 0].astype(np.uint16) * 256, "mono16"),
    "16UC1": lambda f: numpy_to_image(f[..., 0].astype(np.uint16) * 256, "16UC1"),
    "32FC1": lambda f: numpy_to_image(f[..., 0].astype(np.float32) / 255.0, "32FC1"),
    "rgb8": lambda f: numpy_to_image(f, "rgb8"),
}


def yuv422(frame: np.ndarray) -> Image:
    """Encode ``frame`` as yuv422, an encoding the server does not decode (2 bytes per pixel, all zero)."""
    h, w = frame.shape[:2]
    return Image(height=h, width=w, encoding="yuv422", step=2 * w, data=bytes(2 * w * h))


def test_images_of_every_common_encoding_are_accepted_and_an_unknown_one_is_refused(system):
    listener, feeder = system["listener"], system["feeders"]["arm6"]
    listener.wait(recovered(listener, "arm6"), timeout=60.0)
    refused = int(listener.diag["arm6"]["rejected_images"])
    for encoding, encode in ENCODERS.items():
        feeder.image_message = encode
        sent = feeder.frames
        listener.wait(lambda sent=sent: feeder.frames >= sent + 4)  # frames of this encoding went out
        heard = listener.diagnostics
        listener.wait(lambda heard=heard: listener.diagnostics >= heard + 2)  # diagnostics published after they came in
        d = listener.diag["arm6"]
        assert int(d["rejected_images"]) == refused and "rejected" not in d["message"], (encoding, d)
    alive(system)
    feeder.image_message = yuv422
    d = listener.wait(diag_says(listener, "arm6", ERROR, "rejected camera", "yuv422"))
    assert int(d["rejected_images"]) > refused
    holding_at_rate(listener, "arm6")
    alive(system)
    feeder.image_message = ENCODERS["rgb8"]
    listener.wait(recovered(listener, "arm6"))


def test_a_fatal_error_ends_the_server_with_exit_1(system):
    """The inference process is killed: the server stops for good and exits 1, not 0 (a clean stop)."""
    log = system["tmp"] / "fatal.log"
    proc = start_exe(["serve", str(system["ckpt"]), "--ros-args", "-p", "robots:=[lone]",
                      "-p", "embodiments:=[arm6]"], log)
    feeder = system["feeders"]["lone"] = Feeder(system["node"], "lone", system["specs"]["arm6"])
    feeder.start()
    try:
        end = time.monotonic() + 120.0
        while "serving ['lone']" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < end, log.read_text()
            time.sleep(0.1)
        [worker] = process_tree(proc.pid)[1:]
        os.kill(worker, signal.SIGKILL)
        assert proc.wait(timeout=60) == 1, log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = log.read_text()
    assert "policy_server: inference failed: the inference process ended" in text, text
    assert "Traceback" not in text, text
    alive(system)
