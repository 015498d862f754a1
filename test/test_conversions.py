"""Message <-> numpy conversions: images against hand-built expected arrays, time, joints, trajectories.

The expected arrays are what cv_bridge's passthrough conversion gives; ``decode_image`` and
``encode_image`` are the numpy conversion used where cv_bridge is not installed.
"""

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from sensor_msgs.msg import Image, JointState

from gen_theta_model.trajectory import Trajectory, TrajectoryPoint
from gen_theta_ros import conversions as cv


def raw_image(data: bytes, h: int, w: int, encoding: str, step: int, big: bool = False) -> Image:
    msg = Image()
    msg.height, msg.width, msg.encoding, msg.step, msg.is_bigendian = h, w, encoding, step, int(big)
    msg.data = data
    return msg


def test_rgb8_with_row_padding():
    # 2x2 rgb8, step 8: 6 bytes of pixels + 2 bytes padding per row.
    data = bytes([1, 2, 3, 4, 5, 6, 0, 0, 7, 8, 9, 10, 11, 12, 0, 0])
    arr = cv.decode_image(raw_image(data, 2, 2, "rgb8", 8))
    expected = np.array([[[1, 2, 3], [4, 5, 6]], [[7, 8, 9], [10, 11, 12]]], dtype=np.uint8)
    assert arr.dtype == np.uint8 and arr.shape == (2, 2, 3)
    np.testing.assert_array_equal(arr, expected)


def test_bgr8_is_passthrough_not_swapped():
    arr = cv.decode_image(raw_image(bytes([10, 20, 30]), 1, 1, "bgr8", 3))
    np.testing.assert_array_equal(arr, [[[10, 20, 30]]])


def test_mono8_is_two_dimensional():
    arr = cv.decode_image(raw_image(bytes([0, 1, 2, 3, 4, 5]), 2, 3, "mono8", 3))
    np.testing.assert_array_equal(arr, [[0, 1, 2], [3, 4, 5]])
    assert arr.shape == (2, 3)


def test_16uc1_big_and_little_endian():
    little = cv.decode_image(raw_image(bytes([0x01, 0x02, 0xFF, 0x00]), 1, 2, "16UC1", 4))
    big = cv.decode_image(raw_image(bytes([0x02, 0x01, 0x00, 0xFF]), 1, 2, "16UC1", 4, big=True))
    np.testing.assert_array_equal(little, [[0x0201, 0x00FF]])
    np.testing.assert_array_equal(big, [[0x0201, 0x00FF]])
    assert little.dtype == big.dtype == np.uint16


def test_32fc1_values():
    values = np.array([[1.5, -2.25], [np.inf, 0.0]], dtype="<f4")
    arr = cv.decode_image(raw_image(values.tobytes(), 2, 2, "32FC1", 8))
    assert arr.dtype == np.float32
    np.testing.assert_array_equal(arr, values)


@pytest.mark.parametrize(
    "encoding, array",
    [
        ("rgb8", np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)),
        ("bgr8", np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)),
        ("mono8", np.arange(12, dtype=np.uint8).reshape(3, 4)),
        ("16UC1", (np.arange(6, dtype=np.uint16) * 1000).reshape(2, 3)),
        ("32FC1", np.linspace(-1, 1, 6, dtype=np.float32).reshape(3, 2)),
    ],
)
def test_image_round_trip(encoding, array):
    msg = cv.numpy_to_image(array, encoding, stamp=3.25, frame_id="cam")
    assert msg.step == array.shape[1] * array.itemsize * (array.shape[2] if array.ndim == 3 else 1)
    assert cv.time_to_seconds(msg.header.stamp) == 3.25 and msg.header.frame_id == "cam"
    for out in (cv.image_to_numpy(msg), cv.decode_image(cv.encode_image(array, encoding))):
        assert out.dtype == array.dtype
        np.testing.assert_array_equal(out, array)


def test_bad_images_are_named():
    with pytest.raises(cv.ConversionError, match="encoding 'yuv422'"):
        cv.decode_image(raw_image(bytes(4), 1, 1, "yuv422", 4))
    with pytest.raises(cv.ConversionError, match="too small"):
        cv.decode_image(raw_image(bytes(5), 1, 2, "rgb8", 6))
    with pytest.raises(cv.ConversionError, match="dtype uint8"):
        cv.encode_image(np.zeros((2, 2, 3), np.float32), "rgb8")


def test_compressed_round_trip():
    rgb = np.zeros((16, 16, 3), dtype=np.uint8)
    rgb[:, :8] = (200, 30, 30)  # red left half
    png = cv.numpy_to_compressed(rgb, fmt="png")
    assert png.format == "rgb8; png compressed bgr8"
    np.testing.assert_array_equal(cv.compressed_to_numpy(png), rgb)
    jpeg = cv.compressed_to_numpy(cv.numpy_to_compressed(rgb, fmt="jpeg", quality=95))
    assert np.abs(jpeg.astype(int) - rgb).mean() < 4.0  # lossy but the right colours
    with pytest.raises(cv.ConversionError, match="cannot be decoded"):
        msg = cv.numpy_to_compressed(rgb)
        msg.data = b"not an image"
        cv.compressed_to_numpy(msg)


def test_time_and_duration():
    t = cv.seconds_to_time(12.000000007)
    assert (t.sec, t.nanosec) == (12, 7)
    assert cv.time_to_seconds(Time(sec=3, nanosec=500_000_000)) == 3.5
    d = cv.seconds_to_duration(-0.25)
    assert (d.sec, d.nanosec) == (-1, 750_000_000)
    assert cv.duration_to_seconds(d) == -0.25
    with pytest.raises(cv.ConversionError):
        cv.seconds_to_time(-1.0)


def test_joint_state_round_trip_and_missing_fields():
    msg = cv.arrays_to_joint_state(["a", "b"], [0.1, 0.2], [1.0, 2.0], None, stamp=1.5)
    names, q, qd, eff = cv.joint_state_to_arrays(msg)
    assert names == ["a", "b"]
    np.testing.assert_array_equal(q, [0.1, 0.2])
    np.testing.assert_array_equal(qd, [1.0, 2.0])
    assert np.isnan(eff).all()
    bad = JointState(name=["a", "b"], position=[0.0])
    with pytest.raises(cv.ConversionError, match="2 names but 1 positions"):
        cv.joint_state_to_arrays(bad)


def test_trajectory_round_trip():
    traj = Trajectory(
        ("j1", "j2"),
        (
            TrajectoryPoint(np.array([0.0, 1.0]), 0.1),
            TrajectoryPoint(np.array([0.5, 1.5]), 0.3, np.array([0.1, 0.0]), np.array([0.0, 0.0])),
        ),
        start_time=7.5,
    )
    back = cv.trajectory_from_msg(cv.trajectory_to_msg(traj))
    assert back.joint_names == traj.joint_names and back.start_time == 7.5
    assert back.points[0].velocities is None and back.points[0].time_from_start == pytest.approx(0.1)
    np.testing.assert_array_equal(back.points[1].velocities, [0.1, 0.0])
    np.testing.assert_array_equal(back.points[1].positions, [0.5, 1.5])


def test_pose_array_round_trip():
    pos = np.array([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    quat = np.array([[0, 0, 0, 1.0], [0, 0, 1.0, 0]])
    p, q = cv.msg_to_poses(cv.poses_to_msg(pos, quat, 2.0, "world"))
    np.testing.assert_array_equal(p, pos)
    np.testing.assert_array_equal(q, quat)
