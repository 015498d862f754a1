"""The pybullet world: every shipped URDF loads, joints follow targets, mimic, grasp, belt, cameras, tasks."""

import numpy as np
import pybullet as p
import pybullet_data
import pytest

from gen_theta_model.embodiment import load_embodiment, load_robot
from gen_theta_model.sim import objects
from gen_theta_model.sim.camera import camera_pose, render
from gen_theta_model.sim.kinematics import ArmKinematics, Workspace, reachable_workspace
from gen_theta_model.sim.objects import SceneObject
from gen_theta_model.sim.robot import SimRobot
from gen_theta_model.sim.task_state import TaskState
from gen_theta_model.sim.tasks import TASKS, make_task
from gen_theta_model.sim.world import SimWorld

ROBOTS = ("arm6", "arm7", "humanoid16")


def settle(world: SimWorld, seconds: float) -> None:
    for _ in range(int(seconds / world.dt)):
        world.step()


@pytest.fixture(scope="module", params=ROBOTS)
def world(request):
    w = SimWorld(load_robot(request.param))
    yield w
    w.close()


def test_loads_with_mimic_joints_and_holds_home(world):
    spec = world.spec
    assert world.joint_names[: spec.dof] == spec.joint_names
    assert {m.name for m in world.mimics} == set(world.joint_names[spec.dof :])
    assert world.mimics, "the shipped grippers have a mimic finger"
    world.reset_robot(spec.home_positions)
    world.set_targets(spec.home_positions)
    settle(world, 0.5)
    q, qd, effort = world.joint_state()
    assert q.shape == qd.shape == effort.shape == (len(world.joint_names),)
    np.testing.assert_allclose(q[: spec.dof], spec.home_positions, atol=0.02)


def test_follows_targets_within_limits_and_mimic_follows_parent(world):
    spec = world.spec
    world.reset_robot(spec.home_positions)
    kin = ArmKinematics(spec)
    try:  # the task arm 10 cm higher (clear of the table), every other joint 0.1 rad (m) further
        tool, _ = kin.fk(spec.home_positions)
        target, _ = kin.ik(spec.home_positions, tool + np.array([0.0, 0.0, 0.1]))
    finally:
        kin.close()
    others = np.setdiff1d(np.arange(spec.dof), kin.arm)
    target[others] += np.where(spec.gripper_mask[others], -0.01, 0.1)
    world.set_targets(target)
    settle(world, 1.5)
    q = world.joint_state()[0]
    np.testing.assert_allclose(q[: spec.dof], spec.clamp_positions(target), atol=0.02)
    for k, m in enumerate(world.mimics):
        parent = q[spec.joint_names.index(m.parent)]
        assert q[spec.dof + k] == pytest.approx(m.multiplier * parent + m.offset, abs=2e-3)
    # an out-of-range command is clamped to the URDF limits
    world.set_targets(spec.upper + 1.0)
    settle(world, 0.1)
    assert np.all(world.joint_state()[0][: spec.dof] <= spec.upper + 0.01)


def close_on_the_cube(world: SimWorld, q: np.ndarray, g: int) -> None:
    """Command the gripper ``g`` closed at arm pose ``q`` (dof,): a grasp of the red cube must form."""
    closed = q.copy()
    closed[g] = world.spec.lower[g]
    world.set_targets(closed)
    settle(world, 0.6)
    assert world.held_objects() == {"red_cube"}


def lift_and_let_go(world: SimWorld, q_lift: np.ndarray, g: int) -> None:
    """Lift the held red cube to ``q_lift`` (dof,) with gripper ``g`` closed, then open it: the cube falls."""
    spec = world.spec
    lifted = q_lift.copy()
    lifted[g] = spec.lower[g]
    world.set_targets(lifted)
    settle(world, 1.5)
    assert world.object_position("red_cube")[2] > 0.1
    lifted[g] = spec.upper[g]
    world.set_targets(lifted)
    settle(world, 1.0)
    assert world.held_objects() == set()
    assert world.object_position("red_cube")[2] < 0.05  # fell back to the table


