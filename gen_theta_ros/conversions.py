"""ROS 2 messages <-> numpy arrays and gen_theta_model objects, for the nodes.

Decoding (message -> arrays: images, ``to_rgb8``, joint states, trajectories, times)
lives in the pure core, gen_theta_model/messages.py, and is re-exported here; this
module adds what builds messages. Times are float seconds. Images follow cv_bridge's
``passthrough`` conversion (see gen_theta_model.messages); cv_bridge is used when a ROS 2
install provides it, otherwise the numpy conversion gives the same arrays for the
encodings in ``ENCODINGS``.
"""

from __future__ import annotations

import io
import math
import sys
from collections.abc import Sequence

import numpy as np
from builtin_interfaces.msg import Duration, Time
from geometry_msgs.msg import Pose, PoseArray
from PIL import Image as PILImage
from sensor_msgs.msg import CompressedImage, Image, JointState
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from gen_theta_model.messages import (
    ENCODINGS,
    ConversionError,
    compressed_to_numpy,
    decode_image,
    duration_to_seconds,
    joint_state_to_arrays,
    time_to_seconds,
    to_rgb8,
    trajectory_from_msg,
)
from gen_theta_model.trajectory import Trajectory

__all__ = [  # the decoders of gen_theta_model.messages, and the encoders below
    "ENCODINGS",
    "ConversionError",
    "arrays_to_joint_state",
    "compressed_to_numpy",
    "decode_image",
    "duration_to_seconds",
    "encode_image",
    "image_to_numpy",
    "joint_state_to_arrays",
    "msg_to_poses",
    "numpy_to_compressed",
    "numpy_to_image",
    "poses_to_msg",
    "seconds_to_duration",
    "seconds_to_time",
    "time_to_seconds",
    "to_rgb8",
    "trajectory_from_msg",
    "trajectory_to_msg",
]

try:  # a ROS 2 install; the PyPI wheels have no cv_bridge
    from cv_bridge import CvBridge
except ImportError:
    CvBridge = None


