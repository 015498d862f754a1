"""The policy server and the recorder as managed (lifecycle) nodes, driven over real DDS.

A test node is the lifecycle manager: it calls ``<node>/change_state`` and ``<node>/get_state``
(lifecycle_msgs) as `ros2 lifecycle set` and nav2's lifecycle_manager do. The nodes start with
``autostart:=false``; every other test starts them with the default (configured and active).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import rclpy
from lifecycle_msgs.msg import Transition
from ros_helpers import Feeder, call, change_state, ros_node, start_exe, state, stop_or_kill, wait_for, wait_on_disk
from server_helpers import driving, serving, tiny_checkpoint
from std_srvs.srv import Trigger

from gen_theta_model.data.recording import read_record
from gen_theta_model.embodiment import load_robot
from gen_theta_model.topics import load_topics

TOPICS = load_topics()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("lifecycle") / "run", {"arm6": 0.0})


def test_policy_server_transitions(checkpoint, tmp_path):
    """Go unconfigured -> configure -> activate (commands) -> deactivate (one hold, then none) ->
    activate (driving again) -> deactivate -> cleanup -> shutdown (the process exits 0).
    """
    with serving(tmp_path, checkpoint, ["arm6"], ["autostart:=false"], ["arm6"], "lifecycle_test") as env:
        listener, proc = env["listener"], env["proc"]
        node = rclpy.create_node("lifecycle_manager_test")  # spun by the calls alone
        assert state(node, "/policy_server", timeout=120) == "unconfigured"
        assert change_state(node, "/policy_server", Transition.TRANSITION_CONFIGURE)
        assert state(node, "/policy_server") == "inactive"
        listener.wait(lambda: listener.diag.get("arm6", {}).get("message") == "holding: inactive", 30.0)
        assert listener.commands["arm6"] == []  # configured, not active: no command
        assert change_state(node, "/policy_server", Transition.TRANSITION_ACTIVATE)
        listener.wait(driving(listener, "arm6"), timeout=60.0)

        assert change_state(node, "/policy_server", Transition.TRANSITION_DEACTIVATE)
        t0 = time.monotonic()
        heard = listener.diagnostics

        def held():
            """Wait for the deactivation's hold, then two diagnostics arrays saying 'inactive'."""
            last = listener.commands["arm6"][-1][1]
            return (len(last.points) == 1 and listener.diagnostics >= heard + 2
                    and listener.diag["arm6"]["message"] == "holding: inactive")

        listener.wait(held, timeout=30.0)
        heard_hold, hold = len(listener.commands["arm6"]), listener.commands["arm6"][-1][1]
        assert not any(hold.points[0].velocities)  # nothing left moving
        # Then silence: two more diagnostics arrays come and no command. (A window sent just before the
        # deactivation may still be received after it returns, under load: it is before the hold.)
        heard = listener.diagnostics
        listener.wait(lambda: listener.diagnostics >= heard + 2, timeout=30.0)
        assert len(listener.commands["arm6"]) == heard_hold
        assert all(len(m.points) > 1 for m in listener.since("arm6", t0)[:-1])  # before the hold: windows

        t1 = time.monotonic()
        assert change_state(node, "/policy_server", Transition.TRANSITION_ACTIVATE)
        listener.wait(lambda: any(len(m.points) > 1 for m in listener.since("arm6", t1)), timeout=60.0)

        assert change_state(node, "/policy_server", Transition.TRANSITION_DEACTIVATE)
        assert change_state(node, "/policy_server", Transition.TRANSITION_CLEANUP)
        assert state(node, "/policy_server") == "unconfigured"
        assert change_state(node, "/policy_server", Transition.TRANSITION_UNCONFIGURED_SHUTDOWN)
        assert proc.wait(timeout=30) == 0, env["log"].read_text()
    log = env["log"].read_text()
    assert "serving ['arm6']: active, commanding" in log and "inactive: ['arm6'] hold where they are" in log
    assert "Traceback" not in log, log


