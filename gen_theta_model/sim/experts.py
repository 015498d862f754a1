"""Scripted experts: pick-and-place by phases, planned in joint space with the task arm's IK.

The expert sees what a teleoperator's tooling would see over ROS: the robot's joint
positions, the object poses (privileged sim state) and the task state (which object to
pick, where to put it). It never touches the simulation: IK and FK run on its own
kinematics-only pybullet client (``ArmKinematics``).

Every phase plans a Cartesian path of the tool (pointing down) sampled every
``point_dt`` s, solves IK point by point (each seeded by the previous one) and emits
one ``Trajectory`` over the task arm and its gripper (other joints hold), with
positions and finite-difference velocities, so the follower interpolates with cubic
splines. Phases: approach (hover above the object; skipped by an expert that takes over with
the tool already over it), realign, descend, close, lift (retry
from approach if the object did not come along), transfer, lower, release, retreat. Transfer
and lower aim the held object, not the tool: the tool's goal carries the tool-object offset
measured when the phase is planned, wherever in the fingers the object sits.

Corrective demonstrations (``miss_prob``): in that share of episodes the first approach
hovers ``miss_m`` off the object in a random direction (drawn from the task's seed), and a
realign phase then moves the tool, still at hover height, above the object before it
descends. A policy trained only on exact approaches has never seen the tool hover beside the
cube, and in closed loop it descends wherever its approach ended; these episodes show the
correction (the DART argument: demonstrations should visit the states the learner drifts
into). Without a miss there is no realign phase.

Moving objects: each object's velocity is estimated from its observed poses. While
picking, the goal moves with the object: the path is a minimum-jerk blend in the
object's moving frame, so the tool arrives above the object at the object's speed and
keeps tracking it (a ``track_tail`` of points past the phase end keeps following it
until the next phase takes over). The approach aims at the intercept: the earliest
time the object is inside the workspace that the arm can reach with the time needed to
get there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gen_theta_model.embodiment import EmbodimentSpec
from gen_theta_model.sim.kinematics import ArmKinematics, Workspace
from gen_theta_model.sim.task_state import ObjectInfo, TaskInfo
from gen_theta_model.trajectory import Trajectory, TrajectoryFollower

PHASES = ("approach", "realign", "descend", "close", "lift", "transfer", "lower", "release", "retreat", "done")
PICK_PHASES = ("approach", "realign", "descend", "close")  # phases whose goal moves with the object
MAX_HELD_OFFSET = 0.05  # m, tool-object distance beyond which the object is not in the fingers


@dataclass(frozen=True)
class ExpertConfig:
    hover: float = 0.10  # m above grasp and place heights for approach, lift and retreat
    speed: float = 0.2  # m/s mean Cartesian tool speed (minimum-jerk peak is 1.9x)
    min_duration: float = 0.5  # s, shortest move
    point_dt: float = 0.1  # s between trajectory points
    close_time: float = 0.6  # s to close the gripper on an object
    open_time: float = 0.4  # s to open it
    settle: float = 0.15  # s to wait after a phase's last point before the next phase
    track_tail: float = 1.5  # s of tracking points past a moving goal
    grasp_offset: float = 0.005  # m, tool above the object's centre when grasping
    drop_clearance: float = 0.03  # m between a held cube and a bin's rim when dropping
    max_attempts: int = 3
    joint_speed_fraction: float = 0.6  # joint speeds stay below this fraction of the URDF limits
    miss_prob: float = 0.0  # share of episodes whose first approach misses, then realigns (corrective demos)
    miss_m: tuple[float, float] = (0.03, 0.07)  # m, range of the miss's distance in xy
    descend_xy: float = 0.02  # m: a start with the tool this near the object in xy, below hover, descends

    def __post_init__(self) -> None:
        if not 0.0 <= self.miss_prob <= 1.0 or not 0.0 <= self.miss_m[0] <= self.miss_m[1]:
            raise ValueError(f"need 0 <= miss_prob <= 1 and 0 <= miss_m[0] <= miss_m[1], got {self}")


def _yaw_of(quat: np.ndarray) -> float:
    x, y, z, w = quat
    return math.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))


def _min_jerk(s: np.ndarray) -> np.ndarray:
    return 10 * s**3 - 15 * s**4 + 6 * s**5


class ScriptedExpert:
    """Pick ``info.pick`` and put it on/into ``info.place`` (see module docstring)."""

    def __init__(
        self, spec: EmbodimentSpec, kinematics: ArmKinematics | None = None, config: ExpertConfig | None = None
    ):
        self.spec = spec
        self.kin = kinematics or ArmKinematics(spec)
        self.cfg = config or ExpertConfig()
        self.joints = list(self.kin.arm) + [self.kin.gripper]
        self.joint_names = tuple(spec.joint_names[i] for i in self.joints)
        self._open = float(spec.upper[self.kin.gripper])
        self._closed = float(spec.lower[self.kin.gripper])
        self.info: TaskInfo | None = None
        self.phase = "done"
        self.done = True
        self._mirror: TrajectoryFollower | None = None

    def reset(self, info: TaskInfo, holding: bool = False) -> None:
        """Start a new episode from the task's scene ``info`` (``Task.info``, or the TaskState).

        ``holding``: the gripper already holds the pick object (another controller grasped it; an
        expert taking over): the first phase is the lift, from where the tool and the object are.
        Otherwise the first phase is the approach, or the descent when the tool is already over the
        object (``ExpertConfig.descend_xy``; an expert taking over from a policy that was coming down).
        """
        self.info = info
        self._objects: dict[str, ObjectInfo] = {o.name: o for o in info.objects}
        self.workspace: Workspace = info.workspace
        self.phase = "close" if holding else "start"  # the phase after "close" is the lift
        self.done = False
        self.attempts = 0
        self._until = -math.inf
        self._history: dict[str, tuple[float, np.ndarray]] = {}
        self._velocity: dict[str, np.ndarray] = {}
        self._mirror: TrajectoryFollower | None = None
        self._pick_z = 0.0
        self._yaw = 0.0
        rng = np.random.default_rng([info.seed, 0x6D155])  # the miss is a function of the task's seed
        angle, dist = rng.uniform(0.0, 2 * math.pi), rng.uniform(*self.cfg.miss_m)
        hit = rng.random() >= self.cfg.miss_prob
        self.miss = np.zeros(3) if hit else dist * np.array([math.cos(angle), math.sin(angle), 0.0])  # (3,) m

    # -- observation ---------------------------------------------------------------------
    def _observe(self, t: float, names: list[str], positions: np.ndarray) -> None:
        """Track object velocities from poses at least 0.1 s apart."""
        for name, pos in zip(names, positions):
            last = self._history.get(name)
            if last is None:
                self._history[name] = (t, pos.copy())
            elif t - last[0] >= 0.1:
                self._velocity[name] = (pos - last[1]) / (t - last[0])
                self._history[name] = (t, pos.copy())

    def act(
        self, t: float, q: np.ndarray, names: list[str], positions: np.ndarray, quaternions: np.ndarray
    ) -> Trajectory | None:
        """One tick at time ``t`` s: joint positions ``q`` (dof,), object poses (N, 3) and (N, 4).

        Returns a trajectory to send now (start "now"), or None to let the current one run.
        """
        self._observe(t, names, positions)
        if self.done or t < self._until or self.info.pick not in self._velocity:
            return None
        poses = {n: (positions[i], quaternions[i]) for i, n in enumerate(names)}
        if self.info.pick not in poses or self.info.place not in poses:
            return None  # not this episode's scene (a reset in flight, or another sim on the topic): wait
        if self._mirror is None:
            self._mirror = TrajectoryFollower(self.spec, q, t)
            if self.phase == "close":  # taken over holding the object: lift it as grasped, with the tool's yaw
                _, rot = self.kin.fk(q)
                self._yaw = math.atan2(rot[1, 0], rot[0, 0])
                self._pick_z = float(poses[self.info.pick][0][2])
        self.phase = self._next_phase(poses, q)
        if self.phase == "done":
            self.done = True
            return None
        traj, duration = self._plan(t, poses)
        self._mirror.set_trajectory(traj, t)
        self._until = t + duration + self.cfg.settle
        return traj

    def _next_phase(self, poses: dict[str, tuple[np.ndarray, np.ndarray]], q: np.ndarray) -> str:
        if self.phase == "start":
            if not self._over_the_object(poses, q):
                return "approach"
            pick_pos, pick_quat = poses[self.info.pick]
            self._pick_z, self._yaw = float(pick_pos[2]), self._grasp_yaw(pick_quat, q)
            return "descend"
        if self.phase == "approach" and (self.attempts or not self.miss.any()):  # on target: no realign
            return "descend"
        if self.phase == "lift":
            lifted = poses[self.info.pick][0][2] > self._pick_z + 0.5 * self.cfg.hover
            if not lifted:
                self.attempts += 1
                return "approach" if self.attempts < self.cfg.max_attempts else "done"
        return PHASES[PHASES.index(self.phase) + 1]

    # -- planning -----------------------------------------------------------------------------
    def _plan(self, t: float, poses: dict[str, tuple[np.ndarray, np.ndarray]]) -> tuple[Trajectory, float]:
        """Plan the current phase: its trajectory and its duration (s)."""
        cfg = self.cfg
        q_now, _ = self._mirror.sample(t)
        start, _ = self.kin.fk(q_now)
        grip_now = float(q_now[self.kin.gripper])
        pick_pos, pick_quat = poses[self.info.pick]
        velocity = np.zeros(3)
        grip = self._closed
        duration = None
        if self.phase in PICK_PHASES:
            velocity = self._velocity.get(self.info.pick, np.zeros(3))
            grasp = pick_pos + np.array([0.0, 0.0, cfg.grasp_offset])
            if self.phase == "approach":
                self._pick_z = float(pick_pos[2])
                self._yaw = self._grasp_yaw(pick_quat, q_now)
                grip = self._open
                goal = grasp + np.array([0.0, 0.0, cfg.hover])
                if self.attempts == 0:  # a retry aims at the object
                    goal = goal + self.miss
                duration = self._intercept_time(start, goal, velocity)
            elif self.phase == "realign":
                grip = self._open
                goal = grasp + np.array([0.0, 0.0, cfg.hover])
            elif self.phase == "descend":
                grip = self._open
                goal = grasp
            else:  # close
                goal = grasp
                duration = cfg.close_time
        elif self.phase == "lift":
            goal = start + np.array([0.0, 0.0, cfg.hover])
        elif self.phase in ("transfer", "lower"):  # the object rides in the fingers where it is now
            held = start - pick_pos
            if np.linalg.norm(held) > MAX_HELD_OFFSET:  # dropped on the way: place where it would have gone
                held = np.array([0.0, 0.0, cfg.grasp_offset])
            goal = self._place_goal(poses, lowered=self.phase == "lower") + held
        elif self.phase == "release":
            goal, grip, duration = start, self._open, cfg.open_time
        else:  # retreat
            goal, grip = start + np.array([0.0, 0.0, cfg.hover]), self._open
        if duration is None:
            duration = max(cfg.min_duration, float(np.linalg.norm(goal - start)) / cfg.speed)
        return self._path(q_now, start, goal, velocity, duration, grip_now, grip)

    def _over_the_object(self, poses: dict[str, tuple[np.ndarray, np.ndarray]], q: np.ndarray) -> bool:
        """Whether the tool at joint positions ``q`` (dof,) is already over the pick object: within
        ``descend_xy`` of it in xy, between the grasp height and the hover height.

        An expert that takes over there (from a policy that was coming down on the object) descends
        from where the tool is, as its own episodes do from that state. Starting with the approach
        would lift the tool back to the hover height first: the learner would be taught to rise
        exactly where the demonstrations descend (DAgger needs the expert's label *at the state*).
        """
        tool, _ = self.kin.fk(q)
        grasp = poses[self.info.pick][0] + np.array([0.0, 0.0, self.cfg.grasp_offset])
        near = float(np.linalg.norm(tool[:2] - grasp[:2])) < self.cfg.descend_xy
        return near and grasp[2] - 0.01 <= tool[2] < grasp[2] + self.cfg.hover

    def _grasp_yaw(self, quat: np.ndarray, q_now: np.ndarray) -> float:
        """Tool yaw aligned with the cube's faces (mod 90 deg), nearest to the current tool yaw."""
        _, rot = self.kin.fk(q_now)
        current = math.atan2(rot[1, 0], rot[0, 0])
        base = _yaw_of(quat)
        options = [base + k * math.pi / 2 for k in range(-4, 5)]
        return min(options, key=lambda y: abs(math.remainder(y - current, 2 * math.pi)) + 1e-3 * abs(y))

    def _intercept_time(self, start: np.ndarray, goal: np.ndarray, velocity: np.ndarray) -> float:
        """Shortest approach time that reaches the moving goal inside the reachable workspace."""
        cfg = self.cfg
        for k in range(200):
            duration = cfg.min_duration + 0.05 * k
            target = goal + velocity * duration
            if np.linalg.norm(target - start) / cfg.speed <= duration and self.workspace.contains(target, 0.02):
                return duration
        return max(cfg.min_duration, float(np.linalg.norm(goal - start)) / cfg.speed)

    def _place_goal(self, poses: dict[str, tuple[np.ndarray, np.ndarray]], lowered: bool) -> np.ndarray:
        """Where the held object's centre goes (m, world): above the place (``lowered``: at it).

        The tool goes there plus the measured tool-object offset, so an object grasped off its
        centre (by a policy the expert took over from, or slipped in the fingers) lands on target.
        """
        cfg = self.cfg
        place = self.info.place
        place_pos = poses[place][0]
        pick_half = self._objects[self.info.pick].half_extents[2]
        half = self._objects[place].half_extents
        if self._objects[place].kind == "bin":  # drop from above the rim
            z = 2 * half[2] + pick_half + cfg.drop_clearance
        else:  # stack: the held cube's centre one cube height above the base's centre
            z = place_pos[2] + half[2] + pick_half + 0.003
        z += 0.0 if lowered else cfg.hover
        return np.array([place_pos[0], place_pos[1], z])

    def _path(
        self,
        q_now: np.ndarray,
        start: np.ndarray,
        goal: np.ndarray,
        velocity: np.ndarray,
        duration: float,
        grip_from: float,
        grip_to: float,
    ) -> tuple[Trajectory, float]:
        """IK along a min-jerk path from ``start`` to ``goal`` (which moves at ``velocity``), timed."""
        cfg = self.cfg
        moving = bool(np.linalg.norm(velocity) > 1e-4)
        n = max(2, int(math.ceil(duration / cfg.point_dt)))
        taus = np.linspace(duration / n, duration, n)
        if moving:
            taus = np.concatenate(
                [taus, duration + np.arange(1, int(cfg.track_tail / cfg.point_dt) + 1) * cfg.point_dt]
            )
        s = _min_jerk(np.clip(taus / duration, 0.0, 1.0))
        cart = goal + velocity * taus[:, None] + (1.0 - s)[:, None] * (start - goal)
        grips = grip_from + np.clip(taus / duration, 0.0, 1.0) * (grip_to - grip_from)
        q = q_now.copy()
        rows = []
        for pos, grip in zip(cart, grips):
            q, _ = self.kin.ik(q, pos, self._yaw)
            q[self.kin.gripper] = grip
            rows.append(q[self.joints].copy())
        qs = np.asarray(rows)
        if not moving:  # slow down where joints would exceed their speed limits
            steps = np.abs(np.diff(np.vstack([q_now[self.joints], qs]), axis=0))
            limits = self.spec.velocity_limits[self.joints] * cfg.joint_speed_fraction
            ratio = float(np.max(steps / (limits * (duration / n))))
            if ratio > 1.0:
                taus, duration = taus * ratio, duration * ratio
        vel = np.gradient(qs, taus, axis=0) if len(taus) > 1 else np.zeros_like(qs)
        if not moving:
            vel[-1] = 0.0
        return Trajectory.from_arrays(self.joint_names, taus, qs, vel), duration

    def planned(self, times: np.ndarray) -> np.ndarray | None:
        """Positions (len(times), dof) rad|m the expert has commanded for ``times`` s (joints it does
        not drive hold), or None before its first plan.
        """
        if self._mirror is None:
            return None
        return np.stack([self._mirror.sample(float(t))[0] for t in times])

    def close(self) -> None:
        """Release the kinematics client."""
        self.kin.close()
