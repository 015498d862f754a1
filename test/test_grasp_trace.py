"""grasp_trace on the scripted expert served in-process: the gripper closes where the tool meets the cube;
on a tiny checkpoint: reading the gripper's mixture changes nothing that is served.
"""

import math

import numpy as np
import pytest
from server_helpers import tiny_checkpoint

from gen_theta_model.checkpoint import load_policy
from gen_theta_model.embodiment import load_robot
from gen_theta_model.policy_server_config import server_config
from gen_theta_model.sim.expert_policy import EXPERT_MAX_PREFIX_STEPS
from gen_theta_model.sim.grasp_trace import (
    GraspTrace,
    GripperModes,
    chunk_table,
    readout_summary,
    release_fit,
    table,
    trace_episode,
)
from gen_theta_model.sim.kinematics import ArmKinematics
from gen_theta_model.sim.policy_rollout import SimClosedLoop, SimLoopConfig


def test_the_expert_closes_the_gripper_at_the_cube():
    spec = load_robot("arm6")
    loop = SimClosedLoop(None, spec, server_config({}, EXPERT_MAX_PREFIX_STEPS), SimLoopConfig(inference_ms=35.0))
    kin = ArmKinematics(spec)
    try:
        row = trace_episode(loop, kin, "stack", 1000)
    finally:
        kin.close()
        loop.close()
    assert row.success
    assert row.descents >= 1 and row.closest_down_xy_m < 0.01
    assert row.first_close_s is not None and row.first_close_s > 0.5  # after the reach, not at the start
    assert row.first_close_xy_m < 0.01 and abs(row.first_close_height_m) < 0.03  # at the cube, not above it


def test_the_experts_release_follows_the_box():
    """Conveyor: the box stands elsewhere along the belt in every seed, and the expert lets go over it."""
    spec = load_robot("arm6")
    loop = SimClosedLoop(None, spec, server_config({}, EXPERT_MAX_PREFIX_STEPS), SimLoopConfig(inference_ms=35.0))
    kin = ArmKinematics(spec)
    try:
        rows = [trace_episode(loop, kin, "conveyor_pack", seed) for seed in (1000, 1001, 1008)]
    finally:
        kin.close()
        loop.close()
    assert all(r.success and r.release_xy_m is not None for r in rows)
    assert all(math.dist(r.release_xy_m, r.place_xy_m) < 0.02 for r in rows)  # over the box's centre
    fit = release_fit(rows)
    assert abs(fit.axes["y"].slope - 1.0) < 0.25 and fit.axes["y"].r > 0.95, fit
    assert "x" not in fit.axes  # the box's x is the same in every seed: nothing to fit


def test_release_fit_tells_a_fixed_drop_point_from_one_that_follows_the_place():
    place_y = [-0.04, 0.0, 0.04, 0.02]
    follows = [GraspTrace(s, True, 1, 0.0, 1.0, 0.0, 0.0, place_xy_m=(0.39, y), release_xy_m=(0.39, y + 0.005))
               for s, y in enumerate(place_y)]
    fixed = [GraspTrace(s, False, 1, 0.0, 1.0, 0.0, 0.0, place_xy_m=(0.39, y), release_xy_m=(0.40, -0.02))
             for s, y in enumerate(place_y)]
    assert str(release_fit(follows)).startswith(
        "release vs place over 4 releases: median distance 0.5 cm; y: slope 1.00, r 1.00")
    fit = release_fit(fixed)
    assert list(fit.axes) == ["y"] and fit.axes["y"].slope == pytest.approx(0.0, abs=1e-9)
    assert math.isnan(fit.axes["y"].r) and fit.axes["y"].actual_sd_m == 0.0
    assert release_fit(follows[:2] + [GraspTrace(9, False, 0, math.nan, None, None, None)]) is None
    assert readout_summary(follows) is None  # no chunks read, no object readout
    assert "| 0 | True | 1 | 0.0 | 1.0 | 0.0 / 0.0 | 0 | - | 0.5 |" in table(follows)


