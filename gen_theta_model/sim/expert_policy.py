"""The scripted expert behind the policy interface: what serving does to a perfect imitator.

``ExpertChunkPolicy`` answers ``predict_chunk`` with the chunk the scripted expert
(gen_theta_model.sim.experts) would command from that moment on: at each call it lets the expert
look at the simulated scene (object poses, joint positions: privileged state, not the cameras)
and plan, and samples its commanded trajectory on the control grid. Served through
``HarmonicServer`` in ``SimClosedLoop`` it shows what each serving mode and inference delay does
to a policy that imitates the demonstrations exactly: the ceiling a learned policy can reach
(``gen-theta rollout --in-process --expert``, docs/policy.md), and a test of the serving path
that needs no training.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from gen_theta_model.embodiment import EmbodimentSpec
from gen_theta_model.observation import ObservationConfig
from gen_theta_model.policy.config import PolicyConfig
from gen_theta_model.sim.experts import ScriptedExpert
from gen_theta_model.sim.robot import SimRobot

EXPERT_MAX_PREFIX_STEPS = 20  # the scripted expert takes any prefix; as long as the trained ones


class ExpertChunkPolicy:
    """A ChunkPolicy (gen_theta_model.serving) for one simulated robot.

    ``clock()`` is the sim time (s) at which the expert looks; ``chunk_start()`` the time of the
    chunk's first action, the next control tick (as a trained policy, the expert plans from the
    chunk start of its sample). Call ``reset()`` after every ``SimRobot.reset``.
    """

    def __init__(self, robot: SimRobot, clock: Callable[[], float], chunk_start: Callable[[], float],
                 chunk_len: int = 50, max_prefix_steps: int = 20) -> None:
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
