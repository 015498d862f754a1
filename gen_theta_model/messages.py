"""Decoding of ROS 2 message fields into arrays and gen_theta_model objects (no ROS import).

Everything here reads fields only, so it takes rclpy messages and the messages of a bag
reader (rosbags) alike; gen_theta_ros/conversions.py wraps it for the nodes and adds the
encoders that build messages. Times are float seconds.

Images: ``decode_image`` gives what cv_bridge's ``passthrough`` conversion gives, an
(H, W, C) array for multi-channel encodings and (H, W) for single-channel ones, with
the encoding's dtype, row padding (``step``) removed and byte order fixed. ``to_rgb8``
turns any supported Image or CompressedImage into the (H, W, 3) uint8 RGB frame the
policy sees, by one fixed rule per encoding (no per-frame scaling):

- colour channels are reordered to RGB (``bgr*``), alpha is dropped (``*a8``, ``*a16``);
- grey images (``mono*``, ``*UC1``, ``32FC1``) are repeated into three channels;
- 16-bit values keep their high byte (v >> 8); ``32FC1`` maps [0, 1] to 0-255 (OpenCV's
  convention for float images), clipping outside it and taking NaN as 0.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from gen_theta_model.trajectory import Trajectory, TrajectoryPoint

# encoding -> (numpy dtype, channels)
ENCODINGS: dict[str, tuple[type, int]] = {
    "rgb8": (np.uint8, 3),
    "bgr8": (np.uint8, 3),
    "rgba8": (np.uint8, 4),
    "bgra8": (np.uint8, 4),
    "rgb16": (np.uint16, 3),
    "bgr16": (np.uint16, 3),
    "rgba16": (np.uint16, 4),
    "bgra16": (np.uint16, 4),
    "mono8": (np.uint8, 1),
    "mono16": (np.uint16, 1),
    "8UC1": (np.uint8, 1),
    "8UC3": (np.uint8, 3),
    "16UC1": (np.uint16, 1),
    "32FC1": (np.float32, 1),
}
BGR_ENCODINGS = frozenset({"bgr8", "bgra8", "bgr16", "bgra16"})


class ConversionError(ValueError):
    """A message cannot be decoded or used; the message names the field and the problem."""


# -- time ------------------------------------------------------------------------------
def time_to_seconds(stamp: Any) -> float:
    """builtin_interfaces/Time (``sec``, ``nanosec``) -> float seconds."""
    return stamp.sec + stamp.nanosec * 1e-9


def duration_to_seconds(d: Any) -> float:
    """builtin_interfaces/Duration (``sec``, ``nanosec``) -> float seconds."""
    return d.sec + d.nanosec * 1e-9


# -- joint states ----------------------------------------------------------------------
def joint_state_to_arrays(msg: Any) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """sensor_msgs/JointState -> (names, positions, velocities, efforts), each array (n,) float64.

    Missing velocity or effort fields (empty, as the message allows) become NaN; a field
    of another length than ``name`` is a ConversionError. Values are not checked here.
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


# -- trajectories ------------------------------------------------------------------------
def trajectory_from_msg(msg: Any) -> Trajectory:
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


# -- images --------------------------------------------------------------------------------
def decode_image(msg: Any) -> np.ndarray:
    """sensor_msgs/Image -> (H, W, C) or (H, W) array of the encoding's dtype (cv_bridge passthrough).

    ConversionError for an encoding not in ``ENCODINGS``, an empty image, or a ``step`` or
    ``data`` too small for the size.
    """
    if msg.encoding not in ENCODINGS:
        raise ConversionError(f"Image encoding '{msg.encoding}' is not supported (known: {sorted(ENCODINGS)})")
    if msg.height == 0 or msg.width == 0:
        raise ConversionError(f"Image {msg.width}x{msg.height} {msg.encoding} is empty")
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


def compressed_to_numpy(msg: Any) -> np.ndarray:
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


def to_rgb8(msg: Any) -> np.ndarray:
    """sensor_msgs/Image of any encoding in ``ENCODINGS``, or CompressedImage -> (H, W, 3) uint8 RGB.

    The rule per encoding is in the module docstring. ConversionError when the message
    cannot be decoded.
    """
    if hasattr(msg, "format"):  # CompressedImage
        arr, bgr = compressed_to_numpy(msg), False
    else:
        arr, bgr = decode_image(msg), msg.encoding in BGR_ENCODINGS
    if arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    elif arr.dtype == np.float32:
        arr = np.round(np.clip(np.nan_to_num(arr, nan=0.0), 0.0, 1.0) * 255.0).astype(np.uint8)
    if arr.ndim == 2:
        return np.repeat(arr[:, :, None], 3, axis=2)
    return np.ascontiguousarray(arr[:, :, 2::-1] if bgr else arr[:, :, :3])