def test_reading_the_gripper_mixture_serves_the_same_episode(tmp_path):
    """A checkpoint with a keypose head and an object readout: its predicted grasp pose is read too, as a
    tool-object distance, and where its images place the pick object.
    """
    policy = load_policy(tiny_checkpoint(tmp_path, {"arm6": 0.0}, keypose_weight=1.0, object_weight=1.0))
    assert policy.config.keypose_weight == 1.0 and policy.model.keypose is not None
    spec = policy.embodiments[0]
    kin = ArmKinematics(spec)
    modes = GripperModes(policy, kin.gripper)
    plain = SimClosedLoop(policy, spec, server_config({}, 15), SimLoopConfig(inference_ms=25.0, max_seconds=2.0))
    read = SimClosedLoop(modes, spec, server_config({}, 15), SimLoopConfig(inference_ms=25.0, max_seconds=2.0))
    modes.clock = lambda: read.now
    try:
        _, expected = plain.run("stack", 4, "harmonic", 0.0)
        _, served = read.run("stack", 4, "harmonic", 0.0)
        row = trace_episode(read, kin, "stack", 4, modes)  # records this episode's chunks only
    finally:
        kin.close()
        plain.close()
        read.close()
    assert [t for t, _ in served.commands] == [t for t, _ in expected.commands]
    for (_, a), (_, b) in zip(served.commands, expected.commands, strict=True):
        np.testing.assert_array_equal([p.positions for p in a.points], [p.positions for p in b.points])
    times = [r.time_s for r in modes.records]
    assert len(times) >= 3 and times == sorted(times) and times[0] >= 0.0  # simulated s, one episode
    k = policy.config.n_components
    for r in modes.records:
        assert r.weights.shape == r.close_step.shape == r.open_step.shape == (k,) and abs(r.weights.sum() - 1.0) < 1e-5
        assert r.keypose.shape == (policy.config.max_dof,) and np.isfinite(r.keypose).all()
        assert r.objects.shape == (policy.config.object_slots, 3) and np.isfinite(r.objects).all()
        for step in (r.close_step, r.open_step):
            assert ((step >= -1) & (step < policy.config.chunk_len)).all()
        # every step of a component's plan is open or closed: one of the two is its first step
        assert ((r.close_step == 0) | (r.open_step == 0)).all()
    assert row.reopens >= 0 and (row.closing_weight is None or 0.0 <= row.closing_weight <= 1.0 + 1e-6)
    assert [c.time_s for c in row.chunks] == times
    assert all(0.0 <= c.closing_weight <= 1.0 + 1e-6 and 0.0 <= c.opening_weight <= 1.0 + 1e-6 for c in row.chunks)
    assert all(0.0 <= c.place_xy_m < 2.0 for c in row.chunks)  # m: the blue cube, within reach
    assert all(0.0 <= c.keypose_xy_m < 2.0 for c in row.chunks)  # m: within the robot's reach of the cube
    assert all(0.0 <= c.readout_m < 2.0 for c in row.chunks)  # m: an untrained readout, near the origin
    text = chunk_table(row, 1.0)
    assert text.startswith("seed 4:") and len(text.splitlines()) == 3 + sum(t <= 1.0 for t in times)
    shown = [c for c in row.chunks if c.time_s <= 1.0]
    cells = [cell.strip() for cell in text.splitlines()[-1].split("|")[1:-1]]
    assert cells[6] == f"{100 * shown[-1].keypose_xy_m:.1f}" and cells[7] == f"{100 * shown[-1].place_xy_m:.1f}"
    assert cells[10] == f"{100 * shown[-1].readout_m:.1f}"
    approach = []
    for c in row.chunks:
        if c.gripper_closed:
            break
        approach.append(100 * c.readout_m)
    assert readout_summary([row]).startswith(
        f"the images place the pick object, {len(approach)} chunks before the first close: "
        f"median {np.median(approach):.1f} cm")
    later = chunk_table(row, 2.0, since_s=1.0)  # the rows of a window: the release, after the grasp
    assert len(later.splitlines()) == 3 + sum(1.0 <= t <= 2.0 for t in times)


def test_table_says_never_for_a_gripper_that_stayed_open():
    rows = [GraspTrace(7, False, 0, math.nan, None, None, None),
            GraspTrace(8, True, 2, 0.004, 2.6, 0.001, 0.005)]
    text = table(rows)
    assert "| 7 | False | 0 | nan | never | - | 0 | - |" in text
    assert "| 8 | True | 2 | 0.4 | 2.6 | 0.1 / 0.5 | 0 | - |" in text
    modes = table([GraspTrace(9, False, 3, 0.02, 4.0, 0.1, 0.04, reopens=1, closing_weight=0.4, top_close_step=-1),
                   GraspTrace(10, False, 3, 0.02, 4.0, 0.1, 0.04, reopens=0, closing_weight=0.6, top_close_step=37)])
    assert "| 9 | False | 3 | 2.0 | 4.0 | 10.0 / 4.0 | 1 | 0.40; never |" in modes
    assert "| 10 | False | 3 | 2.0 | 4.0 | 10.0 / 4.0 | 0 | 0.60; 37 |" in modes
