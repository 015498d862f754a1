"""In-process closed loop on simulated time (gen_theta_model.sim.policy_rollout): the real
SimRobot, the real HarmonicServer, a real (tiny, untrained) checkpoint or the scripted expert.
"""

import json

import numpy as np
import pytest
from server_helpers import tiny_checkpoint

from gen_theta_model.checkpoint import load_policy
from gen_theta_model.embodiment import load_robot
from gen_theta_model.policy_server_config import server_config
from gen_theta_model.sim.episode import SimSession
from gen_theta_model.sim.policy_rollout import Progress, SimClosedLoop, SimLoopConfig
from gen_theta_ros.rollout import main, parse_overrides, parse_seeds


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("run"), {"arm6": 0.0})


def positions(trace):
    return np.concatenate([np.stack([p.positions for p in traj.points]) for _, traj in trace.commands])


def test_same_seed_same_episode_with_a_fixed_latency(tiny):
    policy = load_policy(tiny)
    spec = policy.embodiments[0]
    loop = SimClosedLoop(policy, spec, server_config({}, 15), SimLoopConfig(inference_ms=25.0, max_seconds=1.5))
    try:
        first = loop.run("pick_place_bin", 3, "harmonic", 100.0)
        second = loop.run("pick_place_bin", 3, "harmonic", 100.0)
    finally:
        loop.close()
    assert first[0] == second[0]  # every figure
    assert [t for t, _ in first[1].commands] == [t for t, _ in second[1].commands]
    np.testing.assert_array_equal(positions(first[1]), positions(second[1]))


def test_inference_takes_simulated_time_and_commands_keep_flowing(tiny):
    policy = load_policy(tiny)
    spec = policy.embodiments[0]
    loop = SimClosedLoop(policy, spec, server_config({}, 15), SimLoopConfig(inference_ms=20.0, max_seconds=2.0))
    try:
        figures, trace = loop.run("conveyor_pack", 0, "harmonic", 300.0)
    finally:
        loop.close()
    dt = loop.robot.world.dt
    assert 320.0 <= figures.latency_p50_ms <= 320.0 + 1e3 * dt  # whole physics steps
    times = np.array([t for t, _ in trace.commands])
    assert times[-1] - times[0] >= 1.9
    # A command every tick while chunks are inferred (ticks fall on physics steps).
    assert np.max(np.diff(times)) <= 1.0 / 50.0 + dt + 1e-9
    assert figures.switches >= 3 and figures.idle_fraction == 0.0


@pytest.mark.parametrize("mode", ["harmonic", "sync"])
def test_the_expert_served_with_300ms_delay_boxes_the_moving_cube(mode):
    spec = load_robot("arm6")
    loop = SimClosedLoop(None, spec, server_config({}, 20), SimLoopConfig(inference_ms=30.0))
    try:
        figures, _ = loop.run("conveyor_pack", 1, mode, 300.0)
    finally:
        loop.close()
    assert figures.success and figures.time_to_success < 15.0 and figures.progress == "success"
    assert figures.closest_m < 0.05  # the finger frames around the cube (4 cm above its centre at a grasp)
    assert figures.latency_p50_ms >= 330.0


class Calls:
    """A ChunkPolicy that records the sim time of every chunk it plans."""

    def __init__(self, policy, clock):
        self.policy, self.clock, self.times = policy, clock, []
        self.config, self.observation_config = policy.config, policy.observation_config

    def embodiment_index(self, name):
        return self.policy.embodiment_index(name)

    def predict_chunk(self, observation, committed_prefix, delay, *, decode="mean"):
        self.times.append(self.clock())
        return self.policy.predict_chunk(observation, committed_prefix, delay, decode=decode)


def test_the_expert_hands_over_to_the_policy_at_a_phase(tiny):
    policy = load_policy(tiny)
    spec = policy.embodiments[0]
    with pytest.raises(ValueError, match="hand_over_at must be one of"):
        SimLoopConfig(hand_over_at="carry")
    calls = Calls(policy, lambda: float("nan"))  # the server's warm-up times the policy, before the loop exists
    loop = SimClosedLoop(calls, spec, server_config({}, 15),
                         SimLoopConfig(inference_ms=25.0, max_seconds=5.0, hand_over_at="transfer"))
    assert len(calls.times) == 1
    calls.clock = lambda: loop.now
    try:
        for _ in range(2):  # each episode starts with the expert again
            calls.times.clear()
            figures, _ = loop.run("conveyor_pack", 1, "harmonic", 0.0)
            handed = loop.handover.handed_over_s
            assert handed is not None and 1.0 < handed < 5.0, handed
            assert calls.times[0] == pytest.approx(handed) and len(calls.times) > 3  # the policy from then on only
            assert figures.progress in ("lifted", "success")  # the expert had grasped and lifted the cube
    finally:
        loop.close()


def test_the_server_drives_once_the_scene_has_settled(tiny):
    policy = load_policy(tiny)
    spec = policy.embodiments[0]
    calls = Calls(policy, lambda: float("nan"))
    for settle in (0.1, 0.4):
        loop = SimClosedLoop(calls, spec, server_config({}, 15),
                             SimLoopConfig(inference_ms=25.0, max_seconds=0.3, settle_s=settle))
        calls.clock = lambda loop=loop: loop.now
        try:
            calls.times.clear()
            loop.run("conveyor_pack", 1, "harmonic", 0.0)
            assert calls.times and calls.times[0] == pytest.approx(settle, abs=0.03)  # its first plan, no sooner
        finally:
            loop.close()
    with pytest.raises(ValueError, match="settle_s must be >= 0"):
        SimLoopConfig(settle_s=-0.1)


