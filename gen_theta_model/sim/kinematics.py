"""Kinematics for scripted experts on a separate, kinematics-only pybullet client.

The expert never touches the simulation's physics state: it loads the same URDF
into its own DIRECT client and uses pybullet's forward kinematics and Jacobians
there. Inverse kinematics is damped least squares over the *task arm* only: the
movable joints on the chain from the base to ``spec.ee_link``, below the last link
where the chain branches into other actuated limbs (so a humanoid's torso and
head hold their positions and only its right arm moves). The task asks the tool
z axis to point straight down and, for arms with 6 or more joints, the tool x axis
to a given yaw; 5-joint arms leave the yaw free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pybullet as p

from gen_theta_model.embodiment import EmbodimentSpec

DOWN = np.array([0.0, 0.0, -1.0])


class KinematicsError(ValueError):
    """The robot's kinematic description does not allow the expert's tasks."""


class ArmKinematics:
    """FK and IK of the task arm of ``spec`` (see module docstring)."""

    def __init__(self, spec: EmbodimentSpec) -> None:
        self.spec = spec
        self.client = p.connect(p.DIRECT)
        self.robot = p.loadURDF(str(spec.urdf_file()), useFixedBase=True, physicsClientId=self.client)
        n = p.getNumJoints(self.robot, physicsClientId=self.client)
        infos = [p.getJointInfo(self.robot, j, physicsClientId=self.client) for j in range(n)]
        by_name = {info[1].decode(): info for info in infos}
        link = {info[12].decode(): info[0] for info in infos}
        if spec.ee_link not in link:
            raise KinematicsError(f"{spec.name}: ee_link '{spec.ee_link}' is not a link of {spec.urdf_path}")
        self.ee = link[spec.ee_link]
        self._movable = [info[0] for info in infos if info[2] != p.JOINT_FIXED]  # pybullet's DoF order
        self._spec_joint = {by_name[name][0]: i for i, name in enumerate(spec.joint_names)}
        self.arm = self._task_arm(infos)  # spec indices, root to tip
        self.gripper = self._task_gripper(infos)
        body_joint = {i: bj for bj, i in self._spec_joint.items()}
        self._arm_columns = [self._movable.index(body_joint[i]) for i in self.arm]  # Jacobian columns
        lo, hi = spec.lower, spec.upper
        self._lo, self._hi = lo[self.arm], hi[self.arm]
        self.yaw_controlled = len(self.arm) >= 6

    def _task_arm(self, infos: list) -> list[int]:
        parent = {info[0]: info[16] for info in infos}  # joint j moves link j; its parent link
        chain = []
        j = self.ee
        while j >= 0:
            chain.append(j)
            j = parent[j]
        chain.reverse()  # root -> ee joint indices (fixed included)
        actuated = set(self._spec_joint)
        grippers = {by for by, i in self._spec_joint.items() if self.spec.joints[i].gripper}

        def subtree_has_actuated(j: int) -> bool:
            stack = [j]
            while stack:
                k = stack.pop()
                if k in actuated and k not in grippers:
                    return True
                stack.extend(c for c, par in parent.items() if par == k)
            return False

        start = 0
        for pos, j in enumerate(chain):
            siblings = [c for c, par in parent.items() if par == parent[j] and c != j]
            if any(subtree_has_actuated(s) for s in siblings):
                start = pos  # another actuated limb branches off here: the arm starts below
        arm = [self._spec_joint[j] for j in chain[start:] if j in actuated and j not in grippers]
        if len(arm) < 5:
            raise KinematicsError(
                f"{self.spec.name}: the task arm to '{self.spec.ee_link}' has {len(arm)} joints, need >= 5"
            )
        return arm

    def _task_gripper(self, infos: list) -> int:
        ancestors = set()
        j = self.ee
        while j >= 0:
            ancestors.add(j)
            j = infos[j][16]
        for bj, i in self._spec_joint.items():
            if self.spec.joints[i].gripper and infos[bj][16] in ancestors | {-1}:
                return i
        raise KinematicsError(f"{self.spec.name}: no gripper joint next to ee_link '{self.spec.ee_link}'")

    def _set(self, q: np.ndarray) -> None:
        for bj, i in self._spec_joint.items():
            p.resetJointState(self.robot, bj, float(q[i]), physicsClientId=self.client)

    def fk(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tool position (3,) m and rotation matrix (3, 3) (columns: tool axes in world) for q (dof,)."""
        self._set(q)
        state = p.getLinkState(self.robot, self.ee, computeForwardKinematics=True, physicsClientId=self.client)
        return np.asarray(state[4]), np.array(p.getMatrixFromQuaternion(state[5])).reshape(3, 3)

    def _jacobian(self, q: np.ndarray) -> np.ndarray:
        """(6, len(arm)) geometric Jacobian of the tool frame origin (linear; angular)."""
        dof_q = []
        for bj in self._movable:
            dof_q.append(float(q[self._spec_joint[bj]]) if bj in self._spec_joint else
                         p.getJointState(self.robot, bj, physicsClientId=self.client)[0])  # fmt: skip
        zeros = [0.0] * len(dof_q)
        lin, ang = p.calculateJacobian(self.robot, self.ee, (0, 0, 0), dof_q, zeros, zeros, physicsClientId=self.client)
        cols = self._arm_columns
        return np.vstack([np.asarray(lin)[:, cols], np.asarray(ang)[:, cols]])

    def ik(
        self, q_seed: np.ndarray, position: np.ndarray, yaw: float | None = None, iters: int = 200, tol: float = 1e-3
    ) -> tuple[np.ndarray, float]:
        """Joint positions (dof,) putting the tool at ``position`` (3,) pointing down, tool x at ``yaw``.

        Only the task-arm joints change; the others keep their ``q_seed`` values. Returns the
        solution and its remaining position error in m (the caller decides what is acceptable).
        """
        q = np.array(q_seed, dtype=np.float64)
        target = np.asarray(position, dtype=np.float64)
        x_goal = None if yaw is None or not self.yaw_controlled else np.array([math.cos(yaw), math.sin(yaw), 0.0])
        err_pos = np.inf
        for _ in range(iters):
            pos, rot = self.fk(q)
            err_pos = float(np.linalg.norm(target - pos))
            z_err = np.cross(rot[:, 2], DOWN)
            e = [target - pos, z_err]
            jac = self._jacobian(q)
            rows = [jac[:3], jac[3:]]
            if x_goal is not None:
                e.append(np.cross(rot[:, 0], x_goal) * 0.5)
                rows.append(jac[3:])
            else:  # free yaw: drop rotations about the tool axis from the orientation task
                proj = np.eye(3) - np.outer(rot[:, 2], rot[:, 2])
                rows[1] = proj @ jac[3:]
            err = np.concatenate(e)
            if err_pos < tol and np.linalg.norm(err[3:]) < 0.02:
                break
            jm = np.vstack(rows)
            lam = 0.05
            dq = jm.T @ np.linalg.solve(jm @ jm.T + lam**2 * np.eye(jm.shape[0]), err)
            step = np.clip(dq, -0.3, 0.3)
            q[self.arm] = np.clip(q[self.arm] + step, self._lo, self._hi)
        return q, err_pos

    def close(self) -> None:
        """Disconnect the kinematics client."""
        if self.client >= 0 and p.isConnected(physicsClientId=self.client):
            p.disconnect(physicsClientId=self.client)
        self.client = -1