def test_grasp_lift_and_release(world):
    """Close the fingers on a cube under the tool: a grasp forms, the cube lifts with the hand, opening drops it."""
    spec = world.spec
    kin = ArmKinematics(spec)
    try:
        world.reset_physics()
        cube_xy = np.array(reachable_workspace(kin).center)
        q_grasp, err = kin.ik(spec.home_positions, np.array([*cube_xy, objects.CUBE_HALF + 0.005]))
        q_lift, _ = kin.ik(q_grasp, np.array([*cube_xy, 0.15]))
    finally:
        kin.close()
    assert err < 2e-3
    body = objects.add_cube(world.client, np.array([*cube_xy, objects.CUBE_HALF]), 0.0, objects.COLORS["red"])
    world.add_object(SceneObject("red_cube", body, "cube", (objects.CUBE_HALF,) * 3, True))
    g = kin.gripper
    world.set_targets(q_grasp)
    settle(world, 1.5)
    close_on_the_cube(world, q_grasp, g)
    lift_and_let_go(world, q_lift, g)


def test_a_cube_pinched_off_centre_is_released_when_the_gripper_opens(world):
    """One finger at its closed limit, the other pinching the cube against it from fully open: the grasp
    forms, and opening releases it (the grasped width is the most closed finger's, not the open one's).
    """
    spec = world.spec
    kin = ArmKinematics(spec)
    try:
        world.reset_physics()
        cube_xy = np.array(reachable_workspace(kin).center)
        q_grasp, err = kin.ik(spec.home_positions, np.array([*cube_xy, objects.CUBE_HALF + 0.005]))
        q_lift, _ = kin.ik(q_grasp, np.array([*cube_xy, 0.15]))
        g = kin.gripper
    finally:
        kin.close()
    assert err < 2e-3
    q_grasp[g] = spec.upper[g]
    world.reset_robot(q_grasp)
    mirror = next(m for m in world.mimics if m.parent == spec.joint_names[g])
    c = world.client
    index = {
        p.getJointInfo(world.robot, j, physicsClientId=c)[1].decode(): j
        for j in range(p.getNumJoints(world.robot, physicsClientId=c))
    }
    finger_ids = [index[spec.joint_names[g]], index[mirror.name]]  # pybullet: a joint's child link has its index
    p.resetJointState(
        world.robot, finger_ids[1], mirror.offset + mirror.multiplier * spec.lower[g], 0.0, physicsClientId=c
    )
    faces = [np.asarray(s[4]) for s in p.getLinkStates(world.robot, finger_ids, physicsClientId=c)]
    centre = 0.5 * (faces[0][:2] + faces[1][:2])  # between the open finger's face and the closed one's
    assert np.linalg.norm(centre - cube_xy) > 0.5 * objects.CUBE_HALF  # the cube sits well off the tool's centre
    body = objects.add_cube(world.client, np.array([*centre, objects.CUBE_HALF]), 0.0, objects.COLORS["red"])
    world.add_object(SceneObject("red_cube", body, "cube", (objects.CUBE_HALF,) * 3, True))
    close_on_the_cube(world, q_grasp, g)
    assert world.joint_state()[0][g] > spec.upper[g] - 0.01  # the pinching finger stayed (almost) fully open
    lift_and_let_go(world, q_lift, g)


def test_cameras_render_and_wrist_camera_moves(world):
    spec = world.spec
    world.reset_robot(spec.home_positions)
    settle(world, 0.05)
    images = {c.name: render(world, c) for c in spec.cameras}
    for cam in spec.cameras:
        img = images[cam.name]
        assert img.shape == (cam.height, cam.width, 3) and img.dtype == np.uint8
        assert img.std() > 5.0  # not a blank frame
    wrist = next(c for c in spec.cameras if c.name == "wrist")
    eye_home = camera_pose(world, wrist)[0]
    moved = spec.home_positions.copy()
    moved[0] += 0.5
    world.reset_robot(moved)
    assert np.linalg.norm(camera_pose(world, wrist)[0] - eye_home) > 0.05  # the camera rides on its link


def test_conveyor_moves_resting_cube():
    world = SimWorld(load_robot("arm6"))
    try:
        velocity = np.array([0.0, 0.07, 0.0])
        belt = objects.add_conveyor(world.client, np.array([0.5, 0.0]), 0.4, 0.04, 0.02)
        world.add_object(SceneObject("conveyor", belt, "conveyor", (0.04, 0.4, 0.01), False), velocity)
        body = objects.add_cube(world.client, np.array([0.5, -0.2, 0.04]), 0.0, objects.COLORS["green"])
        world.add_object(SceneObject("green_cube", body, "cube", (objects.CUBE_HALF,) * 3, True))
        settle(world, 0.2)
        y0 = world.object_position("green_cube")[1]
        settle(world, 1.0)
        assert world.object_position("green_cube")[1] - y0 == pytest.approx(0.07, abs=0.01)
    finally:
        world.close()


