"""Run episodes in-process: a task, the sim world, a follower and a scripted expert, no ROS.

This is the loop the sim_robot node runs in real time, stepped here as fast as the CPU
allows; tests use it for expert success rates and the ROS nodes share its parts.
"""

from __future__ import annotations

from dataclasses import dataclass

from gen_theta_model.embodiment import EmbodimentSpec
from gen_theta_model.sim.experts import ScriptedExpert
from gen_theta_model.sim.kinematics import ArmKinematics, Workspace, reachable_workspace
from gen_theta_model.sim.tasks import Task, make_task
from gen_theta_model.sim.world import SimWorld
from gen_theta_model.trajectory import TrajectoryFollower

EXPERT_HZ = 20.0  # how often the expert looks at the scene
SUCCESS_HZ = 10.0  # how often success is checked


@dataclass(frozen=True)
class EpisodeResult:
    task: str
    category: str
    robot: str
    seed: int
    success: bool
    time: float  # simulated seconds until success or the time limit
    expert_phase: str  # the phase the expert ended in


class SimSession:
    """A world, its workspace and an expert for one robot, reused across episodes."""

    def __init__(self, spec: EmbodimentSpec) -> None:
        self.spec = spec
        self.world = SimWorld(spec)
        self.kin = ArmKinematics(spec)
        self.workspace: Workspace = reachable_workspace(self.kin)
        self.expert = ScriptedExpert(spec, self.kin)

    def run(self, task: Task | str, seed: int) -> EpisodeResult:
        """One expert episode of ``task`` from ``seed``, as fast as possible."""
        task = make_task(task) if isinstance(task, str) else task
        world = self.world
        task.reset(world, self.workspace, seed)
        follower = TrajectoryFollower(self.spec, world.actuated_positions(), 0.0)
        self.expert.reset(task.info(world))
        expert_every = max(1, round(1.0 / (EXPERT_HZ * world.dt)))
        check_every = max(1, round(1.0 / (SUCCESS_HZ * world.dt)))
        step = 0
        success = False
        while world.time < task.time_limit:
            if step % expert_every == 0:
                names, pos, quat = world.object_poses()
                traj = self.expert.act(world.time, world.actuated_positions(), names, pos, quat)
                if traj is not None:
                    follower.set_trajectory(traj, world.time)
            world.set_targets(*follower.sample(world.time))
            world.step()
            step += 1
            if step % check_every == 0 and task.success(world):
                success = True
                break
        return EpisodeResult(task.name, task.category, self.spec.name, seed, success, world.time, self.expert.phase)

    def close(self) -> None:
        """Disconnect both pybullet clients."""
        self.world.close()
        self.kin.close()
