"""The server engine (gen_theta_model.serving) with a real tiny policy on a fake clock, no ROS."""

import threading
import time
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from gen_theta_model.adapter import SafetyConfig, diagnostic_level
from gen_theta_model.embodiment import load_robot
from gen_theta_model.inference_worker import InferenceUnavailableError
from gen_theta_model.policy.config import preset
from gen_theta_model.policy.example import example_norm_stats
from gen_theta_model.policy.policy import build_policy
from gen_theta_model.serving import HarmonicServer, ServerConfig


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def specs():
    return [load_robot("arm6"), load_robot("humanoid16")]


@pytest.fixture(scope="module")
def policy(specs):
    torch.manual_seed(0)
    return build_policy(preset("tiny", chunk_len=32), specs, {s.name: example_norm_stats(s) for s in specs})


def make_server(policy, specs, clock, **cfg):
    robots = [("left", specs[0]), ("torso", specs[1])]
    safety = SafetyConfig(joint_timeout_s=0.1, camera_timeout_s=0.3)
    return HarmonicServer(policy, robots, ServerConfig(safety=safety, **cfg), clock=clock)


def feed(server, t: float, robots=("left", "torso")) -> None:
    for name in robots:
        s = server.sessions[name]
        server.on_joint_state(name, s.spec.joint_names, s.spec.home_positions, t, t)
        for cam in s.spec.cameras:
            server.on_image(name, cam.name, np.full((96, 96, 3), 90, np.uint8), t, t)
        server.on_instruction(name, "put the red cube in the bin")


@contextmanager
def predict_calls(policy):
    """Record (batch size, prefix shape, delay) of every ``predict_chunk`` call made inside the block."""
    calls = []
    real = policy.predict_chunk

    def spy(obs, prefix, delay, **kw):
        calls.append((obs["embodiment.joint_mask"].shape[0], tuple(prefix.shape), delay))
        return real(obs, prefix, delay, **kw)

    policy.predict_chunk = spy
    try:
        yield calls
    finally:
        del policy.predict_chunk


def test_two_embodiments_share_one_batched_inference(policy, specs):
    clock = FakeClock()
    server = make_server(policy, specs, clock)
    with predict_calls(policy) as calls:
        feed(server, clock.t)
        assert server.tick("left", clock.t).hold_reason == ""  # timelines start, holding still
        server.tick("torso", clock.t)
        assert server.infer_step() == 2
    assert len(calls) == 1 and calls[0][0] == 2  # one call, both robots
    d = calls[0][2]
    assert calls[0][1] == (2, d, 32)
    for name, spec in zip(("left", "torso"), specs):
        clock.t += 0.0
        cmd = server.tick(name, clock.t + 0.1)
        assert cmd.window.positions.shape[1] == spec.dof
        assert server.sessions[name].counters.chunks == 1


def test_harmonic_stream_keeps_the_committed_prefix(policy, specs):
    clock = FakeClock()
    server = make_server(policy, specs, clock, execute_steps=5)
    feed(server, clock.t)
    server.tick("left", clock.t)
    server.tick("torso", clock.t)
    commanded = {}  # grid time -> the first point commanded for it
    for _ in range(60):  # 1.2 s at 50 Hz, inference whenever due, 1 tick of latency
        feed(server, clock.t)
        server.infer_step()
        clock.t += 0.02
        cmd = server.tick("left", clock.t)
        t_first = round(cmd.window.stamp + cmd.window.times[0], 4)
        commanded.setdefault(t_first, []).append(cmd.window.positions[0])
        server.tick("torso", clock.t)
    c = server.sessions["left"].counters
    assert c.chunks >= 8 and c.late_chunks == 0
    # Every grid point was commanded once per tick, and never changed once committed.
    assert all(len(v) == 1 for v in commanded.values())
    assert server.sessions["left"].clock.missed == 0


