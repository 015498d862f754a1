"""Example inputs in the batch layout (gen_theta_model.batch) for real embodiments.

The openpi-style example factory: tests, the model card (FLOP counts) and the
throughput bench build a well-formed batch for any mix of robots without a dataset.
Actions are smooth random trajectories in canonical units, images are noise.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from gen_theta_model import batch as K
from gen_theta_model import tokenizer
from gen_theta_model.data.stats import NormStats
from gen_theta_model.embodiment import EmbodimentSpec
from gen_theta_model.harmonic import HarmonicConfig, sample_delay
from gen_theta_model.policy.config import PolicyConfig


def example_batch(
    specs: Sequence[EmbodimentSpec],
    cfg: PolicyConfig,
    batch_size: int,
    seed: int = 0,
    cameras: int = 2,
    history: int = 4,
    image_size: int = 96,
    harmonic: HarmonicConfig | None = None,
) -> dict[str, torch.Tensor]:
    """Build a batch of ``batch_size`` samples cycling over ``specs`` (EMBODIMENT_INDEX = position in specs).

    Shapes as in gen_theta_model.batch with D = cfg.max_dof, H = cfg.chunk_len,
    L = cfg.max_instruction_len (tokens of ``cfg.text_backbone``'s tokenizer, or bytes). Deterministic
    under ``seed``.
    """
    rng = np.random.default_rng(seed)
    harmonic = harmonic or HarmonicConfig(max_delay_steps=min(15, cfg.max_prefix_steps))
    b, h, d, t = batch_size, cfg.chunk_len, cfg.max_dof, history
    out: dict[str, np.ndarray] = {
        K.IMAGES: rng.integers(0, 256, (b, cameras, 3, image_size, image_size), dtype=np.uint8),
        K.IMAGE_AGE: rng.uniform(0.0, 0.1, (b, cameras)).astype(np.float32),
        K.IMAGE_MASK: np.ones((b, cameras), bool),
        K.STATE: np.zeros((b, t, d), np.float32),
        K.STATE_AGE: np.zeros((b, t), np.float32),
        K.STATE_MASK: np.ones((b, t), bool),
        K.JOINT_DESCRIPTORS: np.zeros((b, d, 12), np.float32),
        K.JOINT_MASK: np.zeros((b, d), bool),
        K.ACTION: np.zeros((b, h, d), np.float32),
        K.ACTION_MASK: np.ones((b, h), bool),
        K.KEYPOSE: np.zeros((b, d), np.float32),
        # a workspace's objects, 2-4 per scene (m): what the sim's object poses give
        K.OBJECTS: rng.uniform((0.3, -0.25, 0.0), (0.6, 0.25, 0.1), (b, K.MAX_OBJECTS, 3)).astype(np.float32),
        K.OBJECTS_MASK: np.arange(K.MAX_OBJECTS)[None, :] < 2 + np.arange(b)[:, None] % 3,
        K.DELAY: np.zeros(b, np.int64),
        K.EMBODIMENT_INDEX: np.zeros(b, np.int64),
        K.EPISODE_INDEX: np.arange(b, dtype=np.int64),
    }
    tokens = [tokenizer.encode(f"task {i} for the {s.name}", cfg.max_instruction_len, cfg.text_backbone)
              for i, s in enumerate(specs)]
    out[K.INSTRUCTION] = np.stack([tokens[i % len(specs)][0] for i in range(b)])
    out[K.INSTRUCTION_MASK] = np.stack([tokens[i % len(specs)][1] for i in range(b)])
    for i in range(b):
        spec = specs[i % len(specs)]
        n = spec.dof
        start = rng.uniform(-0.5, 0.5, n)
        steps = np.cumsum(rng.normal(0.0, 0.02, (t + h, n)), axis=0) + start  # smooth trajectory
        out[K.STATE][i, :, :n] = steps[:t]
        out[K.STATE_AGE][i] = (np.arange(t)[::-1] + rng.uniform(0, 1)) / spec.control_rate_hz
        out[K.JOINT_DESCRIPTORS][i, :n] = spec.descriptors()
        out[K.JOINT_MASK][i, :n] = True
        out[K.ACTION][i, :, :n] = steps[t:]
        out[K.KEYPOSE][i, :n] = steps[-1]  # the chunk's end stands in for the next gripper event
        out[K.DELAY][i] = sample_delay(harmonic, h, rng)
        out[K.EMBODIMENT_INDEX][i] = i % len(specs)
    return {k: torch.from_numpy(v) for k, v in out.items()}


def example_norm_stats(spec: EmbodimentSpec, mean: float = 0.0, std: float = 0.3) -> NormStats:
    """Make statistics of a spec with the same ``mean`` and ``std`` for every joint (canonical units)."""
    n = spec.dof
    full = np.full(n, 1.0, np.float32)
    return NormStats(
        embodiment=spec.name, count_state=1, count_action=1,
        state_mean=full * mean, state_std=full * std, state_min=-full, state_max=full,
        action_mean=full * mean, action_std=full * std, action_min=-full, action_max=full,
    )
