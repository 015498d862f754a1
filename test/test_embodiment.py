"""EmbodimentSpec from URDF: standard robots load unmodified, round trips are exact,
bad input names the file and the joint.
"""

import dataclasses
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pybullet_data
import pytest
import yaml

from gen_theta_model.embodiment import (
    JOINT_DESCRIPTOR_DIM,
    CameraConfig,
    EmbodimentError,
    EmbodimentSpec,
    RobotConfig,
    load_embodiment,
    load_robot,
)
from gen_theta_model.sim.world import SimWorld

PYBULLET_DATA = Path(pybullet_data.getDataPath())
STANDARD_URDFS = {
    "franka_panda/panda.urdf": 8,  # 7 arm joints + 1 finger (the second finger is independent in this file)
    "kuka_iiwa/model.urdf": 7,
    "r2d2.urdf": 8,  # continuous wheels, prismatic and revolute gripper joints
}


def link(name: str) -> str:
    inertia = '<inertia ixx="1" iyy="1" izz="1" ixy="0" ixz="0" iyz="0"/>'
    return f'<link name="{name}"><inertial><mass value="1"/>{inertia}</inertial></link>'


def joint(name: str, parent: str, child: str, jtype: str = "revolute", limits: str = 'lower="-1" upper="1"',
          extra: str = "") -> str:
    limit = f'<limit {limits} effort="10" velocity="2"/>' if jtype != "fixed" else ""
    return (f'<joint name="{name}" type="{jtype}"><parent link="{parent}"/><child link="{child}"/>'
            f'<axis xyz="0 0 1"/>{limit}{extra}</joint>')


def robot(*parts: str) -> str:
    return '<?xml version="1.0"?><robot name="toy">' + "".join(parts) + "</robot>"