def test_any_urdf_loads_panda_from_pybullet_data():
    spec = load_embodiment(pybullet_data.getDataPath() + "/franka_panda/panda.urdf")
    world = SimWorld(spec)
    try:
        world.set_targets(spec.home_positions)
        settle(world, 1.0)
        np.testing.assert_allclose(world.actuated_positions(), spec.home_positions, atol=0.05)
    finally:
        world.close()


@pytest.mark.parametrize("name", list(TASKS))
def test_task_reset_is_seeded_and_starts_unsolved(name):
    world = SimWorld(load_robot("arm6"))
    try:
        ws = Workspace((0.45, 0.0), (0.1, 0.15))
        task = make_task(name)
        task.reset(world, ws, seed=3)
        first = world.object_poses()
        info = task.info(world)
        assert info.category in ("dexterity", "real_world", "generalization")
        assert info.pick in first[0] and info.place in first[0] and info.instruction
        assert not task.success(world)
        task.reset(world, ws, seed=3)
        np.testing.assert_allclose(world.object_poses()[1], first[1], atol=1e-3)
        task.reset(world, ws, seed=4)
        assert not np.allclose(world.object_poses()[1], first[1], atol=1e-3)
    finally:
        world.close()


def test_a_preroll_starts_the_same_scene_later():
    """``preroll_s`` runs the scene before the clock starts: the belt's cube is further along by the
    belt's speed times the pre-roll, everything else as without it; SimRobot draws it from the seed.
    """
    world = SimWorld(load_robot("arm6"))
    try:
        ws = Workspace((0.45, 0.0), (0.1, 0.15))
        task = make_task("conveyor_pack")
        task.reset(world, ws, seed=3)
        names, start, _ = world.object_poses()
        assert task.info(world).preroll_s == 0.0 and world.time == 0.0
        task.reset(world, ws, seed=3, preroll_s=0.5)
        later = world.object_poses()[1]
        assert task.info(world).preroll_s == 0.5 and world.time == 0.0
        cube = names.index(task.pick)
        np.testing.assert_allclose(later[cube] - start[cube], 0.5 * task.belt_velocity, atol=0.01)
        others = [i for i in range(len(names)) if i != cube]
        np.testing.assert_allclose(later[others], start[others], atol=1e-3)
        with pytest.raises(ValueError, match="preroll_s must be >= 0"):
            task.reset(world, ws, seed=3, preroll_s=-0.1)
    finally:
        world.close()
    with pytest.raises(ValueError, match="preroll_s must be a range 0 <= low <= high"):
        SimRobot(load_robot("arm6"), preroll_s=(0.5, 0.2))
    robot = SimRobot(load_robot("arm6"), preroll_s=(0.2, 0.8))
    try:
        drawn = [robot.reset("conveyor_pack", seed, now=0.0).preroll_s for seed in (1, 2, 1)]
        state = TaskState.from_json(robot.state().to_json())  # sim/task carries it to the recorder
    finally:
        robot.close()
    assert all(0.2 <= d <= 0.8 for d in drawn) and drawn[0] == drawn[2] != drawn[1]
    assert state.preroll_s == drawn[2]


def test_instruction_names_the_target_colour():
    world = SimWorld(load_robot("arm6"))
    try:
        task = make_task("instruction_pick")
        texts = set()
        for seed in range(8):
            task.reset(world, Workspace((0.45, 0.0), (0.1, 0.15)), seed)
            color = task.pick.split("_")[0]
            assert color in task.instruction
            assert sum(o.kind == "cube" for o in world.objects.values()) == 3
            texts.add(task.instruction.replace(color, "<c>"))
        assert len(texts) > 1  # the wording varies, not only the colour
    finally:
        world.close()


def test_unknown_task_is_named():
    with pytest.raises(ValueError, match="unknown task 'juggle'.*stack"):
        make_task("juggle")


def test_task_state_json_round_trip():
    """sim/task carries the TaskState as JSON: parsing it gives back the same typed state."""
    robot = SimRobot(load_robot("arm6"))
    try:
        robot.reset("stack", 5, now=12.5)
        for _ in range(10):
            robot.step(12.5)
        state = robot.state()
    finally:
        robot.close()
    assert TaskState.from_json(state.to_json()) == state
    assert state.task == "stack" and state.seed == 5 and state.episode == 1 and state.episode_start == 12.5
    assert {o.name for o in state.objects} >= {state.pick, state.place} and not state.done
    with pytest.raises(ValueError, match="not a sim/task state .missing seed, instruction, .*, episode,"):
        TaskState.from_json('{"task": "stack", "category": "dexterity"}')