def test_stale_input_holds_and_resumes(policy, specs):
    clock = FakeClock()
    server = make_server(policy, specs, clock)
    feed(server, clock.t)
    server.tick("left", clock.t)
    server.infer_step()
    clock.t += 0.3  # no input for 0.3 s: joint_states (0.1 s) and cameras (0.3 s) are stale
    cmd = server.tick("left", clock.t)
    assert cmd.hold_reason.startswith("joint_states stale")
    assert cmd.window.positions.shape[0] == 1 and not np.any(cmd.window.velocities)
    assert server.infer_step() == 0  # no inference for a held robot
    held = cmd.window.positions[0]
    feed(server, clock.t)
    clock.t += 0.02
    cmd = server.tick("left", clock.t)  # resumes from the held position
    assert cmd.hold_reason == ""
    np.testing.assert_allclose(cmd.window.positions[0], held, atol=1e-9)
    assert server.infer_step() >= 1
    assert server.sessions["left"].counters.holds == 1


def test_disable_estop_and_nonfinite_output(policy, specs):
    clock = FakeClock()
    server = make_server(policy, specs, clock)
    feed(server, clock.t)
    assert server.set_enabled("left", False) == (True, "disabled")
    assert server.tick("left", clock.t).hold_reason == "disabled"
    assert server.tick("left", clock.t + 0.01) is None  # one hold, then the stream stops
    server.set_estop("left", True)
    assert server.tick("left", clock.t + 0.02).hold_reason == "e-stop"
    assert server.set_enabled("left", True)[0] is False
    server.set_estop("left", False)
    assert server.set_enabled("left", True) == (True, "enabled")
    assert server.tick("left", clock.t + 0.03).hold_reason == ""
    # A policy that outputs NaN: the chunk is refused and the robot holds where it is.
    broken = build_policy(preset("tiny", chunk_len=32), specs, {s.name: example_norm_stats(s) for s in specs})
    with torch.no_grad():
        for p in broken.model.parameters():
            p.fill_(float("nan"))
    server.policy = broken
    assert server.infer_step() == 1
    assert server.sessions["left"].counters.nonfinite_chunks == 1
    cmd = server.tick("left", clock.t + 0.04)
    np.testing.assert_allclose(cmd.window.positions[-1], specs[0].home_positions, atol=1e-9)


def test_unavailable_inference_holds_every_robot_until_it_is_back(policy, specs):
    clock = FakeClock()
    server = make_server(policy, specs, clock)
    feed(server, clock.t)
    server.tick("left", clock.t)
    server.tick("torso", clock.t)
    assert server.infer_step() == 2

    def unavailable(*args, **kw):
        raise InferenceUnavailableError("inference server gpu-box:50051: UNAVAILABLE: Connection refused")

    policy.predict_chunk = unavailable
    try:
        for _ in range(40):  # drive until the next inference is due, and fails
            clock.t += 0.02
            feed(server, clock.t)
            assert server.tick("left", clock.t).hold_reason == ""
            server.tick("torso", clock.t)
            server.infer_step()
            if server.inference_fault:
                break
        for name in ("left", "torso"):
            cmd = server.tick(name, clock.t)
            assert cmd.hold_reason == "inference unavailable: inference server gpu-box:50051: UNAVAILABLE: " \
                                      "Connection refused"
            assert cmd.window.positions.shape[0] == 1 and not np.any(cmd.window.velocities)
            assert diagnostic_level(server.sessions[name].counters.hold_reason) == 2
        assert server.infer_step() == 0 and server.inference_fault  # the retry fails too: still holding
    finally:
        del policy.predict_chunk
    assert server.infer_step() == 0 and server.inference_fault == ""  # the retry succeeds
    clock.t += 0.02
    feed(server, clock.t)
    assert server.tick("left", clock.t).hold_reason == ""  # driving again, from where it held
    server.tick("torso", clock.t)
    assert server.infer_step() == 2


def test_sync_mode_idles_while_inferring(policy, specs):
    clock = FakeClock()
    server = make_server(policy, specs, clock)
    server.reconfigure(mode="sync", execute_steps=5)
    real = policy.predict_chunk

    def slow(*args, **kw):  # every inference takes 0.1 s, while the control timer goes on ticking
        for _ in range(5):
            clock.t += 0.02
            feed(server, clock.t, robots=("left",))
            server.tick("left", clock.t)
        return real(*args, **kw)

    policy.predict_chunk = slow
    try:
        feed(server, clock.t, robots=("left",))
        server.tick("left", clock.t)
        for _ in range(40):
            server.infer_step()
            clock.t += 0.02
            feed(server, clock.t, robots=("left",))
            server.tick("left", clock.t)
    finally:
        del policy.predict_chunk
    c = server.sessions["left"].counters
    # Cycles of 5 steps of motion and 0.1 s (5 ticks) of waiting.
    assert c.chunks >= 3 and 0.3 < c.idle_ticks / c.ticks < 0.7


