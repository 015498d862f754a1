"""Commands through ros2_control's actions, over real DDS.

The bring-up graph (sim_robot + policy_server, a real tiny checkpoint) drives arm6 through
FollowJointTrajectory goals and a GripperCommand gripper with compressed (JPEG) cameras, with
a ParallelGripperCommand gripper, and through the JointTrajectory topic with raw cameras. A
FollowJointTrajectory server in this test process (a controller that accepts, aborts or
rejects goals, or goes away) shows the server holding and reporting on /diagnostics. Without
control_msgs, the action path fails in one line and the sim still follows the topic.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import rclpy
from rclpy.action import ActionServer, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
from ros_helpers import ros_node, wait_for
from sensor_msgs.msg import JointState
from server_helpers import Listener, serving, set_enabled, tiny_checkpoint
from trajectory_msgs.msg import JointTrajectory

from gen_theta_model.adapter import Command
from gen_theta_model.embodiment import load_robot
from gen_theta_model.harmonic import CommandWindow
from gen_theta_model.topics import load_topics
from gen_theta_model.trajectory import Trajectory
from gen_theta_ros.action_commander import ActionCommander
from gen_theta_ros.conversions import joint_state_to_arrays, trajectory_to_msg
from gen_theta_ros.graph import BringupArgs, GraphProcesses, bringup_graph
from gen_theta_ros.qos import SENSOR_QOS

# control_msgs: a ROS 2 install, or the ros_control_msgs wheel of ../shared/ros2-wheels (`make test` installs it)
FollowJointTrajectory = pytest.importorskip("control_msgs.action", reason="no control_msgs").FollowJointTrajectory
TOPICS = load_topics()
SPEC = load_robot("arm6")
PATHS = {
    "action": {"command_interface": "action", "gripper_interface": "gripper_command", "camera_transport": "compressed"},
    "parallel_gripper": {"command_interface": "action", "gripper_interface": "parallel_gripper_command"},
    "topic": {"command_interface": "topic", "camera_transport": "raw"},
}
# Run gen-theta with control_msgs made unimportable (a None entry in sys.modules makes `import` fail).
WITHOUT_CONTROL_MSGS = ("import sys; sys.modules['control_msgs'] = None; "
                        "from gen_theta_ros.cli import main; sys.exit(main(sys.argv[1:]))")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("actions") / "run", {"arm6": 0.0})


@contextmanager
def spun_node(name: str):
    """Run an rclpy node on a thread; ``node.joints``: the latest arm6 joint positions (spec order)."""
    rclpy.init()
    node = rclpy.create_node(name)
    node.joints = None

    def keep(msg: JointState) -> None:
        names, q, _, _ = joint_state_to_arrays(msg)
        node.joints = SPEC.reorder_from(names, q)

    node.create_subscription(JointState, TOPICS.resolve("arm6", TOPICS.joint_states), keep, SENSOR_QOS)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    try:
        yield node
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()


@pytest.mark.parametrize("path", PATHS)
def test_the_policy_drives_the_sim(path: str, checkpoint: Path, tmp_path: Path) -> None:
    args = BringupArgs.from_strings({"robot": "arm6", "checkpoint": str(checkpoint), **PATHS[path]})
    logs = tmp_path / "logs"
    with GraphProcesses(bringup_graph(args), log_dir=logs), spun_node("drive_test") as node:
        listener = Listener(node, ["arm6"])

        def driven():
            """arm6 driven by the policy for two chunks, its arm 0.05 rad away from home"""
            diag = listener.diag.get("arm6", {})
            moved = node.joints is not None and np.abs(node.joints - SPEC.home_positions)[:-1].max() > 0.05
            return diag.get("message") == "driving" and int(diag["chunks"]) >= 2 and moved and diag

        try:
            diag = listener.wait(driven, timeout=120)
        except AssertionError as err:
            raise AssertionError(f"{err}: diagnostics {listener.diag}, joints {node.joints}") from None
        if path != "topic":
            assert not listener.commands["arm6"]  # nothing on the topic: every window went as a goal
            assert int(diag["goals_accepted"]) >= 2 and diag["controller_faults"] == "0"
            # Goals when the plan changes, not every tick, once driving (this untrained policy's first
            # chunk, from standing with no prefix, is a rate-clamped move: a goal per clamped tick).
            def ten_more_chunks():
                """10 more chunks on arm6"""
                now = listener.diag.get("arm6", {})
                return int(now.get("chunks", 0)) >= int(diag["chunks"]) + 10 and now

            later = listener.wait(ten_more_chunks, timeout=60)
            assert int(later["goals_sent"]) - int(diag["goals_sent"]) < (int(later["ticks"]) - int(diag["ticks"])) / 2
            assert int(diag["gripper_goals_accepted"]) >= 1  # the sim's gripper action server took the gripper
        else:
            assert len(listener.commands["arm6"]) >= 20 and "goals_sent" not in diag
    for log in logs.iterdir():
        assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


class Controller:
    """A FollowJointTrajectory server in this process: ``mode`` accept (succeeds at once), abort
    (PATH_TOLERANCE_VIOLATED), reject, or late reject (each request waits for its event in
    ``waiting`` to be set, then is refused; needs a multi-threaded executor and a reentrant
    ``group``); ``answered`` counts the late refusals sent.
    """

    def __init__(self, node, name: str, group: ReentrantCallbackGroup | None = None) -> None:
        self.mode = "accept"
        self.waiting: list[threading.Event] = []
        self.answered = 0
        self.server = ActionServer(node, FollowJointTrajectory, name, self._execute, goal_callback=self._goal,
                                   callback_group=group)

    def _goal(self, goal) -> GoalResponse:
        if self.mode == "late reject":
            gate = threading.Event()
            self.waiting.append(gate)
            gate.wait(timeout=120)
            self.answered += 1
            return GoalResponse.REJECT
        return GoalResponse.REJECT if self.mode == "reject" else GoalResponse.ACCEPT

    def _execute(self, handle) -> FollowJointTrajectory.Result:
        result = FollowJointTrajectory.Result()
        if self.mode == "abort":
            result.error_code = FollowJointTrajectory.Result.PATH_TOLERANCE_VIOLATED
            result.error_string = "arm6_joint2 left its path tolerance"
            handle.abort()
        else:
            handle.succeed()
        return result


def test_rejected_aborted_and_missing_controllers_hold_the_robot(checkpoint: Path, tmp_path: Path) -> None:
    params = ["command_interfaces:=[action]", "joint_timeout_s:=0.5", "camera_timeout_s:=1.0"]
    with serving(tmp_path, checkpoint, ["arm6"], params, ["arm6"], "action_fault_test") as env:
        node, listener = env["node"], env["listener"]
        name = TOPICS.resolve("arm6", TOPICS.actions.follow_joint_trajectory)
        controller = Controller(node, name)

        def diag() -> dict:
            return listener.diag.get("arm6", {})

        def driving():
            """arm6 driving through accepted goals"""
            return diag().get("message") == "driving" and int(diag().get("goals_accepted", 0)) > 10

        listener.wait(driving, timeout=120)
        for mode, what in (("abort", "goal aborted PATH_TOLERANCE_VIOLATED: arm6_joint2 left its path tolerance"),
                           ("reject", "rejected the goal")):
            controller.mode = mode

            def faulted():
                """arm6 holding on a controller fault (/diagnostics)"""
                return "controller fault" in diag().get("message", "") and dict(diag())

            held = listener.wait(faulted, timeout=30)
            assert held["level"] == 2 and what in held["message"], held
            # Holding: the server sends no goal after the fault (its own count: requests it sent
            # before may still be on their way to this process's controller).
            sent, heard = held["goals_sent"], listener.diagnostics
            listener.wait(lambda heard=heard: listener.diagnostics >= heard + 2, timeout=30)
            assert diag()["goals_sent"] == sent
            assert "controller fault" in diag()["message"]  # latched
            controller.mode = "accept"
            assert set_enabled(node, "arm6", True).success
            listener.wait(driving, timeout=30)
        assert int(diag()["controller_faults"]) >= 2
        controller.server.destroy()

        def missing():
            """arm6 holding on a missing controller (WARN)"""
            return diag().get("message", "").startswith("holding: controller not available") and diag()["level"] == 1

        listener.wait(missing, timeout=60)
        controller = Controller(node, name)
        listener.wait(driving, timeout=60)  # back without enabling: nothing was latched


def test_a_refusal_that_arrives_after_the_robot_was_enabled_again_changes_nothing(checkpoint: Path,
                                                                                 tmp_path: Path) -> None:
    """Goals sent before a hold are answered late: the first refusal holds the robot; the others,
    answered once it was enabled again, are of the old plan and latch no new fault.
    """
    with serving(tmp_path, checkpoint, ["arm6"], ["command_interfaces:=[action]"], ["arm6"],
                 "late_refusal_test") as env:
        listener = env["listener"]
        controller_node = rclpy.create_node("late_controller")
        executor = MultiThreadedExecutor(num_threads=6)  # a thread for every request kept waiting
        executor.add_node(controller_node)
        threading.Thread(target=executor.spin, daemon=True).start()
        controller = Controller(controller_node, TOPICS.resolve("arm6", TOPICS.actions.follow_joint_trajectory),
                                ReentrantCallbackGroup())
        try:
            def diag() -> dict:
                return listener.diag.get("arm6", {})

            def driving():
                """arm6 driving through accepted goals"""
                return diag().get("message") == "driving" and int(diag().get("goals_accepted", 0)) > 10

            listener.wait(driving, timeout=120)
            controller.mode = "late reject"
            wait_for(lambda: len(controller.waiting) >= 2, 60, "two goal requests waiting for their answers")
            controller.mode = "accept"
            controller.waiting[0].set()

            def faulted():
                """arm6 holding on the first refusal"""
                return "rejected the goal" in diag().get("message", "") and dict(diag())

            listener.wait(faulted, timeout=30)
            accepted = int(diag()["goals_accepted"])
            assert set_enabled(env["node"], "arm6", True).success

            def driving_again():
                """arm6 driving through goals accepted after the enable"""
                return driving() and int(diag()["goals_accepted"]) > accepted

            listener.wait(driving_again, timeout=60)
            late = len(controller.waiting)
            for gate in controller.waiting:
                gate.set()
            wait_for(lambda: controller.answered >= late, 30, "the late refusals sent")
            heard = listener.diagnostics
            listener.wait(lambda: listener.diagnostics >= heard + 3, timeout=30)
            assert diag()["message"] == "driving" and diag()["controller_faults"] == "1", diag()
        finally:
            for gate in controller.waiting:
                gate.set()
            executor.shutdown()
            controller_node.destroy_node()


def test_without_control_msgs_the_action_path_says_so_and_the_topic_path_works(checkpoint: Path,
                                                                               tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", WITHOUT_CONTROL_MSGS, "serve", str(checkpoint), "--ros-args",
                          "-p", "command_interfaces:=[action]"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1].startswith("gen-theta serve: error: the action interface needs the "
                                                          "control_msgs interfaces, which are not installed"), out
    log = tmp_path / "sim.log"
    sim = subprocess.Popen([sys.executable, "-c", WITHOUT_CONTROL_MSGS, "sim", "--ros-args", "-p", "robot:=arm6",
                            "-p", "cameras:=false"], stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        with spun_node("no_control_msgs_test") as node:
            wait_for(lambda: node.joints is not None, 60, "joint_states of the sim")
            target = SPEC.home_positions.copy()
            target[0] += 0.3
            command = node.create_publisher(JointTrajectory, TOPICS.resolve("arm6", TOPICS.command), 10)
            traj = trajectory_to_msg(Trajectory.from_arrays(SPEC.joint_names, [1.0], target[None]))
            wait_for(lambda: command.get_subscription_count() > 0, 30, "the sim subscribing to commands")
            command.publish(traj)
            wait_for(lambda: abs(node.joints[0] - target[0]) < 0.02, 30, "the sim following the topic")
    finally:
        sim.terminate()
        sim.wait(timeout=30)
    assert "no controller actions: the action interface needs the control_msgs interfaces" in log.read_text()


def test_goals_queued_on_the_command_thread_go_out_on_the_executors():
    """The ActionClient of rclpy is not thread-safe (ros2/rclpy#1123): ``send`` only queues, ``flush``
    sends, woken by the guard condition on the executor's thread; a goal queued before a ``stop`` never goes out.
    """
    spec = load_robot("arm6")
    q = spec.home_positions

    def command(start: float) -> Command:
        times, qs = np.array([0.02, 0.04]), np.stack([q, q + 0.01])
        zeros = np.zeros_like(qs)
        traj = Trajectory.from_arrays(spec.joint_names, times, qs, zeros, zeros, start_time=start)
        return Command(CommandWindow(start, times, qs, zeros, zeros), traj, clamped=False)

    with ros_node("commander_threads") as node:
        commander = ActionCommander(node, "arm6", spec, "trajectory", on_fault=lambda why: None)
        sent_on: list[str] = []
        send = commander._send
        commander._send = lambda *a: (sent_on.append(threading.current_thread().name), send(*a))
        worker = threading.Thread(target=commander.send, args=(command(10.0),), name="commands")
        worker.start()
        worker.join()
        assert sent_on == [] and commander.counts()["goals_sent"] == "0"  # queued only
        executor = SingleThreadedExecutor()
        executor.add_node(node)

        def spun_until(condition):  # each spin_once runs one ready callback: the guard condition's, or another
            executor.spin_once(timeout_sec=0.05)
            return condition()

        wait_for(lambda: spun_until(lambda: sent_on), 10, "the queued goal sent by the executor")
        assert sent_on == [threading.current_thread().name] and commander.counts()["goals_sent"] == "1"

        worker = threading.Thread(target=commander.send, args=(command(20.0),), name="commands")
        worker.start()
        worker.join()
        commander.stop()  # a hold: the queued goal belongs to the old plan
        wait_for(lambda: spun_until(lambda: not commander._queue), 10, "the executor's flush of the queue")
        assert commander.counts()["goals_sent"] == "1"
        executor.shutdown()