def test_rollout_in_process_writes_rows_with_intervals(tiny, tmp_path):
    out = tmp_path / "r"
    code = main([str(tiny), "--in-process", "--inference-ms", "20", "--task", "stack", "--task", "pick_place_bin",
                 "--seeds", "0..1", "--modes", "harmonic", "sync", "--delays-ms", "300", "--max-seconds", "1",
                 "--server", "min_prefix_steps=10", "--out", str(out), "--no-video"])
    assert code == 0
    doc = json.loads((out / "results.json").read_text())
    assert [(r["robot"], r["task"], r["mode"]) for r in doc["rows"]] == [
        ("arm6", "pick_place_bin", "harmonic"), ("arm6", "pick_place_bin", "sync"),
        ("arm6", "stack", "harmonic"), ("arm6", "stack", "sync"),
    ]
    for row in doc["rows"]:
        assert row["episodes"] == 2 and 0.0 <= row["success_ci_low"] <= row["success_rate"] <= row["success_ci_high"]
    assert doc["meta"]["server"] == [["min_prefix_steps", 10]] and doc["meta"]["in_process"]
    assert len(doc["episodes"]) == 8
    assert "| arm6 | stack | 300 | sync | 0/2 = 0.00 [0.00, 0.66] | 0 / 0 |" in (out / "results.md").read_text()
    assert {e["progress"] for e in doc["episodes"]} == {"none"}  # an untrained policy grasps nothing in 1 s
    assert all(0.05 < e["closest_m"] < 1.0 for e in doc["episodes"])  # nor comes near the cube


def test_rollout_in_process_over_worker_processes_gives_the_same_episodes(tiny, tmp_path):
    args = [str(tiny), "--in-process", "--inference-ms", "20", "--task", "stack", "--seeds", "0..2",
            "--modes", "harmonic", "sync", "--delays-ms", "300", "--max-seconds", "1", "--no-video"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    assert main([*args, "--jobs", "2", "--out", str(tmp_path / "two")]) == 0
    one, two = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("one", "two"))
    assert len(two["episodes"]) == 6 and two["meta"]["jobs"] == 2
    assert two["episodes"] == one["episodes"]  # every figure, in the plan's order
    assert two["rows"] == one["rows"]


def test_rollout_in_process_from_a_phase_of_the_expert(tiny, tmp_path):
    out = tmp_path / "h"
    assert main([str(tiny), "--in-process", "--inference-ms", "20", "--seeds", "1", "--modes", "harmonic",
                 "--delays-ms", "0", "--max-seconds", "5", "--hand-over", "transfer", "--settle-s", "0.25",
                 "--out", str(out), "--no-video"]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["meta"]["hand_over"] == "transfer" and doc["meta"]["settle_s"] == 0.25
    assert doc["episodes"][0]["progress"] in ("lifted", "success")  # the expert grasped and lifted the cube


def test_rollout_arguments():
    assert parse_seeds(["1000..1003", "7"]) == (1000, 1001, 1002, 1003, 7)
    for bad in (["1..x"], ["3", "3"], ["5..4"]):
        with pytest.raises(ValueError):
            parse_seeds(bad)
    assert parse_overrides(["mode=sync", "execute_steps=8"]) == (("mode", "sync"), ("execute_steps", 8))
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_overrides(["min_prefix_steps"])
    with pytest.raises(SystemExit):
        main(["--expert"])  # the expert reads the simulator: in-process only
    with pytest.raises(SystemExit):
        main([])  # neither a checkpoint nor --expert
    with pytest.raises(SystemExit):
        main(["--expert", "--in-process", "--hand-over", "transfer"])  # the expert hands over to no one
    with pytest.raises(SystemExit):
        main(["ckpt", "--in-process", "--hand-over", "carry"])  # not a phase of the expert
    with pytest.raises(SystemExit):
        main(["ckpt", "--settle-s", "0.25"])  # over DDS the rollout's own processes settle
    with pytest.raises(SystemExit):
        main(["ckpt", "--jobs", "2"])  # over DDS one graph runs the episodes
    with pytest.raises(SystemExit):
        main(["ckpt", "--in-process", "--jobs", "0"])


def test_progress_follows_the_grasp_and_the_lift():
    session = SimSession(load_robot("arm6"))  # the scripted expert drives the sim in-process
    robot, world = session.robot, session.robot.world
    robot.reset("pick_place_bin", 2, now=0.0)
    session.expert.reset(robot.state())
    progress, stages, step = Progress(), ["none"], 0

    def look() -> None:
        progress.update(robot)
        if progress.name != stages[-1]:
            stages.append(progress.name)

    try:
        while not robot.done:
            if step % 12 == 0:  # the expert at 20 Hz; progress looked at as often as the rollout does
                names, pos, quat = world.object_poses()
                traj = session.expert.act(world.time, world.actuated_positions(), names, pos, quat)
                if traj is not None:
                    robot.command(traj, world.time)
                look()
            robot.step(world.time)
            step += 1
        look()
    finally:
        session.close()
    assert robot.success_time is not None and stages == ["none", "grasped", "lifted", "success"]
