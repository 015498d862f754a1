"""Cameras of a SimWorld, rendered with pybullet's CPU TinyRenderer.

A ``CameraConfig`` is fixed in the world (``link == ""``) or rigidly attached to a
robot link; ``position`` and ``target`` (the look-at point) are in that frame.
Link cameras use the optical convention of the shipped URDFs (z = viewing
direction, y = image down), so the image "up" is the link's -y axis; world cameras
keep world +z up.
"""

from __future__ import annotations

import numpy as np
import pybullet as p

from gen_theta_model.embodiment import CameraConfig
from gen_theta_model.sim.world import SimWorld

NEAR, FAR = 0.01, 5.0  # clipping planes, m


def _to_world(pos: np.ndarray, orn: np.ndarray, local: tuple[float, float, float]) -> np.ndarray:
    rot = np.array(p.getMatrixFromQuaternion(orn)).reshape(3, 3)
    return pos + rot @ np.asarray(local, dtype=np.float64)


def camera_pose(world: SimWorld, cam: CameraConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eye (3,), look-at target (3,) and up vector (3,) in the world frame, m."""
    if not cam.link:
        eye = np.asarray(cam.position, dtype=np.float64)
        target = np.asarray(cam.target, dtype=np.float64)
        forward = target - eye
        up = np.array([0.0, 0.0, 1.0])
        if np.linalg.norm(np.cross(forward, up)) < 1e-6:  # looking straight down or up
            up = np.array([1.0, 0.0, 0.0])
        return eye, target, up
    try:
        pos, orn = world.link_pose(cam.link)
    except ValueError as err:
        raise ValueError(f"camera '{cam.name}': {err}") from err
    rot = np.array(p.getMatrixFromQuaternion(orn)).reshape(3, 3)
    return _to_world(pos, orn, cam.position), _to_world(pos, orn, cam.target), -rot[:, 1]


def render(world: SimWorld, cam: CameraConfig) -> np.ndarray:
    """Render ``cam`` now: (height, width, 3) uint8 RGB."""
    eye, target, up = camera_pose(world, cam)
    view = p.computeViewMatrix(eye.tolist(), target.tolist(), up.tolist(), physicsClientId=world.client)
    proj = p.computeProjectionMatrixFOV(cam.fov_deg, cam.width / cam.height, NEAR, FAR, physicsClientId=world.client)
    _, _, rgba, _, _ = p.getCameraImage(
        cam.width,
        cam.height,
        view,
        proj,
        renderer=p.ER_TINY_RENDERER,
        flags=p.ER_NO_SEGMENTATION_MASK,
        physicsClientId=world.client,
    )
    return np.asarray(rgba, dtype=np.uint8).reshape(cam.height, cam.width, 4)[:, :, :3].copy()