def test_enabling_again_starts_from_where_the_robot_was_moved(policy, specs):
    clock = FakeClock()
    server = make_server(policy, specs, clock)
    feed(server, clock.t, robots=("left",))
    server.tick("left", clock.t)
    server.set_enabled("left", False)
    server.tick("left", clock.t + 0.02)
    spec = specs[0]
    moved = spec.home_positions + 0.2 * (spec.upper - spec.home_positions)  # someone else moved the robot
    clock.t += 1.0
    server.on_joint_state("left", spec.joint_names, moved, clock.t, clock.t)
    for cam in spec.cameras:
        server.on_image("left", cam.name, np.zeros((96, 96, 3), np.uint8), clock.t, clock.t)
    server.set_enabled("left", True)
    stale = server.tick("left", clock.t + 0.5)  # input stale at once: hold where the robot is now
    assert stale.hold_reason.startswith("joint_states stale")
    np.testing.assert_allclose(stale.window.positions[0], moved, atol=1e-9)
    server.on_joint_state("left", spec.joint_names, moved, clock.t + 0.5, clock.t + 0.5)
    for cam in spec.cameras:
        server.on_image("left", cam.name, np.zeros((96, 96, 3), np.uint8), clock.t + 0.5, clock.t + 0.5)
    clock.t += 0.5
    cmd = server.tick("left", clock.t)
    assert cmd.hold_reason == ""
    np.testing.assert_allclose(cmd.window.positions[0], moved, atol=1e-9)
    assert server.sessions["left"].clock.missed == 0  # the silent time while disabled is no miss


def test_a_controller_fault_stops_the_commands_until_enabled_and_resumes_where_the_robot_is(policy, specs):
    clock = FakeClock()
    server = make_server(policy, specs, clock)
    feed(server, clock.t, robots=("left",))
    assert server.tick("left", clock.t).hold_reason == ""
    why = "/left/joint_trajectory_controller/follow_joint_trajectory goal aborted PATH_TOLERANCE_VIOLATED"
    server.controller("left", fault=why)
    assert server.tick("left", clock.t + 0.02) is None  # the controller holds by itself: nothing is sent
    c = server.sessions["left"].counters
    assert c.hold_reason == f"controller fault: {why}" and diagnostic_level(c.hold_reason) == 2
    assert (c.controller_faults, c.last_controller_fault) == (1, why)
    server.controller("left")  # the controller answers again: the fault stays latched
    assert server.tick("left", clock.t + 0.04) is None
    spec = specs[0]
    moved = spec.home_positions + 0.1 * (spec.upper - spec.home_positions)  # where the controller stopped it
    clock.t += 0.06
    server.on_joint_state("left", spec.joint_names, moved, clock.t, clock.t)
    assert server.set_enabled("left", True) == (True, "enabled")
    cmd = server.tick("left", clock.t)
    assert cmd.hold_reason == ""
    np.testing.assert_allclose(cmd.window.positions[0], moved, atol=1e-9)
    server.controller("left", missing="no action server /left/joint_trajectory_controller/follow_joint_trajectory")
    assert server.tick("left", clock.t + 0.02) is None
    assert c.hold_reason.startswith("controller not available: no action server")
    assert diagnostic_level(c.hold_reason) == 1
    server.controller("left")  # back: drives without being enabled again
    feed(server, clock.t + 0.04, robots=("left",))
    assert server.tick("left", clock.t + 0.04).hold_reason == ""
    assert server.sessions["left"].clock.missed == 0  # the silence while faulted is no miss


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the thread re-raises
def test_an_inference_error_is_reported_not_swallowed(policy, specs):
    server = make_server(policy, specs, time.time)
    server.max_delay = policy.config.chunk_len - 1  # longer than the policy's trained prefix: predict_chunk refuses
    server.latency.add(0.5)  # 0.5 s of expected latency: a 26-step prefix at 50 Hz
    feed(server, time.time(), robots=("left",))
    server.tick("left", time.time())
    errors = []
    done = threading.Event()
    server.start(on_error=lambda err: (errors.append(err), done.set()))
    assert done.wait(timeout=30.0)
    server.stop()
    assert isinstance(errors[0], ValueError) and "delay must be in" in str(errors[0])


