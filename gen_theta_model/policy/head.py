"""The stochastic action head: a Gaussian mixture per joint over the H-step chunk.

For each joint token j the head outputs K mixture weights and, per component, a
mean and a diagonal std for every step of the chunk. Joints are independent given
the trunk's tokens, so

    log pi(a) = sum_j log sum_k w_jk prod_h N(a_hj; mu_jkh, s_jkh)

over the valid joints j and the scored steps h. With ``shared_components`` the K
components are whole-robot plans instead: one set of weights w_k for the chunk (the
mean of the valid joints' logits), so

    log pi(a) = log sum_k w_k prod_j prod_h N(a_hj; mu_jkh, s_jkh)

and every joint follows the same mode (per-joint modes can pair "lift" on the arm with
"not closed yet" on the gripper). Marginalising a diagonal mixture over unscored steps
keeps the same weights, so ``log_prob`` is exact for any step mask (the committed
prefix and steps past the episode end are left out), and ``sample`` draws exactly
from the same density. Reverse KL follows from the two.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import nn

from gen_theta_model.policy.config import PolicyConfig

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
DECODE = ("mean", "top", "sample")  # how a chunk is read from the mixture: its mean, heaviest component, a draw


@dataclass(frozen=True)
class ChunkMixture:
    """Gaussian mixture over a chunk: logits (B, D, K), mean and log_std (B, D, K, H).

    ``shared``: the components are whole-chunk plans; every joint's logits are the chunk's (B, K) weights.
    ``keypose`` (B, D): the predicted positions at the next gripper event, when the model has
    that auxiliary head (``PolicyConfig.keypose_weight``), else None.
    ``objects`` (B, S, 3): where the image tokens place the scene's objects, m (``PolicyConfig.object_weight``).
    """

    logits: torch.Tensor
    mean: torch.Tensor
    log_std: torch.Tensor
    shared: bool = False
    keypose: torch.Tensor | None = None
    objects: torch.Tensor | None = None

    @property
    def n_components(self) -> int:
        return self.logits.shape[-1]

    @property
    def is_gaussian(self) -> bool:
        """One component: the density is a diagonal Gaussian and KL has a closed form."""
        return self.n_components == 1

    def log_prob(self, actions: torch.Tensor, step_mask: torch.Tensor, joint_mask: torch.Tensor) -> torch.Tensor:
        """Exact log density of ``actions`` (B, H, D) over scored steps (B, H) and joints (B, D) -> (B,)."""
        a = actions.transpose(1, 2).unsqueeze(2)  # (B, D, 1, H)
        z = (a - self.mean) * torch.exp(-self.log_std)  # (B, D, K, H)
        per_step = -0.5 * z.square() - self.log_std - LOG_SQRT_2PI  # (B, D, K, H)
        per_comp = (per_step * step_mask.to(z.dtype)[:, None, None, :]).sum(-1)  # (B, D, K)
        jm = joint_mask.to(z.dtype)
        if self.shared:  # one component for the whole chunk: sum over joints inside the logsumexp
            log_w = torch.log_softmax(self.logits[:, 0], dim=-1)  # (B, K)
            return torch.logsumexp(log_w + (per_comp * jm[:, :, None]).sum(1), dim=-1)  # (B,)
        log_w = torch.log_softmax(self.logits, dim=-1)  # (B, D, K)
        per_joint = torch.logsumexp(log_w + per_comp, dim=-1)  # (B, D)
        return (per_joint * jm).sum(-1)  # (B,)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """One draw per batch element: (B, H, D)."""
        b, d, k, h = self.mean.shape
        logits = self.logits[:, :1] if self.shared else self.logits  # shared: one draw per chunk, for every joint
        probs = torch.softmax(logits.float(), dim=-1).reshape(-1, k)  # (B or B*D, K)
        comp = torch.multinomial(probs, 1, generator=generator).view(b, -1, 1, 1).expand(b, d, 1, h)
        mu = self.mean.gather(2, comp).squeeze(2)  # (B, D, H)
        std = self.log_std.gather(2, comp).squeeze(2).exp()
        noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return (mu + std * noise).transpose(1, 2)  # (B, H, D)

    def expectation(self) -> torch.Tensor:
        """Return the mixture mean (B, H, D): the MSE-optimal point prediction."""
        w = torch.softmax(self.logits, dim=-1).unsqueeze(-1)  # (B, D, K, 1)
        return (w * self.mean).sum(2).transpose(1, 2)  # (B, H, D)

    def top_component(self) -> torch.Tensor:
        """Return each joint's most probable component's mean (B, H, D): one mode of the demonstrations.

        The mixture mean averages the modes (two ways around an obstacle give a path through it;
        an early and a late grasp give one in between); this picks the heaviest component per
        joint instead, as robomimic's low-noise GMM evaluation does, without the sampling noise.
        Shared components: the chunk's heaviest plan, the same for every joint.
        """
        top = self.logits.argmax(-1)  # (B, D); shared: every joint's logits are the chunk's, one argmax
        index = top[:, :, None, None].expand(-1, -1, 1, self.mean.shape[-1])
        return self.mean.gather(2, index).squeeze(2).transpose(1, 2)  # (B, H, D)

    def decode(self, how: str, generator: torch.Generator | None = None) -> torch.Tensor:
        """Return the chunk (B, H, D) to execute: ``how`` is one of DECODE ("mean", "top", "sample")."""
        if how == "mean":
            return self.expectation()
        if how == "top":
            return self.top_component()
        if how == "sample":
            return self.sample(generator)
        raise ValueError(f"decode must be one of {DECODE}, got {how!r}")

    def pad_joints(self, dof: int) -> ChunkMixture:
        """Return the same mixture with joints padded to ``dof`` (padded joints: N(0, 1) per step)."""
        extra = dof - self.logits.shape[1]
        if extra <= 0:
            return self
        pad = (0, 0, 0, 0, 0, extra)
        b, _, k = self.logits.shape
        logits = (torch.cat([self.logits, self.logits[:, :1].expand(b, extra, k)], dim=1) if self.shared
                  else torch.nn.functional.pad(self.logits, (0, 0, 0, extra)))
        keypose = None if self.keypose is None else torch.nn.functional.pad(self.keypose, (0, extra))
        return replace(self, logits=logits, mean=torch.nn.functional.pad(self.mean, pad),
                       log_std=torch.nn.functional.pad(self.log_std, pad), keypose=keypose)

    def affine(self, scale: torch.Tensor, shift: torch.Tensor) -> ChunkMixture:
        """Distribution of ``a * scale + shift`` with per-joint scale, shift (B, D) (scale > 0)."""
        s = scale[:, :, None, None]
        keypose = None if self.keypose is None else self.keypose * scale + shift
        return replace(self, mean=self.mean * s + shift[:, :, None, None], log_std=self.log_std + torch.log(s),
                       keypose=keypose)


class MixtureHead(nn.Module):
    """Joint tokens (B, D, d) -> ChunkMixture with K components over H steps per joint (or per chunk)."""

    def __init__(self, cfg: PolicyConfig) -> None:
        super().__init__()
        self.k, self.h = cfg.n_components, cfg.chunk_len
        self.shared = cfg.shared_components
        self.min_log_std, self.max_log_std = cfg.min_log_std, cfg.max_log_std
        self.proj = nn.Linear(cfg.d_model, self.k * (1 + 2 * self.h), bias=True)
        # Start at std = 1 (the z-scored data's spread): sigmoid(offset) puts log_std at 0.
        frac = -cfg.min_log_std / (cfg.max_log_std - cfg.min_log_std)
        self.log_std_offset = math.log(frac / (1.0 - frac)) if 0.0 < frac < 1.0 else 0.0

    def forward(self, joint_tokens: torch.Tensor, joint_mask: torch.Tensor) -> ChunkMixture:
        """Joint tokens (B, D, d) and their mask (B, D) (padded joints 0) -> the chunk's mixture."""
        b, d, _ = joint_tokens.shape
        out = self.proj(joint_tokens).float()  # (B, D, K*(1+2H)); the density is always evaluated in fp32
        logits = out[..., : self.k].clone()  # (B, D, K); copies, not views of `out` (FSDP2 output hooks)
        if self.shared:  # the chunk's weights: the valid joints' logits averaged, given to every joint
            m = joint_mask.to(logits.dtype)[:, :, None]  # (B, D, 1)
            chunk = (logits * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp(min=1.0)  # (B, 1, K)
            logits = chunk.expand(b, d, self.k).clone()
        mean, raw = out[..., self.k :].view(b, d, self.k, 2, self.h).unbind(3)  # (B, D, K, H) each
        span = self.max_log_std - self.min_log_std
        log_std = self.min_log_std + span * torch.sigmoid(raw + self.log_std_offset)
        return ChunkMixture(logits, mean.clone(), log_std, self.shared)
