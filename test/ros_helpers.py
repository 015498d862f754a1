"""Real-DDS helpers for tests: start a node executable, call services, publish a robot's streams."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import rclpy
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from gen_theta_model.data.recording import readable_counts
from gen_theta_model.embodiment import EmbodimentSpec
from gen_theta_model.topics import load_topics
from gen_theta_model.trajectory import Trajectory
from gen_theta_ros.conversions import arrays_to_joint_state, numpy_to_image, seconds_to_time, trajectory_to_msg
from gen_theta_ros.qos import LATCHED_QOS, SENSOR_QOS


@contextmanager
def ros_node(name: str) -> Iterator[Node]:
    """Initialise rclpy with one plain node for the test; destroy both afterwards."""
    rclpy.init()
    node = rclpy.create_node(name)
    try:
        yield node
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


def start_exe(args: list[str], log: Path, **kwargs) -> subprocess.Popen:
    """Start ``gen-theta <args>`` in its own process group, output to ``log``."""
    exe = Path(sys.executable).parent / "gen-theta"
    return subprocess.Popen([str(exe), *args], stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env=dict(os.environ), start_new_session=True, **kwargs)


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process below it, parents first (bring-up nodes run in their own sessions)."""
    rows = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True, check=True).stdout.split()
    children: dict[int, list[int]] = {}
    for child, parent in zip(map(int, rows[::2]), map(int, rows[1::2])):
        children.setdefault(parent, []).append(child)
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop(0))
        todo += children.get(tree[-1], [])
    return tree


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.1)


def alive(pid: int) -> bool:
    """Tell whether ``pid`` runs (a zombie waiting for its reaper counts as dead)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def kill_leftovers(proc: subprocess.Popen, pids: list[int]) -> None:
    """Kill ``proc`` if it still runs and every one of ``pids`` still alive: nothing a test
    started may outlive it, whatever failed.
    """
    if proc.poll() is None:
        proc.kill()
    for pid in filter(alive, pids):
        os.kill(pid, signal.SIGKILL)


def wait_on_disk(bag: Path, least: dict[str, int]) -> None:
    """Wait until the episode's MCAP file holds at least ``least[topic]`` messages of each topic."""
    (mcap,) = bag.glob("*.mcap")
    wait_for(lambda: all(readable_counts(mcap).get(t, 0) >= n for t, n in least.items()), 30,
             f"{least} messages in {mcap.name}")


def stop_or_kill(proc: subprocess.Popen, sig: int, timeout: float) -> int | None:
    """Send ``sig`` and wait; if ``proc`` is still running after ``timeout`` s, describe its
    process tree (state, scheduling class, CPU), SIGKILL all of it and raise AssertionError,
    so that nodes left running cannot disturb the tests that follow.
    """
    proc.send_signal(sig)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        tree = process_tree(proc.pid)
        ps = subprocess.run(["ps", "-o", "pid,stat,cls,rtprio,pcpu,etime,args", "-p", ",".join(map(str, tree))],
                            capture_output=True, text=True).stdout
        for pid in tree:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
        raise AssertionError(f"{proc.args} still ran {timeout} s after signal {sig}; killed:\n{ps}") from None


def call(node: Node, srv_type, name: str, request, timeout: float = 20.0):
    """Call a service and wait for the answer (fails the test on timeout).

    The request is re-sent every 3 s: a server of a killed process may linger in
    discovery, and a request sent before the new server is matched is lost.
    """
    client = node.create_client(srv_type, name)
    assert client.wait_for_service(timeout_sec=timeout), f"service {name} not available"
    deadline = time.monotonic() + timeout
    while True:
        future = client.call_async(request)
        rclpy.spin_until_future_complete(node, future, timeout_sec=3.0)
        if future.done() or time.monotonic() > deadline:
            break
        client.remove_pending_request(future)
    assert future.done(), f"service {name} did not answer within {timeout} s"
    node.destroy_client(client)
    return future.result()


def change_state(node: Node, target: str, transition: int) -> bool:
    """Ask ``target`` (a node's full name) for a lifecycle ``transition``; True if it succeeded.

    Sent once (``call`` re-sends a request not answered within 3 s; a configure that loads a
    model takes longer, and the re-sent one would fail from the state the first one reached).
    ``node`` must not be spun by an executor elsewhere.
    """
    client = node.create_client(ChangeState, f"{target}/change_state")
    assert client.wait_for_service(timeout_sec=120.0), f"{target}/change_state not available"
    future = client.call_async(ChangeState.Request(transition=Transition(id=transition)))
    rclpy.spin_until_future_complete(node, future, timeout_sec=120.0)
    assert future.done(), f"{target}/change_state did not answer within 120 s"
    node.destroy_client(client)
    return future.result().success


