"""gen_theta_ros.runtime.run_node with real rclpy, in a child process (it owns rclpy.init)."""

from __future__ import annotations

import subprocess
import sys

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
