"""Run expert episodes in-process: SimRobot and a ScriptedExpert on the simulated clock, no ROS.

The same loop the sim_robot and expert nodes run over DDS in real time, stepped here as
fast as the CPU allows; tests use it for expert success rates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gen_theta_model.embodiment import EmbodimentSpec
from gen_theta_model.sim.disturbance import DisturbanceConfig
from gen_theta_model.sim.experts import ExpertConfig, ScriptedExpert
from gen_theta_model.sim.kinematics import ArmKinematics, Workspace
from gen_theta_model.sim.robot import SimRobot

EXPERT_HZ = 20.0  # how often the expert looks at the scene


@dataclass(frozen=True)
class EpisodeResult:
    task: str
    category: str
    robot: str
    seed: int
    success: bool
    time: float  # simulated seconds until success, or the time limit
    expert_phase: str  # the phase the expert ended in


class SimSession:
    """A SimRobot and an expert for one robot, reused across episodes; ``disturbance``: DART offsets
    on the executed targets (gen_theta_model/sim/disturbance.py).
    """

    def __init__(self, spec: EmbodimentSpec, expert: ExpertConfig | None = None,
                 disturbance: DisturbanceConfig | None = None) -> None:
        self.spec = spec
        self.kin = ArmKinematics(spec)
        self.robot = SimRobot(spec, self.kin, disturbance=disturbance)
        self.expert = ScriptedExpert(spec, self.kin, expert)

    @property
    def workspace(self) -> Workspace:
        return self.robot.workspace

    def run(self, task: str, seed: int, watch: Callable[[float], None] | None = None) -> EpisodeResult:
        """One expert episode of ``task`` from ``seed``, as fast as possible; ``watch(t)`` (if given)
        runs after every expert tick's physics step, ``t`` the simulated time (s) that step was sent for.
        """
        robot, world = self.robot, self.robot.world
        current = robot.reset(task, seed, now=0.0)
        self.expert.reset(current.info(world))
        expert_every = max(1, round(1.0 / (EXPERT_HZ * world.dt)))
        step = 0
        while not robot.done:
            if step % expert_every == 0:
                names, pos, quat = world.object_poses()
                traj = self.expert.act(world.time, world.actuated_positions(), names, pos, quat)
                if traj is not None:
                    robot.command(traj, world.time)
            now = world.time
            robot.step(now)
            if watch is not None and step % expert_every == 0:
                watch(now)
            step += 1
        success = robot.success_time is not None
        elapsed = robot.success_time if success else world.time
        return EpisodeResult(current.name, current.category, self.spec.name, seed, success, elapsed, self.expert.phase)

    def close(self) -> None:
        """Disconnect the pybullet clients."""
        self.robot.close()
        self.kin.close()