@dataclass(frozen=True)
class Workspace:
    """The table region where tasks place objects for a robot: ``center`` (x, y) ± ``half`` (x, y), m."""

    center: tuple[float, float]
    half: tuple[float, float]

    def contains(self, xy: np.ndarray, margin: float = 0.0) -> bool:
        """Tell whether ``xy`` (2,) lies inside the region shrunk by ``margin`` m."""
        d = np.abs(np.asarray(xy[:2]) - np.asarray(self.center))
        return bool(np.all(d <= np.asarray(self.half) - margin))


WORKSPACE_HALF = (0.1, 0.15)  # every robot gets a 20 x 30 cm region of the table
PREFERRED_CENTER = (0.45, 0.0)  # straight ahead of an arm's base
PROBE_HEIGHTS = (0.03, 0.16)  # grasp and hover heights of the tool, m
GRID_STEP = 0.05


def reachable_workspace(kin: ArmKinematics, half: tuple[float, float] = WORKSPACE_HALF) -> Workspace:
    """Find the task region for a robot by probing its task arm's IK (tool pointing down).

    Candidate regions of size ``2 * half`` with centres on a 5 cm grid (x in [0.15, 0.7],
    y in [-0.45, 0.45]) are tried nearest to ``PREFERRED_CENTER`` first; a region is taken
    when its corners, edge midpoints and centre are reachable (error < 3 mm) at the grasp
    and hover heights. A 5-joint humanoid arm gets a region closer to its body.
    """
    home = kin.spec.home_positions
    reachable: dict[tuple[float, float, float], bool] = {}

    def ok(x: float, y: float, z: float) -> bool:
        key = (round(x, 3), round(y, 3), z)
        if key not in reachable:
            reachable[key] = kin.ik(home, np.array(key), iters=80)[1] < 3e-3
        return reachable[key]

    centers = [
        (float(x), float(y))
        for x in np.arange(0.15 + half[0], 0.70 - half[0] + 1e-9, GRID_STEP)
        for y in np.arange(-0.45 + half[1], 0.45 - half[1] + 1e-9, GRID_STEP)
    ]
    centers.sort(key=lambda c: (c[0] - PREFERRED_CENTER[0]) ** 2 + (c[1] - PREFERRED_CENTER[1]) ** 2)
    offsets = [(sx, sy) for sx in (-1, 1) for sy in (-1, 1)] + [(-1, 0), (1, 0), (0, -1), (0, 1), (0, 0)]
    for cx, cy in centers:
        if all(ok(cx + sx * half[0], cy + sy * half[1], z) for z in PROBE_HEIGHTS for sx, sy in offsets):
            return Workspace((round(cx, 3) + 0.0, round(cy, 3) + 0.0), half)  # + 0.0: no "-0.0"
    raise KinematicsError(
        f"{kin.spec.name}: no {2 * half[0]:.2f} x {2 * half[1]:.2f} m table region is reachable with the tool "
        "pointing down"
    )