def toy_urdf(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "toy.urdf"
    p.write_text(text)
    return p


@pytest.mark.parametrize(("rel", "dof"), STANDARD_URDFS.items())
def test_standard_urdfs_load_unmodified(rel: str, dof: int) -> None:
    spec = load_embodiment(PYBULLET_DATA / rel)
    assert spec.dof == dof
    assert spec.descriptors().shape == (dof, JOINT_DESCRIPTOR_DIM)
    assert EmbodimentSpec.from_dict(spec.to_dict()) == spec
    rng = np.random.default_rng(0)
    q = rng.uniform(spec.lower, spec.upper, size=(4, 3, spec.dof))
    x = spec.normalize(q)
    assert np.all(np.abs(x) <= 1.0 + 1e-12)
    np.testing.assert_allclose(spec.denormalize(x), q, atol=1e-12)
    xd = rng.normal(size=(5, spec.dof))
    np.testing.assert_allclose(spec.normalize_velocity(spec.denormalize_velocity(xd)), xd, atol=1e-12)


def test_chain_depth_grippers_and_continuous_joints() -> None:
    panda = load_embodiment(PYBULLET_DATA / "franka_panda/panda.urdf")
    assert [j.depth for j in panda.joints] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert panda.gripper_mask.tolist() == [False] * 7 + [True]
    r2d2 = load_embodiment(PYBULLET_DATA / "r2d2.urdf")
    wheel = r2d2.joint_names.index("right_front_wheel_joint")
    assert r2d2.joints[wheel].type == "continuous"
    q = np.zeros(r2d2.dof)
    q[wheel] = 3 * math.pi / 2  # wraps to -pi/2
    assert r2d2.normalize(q)[wheel] == pytest.approx(-0.5)
    assert r2d2.clamp_positions(q)[wheel] == q[wheel]  # continuous joints are not clamped


def test_mimic_and_fixed_joints_are_not_actuated(tmp_path: Path) -> None:
    text = robot(link("base"), link("a"), link("b"), link("c"),
                 joint("j1", "base", "a"), joint("fixed", "a", "b", "fixed"),
                 joint("j2", "b", "c", "prismatic", 'lower="0" upper="0.04"', '<mimic joint="j1"/>'))
    spec = load_embodiment(toy_urdf(tmp_path, text))
    assert spec.joint_names == ["j1"]


def test_clamp_pad_and_reorder() -> None:
    spec = load_embodiment(PYBULLET_DATA / "kuka_iiwa/model.urdf")
    q = spec.upper + 1.0
    np.testing.assert_allclose(spec.clamp_positions(q), spec.upper)
    np.testing.assert_allclose(spec.clamp_velocities(np.full(7, 1e3)), spec.velocity_limits)
    padded, mask = spec.pad(np.ones((2, 7)), max_dof=10)
    assert padded.shape == (2, 10) and mask.sum() == 7 and padded[:, 7:].sum() == 0
    np.testing.assert_array_equal(spec.unpad(padded), np.ones((2, 7)))
    names = list(reversed(spec.joint_names)) + ["extra"]
    values = np.arange(8.0)
    np.testing.assert_array_equal(spec.reorder_from(names, values), np.arange(7.0)[::-1])
    with pytest.raises(EmbodimentError, match="lbr_iiwa_joint_1"):
        spec.reorder_from(spec.joint_names[1:], np.zeros(6))


def bad_cases() -> dict[str, tuple[str, str]]:
    ok = [link("base"), link("a"), link("b")]
    return {
        "malformed": ('<robot name="x"><link name="a">', "malformed XML"),
        "no_actuated": (robot(*ok, joint("f", "base", "a", "fixed")), "no actuated joints"),
        "inverted": (robot(*ok, joint("j1", "base", "a", limits='lower="1" upper="-1"')),
                     "joint 'j1' has lower limit 1.0 above upper limit -1.0"),
        "duplicate": (robot(*ok, joint("j1", "base", "a"), joint("j1", "a", "b")), "duplicate joint name 'j1'"),
        "mesh": (robot(link("base"), '<link name="a"><visual><geometry><mesh filename="meshes/gone.stl"/>'
                       "</geometry></visual></link>", joint("j1", "base", "a")),
                 "link 'a' refers to missing mesh 'meshes/gone.stl'"),
        "no_limits": (robot(*ok, '<joint name="j1" type="revolute"><parent link="base"/><child link="a"/></joint>'),
                      "joint 'j1' (revolute) has no position limits"),
        # Kinematic loops once made the chain-depth walk spin forever.
        "loop_to_base": (robot(*ok, joint("j1", "base", "a"), joint("j2", "a", "base")),
                         "kinematic loop: joints 'j2', 'j1' lead from link 'a' back to itself"),
        "two_parents": (robot(*ok, joint("j1", "base", "a"), joint("j2", "a", "b"), joint("j3", "base", "b")),
                        "link 'b' has two parent joints, 'j2' and 'j3'"),
    }


@pytest.mark.parametrize("case", sorted(bad_cases()))
def test_bad_urdfs_name_file_and_joint(tmp_path: Path, case: str) -> None:
    text, expected = bad_cases()[case]
    path = toy_urdf(tmp_path, text)
    with pytest.raises(EmbodimentError) as err:
        load_embodiment(path)
    assert str(path) in str(err.value)
    assert expected in str(err.value)


def test_more_joints_than_max_dof(tmp_path: Path) -> None:
    text = robot(link("base"), link("a"), link("b"), joint("j1", "base", "a"), joint("j2", "a", "b"))
    with pytest.raises(EmbodimentError, match="2 actuated joints exceed max_dof=1.*'j2'"):
        load_embodiment(toy_urdf(tmp_path, text), max_dof=1)


def test_robot_config_errors(tmp_path: Path) -> None:
    path = PYBULLET_DATA / "kuka_iiwa/model.urdf"
    with pytest.raises(EmbodimentError, match="actuated joint 'nope' is not in the URDF"):
        load_embodiment(path, RobotConfig(name="k", urdf=str(path), actuated_joints=("nope",)))
    with pytest.raises(EmbodimentError, match="home value 9.0 of joint 'lbr_iiwa_joint_1'"):
        load_embodiment(path, RobotConfig(name="k", urdf=str(path), home=(9.0,) + (0.0,) * 6))
    with pytest.raises(EmbodimentError, match="camera 'c' is on unknown link 'nowhere'"):
        load_embodiment(path, RobotConfig(name="k", urdf=str(path), cameras=(CameraConfig(name="c", link="nowhere"),)))


def test_cli_prints_yaml_and_fails_clearly(tmp_path: Path) -> None:
    exe = [sys.executable, "-m", "gen_theta_ros.cli", "embodiment"]
    out = subprocess.run(exe + [str(PYBULLET_DATA / "kuka_iiwa/model.urdf")], capture_output=True, text=True,
                         check=True)
    doc = yaml.safe_load(out.stdout)
    assert doc["dof"] == 7 and doc["joints"][0]["name"] == "lbr_iiwa_joint_1"
    bad = toy_urdf(tmp_path, bad_cases()["inverted"][0])
    res = subprocess.run(exe + [str(bad)], capture_output=True, text=True)
    assert res.returncode == 1
    assert "lower limit 1.0 above upper limit -1.0" in res.stderr


@pytest.mark.parametrize("case", ["loop_to_base", "two_parents"])
def test_cli_kinematic_loop_is_one_line_not_a_hang(tmp_path: Path, case: str) -> None:
    text, expected = bad_cases()[case]
    bad = toy_urdf(tmp_path, text)
    res = subprocess.run([sys.executable, "-m", "gen_theta_ros.cli", "embodiment", str(bad)], capture_output=True,
                         text=True, timeout=120)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1 and res.stdout == "" and len(lines) == 1, res.stderr
    assert str(bad) in lines[0] and expected in lines[0]


def test_gripper_events_are_where_a_gripper_opens_or_closes() -> None:
    """closed_grippers: below half the opening range, grippers only; next_gripper_event: the next change."""
    spec = load_robot("arm6")  # joint 6 is the finger, 0 (closed) .. 0.04 m (open)
    q = np.tile(spec.home_positions, (6, 1))
    q[:, 6] = [0.04, 0.03, 0.01, 0.0, 0.035, 0.04]  # open, open, closed, closed, open, open
    q[:, 0] = spec.lower[0]  # an arm joint at its lower limit is not a closed gripper
    closed = spec.closed_grippers(q)
    assert closed[:, 6].tolist() == [False, False, True, True, False, False] and not closed[:, :6].any()
    assert spec.next_gripper_event(q).tolist() == [2, 2, 4, 4, 5, 5]  # the last row: none follows
    no_change = np.tile(spec.home_positions, (3, 1))
    assert spec.next_gripper_event(no_change).tolist() == [2, 2, 2]


@pytest.mark.parametrize(("name", "dof", "grippers"),
                         [("arm6", 7, 1), ("arm7", 8, 1), ("humanoid16", 16, 2), ("ur5e", 7, 1)])
def test_shipped_robots(name: str, dof: int, grippers: int) -> None:
    import pybullet

    from gen_theta_model.embodiment import load_robot

    spec = load_robot(name)
    assert spec.dof == dof and int(spec.gripper_mask.sum()) == grippers
    assert len(spec.home) == dof and {"scene", "wrist"} <= {c.name for c in spec.cameras}
    home = spec.home_positions
    np.testing.assert_array_equal(spec.clamp_positions(home), home)  # home lies inside the limits
    # pybullet loads it with the same actuated joints in the same order (mimic joints aside).
    client = pybullet.connect(pybullet.DIRECT)
    try:
        body = pybullet.loadURDF(spec.urdf_path, useFixedBase=True, physicsClientId=client)
        names = [pybullet.getJointInfo(body, i, physicsClientId=client)[1].decode()
                 for i in range(pybullet.getNumJoints(body, physicsClientId=client))]
    finally:
        pybullet.disconnect(client)
    assert [n for n in names if n in spec.joint_names] == spec.joint_names


def test_a_spec_made_in_another_checkout_finds_the_shipped_urdf(tmp_path: Path) -> None:
    """Datasets and checkpoints store the absolute URDF path of the checkout they were made in."""
    spec = load_robot("arm6")
    moved = dataclasses.replace(spec, urdf_path="/elsewhere/gen_theta/urdf/arm6.urdf")
    assert moved.urdf_file() == Path(spec.urdf_path)  # the shipped file, identified by its sha256
    world = SimWorld(moved)  # pybullet and yourdfpy load it from there
    world.close()
    changed = dataclasses.replace(moved, urdf_sha256="0" * 64)  # another URDF of that name
    with pytest.raises(EmbodimentError, match="arm6: its URDF /elsewhere/gen_theta/urdf/arm6.urdf does not exist"):
        changed.urdf_file()
    local = tmp_path / "mine.urdf"
    local.write_bytes(Path(spec.urdf_path).read_bytes())
    assert dataclasses.replace(spec, urdf_path=str(local)).urdf_file() == local  # an existing path wins
