"""Harmonic reasoning: perceive and act at the same time, learned at training time.

Training half (used by the loader): each sample gets a delay d in control steps,
drawn from [0, max_delay_steps]. The first d steps of the target chunk are the
*committed prefix*: actions the robot is already executing while the model thinks.
The model sees them as input and the loss is on the remaining steps, so at run
time the server can pass what it has committed for the inference interval and the
new chunk continues exactly from there. With ``enabled=False`` d is always 0: the
no-harmonic baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class HarmonicConfig:
    enabled: bool = True
    max_delay_steps: int = 15  # d_max: 300 ms at 50 Hz, the largest inference delay trained for
    zero_delay_prob: float = 0.15  # share of samples without a prefix (the first chunk of an episode)

    def __post_init__(self) -> None:
        if self.max_delay_steps < 0:
            raise ValueError(f"max_delay_steps must be >= 0, got {self.max_delay_steps}")
        if not 0.0 <= self.zero_delay_prob <= 1.0:
            raise ValueError(f"zero_delay_prob must be in [0, 1], got {self.zero_delay_prob}")


def sample_delay(cfg: HarmonicConfig, horizon: int, rng: np.random.Generator) -> int:
    """Committed-prefix length d for one training sample, 0 <= d <= min(d_max, horizon - 1).

    Uniform over [1, d_max] except for a ``zero_delay_prob`` share of zeros, so that
    every delay the server may meet is trained for and at least one step is always
    left to predict.
    """
    d_max = min(cfg.max_delay_steps, horizon - 1)
    if not cfg.enabled or d_max <= 0 or rng.random() < cfg.zero_delay_prob:
        return 0
    return int(rng.integers(1, d_max + 1))
