"""SimRobot: the world, the current task episode and the trajectory follower, driven by a clock.

This is everything the ``sim_robot`` node does besides ROS: it resets episodes, takes
trajectory commands, steps physics with the follower's commands and reports the task
state. The node calls it from its real-time loop with the node clock; in-process
episodes (tests, benchmarks) call it with the simulated clock. With a ``DisturbanceConfig``
(std > 0) the motors get the command plus a seeded smooth offset (DART demonstrations,
gen_theta_model/sim/disturbance.py); ``commanded()`` stays the command received. With a
``preroll_s`` range each reset runs the scene a seeded, uniformly drawn time before the episode
starts (``Task.reset``): the same scene, entered later (a conveyor's cube further along).
"""

from __future__ import annotations

import numpy as np

from gen_theta_model.embodiment import EmbodimentSpec
from gen_theta_model.sim.disturbance import DisturbanceConfig, JointDisturbance
from gen_theta_model.sim.kinematics import ArmKinematics, reachable_workspace
from gen_theta_model.sim.task_state import TaskState
from gen_theta_model.sim.tasks import Task, make_task, preroll_range
from gen_theta_model.sim.world import SimWorld
from gen_theta_model.trajectory import Trajectory, TrajectoryFollower

SUCCESS_CHECK_S = 0.1  # simulated seconds between success checks


class SimRobot:
    """One simulated robot and its task episodes. Times (``now``) are seconds on the caller's clock.

    ``gripper`` names a joint that has a controller of its own (a gripper action server):
    it follows ``command_gripper`` only, the trajectory commands drive the other joints.
    """

    def __init__(self, spec: EmbodimentSpec, kinematics: ArmKinematics | None = None, gripper: str = "",
                 disturbance: DisturbanceConfig | None = None, preroll_s: tuple[float, float] = (0.0, 0.0)) -> None:
        self.preroll_s = preroll_range(*preroll_s)
        self.spec = spec
        self.gripper = gripper
        self.world = SimWorld(spec)
        own = kinematics is None
        kin = ArmKinematics(spec) if own else kinematics
        try:
            self.workspace = reachable_workspace(kin)
        finally:
            if own:
                kin.close()
        self.follower = TrajectoryFollower(spec, self.world.actuated_positions(), 0.0)
        self._gripper_follower = TrajectoryFollower(spec, self.world.actuated_positions(), 0.0) if gripper else None
        self._gripper_index = spec.joint_names.index(gripper) if gripper else -1
        self.disturbance = JointDisturbance(spec, disturbance or DisturbanceConfig())
        self.task: Task | None = None
        self.episode = 0
        self.episode_start = 0.0  # caller's clock at the last reset
        self.success_time: float | None = None  # simulated seconds into the episode
        self.sim_time = 0.0  # simulated seconds since start, over all episodes
        self._next_check = 0.0

    def reset(self, task: str, seed: int, now: float) -> Task:
        """Start a new episode of ``task`` from ``seed``; the robot holds its home pose."""
        new = make_task(task)  # raises ValueError on an unknown name before anything changes
        low, high = self.preroll_s
        preroll = float(np.random.default_rng([seed, 0x5CE7E]).uniform(low, high)) if high > 0.0 else 0.0
        new.reset(self.world, self.workspace, seed, preroll)
        self.task = new
        self.disturbance.reset(seed, new.time_limit)
        self.follower.reset(self.world.actuated_positions(), now)
        if self._gripper_follower is not None:
            self._gripper_follower.reset(self.world.actuated_positions(), now)
        self.episode += 1
        self.episode_start = now
        self.success_time = None
        self._next_check = SUCCESS_CHECK_S
        return new

    def command(self, traj: Trajectory, now: float) -> bool:
        """Follow ``traj`` received at ``now``; False if all its points lie in the past (ignored)."""
        return self.follower.set_trajectory(traj, now)

    def command_gripper(self, traj: Trajectory, now: float) -> bool:
        """Make the gripper joint follow ``traj`` (naming it alone) from ``now``; False if it lies in the past."""
        if self._gripper_follower is None:
            raise RuntimeError(f"{self.spec.name}: no gripper controller of its own")
        return self._gripper_follower.set_trajectory(traj, now)

    def commanded(self, now: float) -> tuple[np.ndarray, np.ndarray]:
        """Commanded (position, velocity) of every joint at ``now``: two (dof,) arrays."""
        q, qd = self.follower.sample(now)
        if self._gripper_follower is not None:
            i = self._gripper_index
            qg, qdg = self._gripper_follower.sample(now)
            q[i], qd[i] = qg[i], qdg[i]
        return q, qd

    def hold(self, now: float, gripper: bool = False) -> None:
        """Hold where commanded at ``now``: the own-controller gripper (``gripper``), else the other joints."""
        q = self.commanded(now)[0]
        if gripper:
            self.command_gripper(Trajectory.from_arrays([self.gripper], [1e-3], [[q[self._gripper_index]]]), now)
        else:
            self.follower.reset(q, now)

    def step(self, now: float) -> None:
        """One physics step (``world.dt`` simulated seconds) toward the command at ``now`` (plus the
        disturbance's offset, if any).
        """
        q, qd = self.commanded(now)
        if not self.disturbance.finished and self.task is not None:
            pick = self.task.pick
            tools = self.world.finger_centres()
            scale = self.disturbance.envelope(tools[0], self.world.object_position(pick),
                                              pick in self.world.held_objects()) if len(tools) else 1.0
            dq, dqd = self.disturbance.offset(self.world.time, scale)
            q, qd = q + dq, qd + dqd
        self.world.set_targets(q, qd)
        self.world.step()
        self.sim_time += self.world.dt
        if self.task is not None and self.world.time >= self._next_check:
            self._next_check += SUCCESS_CHECK_S
            if self.success_time is None and not self.timed_out and self.task.success(self.world):
                self.success_time = self.world.time

    @property
    def elapsed(self) -> float:
        """Simulated seconds since the episode started."""
        return self.world.time

    @property
    def timed_out(self) -> bool:
        return self.task is not None and self.world.time >= self.task.time_limit

    @property
    def done(self) -> bool:
        """The episode ended: success, or the task's time limit passed."""
        return self.success_time is not None or self.timed_out

    def state(self) -> TaskState:
        """Return the task state published on sim/task: ``Task.info`` plus episode progress."""
        if self.task is None:
            raise RuntimeError("SimRobot.state() before the first reset()")
        return TaskState.of(
            self.task.info(self.world),
            robot=self.spec.name,
            episode=self.episode,
            episode_start=self.episode_start,
            success=self.success_time is not None,
            success_time=self.success_time,
            elapsed=round(self.elapsed, 4),
            done=self.done,
            sim_time=round(self.sim_time, 4),
        )

    def close(self) -> None:
        """Disconnect the physics client."""
        self.world.close()