def test_policy_server_configure_fails_in_one_line_on_a_bad_checkpoint(tmp_path):
    log = tmp_path / "server.log"
    proc = start_exe(["serve", str(tmp_path / "no_run"), "--ros-args", "-p", "autostart:=false"], log)
    try:
        with ros_node("lifecycle_fail_test") as node:
            assert not change_state(node, "/policy_server", Transition.TRANSITION_CONFIGURE)
            assert state(node, "/policy_server", timeout=120) == "unconfigured"
            assert change_state(node, "/policy_server", Transition.TRANSITION_UNCONFIGURED_SHUTDOWN)
        assert proc.wait(timeout=30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            stop_or_kill(proc, signal.SIGINT, 30)
    text = log.read_text()
    [line] = [ln for ln in text.splitlines() if "configure failed" in ln]
    assert f"{tmp_path / 'no_run'}" in line and "Traceback" not in text, text


def test_recorder_transitions(tmp_path):
    """Configure (services up, starts refused), activate (records), deactivate (the episode closes
    complete), shutdown from inactive (the process exits 0).
    """
    robot, spec = "arm6", load_robot("arm6")
    start, stop = (TOPICS.resolve(robot, getattr(TOPICS.services, s)) for s in ("recorder_start", "recorder_stop"))
    log = tmp_path / "recorder.log"
    proc = start_exe(["record", "--ros-args", "-p", f"robot:={robot}", "-p", f"output_dir:={tmp_path}",
                      "-p", "autostart:=false"], log)
    try:
        with ros_node("recorder_lifecycle_test") as node:
            assert state(node, "/recorder", timeout=120) == "unconfigured"
            assert change_state(node, "/recorder", Transition.TRANSITION_CONFIGURE)
            refused = call(node, Trigger, start, Trigger.Request())
            assert not refused.success and "not active" in refused.message
            assert change_state(node, "/recorder", Transition.TRANSITION_ACTIVATE)
            feeder = Feeder(node, robot, spec)
            feeder.start()
            try:
                bag = Path(call(node, Trigger, start, Trigger.Request()).message)
                wait_on_disk(bag, {TOPICS.resolve(robot, TOPICS.joint_states): 20})
                assert change_state(node, "/recorder", Transition.TRANSITION_DEACTIVATE)
            finally:
                feeder.stop()
            assert read_record(bag).status == "complete"
            assert not call(node, Trigger, stop, Trigger.Request()).success  # nothing open any more
            assert change_state(node, "/recorder", Transition.TRANSITION_INACTIVE_SHUTDOWN)
        assert proc.wait(timeout=30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            stop_or_kill(proc, signal.SIGINT, 30)
    assert "Traceback" not in log.read_text(), log.read_text()


def test_policy_server_reports_camera_frames_lost_in_transport(checkpoint, tmp_path):
    """Frames a camera stamped that never arrived: camera_lost_<camera> in the robot's status on
    /diagnostics; the camera's own status WARNs (logged once) while its frames arrive at under half its fps.
    """
    with serving(tmp_path, checkpoint, ["arm6"], [], [], "server_camera_loss_test") as env:
        node, listener = env["node"], env["listener"]
        spec = env["specs"]["arm6"]
        listener.wait(lambda: "arm6" in listener.diag, timeout=120.0)  # the server is up: it sees every frame
        feeder = Feeder(node, "arm6", spec)
        feeder.skip = {20, 21, 22, 40}
        env["feeders"]["arm6"] = feeder
        feeder.start()

        def lost():
            """Wait for camera_lost_<camera> >= 4 for every camera of arm6."""
            values = listener.diag.get("arm6", {})
            return all(int(values.get(f"camera_lost_{c.name}", 0)) >= 4 for c in spec.cameras)

        listener.wait(lost, timeout=60.0)
        feeder.skip = {*feeder.skip, *(i for i in range(feeder.frames, 10**6) if i % 4)}  # 3 in 4 lost

        def slow():
            """Wait for a WARN of every camera of arm6 saying its frames arrive slowly."""
            d = [listener.diag.get(f"arm6/{c.name}", {}) for c in spec.cameras]
            return all(x.get("level") == 1 and x["message"].startswith("arriving at") for x in d)

        listener.wait(slow, timeout=60.0)
        log = env["log"]
        wait_for(lambda: all(f"arm6/{c.name}: frames arrive at" in log.read_text() for c in spec.cameras), 30,
                 "the low rate logged")
