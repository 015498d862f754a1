"""ROS 2 messages <-> numpy arrays and gen_theta_model objects.

Times are float seconds. Images follow cv_bridge's ``passthrough`` conversion: an
Image becomes an (H, W, C) array for multi-channel encodings and (H, W) for
single-channel ones, with the dtype of the encoding, row padding (``step``) removed
and byte order fixed. cv_bridge is used when a ROS 2 install provides it; otherwise
the numpy conversion below gives the same arrays for the encodings in ``ENCODINGS``.
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
from PIL import UnidentifiedImageError
from sensor_msgs.msg import CompressedImage, Image, JointState
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from gen_theta_model.trajectory import Trajectory, TrajectoryPoint

try:  # a ROS 2 install; the PyPI wheels have no cv_bridge
    from cv_bridge import CvBridge
except ImportError:
    CvBridge = None

# encoding -> (numpy dtype, channels)
ENCODINGS: dict[str, tuple[type, int]] = {
    "rgb8": (np.uint8, 3),
    "bgr8": (np.uint8, 3),
    "rgba8": (np.uint8, 4),
    "bgra8": (np.uint8, 4),
    "mono8": (np.uint8, 1),
    "mono16": (np.uint16, 1),
    "8UC1": (np.uint8, 1),
    "8UC3": (np.uint8, 3),
    "16UC1": (np.uint16, 1),
    "32FC1": (np.float32, 1),
}


class ConversionError(ValueError):
    """A message cannot be converted; the message names the field and the problem."""


# -- time ------------------------------------------------------------------------------
def time_to_seconds(stamp: Time) -> float:
    """builtin_interfaces/Time -> float seconds."""
    return stamp.sec + stamp.nanosec * 1e-9


def seconds_to_time(seconds: float) -> Time:
    """Float seconds (>= 0) -> builtin_interfaces/Time."""
    if seconds < 0 or not math.isfinite(seconds):
        raise ConversionError(f"a Time must be finite and >= 0 s, got {seconds}")
    ns = int(round(seconds * 1e9))
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def duration_to_seconds(d: Duration) -> float:
    """builtin_interfaces/Duration -> float seconds."""
    return d.sec + d.nanosec * 1e-9


def seconds_to_duration(seconds: float) -> Duration:
    """Float seconds -> builtin_interfaces/Duration (nanosec always in [0, 1e9))."""
    if not math.isfinite(seconds):
        raise ConversionError(f"a Duration must be finite, got {seconds}")
    ns = int(round(seconds * 1e9))
    return Duration(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


# -- joint states ----------------------------------------------------------------------
def joint_state_to_arrays(msg: JointState) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """JointState -> (names, positions, velocities, efforts), each array (n,) float64.

    Missing velocity or effort fields (empty, as the message allows) become NaN.
    """
    names = list(msg.name)
    n = len(names)
    pos = np.asarray(msg.position, dtype=np.float64)
    if pos.shape != (n,):
        raise ConversionError(f"JointState has {n} names but {pos.shape[0]} positions")
    out = [pos]
    for field in ("velocity", "effort"):
        values = np.asarray(getattr(msg, field), dtype=np.float64)
        if values.size == 0:
            values = np.full(n, np.nan)
        elif values.shape != (n,):
            raise ConversionError(f"JointState has {n} names but {values.shape[0]} {field} values")
        out.append(values)
    return names, out[0], out[1], out[2]


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
def trajectory_from_msg(msg: JointTrajectory) -> Trajectory:
    """trajectory_msgs/JointTrajectory -> Trajectory (header stamp 0 -> start when received).

    Empty velocity/acceleration lists mean "not given". Raises TrajectoryError (a
    ValueError) on malformed messages.
    """
    points = tuple(
        TrajectoryPoint(
            positions=np.asarray(p.positions, dtype=np.float64),
            time_from_start=duration_to_seconds(p.time_from_start),
            velocities=np.asarray(p.velocities, dtype=np.float64) if len(p.velocities) else None,
            accelerations=np.asarray(p.accelerations, dtype=np.float64) if len(p.accelerations) else None,
        )
        for p in msg.points
    )
    return Trajectory(tuple(msg.joint_names), points, time_to_seconds(msg.header.stamp))


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


def decode_image(msg: Image) -> np.ndarray:
    """Convert as ``image_to_numpy`` does, with numpy only, for the encodings in ``ENCODINGS``."""
    if msg.encoding not in ENCODINGS:
        raise ConversionError(f"Image encoding '{msg.encoding}' is not supported (known: {sorted(ENCODINGS)})")
    dtype, channels = ENCODINGS[msg.encoding]
    dt = np.dtype(dtype).newbyteorder(">" if msg.is_bigendian else "<")
    row = msg.width * channels * dt.itemsize
    if msg.step < row or len(msg.data) < msg.step * msg.height:
        raise ConversionError(
            f"Image {msg.width}x{msg.height} {msg.encoding}: step {msg.step} and {len(msg.data)} data bytes "
            f"are too small (need step >= {row})"
        )
    buf = np.frombuffer(bytes(msg.data), dtype=np.uint8)[: msg.step * msg.height].reshape(msg.height, msg.step)
    arr = buf[:, :row].copy().view(dt).astype(dt.newbyteorder("="))
    shape = (msg.height, msg.width) if channels == 1 else (msg.height, msg.width, channels)
    return arr.reshape(shape)


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


def compressed_to_numpy(msg: CompressedImage) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg or png) -> (H, W, 3) uint8 RGB, or (H, W) for grey images.

    Unlike cv_bridge (which decodes to BGR) this returns RGB, the order the model uses.
    """
    try:
        img = PILImage.open(io.BytesIO(bytes(msg.data)))
        img.load()
    except (UnidentifiedImageError, OSError) as err:
        raise ConversionError(f"CompressedImage (format '{msg.format}') cannot be decoded: {err}") from err
    if img.mode not in ("L", "I;16", "RGB"):
        img = img.convert("RGB")
    return np.asarray(img)


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
