"""A real tiny checkpoint for server, bring-up and rollout tests (untrained weights, real files)."""

from __future__ import annotations

from pathlib import Path

import torch

from gen_theta_model.checkpoint import save_checkpoint
from gen_theta_model.embodiment import load_robot
from gen_theta_model.policy.config import preset
from gen_theta_model.policy.example import example_norm_stats
from gen_theta_model.policy.policy import build_policy
from gen_theta_model.train_config import TrainConfig


def tiny_checkpoint(run_dir: Path, robots: dict[str, float]) -> Path:
    """Save a tiny policy for ``robots`` (name -> action mean in canonical units; a mean beyond
    +-1 makes the policy command positions outside the URDF limits). Returns the checkpoint dir.
    """
    torch.manual_seed(0)
    specs = [load_robot(name) for name in robots]
    stats = {s.name: example_norm_stats(s, mean=robots[s.name], std=0.05) for s in specs}
    policy = build_policy(preset("tiny"), specs, stats)
    return save_checkpoint(run_dir, 1, policy, TrainConfig(), policy.model.state_dict())