@pytest.mark.parametrize("mode, floor, expected", [("harmonic", 12, 12), ("harmonic", 0, 1), ("naive_async", 12, 0)])
def test_harmonic_commits_at_least_min_prefix_steps(policy, specs, mode, floor, expected):
    """However fast inference is, a harmonic chunk that takes over from a moving one is conditioned
    on >= min_prefix_steps committed actions (the baselines keep their own semantics: naive async
    passes no prefix). The first chunk, planned while the robot stands still, commits only what
    the latency needs (1 step on this clock).
    """
    clock = FakeClock()
    server = make_server(policy, specs, clock, mode=mode, min_prefix_steps=floor)
    with predict_calls(policy) as calls:
        feed(server, clock.t)
        server.tick("left", clock.t)
        server.tick("torso", clock.t)
        for _ in range(30):  # inference takes no time on this clock
            clock.t += 0.02
            feed(server, clock.t)
            server.tick("left", clock.t)
            server.tick("torso", clock.t)
            server.infer_step()
    assert all(prefix[1] == delay for _, prefix, delay in calls)
    assert len(calls) > 2 and calls[0][2] == 0 and {delay for _, _, delay in calls[1:]} == {expected}


def test_min_prefix_is_capped_at_the_trained_prefix_length(policy, specs):
    clock = FakeClock()
    server = make_server(policy, specs, clock, min_prefix_steps=25, max_delay_steps=8)
    assert server.delay(specs[0]) == 8  # longer prefixes were never trained: no later takeover for nothing


# -- bad input: refused, counted, held, reported, recovered (over DDS: test_policy_server_faults.py)
def nan_state(server, name: str, t: float) -> None:
    s = server.sessions[name]
    q = s.spec.home_positions.copy()
    q[1] = np.nan
    server.on_joint_state(name, s.spec.joint_names, q, t, t)


def test_nan_joint_state_at_start_up_is_refused_until_good_input_comes(policy, specs):
    clock = FakeClock()
    server = make_server(policy, specs, clock)
    feed(server, clock.t, robots=("torso",))
    nan_state(server, "left", clock.t)
    assert server.tick("left", clock.t) is None  # nothing known to hold at yet; no error
    c = server.sessions["left"].counters
    assert c.rejected_joint_states == 1 and c.hold_reason.startswith("rejected joint_states: non-finite")
    assert diagnostic_level(c.hold_reason) == 2
    feed(server, clock.t + 0.01)
    assert server.tick("left", clock.t + 0.01).hold_reason == ""


def test_nan_joint_state_while_driving_and_at_re_enable_holds_and_recovers(policy, specs):
    clock = FakeClock()
    server = make_server(policy, specs, clock)
    feed(server, clock.t)
    assert server.tick("left", clock.t).hold_reason == ""
    nan_state(server, "left", clock.t + 0.01)
    held = server.tick("left", clock.t + 0.01)
    assert held.hold_reason.startswith("rejected joint_states") and np.all(np.isfinite(held.window.positions))
    feed(server, clock.t + 0.02)
    assert server.tick("left", clock.t + 0.02).hold_reason == ""
    # e-stop, NaN, release and re-enable: the robot holds (no error), then recovers.
    server.set_estop("left", True)
    assert server.tick("left", clock.t + 0.03).hold_reason == "e-stop"
    nan_state(server, "left", clock.t + 0.04)
    server.set_estop("left", False)
    assert server.set_enabled("left", True) == (True, "enabled")
    held = server.tick("left", clock.t + 0.05)
    assert held.hold_reason.startswith("rejected joint_states") and np.all(np.isfinite(held.window.positions))
    feed(server, clock.t + 0.06)
    assert server.tick("left", clock.t + 0.06).hold_reason == ""
    assert server.sessions["left"].counters.rejected_joint_states == 2