# -- time ------------------------------------------------------------------------------
def seconds_to_time(seconds: float) -> Time:
    """Float seconds (>= 0) -> builtin_interfaces/Time."""
    if seconds < 0 or not math.isfinite(seconds):
        raise ConversionError(f"a Time must be finite and >= 0 s, got {seconds}")
    ns = int(round(seconds * 1e9))
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def seconds_to_duration(seconds: float) -> Duration:
    """Float seconds -> builtin_interfaces/Duration (nanosec always in [0, 1e9))."""
    if not math.isfinite(seconds):
        raise ConversionError(f"a Duration must be finite, got {seconds}")
    ns = int(round(seconds * 1e9))
    return Duration(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


# -- joint states ----------------------------------------------------------------------
def arrays_to_joint_state(
    names: Sequence[str],
    positions: np.ndarray,
    velocities: np.ndarray | None = None,
    efforts: np.ndarray | None = None,
    stamp: float = 0.0,
    frame_id: str = "",
) -> JointState:
    """Names (n) and arrays (n,) -> JointState with header stamp ``stamp`` s."""
    msg = JointState()
    msg.header.stamp = seconds_to_time(stamp)
    msg.header.frame_id = frame_id
    msg.name = list(names)
    msg.position = np.asarray(positions, dtype=np.float64).tolist()
    if velocities is not None:
        msg.velocity = np.asarray(velocities, dtype=np.float64).tolist()
    if efforts is not None:
        msg.effort = np.asarray(efforts, dtype=np.float64).tolist()
    return msg


# -- trajectories ------------------------------------------------------------------------
def trajectory_to_msg(traj: Trajectory) -> JointTrajectory:
    """Trajectory -> trajectory_msgs/JointTrajectory (start_time becomes the header stamp)."""
    msg = JointTrajectory()
    msg.header.stamp = seconds_to_time(traj.start_time)
    msg.joint_names = list(traj.joint_names)
    for p in traj.points:
        pm = JointTrajectoryPoint()
        pm.positions = p.positions.tolist()
        if p.velocities is not None:
            pm.velocities = p.velocities.tolist()
        if p.accelerations is not None:
            pm.accelerations = p.accelerations.tolist()
        pm.time_from_start = seconds_to_duration(p.time_from_start)
        msg.points.append(pm)
    return msg


# -- poses ---------------------------------------------------------------------------------
def poses_to_msg(positions: np.ndarray, quaternions: np.ndarray, stamp: float, frame_id: str) -> PoseArray:
    """Positions (N, 3) m and quaternions (N, 4) xyzw -> PoseArray."""
    msg = PoseArray()
    msg.header.stamp = seconds_to_time(stamp)
    msg.header.frame_id = frame_id
    for p, q in zip(np.asarray(positions, float), np.asarray(quaternions, float), strict=True):
        pose = Pose()
        pose.position.x, pose.position.y, pose.position.z = (float(v) for v in p)
        pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w = (float(v) for v in q)
        msg.poses.append(pose)
    return msg


def msg_to_poses(msg: PoseArray) -> tuple[np.ndarray, np.ndarray]:
    """PoseArray -> positions (N, 3) and quaternions (N, 4) xyzw."""
    pos = np.array([[p.position.x, p.position.y, p.position.z] for p in msg.poses], dtype=np.float64)
    quat = np.array(
        [[p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w] for p in msg.poses], dtype=np.float64
    )
    return pos.reshape(-1, 3), quat.reshape(-1, 4)


# -- images --------------------------------------------------------------------------------
def image_to_numpy(msg: Image) -> np.ndarray:
    """sensor_msgs/Image -> (H, W, C) or (H, W) array, as cv_bridge's passthrough gives.

    Uses cv_bridge when available, else ``decode_image``.
    """
    if CvBridge is not None:
        return CvBridge().imgmsg_to_cv2(msg, desired_encoding="passthrough")
    return decode_image(msg)


def numpy_to_image(array: np.ndarray, encoding: str, stamp: float = 0.0, frame_id: str = "") -> Image:
    """(H, W, C) or (H, W) array -> sensor_msgs/Image stamped ``stamp`` s (cv_bridge, else ``encode_image``)."""
    if CvBridge is not None:
        msg = CvBridge().cv2_to_imgmsg(np.ascontiguousarray(array), encoding=encoding)
    else:
        msg = encode_image(array, encoding)
    msg.header.stamp = seconds_to_time(stamp)
    msg.header.frame_id = frame_id
    return msg


def encode_image(array: np.ndarray, encoding: str) -> Image:
    """Convert as ``numpy_to_image`` does, with numpy only: native byte order, no row padding, no header."""
    if encoding not in ENCODINGS:
        raise ConversionError(f"Image encoding '{encoding}' is not supported (known: {sorted(ENCODINGS)})")
    dtype, channels = ENCODINGS[encoding]
    arr = np.asarray(array)
    if arr.dtype != np.dtype(dtype):
        raise ConversionError(f"encoding {encoding} needs dtype {np.dtype(dtype)}, got {arr.dtype}")
    if arr.ndim == 3 and channels == 1 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    want = 2 if channels == 1 else 3
    if arr.ndim != want or (channels > 1 and arr.shape[2] != channels):
        raise ConversionError(f"encoding {encoding} needs {channels} channel(s), got shape {arr.shape}")
    msg = Image()
    msg.height, msg.width = int(arr.shape[0]), int(arr.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = int(sys.byteorder == "big")
    msg.step = msg.width * channels * arr.dtype.itemsize
    msg.data = np.ascontiguousarray(arr).tobytes()
    return msg


def numpy_to_compressed(
    rgb: np.ndarray, fmt: str = "jpeg", quality: int = 90, stamp: float = 0.0, frame_id: str = ""
) -> CompressedImage:
    """(H, W, 3) uint8 RGB -> CompressedImage; ``format`` as image_transport writes it
    (``"rgb8; jpeg compressed bgr8"``), so ROS tools decode it to the right colours.
    """
    if fmt not in ("jpeg", "png"):
        raise ConversionError(f"compressed format must be 'jpeg' or 'png', got '{fmt}'")
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ConversionError(f"expected an (H, W, 3) uint8 RGB image, got {arr.dtype} {arr.shape}")
    out = io.BytesIO()
    PILImage.fromarray(arr, "RGB").save(out, format=fmt.upper(), **({"quality": quality} if fmt == "jpeg" else {}))
    msg = CompressedImage()
    msg.header.stamp = seconds_to_time(stamp)
    msg.header.frame_id = frame_id
    msg.format = f"rgb8; {fmt} compressed bgr8"
    msg.data = out.getvalue()
    return msg
