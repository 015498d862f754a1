"""Closed-loop policy episodes in one process, on simulated time: SimRobot + HarmonicServer, no ROS.

The engine the ``policy_server`` node runs (gen_theta_model.serving.HarmonicServer) drives the
robot the ``sim_robot`` node runs (gen_theta_model.sim.robot.SimRobot), on the simulated clock:

- physics steps at ``world.dt``; joint states go to the server at ``joint_state_rate_hz`` and
  each camera's frame at its fps, stamped with the simulated time they were sensed, as the
  node publishes them;
- the server's command windows (``tick`` at its command rate) go to the robot's trajectory
  follower as the JointTrajectory topic would deliver them;
- inference takes simulated time: while a chunk is "being inferred" (its measured compute
  time plus ``added_delay_ms``, or a fixed ``inference_ms``), physics, sensors and commands
  go on with the plan the robot already has, exactly as harmonic serving must absorb it.

So an episode runs as fast as the CPU allows (no waiting for a real-time clock) and, with a
fixed ``inference_ms``, is bit-reproducible: the same seed gives the same outcome. What DDS
adds (transport, jitter, scheduling on a loaded machine) only ``gen-theta rollout`` over DDS
measures; this loop is for many seeds and ablations (``gen-theta rollout --in-process``).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import torch

from gen_theta_model.closed_loop import STAGES, EpisodeFigures, episode_figures
from gen_theta_model.embodiment import EmbodimentSpec, load_robot
from gen_theta_model.harmonic import LatencyTracker
from gen_theta_model.policy.config import PolicyConfig
from gen_theta_model.policy.policy import Policy
from gen_theta_model.rollout_media import EpisodeTrace
from gen_theta_model.serving import ChunkPolicy, HarmonicServer, ServerConfig
from gen_theta_model.sim.camera import render
from gen_theta_model.sim.expert_policy import EXPERT_MAX_PREFIX_STEPS, ExpertChunkPolicy, HandoverPolicy
from gen_theta_model.sim.experts import PHASES
from gen_theta_model.sim.robot import SimRobot
from gen_theta_model.trajectory import Trajectory


def served_policy(checkpoint: str | None, robot: str) -> tuple[Policy | None, EmbodimentSpec, int]:
    """Return what SimClosedLoop serves on ``robot``: (policy, its embodiment, the longest trained prefix).

    ``checkpoint`` None: the scripted expert (policy None), which takes any prefix up to
    EXPERT_MAX_PREFIX_STEPS.
    """
    if checkpoint is None:
        return None, load_robot(robot), EXPERT_MAX_PREFIX_STEPS
    from gen_theta_model.checkpoint import load_policy, read_checkpoint_config, resolve_checkpoint

    policy = load_policy(checkpoint)
    longest = read_checkpoint_config(resolve_checkpoint(checkpoint))[0].data.harmonic.max_delay_steps
    return policy, policy.embodiments[policy.embodiment_index(robot)], longest


@dataclass(frozen=True)
class SimLoopConfig:
    joint_state_rate_hz: float = 100.0  # as the sim_robot node publishes them
    camera_rate_hz: float = 0.0  # 0: each camera's fps from the robot YAML, as the node
    settle_s: float = 0.5  # sensors flow this long before the server drives, as in the DDS rollout
    inference_ms: float | None = None  # fixed model latency (reproducible); None: measured compute time
    max_seconds: float = 20.0  # cap on simulated seconds per episode (the task's limit may end it sooner)
    hand_over_at: str = ""  # a phase of the scripted expert (experts.PHASES): it drives until then, the policy after

    def __post_init__(self) -> None:
        if self.joint_state_rate_hz <= 0.0:
            raise ValueError(f"joint_state_rate_hz must be > 0, got {self.joint_state_rate_hz}")
        if self.inference_ms is not None and self.inference_ms < 0.0:
            raise ValueError(f"inference_ms must be >= 0, got {self.inference_ms}")
        if self.max_seconds <= 0.0:
            raise ValueError(f"max_seconds must be > 0, got {self.max_seconds}")
        if self.settle_s < 0.0:
            raise ValueError(f"settle_s must be >= 0, got {self.settle_s}")
        if self.hand_over_at and self.hand_over_at not in PHASES:
            raise ValueError(f"hand_over_at must be one of {PHASES}, got {self.hand_over_at!r}")


LIFT_M = 0.03  # the object held this far above where it was grasped counts as lifted
PROGRESS_EVERY_S = 0.05


class Progress:
    """How far an episode got: the furthest stage (the task's object grasped, as the sim's grasp
    model attached it; lifted ``LIFT_M`` above where it was grasped; the task done) and the
    closest the fingers came to that object (m). Where a policy fails tells what it has not
    learned (reaching a moving cube, grasping it, carrying it), and the closest approach
    still separates policies that all fail.
    """

    def __init__(self) -> None:
        self.stage = 0
        self.closest_m = float("inf")
        self._grasp_z: float | None = None

    def update(self, robot: SimRobot) -> None:
        """Look at the world now."""
        world, pick = robot.world, robot.task.pick if robot.task is not None else ""
        fingers = world.finger_centres()  # any hand: a humanoid may reach with either
        if pick and len(fingers):
            distances = np.linalg.norm(fingers - world.object_position(pick), axis=1)
            self.closest_m = min(self.closest_m, float(distances.min()))
        if robot.success_time is not None:
            self.stage = len(STAGES) - 1
            return
        if pick not in world.held_objects():
            self._grasp_z = None
            return
        z = float(world.object_position(pick)[2])
        if self._grasp_z is None:
            self._grasp_z = z
        self.stage = max(self.stage, 1 + int(z > self._grasp_z + LIFT_M))

    @property
    def name(self) -> str:
        return STAGES[self.stage]


class _SimulatedLatency:
    """A ChunkPolicy that runs the real policy, then lets ``advance(latency)`` simulated seconds
    pass before it returns: the server's clock reads the chunk's arrival time after that.
    """

    def __init__(self, policy: ChunkPolicy, loop: SimClosedLoop) -> None:
        self.policy = policy
        self.loop = loop
        self.config = policy.config
        self.observation_config = policy.observation_config

    def embodiment_index(self, name: str) -> int:
        return self.policy.embodiment_index(name)

    def predict_chunk(
        self, observation: dict[str, torch.Tensor], committed_prefix: torch.Tensor, delay: int, *, decode: str = "mean"
    ) -> torch.Tensor:
        start = time.perf_counter()
        chunk = self.policy.predict_chunk(observation, committed_prefix, delay, decode=decode)
        self.loop.advance(self.loop.latency_s(time.perf_counter() - start))
        return chunk


class SimClosedLoop:
    """One robot, one policy: ``run(task, seed, mode, added_delay_ms)`` plays one episode.

    ``policy`` None serves the scripted expert (gen_theta_model.sim.expert_policy); with
    ``cfg.hand_over_at`` the expert drives each episode until that phase, then ``policy``.
    """

    def __init__(self, policy: ChunkPolicy | None, spec: EmbodimentSpec, server_cfg: ServerConfig,
                 cfg: SimLoopConfig | None = None) -> None:
        self.spec = spec
        self.server_cfg = server_cfg
        self.cfg = cfg or SimLoopConfig()
        self.robot = SimRobot(spec)
        self.now = 0.0  # simulated seconds since the episode was reset
        self.expert = None if policy is not None and not self.cfg.hand_over_at else ExpertChunkPolicy(
            self.robot, lambda: self.now, lambda: self._next_tick, max_prefix_steps=max(server_cfg.max_delay_steps, 1),
            chunk_len=policy.config.chunk_len if policy is not None else PolicyConfig.chunk_len)
        self.handover = None if policy is None or self.expert is None else HandoverPolicy(
            self.expert, policy, self.cfg.hand_over_at)
        self.policy: ChunkPolicy = self.handover or policy or self.expert
        self._added_s = 0.0
        self._server: HarmonicServer | None = None
        self._next_tick = 0.0  # the next command tick, s: the control grid of the server's timeline
        self._keep_frames = False
        self._compute_s = self._measure_compute()

    # -- the simulated clock -------------------------------------------------------------------
    def latency_s(self, compute_s: float) -> float:
        """Return the simulated inference latency, s: the fixed ``inference_ms`` or the measured compute time,
        plus the added delay of the episode.
        """
        model = compute_s if self.cfg.inference_ms is None else self.cfg.inference_ms * 1e-3
        return model + self._added_s

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` of simulated time pass (whole physics steps): physics, sensors, commands."""
        end = self.now + seconds
        while self.now < end - 1e-9:
            self._step()

    def _step(self) -> None:
        robot, world = self.robot, self.robot.world
        self.now += world.dt
        robot.step(self.now)
        now = self.now
        if now >= self._next_joints:
            self._next_joints += 1.0 / self.cfg.joint_state_rate_hz
            q, qd, _ = world.joint_state()
            self._joints.append((now, self.spec.reorder_from(world.joint_names, q),
                                 self.spec.reorder_from(world.joint_names, qd)))
            if self._server is not None:
                self._server.on_joint_state(self.spec.name, world.joint_names, q, now, now)
        for i, cam in enumerate(self.spec.cameras):
            if now >= self._next_frames[i]:
                self._next_frames[i] += 1.0 / (self.cfg.camera_rate_hz or cam.fps)
                frame = render(world, cam)
                if self._server is not None:
                    self._server.on_image(self.spec.name, cam.name, frame, now, now)
                if i == 0 and self._keep_frames:
                    self._frames.append((now, frame))
        if now >= self._next_progress:
            self._next_progress += PROGRESS_EVERY_S
            self._progress.update(robot)
        if self._server is not None and now >= self._next_tick:
            self._next_tick += 1.0 / self.server_cfg.command_rate_hz
            cmd = self._server.tick(self.spec.name, now)
            if cmd is not None:
                robot.command(cmd.trajectory, now)
                self._commands.append((now, cmd.trajectory))

    def _measure_compute(self) -> float:
        """Compute time of one chunk on a neutral observation, s (the server's warm-up)."""
        server = HarmonicServer(self.policy, [(self.spec.name, self.spec)], self.server_cfg, clock=time.perf_counter)
        return server.warm_up()

    # -- episodes -----------------------------------------------------------------------------
    def run(self, task: str, seed: int, mode: str, added_delay_ms: float,
            keep_frames: bool = False) -> tuple[EpisodeFigures, EpisodeTrace]:
        """One episode of ``task`` from ``seed`` served in ``mode`` with ``added_delay_ms`` of extra latency."""
        robot = self.robot
        self.now = 0.0  # every episode on its own clock from 0: the same seed replays exactly
        state = robot.reset(task, seed, self.now).info(robot.world)
        if self.handover is not None:
            self.handover.reset()
        elif self.expert is not None:
            self.expert.reset()
        self._added_s = added_delay_ms * 1e-3
        self._keep_frames = keep_frames
        self._commands: list[tuple[float, Trajectory]] = []
        self._joints: list[tuple[float, np.ndarray, np.ndarray]] = []
        self._frames: list[tuple[float, np.ndarray]] = []
        self._next_joints = self._next_tick = self._next_progress = self.now
        self._progress = Progress()
        self._next_frames = [self.now] * len(self.spec.cameras)
        cfg = dataclasses.replace(self.server_cfg, mode=mode, added_delay_ms=0.0)  # the delay is simulated
        server = HarmonicServer(_SimulatedLatency(self.policy, self), [(self.spec.name, self.spec)], cfg,
                                clock=lambda: self.now)
        server.on_instruction(self.spec.name, state.instruction)
        # The DDS server starts an episode knowing its recent latency; so does this one.
        server.latency = LatencyTracker(cfg.latency_window, initial=self.latency_s(self._compute_s))
        self._server = server
        self.advance(self.cfg.settle_s)  # the server takes sensors but does not drive yet
        self._next_tick = self.now
        start = self.now
        initial = robot.world.actuated_positions().copy()
        self._joints.clear()
        try:
            while not robot.done and self.now - start < self.cfg.max_seconds:
                self._step()
                server.infer_step()  # lets simulated time pass while a chunk is inferred
        finally:
            self._server = None
        success = robot.success_time is not None
        self._progress.update(robot)
        c = server.session(self.spec.name).counters
        figures = episode_figures(
            self.spec, initial, self._commands, 1.0 / self.spec.control_rate_hz,
            mode=mode, added_delay_ms=float(added_delay_ms), seed=seed, task=task, success=success,
            time_to_success=robot.success_time if success else None,
            latency_p50_ms=1e3 * c.latency.percentile(50), latency_p99_ms=1e3 * c.latency.percentile(99),
            server_missed_deadlines=0.0, robot=self.spec.name, progress=self._progress.name,
            closest_m=self._progress.closest_m,
        )
        joints = self._joints
        trace = EpisodeTrace(
            mode, self.spec, initial, list(self._commands), np.array([j[0] for j in joints]),
            np.array([j[1] for j in joints]).reshape(-1, self.spec.dof),
            np.array([j[2] for j in joints]).reshape(-1, self.spec.dof), list(self._frames),
        )
        return figures, trace

    def close(self) -> None:
        """Disconnect the physics clients."""
        if self.expert is not None:
            self.expert.close()
        self.robot.close()
