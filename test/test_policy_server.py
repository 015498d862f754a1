"""policy_server over real DDS: a real tiny checkpoint, two robots of different DoF, a slow policy.

One server process serves arm6 (whose policy commands positions beyond the URDF limits)
and humanoid16, with 300 ms of added inference delay. The robots' cameras and
joint_states come from ros_helpers.Feeder; the test listens to the command streams and
/diagnostics as any other node would.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from ros_helpers import Feeder
from server_helpers import driving, serving, set_enabled, tiny_checkpoint
from std_msgs.msg import Bool

from gen_theta_model.topics import load_topics
from gen_theta_ros.conversions import duration_to_seconds, time_to_seconds

ROBOTS = ("arm6", "humanoid16")
RATE = 50.0
TOPICS = load_topics()


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("server")
    ckpt = tiny_checkpoint(tmp / "run", {"arm6": 3.0, "humanoid16": 0.0})
    params = ["added_delay_ms:=300.0", f"command_rate_hz:={RATE}", "joint_timeout_s:=0.3", "camera_timeout_s:=0.6"]
    with serving(tmp, ckpt, ROBOTS, params, ROBOTS, "policy_server_test") as env:
        yield env


def test_commands_flow_while_a_slow_policy_infers(system):
    listener = system["listener"]
    for r in ROBOTS:
        listener.wait(driving(listener, r), timeout=60.0)
    t0 = time.monotonic()
    chunks0 = int(listener.wait(lambda: listener.diag.get("arm6"))["chunks"])

    def flowed():
        """Two more chunks inferred (300 ms each) and commands to both robots all along"""
        return (int(listener.diag["arm6"]["chunks"]) >= chunks0 + 2
                and all(len(listener.since(r, t0)) >= 30 for r in ROBOTS))

    listener.wait(flowed, timeout=60.0)  # rates and deadlines: bench/serve_deadlines.py
    now = time.time()
    for r in ROBOTS:
        msgs = listener.since(r, t0)
        spec = system["specs"][r]
        last = msgs[-1]
        assert list(last.joint_names) == spec.joint_names  # 7 and 16 joints on one server
        assert abs(time_to_seconds(last.header.stamp) - now) < 1.0
        p = last.points
        assert len(p[0].velocities) == spec.dof and len(p[0].accelerations) == spec.dof
        times = [duration_to_seconds(x.time_from_start) for x in p]
        assert np.all(np.diff(times) > 0) and times[0] > 0
    diag = listener.diag["arm6"]
    assert float(diag["latency_p50_ms"]) >= 300.0  # the added delay is measured as latency
    assert int(diag["delay_steps"]) >= 15


def test_out_of_limit_outputs_are_clamped_and_rate_limited(system):
    listener = system["listener"]
    spec = system["specs"]["arm6"]
    listener.wait(driving(listener, "arm6"), timeout=30.0)
    msgs = listener.since("arm6", time.monotonic() - 2.0)
    q = np.array([pt.positions for m in msgs for pt in m.points])
    assert np.all(q >= spec.lower - 1e-9) and np.all(q <= spec.upper + 1e-9)
    qd = np.array([pt.velocities for m in msgs for pt in m.points])
    assert np.all(np.abs(qd) <= spec.velocity_limits + 1e-9)
    for m in msgs:
        pos = np.array([pt.positions for pt in m.points])
        dt = np.diff([duration_to_seconds(pt.time_from_start) for pt in m.points])
        assert np.all(np.abs(np.diff(pos, axis=0)) <= spec.velocity_limits * dt[:, None] * (1 + 1e-4) + 1e-9)
    assert int(listener.wait(lambda: listener.diag.get("arm6"))["clamped_ticks"]) > 0


def test_stale_input_holds_and_the_server_resumes(system):
    listener, feeders = system["listener"], system["feeders"]
    listener.wait(driving(listener, "arm6"), timeout=30.0)
    feeders["arm6"].stop()

    def holding():
        """arm6 holding on stale input"""
        d = listener.diag.get("arm6", {})
        msgs = listener.commands["arm6"]
        return "stale" in d.get("message", "") and len(msgs[-1][1].points) == 1

    listener.wait(holding, timeout=10.0)
    hold = listener.since("arm6", time.monotonic() - 0.2)[-1].points[0]
    assert not np.any(hold.velocities)
    assert listener.wait(driving(listener, "humanoid16"))  # the other robot goes on
    feeders["arm6"] = Feeder(system["node"], "arm6", system["specs"]["arm6"])
    feeders["arm6"].start()
    listener.wait(driving(listener, "arm6"), timeout=20.0)
    assert listener.wait(lambda: listener.diag.get("arm6", {}).get("message") == "driving")


def test_enable_disable_and_estop(system):
    node, listener = system["node"], system["listener"]
    listener.wait(driving(listener, "arm6"), timeout=30.0)
    t0 = time.monotonic()
    assert set_enabled(node, "arm6", False).success

    def handed_over():
        """arm6's one hold after the disable, then humanoid16 commanded 25 times more"""
        arm6 = listener.arrivals("arm6", t0)
        holds = [t for t, m in arm6 if len(m.points) == 1]
        return holds and len(listener.since("humanoid16", holds[0])) >= 25 and holds[0]

    hold_time = listener.wait(handed_over, timeout=20.0)
    assert len(listener.since("arm6", hold_time)) == 1  # disabled: the stream stops after one hold
    assert set_enabled(node, "arm6", True).success
    listener.wait(driving(listener, "arm6"), timeout=20.0)

    estop = node.create_publisher(Bool, TOPICS.resolve("arm6", TOPICS.estop), 10)
    estop.publish(Bool(data=True))

    def stopped():
        """arm6 e-stop hold"""
        return listener.diag.get("arm6", {}).get("message") == "holding: e-stop"

    listener.wait(stopped, timeout=10.0)
    t0 = time.monotonic()
    held = listener.wait(lambda: len(listener.since("arm6", t0)) >= 20 and listener.since("arm6", t0), 10.0)
    assert all(len(m.points) == 1 for m in held)  # latched: holds, still streamed
    refused = set_enabled(node, "arm6", True)
    assert not refused.success and "e-stop" in refused.message
    estop.publish(Bool(data=False))

    end = time.monotonic() + 10.0
    while not set_enabled(node, "arm6", True).success:  # accepted once the release has arrived
        assert time.monotonic() < end, "enable still refused 10 s after the e-stop release"
    listener.wait(driving(listener, "arm6"), timeout=20.0)
