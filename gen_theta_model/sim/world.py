"""The simulated robot: a pybullet world (DIRECT mode, no display) around one EmbodimentSpec.

- The robot is the spec's URDF with a fixed base at the origin on a table whose top is z = 0.
- Actuated joints are position-controlled toward targets (``set_targets``) with the URDF's
  effort and velocity limits. pybullet has no mimic joints: each mimic joint gets its own
  motor driven to ``multiplier * parent_target + offset``. Non-actuated movable joints hold
  the position they had at reset.
- Grasp model: a fixed constraint between the hand and an object is created while a gripper
  is commanded to close and both of its fingers touch that object; it is removed as soon as
  the gripper is commanded to open past the width it grasped: that of its most closed finger
  (each finger has its own motor, so an object grasped off-centre is pinched by one finger
  against the other, which may stay fully open). The fingers still close physically around
  the object; the constraint keeps the object from slipping.
- Conveyor belts are static bodies; every step, a movable object resting on a belt that is
  not grasped is given the belt's velocity.

Units: metres, radians, seconds; quaternions are (x, y, z, w).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pybullet as p
import yourdfpy

from gen_theta_model.embodiment import EmbodimentSpec
from gen_theta_model.sim import objects
from gen_theta_model.sim.objects import SceneObject

PHYSICS_HZ = 240.0  # pybullet's default step; contacts and the grasp model are tuned for it
POSITION_GAIN = 0.3  # pybullet motor gains: stiff enough to track within a few mm at 240 Hz
VELOCITY_GAIN = 1.0


@dataclass(frozen=True)
class Mimic:
    """A mimic joint: q = multiplier * q[parent] + offset."""

    name: str
    parent: str
    multiplier: float
    offset: float


@dataclass
class Grasp:
    """An active grasp: the constraint id, the object name and the most closed finger's position
    when it closed (in the gripper joint's coordinate, m or rad).
    """

    constraint: int
    obj: str
    width: float


def read_mimics(urdf_path: str) -> tuple[Mimic, ...]:
    """Mimic joints of a URDF, in file order."""
    urdf = yourdfpy.URDF.load(urdf_path, build_scene_graph=False, load_meshes=False, build_collision_scene_graph=False)
    return tuple(
        Mimic(j.name, j.mimic.joint, float(j.mimic.multiplier or 1.0), float(j.mimic.offset or 0.0))
        for j in urdf.robot.joints
        if j.mimic is not None
    )


class SimWorld:
    """One robot on a table with task objects; stepped explicitly with ``step()``."""

    def __init__(self, spec: EmbodimentSpec, physics_hz: float = PHYSICS_HZ) -> None:
        self.spec = spec
        self.dt = 1.0 / physics_hz
        self.client = p.connect(p.DIRECT)
        self._urdf = str(spec.urdf_file())  # the stored path, or the shipped file with its sha256
        self._load_bodies()
        self._joint_index: dict[str, int] = {}
        self.link_index: dict[str, int] = {}
        self._movable: list[int] = []
        for j in range(p.getNumJoints(self.robot, physicsClientId=self.client)):
            info = p.getJointInfo(self.robot, j, physicsClientId=self.client)
            self._joint_index[info[1].decode()] = j
            self.link_index[info[12].decode()] = j
            if info[2] != p.JOINT_FIXED:
                self._movable.append(j)
        self.mimics = read_mimics(self._urdf)
        self._actuated = [self._joint_index[n] for n in spec.joint_names]
        self._mimic_ids = [self._joint_index[m.name] for m in self.mimics]
        self._mimic_parent = [spec.joint_names.index(m.parent) for m in self.mimics]
        self._effort = np.array([j.effort if j.effort > 0 else 100.0 for j in spec.joints])
        self._grippers = self._gripper_links()
        self.objects: dict[str, SceneObject] = {}
        self._belts: dict[int, np.ndarray] = {}
        self.grasps: dict[int, Grasp] = {}
        self._target = spec.home_positions
        self._hold: dict[int, float] = {}
        self.time = 0.0
        self.reset_robot(spec.home_positions)

    # -- set-up ------------------------------------------------------------------------
    def _load_bodies(self) -> None:
        """Gravity, time step, the table and the robot, in this order: the same body ids every time."""
        p.setGravity(0, 0, -9.81, physicsClientId=self.client)
        p.setTimeStep(self.dt, physicsClientId=self.client)
        self.table = objects.add_table(self.client)
        self.robot = p.loadURDF(self._urdf, (0, 0, 0), useFixedBase=True, flags=p.URDF_USE_INERTIA_FROM_FILE,
                                physicsClientId=self.client)

    def _gripper_links(self) -> dict[int, tuple[int, list[int]]]:
        """Spec index of each gripper joint -> (hand link, finger links incl. mimic fingers)."""
        out = {}
        self._finger_maps: dict[int, list[tuple[float, float]]] = {}  # per finger: (multiplier, offset)
        for i, joint in enumerate(self.spec.joints):
            if not joint.gripper:
                continue
            j = self._joint_index[joint.name]
            hand = p.getJointInfo(self.robot, j, physicsClientId=self.client)[16]
            mimics = [m for m in self.mimics if m.parent == joint.name]
            out[i] = (hand, [j] + [self._joint_index[m.name] for m in mimics])
            self._finger_maps[i] = [(1.0, 0.0)] + [(m.multiplier, m.offset) for m in mimics]
        return out

    def _finger_widths(self, gripper: int, fingers: list[int]) -> np.ndarray:
        """(F,) each finger's position in the gripper joint's coordinate (open = upper)."""
        states = p.getJointStates(self.robot, fingers, physicsClientId=self.client)
        maps = self._finger_maps[gripper]
        return np.array([(state[0] - offset) / multiplier for state, (multiplier, offset) in zip(states, maps)])

    def reset_robot(self, q: np.ndarray) -> None:
        """Put the robot at positions ``q`` (dof,) at rest, release grasps, restart the clock."""
        for g in list(self.grasps):
            self._release(g)
        q = self.spec.clamp_positions(q)
        for j, v in zip(self._actuated, q):
            p.resetJointState(self.robot, j, float(v), 0.0, physicsClientId=self.client)
        for j, m, parent in zip(self._mimic_ids, self.mimics, self._mimic_parent):
            p.resetJointState(
                self.robot, j, m.multiplier * float(q[parent]) + m.offset, 0.0, physicsClientId=self.client
            )
        controlled = set(self._actuated) | set(self._mimic_ids)
        self._hold = {
            j: p.getJointState(self.robot, j, physicsClientId=self.client)[0]
            for j in self._movable
            if j not in controlled
        }
        self._target = q.copy()
        self._qd_target = np.zeros(self.spec.dof)
        self.time = 0.0

    def reset_physics(self) -> None:
        """Start the physics afresh: no objects, no grasps, the robot reloaded at home, the clock at 0.

        Removing bodies leaves pybullet's solver and contact caches as the last episode left them, so
        an episode would depend (slightly) on the one before it; after this it depends on nothing.
        """
        p.resetSimulation(physicsClientId=self.client)
        self.grasps.clear()  # their constraints went with the simulation
        self.objects.clear()
        self._belts.clear()
        self._load_bodies()
        self.reset_robot(self.spec.home_positions)

    def add_object(self, obj: SceneObject, belt_velocity: np.ndarray | None = None) -> None:
        """Register a body built by ``objects.add_*``; ``belt_velocity`` (3,) m/s makes it a conveyor."""
        if obj.name in self.objects:
            raise ValueError(f"object '{obj.name}' already exists")
        self.objects[obj.name] = obj
        if belt_velocity is not None:
            self._belts[obj.body] = np.asarray(belt_velocity, dtype=np.float64)

    # -- control and stepping ------------------------------------------------------------
    def set_targets(self, q: np.ndarray, qd: np.ndarray | None = None) -> None:
        """Command joint positions (dof,) and optional feed-forward velocities (dof,) in spec order."""
        self._target = self.spec.clamp_positions(q)
        self._qd_target = np.zeros(self.spec.dof) if qd is None else self.spec.clamp_velocities(qd)

    @property
    def targets(self) -> np.ndarray:
        """(dof,) the joint position targets the motors hold now (the last ``set_targets``, clamped)."""
        return self._target.copy()

    def step(self) -> None:
        """Advance physics by one step of ``dt`` s: motors, belts, grasps."""
        c = self.client
        for k, (j, spec) in enumerate(zip(self._actuated, self.spec.joints)):
            p.setJointMotorControl2(
                self.robot, j, p.POSITION_CONTROL, float(self._target[k]), float(self._qd_target[k]),
                force=float(self._effort[k]), maxVelocity=spec.velocity,
                positionGain=POSITION_GAIN, velocityGain=VELOCITY_GAIN, physicsClientId=c,
            )  # fmt: skip
        for j, m, parent in zip(self._mimic_ids, self.mimics, self._mimic_parent):
            target = m.multiplier * float(self._target[parent]) + m.offset
            p.setJointMotorControl2(
                self.robot, j, p.POSITION_CONTROL, target, force=float(self._effort[parent]),
                maxVelocity=self.spec.joints[parent].velocity, positionGain=POSITION_GAIN, physicsClientId=c,
            )  # fmt: skip
        for j, v in self._hold.items():
            p.setJointMotorControl2(self.robot, j, p.POSITION_CONTROL, v, physicsClientId=c)
        self._drive_belts()
        p.stepSimulation(physicsClientId=c)
        self._update_grasps()
        self.time += self.dt

    def _drive_belts(self) -> None:
        if not self._belts:
            return
        held = {g.obj for g in self.grasps.values()}
        for obj in self.objects.values():
            if not obj.movable or obj.name in held:
                continue
            for belt, velocity in self._belts.items():
                if p.getContactPoints(obj.body, belt, physicsClientId=self.client):
                    vz = p.getBaseVelocity(obj.body, physicsClientId=self.client)[0][2]
                    p.resetBaseVelocity(
                        obj.body, (velocity[0], velocity[1], vz), (0.0, 0.0, 0.0), physicsClientId=self.client
                    )

    def _update_grasps(self) -> None:
        for g, (hand, fingers) in self._grippers.items():
            widths = self._finger_widths(g, fingers)
            grasp = self.grasps.get(g)
            if grasp is not None:
                if self._target[g] > grasp.width + 0.002:  # commanded open past the most closed finger
                    self._release(g)
                continue
            if self._target[g] >= widths.max() - 1e-3:  # not closing: every finger is at its target
                continue
            for obj in self.objects.values():
                if obj.movable and all(
                    p.getContactPoints(self.robot, obj.body, f, -1, physicsClientId=self.client) for f in fingers
                ):
                    self._attach(g, hand, obj, float(widths.min()))
                    break

    def _attach(self, gripper: int, hand: int, obj: SceneObject, width: float) -> None:
        c = self.client
        hand_pos, hand_orn = p.getLinkState(self.robot, hand, physicsClientId=c)[:2]  # centre of mass frame
        obj_pos, obj_orn = p.getBasePositionAndOrientation(obj.body, physicsClientId=c)
        inv_pos, inv_orn = p.invertTransform(hand_pos, hand_orn)
        rel_pos, rel_orn = p.multiplyTransforms(inv_pos, inv_orn, obj_pos, obj_orn)
        cid = p.createConstraint(
            self.robot, hand, obj.body, -1, p.JOINT_FIXED, (0, 0, 0), rel_pos, (0, 0, 0),
            parentFrameOrientation=rel_orn, physicsClientId=c,
        )  # fmt: skip
        p.changeConstraint(cid, maxForce=50.0, physicsClientId=c)
        self.grasps[gripper] = Grasp(cid, obj.name, width)

    def _release(self, gripper: int) -> None:
        p.removeConstraint(self.grasps.pop(gripper).constraint, physicsClientId=self.client)

    # -- state ------------------------------------------------------------------------------
    @property
    def joint_names(self) -> list[str]:
        """Names reported by ``joint_state``: actuated joints (spec order), then mimic joints."""
        return self.spec.joint_names + [m.name for m in self.mimics]

    def joint_state(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Positions, velocities and applied efforts, each (dof + n_mimic,), ordered as ``joint_names``."""
        states = p.getJointStates(self.robot, self._actuated + self._mimic_ids, physicsClientId=self.client)
        arr = np.array([(s[0], s[1], s[3]) for s in states], dtype=np.float64)
        return arr[:, 0], arr[:, 1], arr[:, 2]

    def actuated_positions(self) -> np.ndarray:
        """(dof,) actuated joint positions in spec order."""
        return self.joint_state()[0][: self.spec.dof]

    def object_poses(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Names, positions (N, 3) and quaternions (N, 4) of the task objects in insertion order."""
        names = list(self.objects)
        poses = [p.getBasePositionAndOrientation(o.body, physicsClientId=self.client) for o in self.objects.values()]
        pos = np.array([pp for pp, _ in poses], dtype=np.float64).reshape(-1, 3)
        quat = np.array([q for _, q in poses], dtype=np.float64).reshape(-1, 4)
        return names, pos, quat

    def object_position(self, name: str) -> np.ndarray:
        """(3,) position of one object."""
        return np.array(p.getBasePositionAndOrientation(self.objects[name].body, physicsClientId=self.client)[0])

    def held_objects(self) -> set[str]:
        """Names of the objects currently grasped."""
        return {g.obj for g in self.grasps.values()}

    def finger_centres(self) -> np.ndarray:
        """(G, 3) world positions between the fingers of each gripper (the mean of its finger links'
        frames: above the fingertips, ~4 cm above a cube's centre when arm6 grasps it); (0, 3) for
        a robot without a gripper.
        """
        centres = []
        for _, fingers in self._grippers.values():
            states = p.getLinkStates(self.robot, fingers, computeForwardKinematics=True, physicsClientId=self.client)
            centres.append(np.mean([s[4] for s in states], axis=0))
        return np.array(centres, dtype=np.float64).reshape(-1, 3)

    def link_pose(self, link: str) -> tuple[np.ndarray, np.ndarray]:
        """World position (3,) and quaternion (4,) of a robot link's URDF frame ("" or the base link: the base)."""
        c = self.client
        if link in ("", self.spec.base_link) and link not in self.link_index:
            pos, orn = p.getBasePositionAndOrientation(self.robot, physicsClientId=c)
        elif link in self.link_index:
            state = p.getLinkState(self.robot, self.link_index[link], computeForwardKinematics=True, physicsClientId=c)
            pos, orn = state[4], state[5]
        else:
            raise ValueError(f"robot '{self.spec.name}' has no link '{link}'")
        return np.asarray(pos), np.asarray(orn)

    def close(self) -> None:
        """Disconnect the pybullet client."""
        if self.client >= 0 and p.isConnected(physicsClientId=self.client):
            p.disconnect(physicsClientId=self.client)
        self.client = -1
