"""grasp_trace on the scripted expert served in-process: the gripper closes where the tool meets the cube."""

import math

from gen_theta_model.embodiment import load_robot
from gen_theta_model.policy_server_config import server_config
from gen_theta_model.sim.expert_policy import EXPERT_MAX_PREFIX_STEPS
from gen_theta_model.sim.grasp_trace import GraspTrace, table, trace_episode
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


def test_table_says_never_for_a_gripper_that_stayed_open():
    rows = [GraspTrace(7, False, 0, math.nan, None, None, None),
            GraspTrace(8, True, 2, 0.004, 2.6, 0.001, 0.005)]
    text = table(rows)
    assert "| 7 | False | 0 | nan | never | - |" in text
    assert "| 8 | True | 2 | 0.4 | 2.6 | 0.1 / 0.5 |" in text
