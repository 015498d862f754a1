"""Node start-up and shutdown shared by every gen_theta executable.

``run_node`` does what ros2/examples' ``main()`` does: init, spin, and a clean
shutdown on Ctrl-C or an external shutdown (Kilted raises ExternalShutdownException
when the context is shut down from outside, e.g. by `ros2 launch` on SIGINT).
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node

from gen_theta_model.config import share_dir


def use_project_dds_profile() -> None:
    """Point Fast DDS at the shipped profile (larger shared-memory segment for images),
    unless the user already chose one.
    """
    profile = share_dir() / "config" / "fastdds.xml"
    if profile.is_file():
        os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(profile))


def run_node(make_node: Callable[[], Node], argv: list[str] | None = None) -> int:
    """Init rclpy with ``argv`` (ROS arguments allowed), build the node, spin until shutdown.

    ``make_node`` runs after ``rclpy.init`` so that it may declare parameters.
    rclpy.init's own handlers turn SIGINT and SIGTERM into a context shutdown, which
    ends the spin with ExternalShutdownException; ``node.close()`` then runs, so nodes
    close files cleanly under launch too. Returns 0, or 1 when the node shut itself down
    for a failure (a non-empty ``failure`` attribute): launchers take 0 for a clean stop.
    """
    use_project_dds_profile()
    args = [sys.argv[0]] + (sys.argv[1:] if argv is None else list(argv))
    rclpy.init(args=args)
    node = None
    failure = None
    try:
        node = make_node()
        name = node.get_name()
        # What a node holds after start-up (torch, message types, the model's config) lives
        # until shutdown. Frozen, the collector never walks it again: a full collection of
        # it took 40-120 ms in policy_server (gc.callbacks), a stall of 2-5 command slots.
        gc.freeze()
        # One executor thread: every node keeps its callbacks in the default mutually exclusive
        # group and does its own real-time work on its own threads. A MultiThreadedExecutor
        # gains nothing there and busy-waits while the group is taken: it held sim_robot at
        # 99% of a core and stalled its physics thread for up to 0.9 s (measured with py-spy).
        # The single-threaded executor is also several times cheaper per callback.
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        # rclpy's signal handler shuts the context down from another thread; a spin that
        # is building its wait set at that moment raises RCLError ("the given context is
        # not valid", ros2/ros2cli#854) instead of ExternalShutdownException. Only an
        # error while the context is still valid is a real failure.
        if rclpy.ok():
            raise
    finally:
        if node is not None:
            failure = getattr(node, "failure", None) and f"{name}: {node.failure}"
            close = getattr(node, "close", None)
            if callable(close):
                close()
            node.destroy_node()
        rclpy.try_shutdown()
    if failure:
        print(failure, file=sys.stderr)
        return 1
    return 0
