"""Scene objects for the pybullet world: the table, cubes, open boxes (bins) and conveyor belts.

All builders take a pybullet client id and return the new body id. Positions in
metres in the world frame; the table top is the plane z = 0, the robot base stands
on it at the origin and faces +x.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pybullet as p

# Named colours for cubes (RGBA). Instructions refer to cubes by these names.
COLORS: dict[str, tuple[float, float, float, float]] = {
    "red": (0.85, 0.1, 0.1, 1.0),
    "green": (0.1, 0.7, 0.2, 1.0),
    "blue": (0.1, 0.25, 0.9, 1.0),
    "yellow": (0.95, 0.85, 0.1, 1.0),
    "purple": (0.55, 0.2, 0.75, 1.0),
    "orange": (1.0, 0.5, 0.0, 1.0),
}
CUBE_HALF = 0.02  # 4 cm cubes: fit the 8 cm gripper opening with 2 cm to spare per side
CUBE_MASS = 0.05  # kg
TABLE_HALF = (0.7, 0.8, 0.02)  # the table top spans x in [-0.3, 1.1], y in [-0.8, 0.8]
TABLE_CENTER_X = 0.4


@dataclass(frozen=True)
class SceneObject:
    """An object of the task scene. ``half_extents`` (3,) m of its bounding box;
    ``movable`` objects have mass and are graspable.
    """

    name: str
    body: int
    kind: str  # "cube", "bin", "conveyor"
    half_extents: tuple[float, float, float]
    movable: bool


def quat_from_yaw(yaw: float) -> tuple[float, float, float, float]:
    """Quaternion (x, y, z, w) of a rotation by ``yaw`` rad about world z."""
    return (0.0, 0.0, float(np.sin(yaw / 2.0)), float(np.cos(yaw / 2.0)))


def add_table(client: int) -> int:
    """Add a static table whose top surface is z = 0."""
    center = (TABLE_CENTER_X, 0.0, -TABLE_HALF[2])
    col = p.createCollisionShape(p.GEOM_BOX, halfExtents=TABLE_HALF, physicsClientId=client)
    vis = p.createVisualShape(
        p.GEOM_BOX, halfExtents=TABLE_HALF, rgbaColor=(0.72, 0.6, 0.45, 1), physicsClientId=client
    )
    body = p.createMultiBody(0.0, col, vis, center, physicsClientId=client)
    p.changeDynamics(body, -1, lateralFriction=0.8, physicsClientId=client)
    return body


def add_cube(client: int, position: np.ndarray, yaw: float, rgba: tuple[float, ...], half: float = CUBE_HALF) -> int:
    """Add a dynamic cube of side 2*half m resting with its centre at ``position`` (3,)."""
    ext = (half, half, half)
    col = p.createCollisionShape(p.GEOM_BOX, halfExtents=ext, physicsClientId=client)
    vis = p.createVisualShape(p.GEOM_BOX, halfExtents=ext, rgbaColor=rgba, physicsClientId=client)
    body = p.createMultiBody(CUBE_MASS, col, vis, list(position), quat_from_yaw(yaw), physicsClientId=client)
    p.changeDynamics(
        body, -1, lateralFriction=1.0, spinningFriction=0.001, rollingFriction=0.0001, physicsClientId=client
    )
    return body


def add_bin(
    client: int,
    center_xy: np.ndarray,
    inner_half: float,
    wall_height: float,
    rgba: tuple[float, ...] = (0.35, 0.35, 0.4, 1.0),
    wall: float = 0.005,
) -> int:
    """Add a static open box standing on the table: a floor and four walls, ``inner_half`` m half-width inside."""
    floor = (inner_half + wall, inner_half + wall, wall / 2)
    side_x = (wall / 2, inner_half + wall, wall_height / 2)
    side_y = (inner_half + wall, wall / 2, wall_height / 2)
    off = inner_half + wall / 2
    z = wall_height / 2
    halves = [floor, side_x, side_x, side_y, side_y]
    offsets = [(0, 0, wall / 2), (off, 0, z), (-off, 0, z), (0, off, z), (0, -off, z)]
    col = p.createCollisionShapeArray(
        [p.GEOM_BOX] * 5, halfExtents=halves, collisionFramePositions=offsets, physicsClientId=client
    )
    vis = p.createVisualShapeArray(
        [p.GEOM_BOX] * 5,
        halfExtents=halves,
        visualFramePositions=offsets,
        rgbaColors=[rgba] * 5,
        physicsClientId=client,
    )
    return p.createMultiBody(0.0, col, vis, (float(center_xy[0]), float(center_xy[1]), 0.0), physicsClientId=client)


def add_conveyor(client: int, center_xy: np.ndarray, half_length: float, half_width: float, height: float) -> int:
    """Add a static belt surface along world y, top at z = ``height``; the world moves what rests on it.

    The surface is frictionless: the world sets the belt velocity on resting objects every step,
    and friction against a static body would brake them within the step.
    """
    half = (half_width, half_length, height / 2)
    col = p.createCollisionShape(p.GEOM_BOX, halfExtents=half, physicsClientId=client)
    vis = p.createVisualShape(p.GEOM_BOX, halfExtents=half, rgbaColor=(0.15, 0.15, 0.15, 1), physicsClientId=client)
    pos = (float(center_xy[0]), float(center_xy[1]), height / 2)
    body = p.createMultiBody(0.0, col, vis, pos, physicsClientId=client)
    p.changeDynamics(body, -1, lateralFriction=0.0, physicsClientId=client)
    return body
