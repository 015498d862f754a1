"""One client that drives a robot's episodes: the sim's parameters and reset, its task state, the recorder.

``EpisodeClient`` is a node spun by a background executor (``spinning``); its methods
block the calling thread on a condition with a deadline, never on a fixed sleep::

    with spinning(EpisodeClient("arm6", recorder=True)) as client:
        client.wait_ready(60.0, check=procs.check_alive)
        state = client.reset("stack", seed=3)  # the TaskState of the new episode
        bag = client.start_recording()
        final = client.wait_done(state.episode, state.time_limit + 15.0, check=procs.check_alive)
        client.mark_success(final.success)
        summary = client.stop_recording()

`gen-theta collect` and the demo use it as it is; rollout adds the policy server's
topics and services to it. The sim node is ``/<robot>/sim_robot``, as in the bring-up.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from rcl_interfaces.srv import SetParameters
from rclpy.client import Client
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from std_msgs.msg import String
from std_srvs.srv import SetBool, Trigger

from gen_theta_model.sim.task_state import TaskState
from gen_theta_model.topics import load_topics
from gen_theta_ros.qos import LATCHED_QOS

T = TypeVar("T")
N = TypeVar("N", bound=Node)
STOP_POLL_S = 0.1  # how soon a spinning() thread sees that its `with` block ended
UNKNOWN_NODE = "_NODE_NAME_UNKNOWN_"  # rmw's node name of an endpoint whose node is not yet discovered


class EpisodeClient(Node):
    """Client of ``robot``'s sim (and, with ``recorder``, of its recorder); see the module docstring."""

    def __init__(self, robot: str, recorder: bool = False, name: str = "episode_client",
                 sim_node: str = "sim_robot") -> None:
        super().__init__(name)
        t = load_topics()
        self.robot = robot
        self.sim_node = sim_node  # the name of the sim node this client waits for, in /<robot>
        self.state: TaskState | None = None  # the latest sim/task message
        self._changed = threading.Condition()
        self.reset_client = self.create_client(Trigger, t.resolve(robot, t.services.sim_reset))
        self.sim_params = self.create_client(SetParameters, f"/{robot}/{sim_node}/set_parameters")
        self.command_topic = t.resolve(robot, t.command)
        self.joint_topic = t.resolve(robot, t.joint_states)
        self.recorder: dict[str, Client] = {}
        if recorder:
            srv = t.services
            self.recorder = {
                "start": self.create_client(Trigger, t.resolve(robot, srv.recorder_start)),
                "stop": self.create_client(Trigger, t.resolve(robot, srv.recorder_stop)),
                "mark": self.create_client(SetBool, t.resolve(robot, srv.recorder_mark_success)),
            }
        self.create_subscription(String, t.resolve(robot, t.task), self._on_task, LATCHED_QOS)

    def _on_task(self, msg: String) -> None:
        state = TaskState.from_json(msg.data)
        with self._changed:
            self.state = state
            self._changed.notify_all()

    def notify(self) -> None:
        """Wake ``wait_for`` callers: a subclass calls this when data its conditions read changes."""
        with self._changed:
            self._changed.notify_all()

    # -- waiting ---------------------------------------------------------------------------
    def wait_for(self, condition: Callable[[], T], timeout: float, what: str,
                 check: Callable[[], None] | None = None) -> T:
        """Return ``condition()`` once it is truthy; ``check`` (e.g. children alive) runs each 0.5 s.

        Raises TimeoutError naming ``what`` after ``timeout`` s, and KeyboardInterrupt once
        Ctrl-C (SIGINT to this process alone, too) has shut the ROS context down.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                value = condition()
                if value:
                    return value
                if not self.context.ok():  # rclpy's SIGINT handler shut the context down: nothing will come
                    raise KeyboardInterrupt
                if check is not None:
                    check()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
                self._changed.wait(min(0.5, left))

    def wait_ready(self, timeout: float, check: Callable[[], None] | None = None, expert: bool = True) -> None:
        """Wait until our sim node ``sim_node`` publishes joint states and its services (and the
        recorder's, and with ``expert`` a command publisher) are up.
        """
        clients = [self.reset_client, self.sim_params, *self.recorder.values()]

        def ready() -> bool:
            return bool(self.sim_publishers(ours=True)) and all(c.service_is_ready() for c in clients) and (
                not expert or self.count_publishers(self.command_topic) > 0)

        what = f"the sim ({self.sim_node})" + (", the recorder" if self.recorder else "") + (
            " and the expert" if expert else "")
        self.wait_for(ready, timeout, what, check)

    def sim_publishers(self, ours: bool, unnamed: bool = False) -> list[str]:
        """Return the full names of the nodes that publish this robot's joint states: with ``ours``
        our sim node ``sim_node`` alone, else every other one.

        A publisher whose node is not yet known (DDS discovered the endpoint before the node
        names, which arrive on their own topic: rmw says ``_NODE_NAME_UNKNOWN_``) could be our
        own sim: it is left out until it is known, unless ``unnamed`` (our sim is not started,
        so every publisher is another's).
        """
        names = []
        for p in self.get_publishers_info_by_topic(self.joint_topic):
            if p.node_name != UNKNOWN_NODE:
                names.append(f"{p.node_namespace.rstrip('/')}/{p.node_name}")
            elif unnamed:  # (never our sim's name: the filter below leaves it to ``ours=False``)
                names.append("a node not yet named")
        return [n for n in names if (n == f"/{self.robot}/{self.sim_node}") == ours]

    def in_use(self, discovery_s: float, own_sim_up: bool = False) -> str:
        """Say what else publishes this robot's joint states ("" if nothing): any node but our sim
        node ``sim_node``; before our sim is up (not ``own_sim_up``) a sim reset already served too.

        Other publishers are told from ours by node name, never by count: a client that has not yet
        seen our sim would take another one for it. DDS discovery is asynchronous: an empty answer
        means nothing was found within ``discovery_s`` s (on one idle machine other participants
        show up within about 0.1 s; on a loaded one later).
        """
        def found() -> str:
            others = self.sim_publishers(ours=False, unnamed=not own_sim_up)
            return f"{self.joint_topic} already has a publisher ({', '.join(others)})" if others else ""

        # The publisher names who drives the robot; a served reset, which discovery may deliver
        # first, only that someone does: it answers only once the publisher did not show up.
        try:
            return self.wait_for(found, discovery_s, "other publishers")
        except TimeoutError:
            pass
        if not own_sim_up and self.reset_client.service_is_ready():
            return f"{self.reset_client.srv_name} is already served"
        return ""

    def wait_done(self, episode: int, timeout: float, check: Callable[[], None] | None = None) -> TaskState:
        """Wait for sim/task to report ``episode`` done (success or its time limit); return that state."""
        return self.wait_for(lambda: self.state if self.state and self.state.episode == episode and self.state.done
                             else None, timeout, f"the end of episode {episode}", check)

    # -- services --------------------------------------------------------------------------
    def call(self, client: Client, request: Any, timeout: float = 30.0) -> Any:
        """Call ``client``'s service and return the response; RuntimeError/TimeoutError name it."""
        if not client.wait_for_service(timeout_sec=timeout):
            raise TimeoutError(f"service {client.srv_name} is not available after {timeout:.0f} s")
        future = client.call_async(request)
        answered = threading.Event()
        future.add_done_callback(lambda _: answered.set())
        if not answered.wait(timeout):
            client.remove_pending_request(future)
            raise TimeoutError(f"service {client.srv_name} did not answer within {timeout:.0f} s")
        return future.result()

    def set_params(self, client: Client, **values: object) -> None:
        """Set parameters through a node's ``set_parameters`` service ``client``."""
        req = SetParameters.Request(parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()])
        failed = [r.reason for r in self.call(client, req).results if not r.successful]
        if failed:
            raise RuntimeError(f"{client.srv_name}: {failed[0]}")

    def reset(self, task: str, seed: int, timeout: float = 10.0) -> TaskState:
        """Reset the sim to ``task``/``seed``; return the new episode's state once sim/task announces it."""
        before = self.state.episode if self.state else 0
        self.set_params(self.sim_params, task=task, seed=seed)
        reset = self.call(self.reset_client, Trigger.Request())
        if not reset.success:
            raise RuntimeError(f"sim/reset to {task}/{seed} failed: {reset.message}")
        return self.wait_for(lambda: self.state if self.state and self.state.episode > before else None, timeout,
                             f"sim/task announcing {task}/{seed}")

    def start_recording(self) -> Path:
        """Start a recorder episode; return its bag directory."""
        resp = self.call(self.recorder["start"], Trigger.Request())
        if not resp.success:
            raise RuntimeError(f"recorder/start failed: {resp.message}")
        return Path(resp.message)

    def mark_success(self, success: bool) -> None:
        """Mark the open (or last) episode's success."""
        resp = self.call(self.recorder["mark"], SetBool.Request(data=success))
        if not resp.success:
            raise RuntimeError(f"recorder/mark_success failed: {resp.message}")

    def stop_recording(self) -> dict[str, Any]:
        """Stop the recorder episode; return its summary (path, status, error, messages, drops)."""
        resp = self.call(self.recorder["stop"], Trigger.Request())
        if not resp.message.startswith("{"):  # "not recording": the episode ended before (error, cap)
            return {"status": resp.message}
        return json.loads(resp.message)


@contextmanager
def spinning(node: N, priority: int = 0) -> Iterator[N]:
    """Spin ``node`` in a background thread (SCHED_FIFO ``priority`` if > 0 and permitted); destroy it on exit.

    The thread is joined before the node is destroyed: destroying a node that a thread still
    spins, or leaving that thread inside rcl while the interpreter exits, ends in a segfault
    (seen after SIGINT to `gen-theta collect`). ``Executor.shutdown`` does not wait for it.
    """
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    stop = threading.Event()

    def spin() -> None:
        if priority > 0:
            try:
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
            except PermissionError:
                print(f"{node.get_name()}: no permission for SCHED_FIFO priority {priority}; receive times "
                      "include this process's scheduling delays", file=sys.stderr)
        try:
            while not stop.is_set() and node.context.ok():
                executor.spin_once(timeout_sec=STOP_POLL_S)
        except ExternalShutdownException:  # Ctrl-C shut the context down: the main thread ends as well
            pass
        except Exception:
            # A shutdown while the executor builds its wait set raises RCLError ("the given context
            # is not valid") instead; only an error of a valid context is one.
            if node.context.ok():
                raise

    thread = threading.Thread(target=spin, name=f"spin {node.get_name()}", daemon=True)
    thread.start()
    try:
        yield node
    finally:
        stop.set()
        thread.join()
        executor.shutdown()
        node.destroy_node()


def print_table(rows: list[dict]) -> None:
    """Print episode rows (dicts with the same keys) as a plain aligned text table."""
    if not rows:
        return
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in keys}
    print("  ".join(k.ljust(widths[k]) for k in keys))
    print("  ".join("-" * widths[k] for k in keys))
    for r in rows:
        print("  ".join(str(r[k]).ljust(widths[k]) for k in keys))
