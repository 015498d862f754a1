"""Node start-up and shutdown shared by every gen_theta executable.

``run_node`` does what ros2/examples' ``main()`` does: init, spin, and a clean
shutdown on Ctrl-C, SIGTERM (what `ros2 launch` sends after SIGINT) or SIGHUP (the
terminal closed). The signals only ask the spin to stop: the node closes while ROS
still runs (a policy server's last hold reaches the robot), then the context shuts
down. ``-h``/``--help`` prints the node module's docstring instead of starting the node.
"""

from __future__ import annotations

import faulthandler
import gc
import os
import signal
import sys
from collections.abc import Callable
from types import FrameType

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

from gen_theta_model.config import share_dir
from gen_theta_ros.lifecycle import ManagedNode

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# How often the spin looks at the stop request (s): the latency of a Ctrl-C.
STOP_POLL_S = 0.1


def use_project_dds_profile() -> None:
    """Point Fast DDS at the shipped profile (larger shared-memory segment for images),
    unless the user already chose one.
    """
    profile = share_dir() / "config" / "fastdds.xml"
    if profile.is_file():
        os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(profile))


def wants_help(argv: list[str]) -> bool:
    """Tell whether ``-h`` or ``--help`` comes before ``--ros-args`` (after it, ROS owns the words)."""
    own = argv[: argv.index("--ros-args")] if "--ros-args" in argv else argv
    return bool({"-h", "--help"} & set(own))


class StopRequest:
    """Signal handler: the first stop signal asks the spin to end; a second one raises
    KeyboardInterrupt, which breaks a callback that hangs.

    Why not rclpy's own handlers: they shut the context down from a separate thread while
    the main thread runs, so the node's close raced the shutdown (a deactivating policy
    server's action client saw "context is invalid", a spin taking a message saw a
    half-destroyed subscription). Here the context stays valid until the node has closed.
    """

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum


def run_node(make_node: Callable[[], Node], argv: list[str] | None = None) -> int:
    """Init rclpy with ``argv`` (ROS arguments allowed), build the node, spin until a stop.

    ``make_node`` runs after ``rclpy.init`` so that it may declare parameters. SIGINT,
    SIGTERM and SIGHUP end the spin (``StopRequest``; within ``STOP_POLL_S``, or after the
    running callback returns), as does a context shut down from inside (a node that failed);
    ``node.close()`` then runs with ROS still up, so nodes close files cleanly under launch
    too, and the context shuts down last. While the node closes, those signals are ignored.
    A managed node (gen_theta_ros/lifecycle.py) is configured and activated first when its
    ``autostart`` parameter is true (what made configure fail is raised, as an error in the
    node's constructor is). With ``-h`` or ``--help`` it prints the docstring of
    ``make_node``'s module and returns 0. Returns 1 when the node shut itself down for a
    failure (a non-empty ``failure`` attribute): launchers take 0 for a clean stop.
    """
    own = sys.argv[1:] if argv is None else list(argv)
    if wants_help(own):
        print(sys.modules[make_node.__module__].__doc__)
        return 0
    use_project_dds_profile()
    # A crash in native code (DDS, pybullet, torch) ends the process without a word, and an open
    # episode or goal with it; the Python stacks of every thread go to the node's log instead.
    faulthandler.enable()
    rclpy.init(args=[sys.argv[0], *own], signal_handler_options=SignalHandlerOptions.NO)
    stop = StopRequest()
    for sig in STOP_SIGNALS:
        signal.signal(sig, stop)
    node = None
    code = 0
    try:
        node = make_node()
        name = node.get_name()  # (a node whose context is shut down has no name to give)
        if isinstance(node, ManagedNode) and stop.signum is None:
            node.autostart()
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
        while stop.signum is None and rclpy.ok():
            executor.spin_once(timeout_sec=STOP_POLL_S)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        # A node that fails on one of its own threads shuts the context down from there; a spin
        # that is building its wait set at that moment raises RCLError ("the given context is
        # not valid", ros2/ros2cli#854) instead of ExternalShutdownException. Only an error
        # while the context is still valid is a real failure.
        if rclpy.ok():
            raise
    finally:
        if node is not None:
            code = _close(node, name)
        rclpy.try_shutdown()
    return code


def _close(node: Node, name: str) -> int:
    """Close and destroy ``node`` (named ``name``); 1 if it failed (its ``failure`` printed), else 0."""
    # Closing (an open episode, files) must not be cut short by the next signal: a terminal's
    # Ctrl-C reaches a tool's child once directly and once more from the tool's stop. A close
    # that hangs still ends with SIGKILL.
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    failure = getattr(node, "failure", None) and f"{name}: {node.failure}"
    close = getattr(node, "close", None)
    if callable(close):
        close()
    node.destroy_node()
    if failure:
        print(failure, file=sys.stderr)
        return 1
    return 0
