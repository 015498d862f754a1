"""Validation metrics of a chunk policy: next-action MSE and reverse KL to a Gaussian at the truth.

Both are taken over the *scored* entries of a chunk: steps at or after the delay
(the committed prefix is given, not predicted) inside the episode, of present joints.

Reverse KL, KL(pi || N(a*, sigma^2 I)), asks how much of the policy's mass lies
far from the demonstrated action a*: low for a sharp policy at the truth, high for
one that is confidently wrong or needlessly diffuse. Per scored scalar, in
canonical units. Closed form when pi is Gaussian (one mixture component),
otherwise Monte Carlo with the exact mixture log-density.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from gen_theta_model.policy.head import LOG_SQRT_2PI, ChunkMixture


def _weights(step_mask: torch.Tensor, joint_mask: torch.Tensor) -> torch.Tensor:
    return step_mask.float()[:, :, None] * joint_mask.float()[:, None, :]  # (B, H, D)


def squared_error(pred: torch.Tensor, target: torch.Tensor, step_mask: torch.Tensor, joint_mask: torch.Tensor,
                  scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of squared errors and the number of scored scalars, each (B,).

    pred, target (B, H, D); step_mask (B, H); joint_mask (B, D); ``scale`` (B, D)
    multiplies the error per joint (canonical -> joint units: (upper - lower) / 2).
    """
    err = (pred.float() - target.float())
    if scale is not None:
        err = err * scale[:, None, :]
    w = _weights(step_mask, joint_mask)
    return (err.square() * w).sum((1, 2)), w.sum((1, 2))


def reverse_kl_gaussian_closed(dist: ChunkMixture, target: torch.Tensor, sigma: float,
                               step_mask: torch.Tensor, joint_mask: torch.Tensor) -> torch.Tensor:
    """KL(pi || N(target, sigma^2 I)) summed over scored entries, (B,), for a one-component ``dist``.

    Per scalar: log(sigma / s) + (s^2 + (mu - a*)^2) / (2 sigma^2) - 1/2.
    """
    if not dist.is_gaussian:
        raise ValueError(f"closed-form KL needs a Gaussian (1 component), got {dist.n_components}")
    mu = dist.mean[:, :, 0].transpose(1, 2)  # (B, H, D)
    log_s = dist.log_std[:, :, 0].transpose(1, 2)
    per = math.log(sigma) - log_s + (torch.exp(2 * log_s) + (mu - target).square()) / (2 * sigma**2) - 0.5
    return (per * _weights(step_mask, joint_mask)).sum((1, 2))


def reverse_kl_monte_carlo(dist: ChunkMixture, target: torch.Tensor, sigma: float, step_mask: torch.Tensor,
                           joint_mask: torch.Tensor, samples: int = 64,
                           generator: torch.Generator | None = None, chunk: int = 64) -> torch.Tensor:
    """E_pi[log pi(a) - log N(a; target, sigma^2 I)] over scored entries by ``samples`` draws, (B,).

    Draws are taken ``chunk`` at a time, each chunk as one batch of repeated distributions.
    """
    b = target.shape[0]
    total = torch.zeros(b, device=target.device)
    done = 0
    while done < samples:
        n = min(chunk, samples - done)
        rep = replace(dist, logits=dist.logits.repeat(n, 1, 1), mean=dist.mean.repeat(n, 1, 1, 1),
                      log_std=dist.log_std.repeat(n, 1, 1, 1))
        steps, joints, tgt = step_mask.repeat(n, 1), joint_mask.repeat(n, 1), target.repeat(n, 1, 1)
        a = rep.sample(generator)  # (n*B, H, D)
        w = _weights(steps, joints)
        log_q = ((-0.5 * ((a - tgt) / sigma).square() - math.log(sigma) - LOG_SQRT_2PI) * w).sum((1, 2))
        total += (rep.log_prob(a, steps, joints) - log_q).view(n, b).sum(0)
        done += n
    return total / samples


def reverse_kl(dist: ChunkMixture, target: torch.Tensor, sigma: float, step_mask: torch.Tensor,
               joint_mask: torch.Tensor, samples: int = 64, generator: torch.Generator | None = None
               ) -> torch.Tensor:
    """KL(pi || N(target, sigma^2 I)) summed over scored entries, (B,): closed form if Gaussian, else MC."""
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    if dist.is_gaussian:
        return reverse_kl_gaussian_closed(dist, target, sigma, step_mask, joint_mask)
    return reverse_kl_monte_carlo(dist, target, sigma, step_mask, joint_mask, samples, generator)
