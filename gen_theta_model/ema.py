"""An exponential moving average (EMA) of the trained weights: what a run with ``ema_decay`` serves.

Diffusion Policy and robomimic evaluate the EMA of their weights, not the last optimizer step:
a behaviour-cloning policy's closed-loop success swings from checkpoint to checkpoint while its
validation loss is flat (docs/policy.md, the learning curve), and averaging over the last few
thousand steps smooths that. The average is ``torch.optim.swa_utils.AveragedModel``; only the
decay schedule is ours: ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates (the warm-up of
TensorFlow's ExponentialMovingAverage), so a short run or a fine-tune is not dominated by the
weights it started from. Measured here at CPU scale (docs/policy.md, "An average of the weights"):
level with the optimizer's weights at the end of a cosine schedule, behind them in mid-schedule,
so it is off by default.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from gen_theta_model.policy.policy import Policy


def warmed_up_decay(decay: float, updates: int) -> float:
    """Return the EMA decay of update number ``updates`` (0-based): ``min(decay, (1 + n) / (10 + n))``."""
    return min(decay, (1.0 + updates) / (10.0 + updates))


def _ema_update(decay: float) -> Callable[[list[torch.Tensor], list[torch.Tensor], torch.Tensor], None]:
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        get_ema_multi_avg_fn(warmed_up_decay(decay, int(n_averaged)))(averaged, current, n_averaged)

    return update


def make_ema(model: nn.Module, decay: float) -> AveragedModel:
    """Make an EMA of ``model``'s parameters (a copy of it now; buffers follow the model unaveraged).

    Call ``ema.update_parameters(model)`` after each optimizer step; the first call copies the
    weights, each later one moves the average ``1 - warmed_up_decay(decay, n)`` of the way to them.
    """
    if not 0.0 < decay < 1.0:
        raise ValueError(f"ema_decay must lie in (0, 1), got {decay}")
    return AveragedModel(model, multi_avg_fn=_ema_update(decay), use_buffers=False)


def averaged_policy(policy: Policy, ema: AveragedModel) -> Policy:
    """``policy`` with the averaged weights: the same statistics, embodiments and observation config."""
    return Policy(ema.module, policy.normalizer, policy.embodiments, policy.observation_config)
