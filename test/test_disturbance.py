"""DART demonstrations: the sim executes the expert's command plus a seeded offset; the command stays clean."""

from __future__ import annotations

import numpy as np
import pytest

from gen_theta_model.embodiment import load_robot
from gen_theta_model.sim.disturbance import DisturbanceConfig, JointDisturbance
from gen_theta_model.sim.episode import SimSession

ARM6 = load_robot("arm6")


def test_offsets_are_smooth_seeded_and_spare_the_gripper():
    d = JointDisturbance(ARM6, DisturbanceConfig(std=0.08, knot_s=0.4))
    times = np.arange(0.0, 5.0, 0.01)
    d.reset(7, 20.0)
    first = np.stack([d.offset(t, 1.0)[0] for t in times])
    d.reset(7, 20.0)
    again = np.stack([d.offset(t, 1.0)[0] for t in times])
    d.reset(8, 20.0)
    other = np.stack([d.offset(t, 1.0)[0] for t in times])
    np.testing.assert_array_equal(first, again)  # a function of the episode's seed
    assert np.abs(first - other).max() > 0.01
    assert np.abs(first[0]).max() < 1e-12  # the episode starts where the robot stands
    grippers = ARM6.gripper_mask
    assert np.all(first[:, grippers] == 0.0) and 0.03 < first[:, ~grippers].std() < 0.15
    assert np.abs(np.diff(first, axis=0)).max() < 0.02  # smooth: under 2 rad/s at any 10 ms step
    np.testing.assert_allclose(d.offset(1.3, 0.5)[0], 0.5 * d.offset(1.3, 1.0)[0])


def test_the_envelope_fades_near_the_grasp_point_and_ends_with_the_grasp():
    d = JointDisturbance(ARM6, DisturbanceConfig(std=0.08, fade_m=(0.03, 0.10)))
    d.reset(0, 20.0)
    cube = np.zeros(3)
    above = np.array([0.0, 0.0, 0.04])  # the finger centre of a grasp
    assert d.envelope(above + [0.2, 0.0, 0.0], cube, holding=False) == 1.0
    assert d.envelope(above + [0.065, 0.0, 0.0], cube, holding=False) == pytest.approx(0.5)
    assert d.envelope(above + [0.02, 0.0, 0.0], cube, holding=False) == 0.0
    assert d.envelope(above + [0.2, 0.0, 0.0], cube, holding=True) == 0.0
    assert d.envelope(above + [0.2, 0.0, 0.0], cube, holding=False) == 0.0  # for the rest of the episode
    assert d.finished
    d.reset(0, 20.0)
    assert not d.finished


def test_off_by_default_and_bad_configs_are_refused():
    d = JointDisturbance(ARM6, DisturbanceConfig())
    d.reset(3, 20.0)
    assert d.finished and not d.offset(1.0, 1.0)[0].any()
    for bad in ({"std": -0.1}, {"knot_s": 0.0}, {"fade_m": (0.1, 0.05)}):
        with pytest.raises(ValueError, match="need std >= 0"):
            DisturbanceConfig(**bad)


def tool_offsets(session: SimSession, task: str, seed: int) -> tuple[bool, np.ndarray, np.ndarray]:
    """Run one expert episode; return success, the tool's distance (m) from where the command puts
    it and the gripper's executed-minus-commanded position, both at every expert tick.
    """
    robot, world, kin = session.robot, session.robot.world, session.kin
    gripper = np.flatnonzero(session.spec.gripper_mask)[0]
    offsets, grips = [], []

    def watch(now: float) -> None:
        commanded = robot.commanded(now)[0]
        offsets.append(np.linalg.norm(kin.fk(world.actuated_positions())[0] - kin.fk(commanded)[0]))
        grips.append(world.targets[gripper] - commanded[gripper])

    result = session.run(task, seed, watch)
    return result.success, np.array(offsets), np.array(grips)


def test_the_expert_demonstrates_through_the_disturbance():
    """The arm is pushed centimetres off the commanded path, the gripper is not, the expert still succeeds."""
    session = SimSession(ARM6, disturbance=DisturbanceConfig(std=0.08))
    clean = SimSession(ARM6)
    try:
        pushed = [tool_offsets(session, "stack", seed) for seed in range(3)]
        exact = tool_offsets(clean, "stack", 0)
        assert session.robot.disturbance.finished  # it ended with the grasp
    finally:
        session.close()
        clean.close()
    assert all(ok for ok, _, _ in pushed) and exact[0]
    for _, offsets, grips in pushed:
        assert np.median(offsets[offsets > 0.002]) > 0.02 and offsets.max() > 0.05
        assert offsets[-20:].max() < 0.01  # after the grasp the arm follows the command again
        np.testing.assert_allclose(grips, 0.0, atol=1e-12)
    assert exact[1].max() < 0.01  # without it the tool tracks the command to millimetres
