"""Teleop ingest: actions from a leader arm's JointState topic (real MCAP bags), mapped and resampled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from bag_helpers import LEADER_HZ, T0, leader_positions, read_mcap, write_bag

from gen_theta_model.data.episode import ACTION_POSITION, ACTION_STAMP, COMMAND_STAMP, JOINT_STAMP
from gen_theta_model.data.ingest import IngestOptions, TopicMap, ingest, main
from gen_theta_model.data.manifest import open_dataset, read_episode
from gen_theta_model.embodiment import load_robot

LEADER = "/leader/joint_states"


@pytest.fixture(scope="module")
def arm6():
    return load_robot("arm6")


def expected_actions(bag: Path, spec, grid: np.ndarray, rename: dict[str, str]) -> np.ndarray:
    """Read the leader's positions with the mcap library; (len(grid), dof) in joint order, interpolated at grid."""
    msgs = read_mcap(bag)[LEADER]
    stamps = np.array([m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for m in msgs])
    cols = [list(msgs[0].name).index(rename.get(j, j)) for j in spec.joint_names]
    q = np.array([np.asarray(m.position)[cols] for m in msgs])
    return np.stack([np.interp((grid - T0) * 1e-9, (stamps - T0) * 1e-9, q[:, j]) for j in range(spec.dof)], 1)


def test_leader_joint_states_from_the_recorders_episode_yaml(tmp_path, arm6):
    bag = write_bag(tmp_path / "bags" / "teleop", arm6, leader_topic=LEADER, writer="recorder")
    report = ingest([bag], tmp_path / "ds", IngestOptions(), jobs=1, progress=False)
    assert report.added == ["teleop"], report.failed
    (meta,) = open_dataset(tmp_path / "ds").episodes
    assert meta.num_trajectories == 0 and meta.duration_s == pytest.approx(1.6, abs=0.05)
    ep = read_episode(tmp_path / "ds", "teleop")
    grid = ep.arrays[ACTION_STAMP]  # the JointTrajectory path's grid: control rate from the first joint state
    assert grid[0] == ep.arrays[JOINT_STAMP][0] == T0 and np.all(np.diff(grid) == 1e9 / arm6.control_rate_hz)
    assert len(ep.arrays[COMMAND_STAMP]) == int(1.6 * LEADER_HZ)  # one per leader message
    q = ep.arrays[ACTION_POSITION]
    np.testing.assert_allclose(q, expected_actions(bag, arm6, grid, {}), atol=1e-6)
    inside = (grid - T0) * 1e-9 > 0.01  # after the first leader message: the leader's own trajectory
    np.testing.assert_allclose(q[inside], leader_positions(arm6, (grid[inside] - T0) * 1e-9), atol=2e-4)
    assert np.ptp(q, axis=0).max() > 0.1  # it moves


def test_leader_names_mapped_through_the_cli(tmp_path, arm6, capsys):
    rename = {j: f"leader_{j.removeprefix('arm6_')}" for j in arm6.joint_names}  # leader_joint1, ...
    bag = write_bag(tmp_path / "bags" / "gello", arm6, leader_topic=LEADER, leader_names=rename)
    tmap = tmp_path / "map.yaml"
    tmap.write_text("action_joints: {" + ", ".join(f"{v}: {k}" for k, v in rename.items())
                    + ", leader_trigger: ''}\n")
    out = tmp_path / "ds"
    rc = main([str(bag), "--out", str(out), "--action-topic", LEADER, "--topic-map", str(tmap), "--jobs", "1"])
    assert rc == 0, capsys.readouterr().err
    ep = read_episode(out, "gello")
    grid = ep.arrays[ACTION_STAMP]
    np.testing.assert_allclose(ep.arrays[ACTION_POSITION], expected_actions(bag, arm6, grid, rename), atol=1e-6)


def test_missing_topic_and_unknown_joints_are_clear_errors(tmp_path, arm6):
    bags = tmp_path / "bags"
    plain = write_bag(bags / "no_leader", arm6)  # a JointTrajectory bag: no leader topic
    renamed = write_bag(bags / "unmapped", arm6, leader_topic=LEADER,
                        leader_names={j: f"leader_{j}" for j in arm6.joint_names})
    half = write_bag(bags / "half_mapped", arm6, leader_topic=LEADER,
                     leader_names={arm6.joint_names[0]: "leader_shoulder"})
    drop = {"leader_trigger": "", "leader_shoulder": ""}  # '' drops a leader joint: arm6_joint1 has none then
    opts = IngestOptions(topic_map=TopicMap(action=LEADER, action_joints=drop))
    report = ingest([plain, renamed, half], tmp_path / "ds", opts, jobs=1, progress=False)
    assert report.added == []
    errors = {Path(k).name: v for k, v in report.failed.items()}
    assert f"missing topic '{LEADER}' (action)" in errors["no_leader"]
    assert f"leader joint 'leader_{arm6.joint_names[-1]}' is not a joint of 'arm6'" in errors["unmapped"]
    assert f"no leader joint for '{arm6.joint_names[0]}'" in errors["half_mapped"]