def state(node: Node, target: str, timeout: float = 20.0) -> str:
    """Return the lifecycle state (its label: unconfigured, inactive, active) of node ``target``,
    waiting up to ``timeout`` s for it to come up.
    """
    return call(node, GetState, f"{target}/get_state", GetState.Request(), timeout).current_state.label


def start_episode(node: Node, robot: str, timeout: float = 20.0) -> Path:
    """Start a recorder episode of ``robot`` and return its bag directory.

    ``call`` re-sends a request whose answer did not come back (a service's reply can be
    lost while discovery is still matching the client); the recorder answers a re-sent
    start with the episode the first one started.
    """
    names = load_topics()
    resp = call(node, Trigger, names.resolve(robot, names.services.recorder_start), Trigger.Request(), timeout)
    assert resp.success, resp.message
    return Path(resp.message)


def frame_value(camera_index: int, i: int) -> int:
    return (30 * camera_index + 7 * i) % 250


class Feeder:
    """Publishes a robot's cameras (the spec's sizes and rates), joint_states, commands and instruction.

    ``joints`` (default: all) are the joints its JointStates carry, ``cameras=False`` sends no
    images. ``positions`` (dof,) in spec order and ``image_message`` ((H, W, 3) uint8 rgb
    frame -> Image; default rgb8) may be changed while it runs, to inject bad input. Frames
    whose number (per camera, from 0) is in ``skip`` are stamped but not sent, as if lost on
    the way; ``unsent`` has their stamps (s) per camera. A frame is stamped with the time it
    was due (a camera's capture time), however late this thread publishes it.
    """

    def __init__(self, node: Node, robot: str, spec: EmbodimentSpec, joint_rate: float = 100.0,
                 width: int | None = None, height: int | None = None, joints: list[str] | None = None,
                 cameras: bool = True) -> None:
        names = load_topics()
        self.spec = spec
        self.cams = [(c, node.create_publisher(Image, names.camera_topic(robot, c.name), SENSOR_QOS))
                     for c in (spec.cameras if cameras else ())]
        self.size = {c.name: (height or c.height, width or c.width) for c in spec.cameras}
        self.js = node.create_publisher(JointState, names.resolve(robot, names.joint_states), SENSOR_QOS)
        self.cmd = node.create_publisher(JointTrajectory, names.resolve(robot, names.command), 10)
        self.instr = node.create_publisher(String, names.resolve(robot, names.instruction), LATCHED_QOS)
        self.task = node.create_publisher(String, names.resolve(robot, names.task), LATCHED_QOS)
        self.joint_rate = joint_rate
        self.joints = [spec.joint_names.index(j) for j in (joints or spec.joint_names)]
        self.positions = spec.home_positions.copy()
        self.image_message: Callable[[np.ndarray], Image] = lambda frame: numpy_to_image(frame, "rgb8")
        self.sent: dict[str, int] = {}
        self.frames = 0  # images sent, all cameras
        self.skip: set[int] = set()
        self.unsent: dict[str, list[float]] = {c.name: [] for c in spec.cameras}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def announce(self, task: str, category: str, instruction: str) -> None:
        self.task.publish(String(data=f'{{"task": "{task}", "category": "{category}"}}'))
        self.instr.publish(String(data=instruction))

    def command(self) -> None:
        q = self.spec.home_positions
        traj = Trajectory.from_arrays(self.spec.joint_names, np.array([0.5, 1.0]), np.stack([q, q]))
        self.cmd.publish(trajectory_to_msg(traj))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        t0, wall0 = time.monotonic(), time.time()
        next_js, next_cam = t0, {c.name: t0 for c, _ in self.cams}
        count = {c.name: 0 for c, _ in self.cams}
        names = [self.spec.joint_names[i] for i in self.joints]
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_js:
                self.js.publish(arrays_to_joint_state(names, self.positions[self.joints], stamp=time.time()))
                self.sent["joint_states"] = self.sent.get("joint_states", 0) + 1
                next_js += 1.0 / self.joint_rate
            for k, (cam, pub) in enumerate(self.cams):
                if now >= next_cam[cam.name]:
                    captured = wall0 + (next_cam[cam.name] - t0)
                    next_cam[cam.name] += 1.0 / cam.fps
                    if count[cam.name] + len(self.unsent[cam.name]) in self.skip:
                        self.unsent[cam.name].append(captured)
                        continue
                    img = np.full((*self.size[cam.name], 3), frame_value(k, count[cam.name]), np.uint8)
                    msg = self.image_message(img)
                    msg.header.stamp = seconds_to_time(captured)
                    pub.publish(msg)
                    count[cam.name] += 1
                    self.frames += 1
            time.sleep(max(0.0, min([next_js, *next_cam.values()]) - time.monotonic()))
        self.sent.update(count)
