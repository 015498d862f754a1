"""The scripted expert behind the policy interface: what serving does to a perfect imitator.

``ExpertChunkPolicy`` answers ``predict_chunk`` with the chunk the scripted expert
(gen_theta_model.sim.experts) would command from that moment on: at each call it lets the expert
look at the simulated scene (object poses, joint positions: privileged state, not the cameras)
and plan, and samples its commanded trajectory on the control grid. Served through
``HarmonicServer`` in ``SimClosedLoop`` it shows what each serving mode and inference delay does
to a policy that imitates the demonstrations exactly: the ceiling a learned policy can reach
(``gen-theta rollout --in-process --expert``, docs/policy.md), and a test of the serving path
that needs no training.

``HandoverPolicy`` serves the expert until it enters a phase, then a learned policy to the
episode's end: the learned policy judged on one part of the task from the demonstrations' states
(e.g. the place, from a cube the expert grasped and lifted), as a phase-wise evaluation does.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from gen_theta_model.embodiment import EmbodimentSpec
from gen_theta_model.observation import ObservationConfig
from gen_theta_model.policy.config import PolicyConfig
from gen_theta_model.serving import ChunkPolicy
from gen_theta_model.sim.experts import PHASES, ScriptedExpert
from gen_theta_model.sim.robot import SimRobot

EXPERT_MAX_PREFIX_STEPS = 20  # the scripted expert takes any prefix; as long as the trained ones


class ExpertChunkPolicy:
    """A ChunkPolicy (gen_theta_model.serving) for one simulated robot.

    ``clock()`` is the sim time (s) at which the expert looks; ``chunk_start()`` the time of the
    chunk's first action, the next control tick (as a trained policy, the expert plans from the
    chunk start of its sample). Call ``reset()`` after every ``SimRobot.reset``.
    """

    def __init__(self, robot: SimRobot, clock: Callable[[], float], chunk_start: Callable[[], float],
                 chunk_len: int = PolicyConfig.chunk_len, max_prefix_steps: int = 20) -> None:
        self.robot = robot
        self.spec: EmbodimentSpec = robot.spec
        self.clock = clock
        self.chunk_start = chunk_start
        self.config = PolicyConfig(chunk_len=chunk_len, max_prefix_steps=max_prefix_steps,
                                   max_dof=self.spec.max_dof)
        # The server builds observations for every chunk; the expert reads none of them, so keep them small.
        self.observation_config = ObservationConfig(image_size=8, max_cameras=max(1, len(self.spec.cameras)),
                                                    history=1, max_dof=self.spec.max_dof)
        self.expert = ScriptedExpert(self.spec)

    def embodiment_index(self, name: str) -> int:
        if name != self.spec.name:
            raise ValueError(f"the expert policy drives '{self.spec.name}', not '{name}'")
        return 0

    def reset(self) -> None:
        """Start the expert on the robot's current task."""
        self.expert.reset(self.robot.state())

    def predict_chunk(
        self, observation: dict[str, torch.Tensor], committed_prefix: torch.Tensor, delay: int, *, decode: str = "mean"
    ) -> torch.Tensor:
        """(1, chunk_len, max_dof) canonical actions: the expert's plan from now, on the control grid."""
        world = self.robot.world
        now = self.clock()
        q = world.actuated_positions()
        names, positions, quaternions = world.object_poses()
        self.expert.act(now, q, names, positions, quaternions)
        times = self.chunk_start() + np.arange(self.config.chunk_len) / self.spec.control_rate_hz
        planned = self.expert.planned(times)
        plan = np.repeat(q[None], len(times), axis=0) if planned is None else planned
        chunk = np.zeros((1, self.config.chunk_len, self.config.max_dof), dtype=np.float32)
        chunk[0, :, : self.spec.dof] = self.spec.normalize(plan)
        return torch.from_numpy(chunk)

    def close(self) -> None:
        """Release the expert's kinematics client."""
        self.expert.close()


class HandoverPolicy:
    """A ChunkPolicy: ``expert`` plans every chunk until the scripted expert enters ``phase``
    (one of experts.PHASES) or a later one (a short phase may begin and end between two chunks),
    ``policy`` every chunk from then on, with the expert's committed
    plan as its prefix. ``handed_over_s``: the sim time of the first chunk the policy planned
    (None before). Call ``reset()`` after every ``SimRobot.reset``.
    """

    def __init__(self, expert: ExpertChunkPolicy, policy: ChunkPolicy, phase: str) -> None:
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
        if expert.config.chunk_len != policy.config.chunk_len:
            raise ValueError(f"the expert plans {expert.config.chunk_len} steps, the policy {policy.config.chunk_len}")
        self.expert, self.policy, self.phase = expert, policy, phase
        self.config = policy.config
        self.observation_config = policy.observation_config  # the observations the policy needs from the start
        self.handed_over_s: float | None = None
        self._episode = False  # before the first reset (the server's warm-up) the policy answers: its compute is timed

    def embodiment_index(self, name: str) -> int:
        return self.policy.embodiment_index(name)  # the expert reads no observation

    def reset(self) -> None:
        """Start the expert on the robot's current task; the expert drives again."""
        self.expert.reset()
        self.handed_over_s = None
        self._episode = True

    def predict_chunk(
        self, observation: dict[str, torch.Tensor], committed_prefix: torch.Tensor, delay: int, *, decode: str = "mean"
    ) -> torch.Tensor:
        """(1, chunk_len, max_dof) canonical actions from whichever of the two drives now."""
        if self._episode and self.handed_over_s is None:
            chunk = self.expert.predict_chunk(observation, committed_prefix, delay, decode=decode)
            now = self.expert.expert.phase  # "start" before the first plan; phases may repeat (a retry)
            if now not in PHASES or PHASES.index(now) < PHASES.index(self.phase):
                return chunk
            self.handed_over_s = self.expert.clock()
        return self.policy.predict_chunk(observation, committed_prefix, delay, decode=decode)
