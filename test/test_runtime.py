"""gen_theta_ros.runtime.run_node with real rclpy, in a child process (it owns rclpy.init)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

CHILD = """
import gc
import rclpy
from gen_theta_ros.runtime import run_node

def make_node():
    node = rclpy.create_node("runtime_probe")
    def stop():
        raise KeyboardInterrupt  # what Ctrl-C raises in the spin
    node.create_timer(0.05, stop)
    return node

assert gc.get_freeze_count() == 0
rc = run_node(make_node, [])
print(rc, gc.get_freeze_count())
"""


def test_run_node_spins_and_freezes_what_start_up_built() -> None:
    """Start-up objects are frozen before the spin, so full collections stay short while driving."""
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rc, frozen = out.stdout.split()
    assert rc == "0"
    assert int(frozen) > 10_000  # rclpy, numpy, the message types: tens of thousands of objects


CLOSING = """
import os, signal, sys, threading
import rclpy
from rclpy.node import Node
from std_msgs.msg import String
from gen_theta_ros.runtime import run_node

class Probe(Node):
    def __init__(self):
        super().__init__("runtime_close_probe")
        self.create_timer(0.05, self.tick)

    def tick(self):
        if sys.argv[1] == "hang":
            print("hung", flush=True)
            threading.Event().wait()  # a callback that never returns
        os.kill(os.getpid(), signal.SIGINT)

    def close(self):
        # what a deactivating policy server does: send on a live context
        pub = self.create_publisher(String, "bye", 1)
        pub.publish(String(data="bye"))
        print("closed with ROS", rclpy.ok(), flush=True)

print("rc", run_node(Probe, []), flush=True)
"""


def test_ctrl_c_closes_the_node_while_ros_still_runs() -> None:
    """SIGINT only asks the spin to stop: close() can still publish (a policy server's last hold)."""
    out = subprocess.run([sys.executable, "-c", CLOSING, "stop"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["closed with ROS True", "rc 0"], out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr


def test_a_second_ctrl_c_breaks_a_hung_callback() -> None:
    """The first signal waits for the running callback; the next ones interrupt it, and close still runs."""
    proc = subprocess.Popen([sys.executable, "-c", CLOSING, "hang"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline() == "hung\n"
        proc.send_signal(signal.SIGINT)  # asks for the stop: the callback still hangs
        deadline = time.monotonic() + 30
        while proc.poll() is None:  # signals sent before the handler ran count once: repeat until it ends
            assert time.monotonic() < deadline, "a repeated SIGINT did not end the hung node"
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert stdout.splitlines() == ["closed with ROS True", "rc 0"], stdout + stderr