def test_partial_joint_states_drive_and_a_silent_gripper_driver_goes_stale(policy, specs):
    clock = FakeClock()
    server = make_server(policy, specs, clock)
    feed(server, clock.t, robots=("torso",))
    s = server.sessions["left"]
    arm, grip = s.spec.joint_names[:-1], s.spec.joint_names[-1:]
    for cam in s.spec.cameras:
        server.on_image("left", cam.name, np.zeros((96, 96, 3), np.uint8), clock.t, clock.t)
    server.on_joint_state("left", arm, s.spec.home_positions[:-1], clock.t, clock.t)
    assert server.tick("left", clock.t) is None
    assert s.counters.hold_reason == f"no joint_states yet of joint(s) {grip}"
    server.on_joint_state("left", grip, s.spec.home_positions[-1:], clock.t, clock.t)
    assert server.tick("left", clock.t).hold_reason == ""
    t = clock.t + 0.2  # the arm driver goes on, the gripper driver has stopped
    server.on_joint_state("left", arm, s.spec.home_positions[:-1], t, t)
    for cam in s.spec.cameras:
        server.on_image("left", cam.name, np.zeros((96, 96, 3), np.uint8), t, t)
    assert server.tick("left", t).hold_reason.startswith("joint_states stale")


def test_a_refused_image_holds_until_that_camera_sends_a_good_one(policy, specs):
    clock = FakeClock()
    server = make_server(policy, specs, clock)
    feed(server, clock.t)
    assert server.tick("left", clock.t).hold_reason == ""
    cam = server.sessions["left"].spec.cameras[0].name
    server.reject("left", f"camera '{cam}'", "Image encoding 'yuv422' is not supported")
    held = server.tick("left", clock.t + 0.01)
    assert held.hold_reason == f"rejected camera '{cam}': Image encoding 'yuv422' is not supported"
    c = server.sessions["left"].counters
    assert c.rejected_images == 1 and "yuv422" in c.last_rejected and c.values(server.sessions["left"].clock)[
        "rejected_images"] == "1"
    feed(server, clock.t + 0.02)
    assert server.tick("left", clock.t + 0.02).hold_reason == ""


def test_an_inactive_server_holds_every_robot_once_then_resumes_where_it_is(policy, specs):
    """A deactivated managed node: one hold where each robot is commanded to be, then nothing;
    activated again, driving restarts from the measured position.
    """
    clock = FakeClock()
    server = make_server(policy, specs, clock)
    feed(server, clock.t)
    server.tick("left", clock.t)
    server.active = False
    hold = server.tick("left", clock.t + 0.02)
    assert hold.hold_reason == "inactive" and len(hold.window.times) == 1
    assert not hold.window.velocities.any()  # a hold: nothing left moving
    assert server.tick("left", clock.t + 0.04) is None and server.tick("torso", clock.t + 0.04).hold_reason
    assert server.tick("torso", clock.t + 0.06) is None
    clock.t += 0.5
    spec = specs[0]
    moved = spec.home_positions + 0.1 * (spec.upper - spec.home_positions)
    feed(server, clock.t)
    server.on_joint_state("left", spec.joint_names, moved, clock.t, clock.t)
    server.active = True
    cmd = server.tick("left", clock.t)
    assert cmd.hold_reason == ""
    np.testing.assert_allclose(cmd.window.positions[0], moved, atol=1e-9)


def test_the_server_executes_the_decoding_it_is_configured_with(policy, specs):
    with pytest.raises(ValueError, match="decode must be one of"):
        ServerConfig(decode="median")
    clock = FakeClock()
    server = make_server(policy, specs, clock, decode="top")
    decodes = []
    real = policy.predict_chunk

    def spy(obs, prefix, delay, **kw):
        decodes.append(kw["decode"])
        return real(obs, prefix, delay, **kw)

    policy.predict_chunk = spy
    try:
        feed(server, clock.t)
        server.tick("left", clock.t)
        server.tick("torso", clock.t)
        assert server.infer_step() == 2
    finally:
        del policy.predict_chunk
    assert decodes == ["top"]
