"""Object poses: the recorded PoseArray stream -> the episode's object streams -> a sample's OBJECTS."""

from __future__ import annotations

import numpy as np
import pytest
from geometry_msgs.msg import Pose, PoseArray

from gen_theta_model.data.object_poses import (
    OBJECT_POSITION,
    OBJECT_STAMP,
    object_streams,
    objects_at,
    pose_array_positions,
)


def _poses(*xyz: tuple[float, float, float]) -> PoseArray:
    msg = PoseArray()
    for x, y, z in xyz:
        pose = Pose()
        pose.position.x, pose.position.y, pose.position.z = x, y, z
        msg.poses.append(pose)
    return msg


def test_pose_array_positions_keep_the_message_order():
    np.testing.assert_array_equal(pose_array_positions(_poses((1, 2, 3), (4, 5, 6))), [[1, 2, 3], [4, 5, 6]])
    assert pose_array_positions(PoseArray()).shape == (0, 3)


def test_object_streams_drop_the_scene_before_the_start_and_refuse_a_changing_set():
    # stamps 0..4 s, received 10 ms later; the recording starts at 2.005 s: the first two describe the scene
    # before it (the one sensed at 2.0 s, less than the least transport delay before the start, is kept)
    stamps = [k * 10**9 for k in range(5)]
    recv = [s + 10**7 for s in stamps]
    positions = [np.full((2, 3), float(k)) for k in range(5)]
    out = object_streams(stamps, recv, positions, start_ns=2 * 10**9 + 5 * 10**6)
    np.testing.assert_array_equal(out[OBJECT_STAMP], stamps[2:])
    assert out[OBJECT_POSITION].shape == (3, 2, 3) and out[OBJECT_POSITION][0, 0, 0] == 2.0
    assert object_streams([], [], [], start_ns=0) == {}
    with pytest.raises(ValueError, match="change in number"):
        object_streams(stamps[:2], recv[:2], [np.zeros((2, 3)), np.zeros((3, 3))], start_ns=0)
    with pytest.raises(ValueError, match="not finite"):
        object_streams(stamps[:1], recv[:1], [np.full((1, 3), np.nan)], start_ns=0)
    with pytest.raises(ValueError, match="stamp 1000000000 ns does not increase"):  # as joint_states' stamps
        object_streams([0, 2 * 10**9, 10**9], recv[:3], positions[:3], start_ns=0)


def test_objects_at_takes_the_latest_poses_and_pads_the_slots():
    stamps = np.array([100, 200, 300], np.int64)
    positions = np.arange(3 * 2 * 3, dtype=np.float32).reshape(3, 2, 3)
    out, mask = objects_at(stamps, positions, 250, slots=4)
    np.testing.assert_array_equal(out[:2], positions[1])
    assert not out[2:].any() and mask.tolist() == [True, True, False, False]
    np.testing.assert_array_equal(objects_at(stamps, positions, 50, slots=4)[0][:2], positions[0])  # before: first
    out, mask = objects_at(np.zeros(0, np.int64), None, 250, slots=4)
    assert not out.any() and not mask.any()
    with pytest.raises(ValueError, match="object slots"):
        objects_at(stamps, positions, 250, slots=1)
