"""Input encoders: every observation stream becomes tokens of width d_model.

All encoders are embodiment-agnostic: joints enter through their 12-dim URDF
descriptors (a DeepSets-style mean over the valid joints where a token summarises
all joints), never through a per-robot layer, so the same weights serve 6, 7 and
16+ DoF. Shapes use B batch, C cameras, T state history, L instruction tokens,
D joints (padded), P committed-prefix steps, d d_model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gen_theta_model.policy.backbones import VisionTower
from gen_theta_model.policy.config import PolicyConfig


class AgeEmbedding(nn.Module):
    """Continuous age in seconds -> sinusoidal features over geometric periods -> Linear."""

    def __init__(self, cfg: PolicyConfig) -> None:
        super().__init__()
        self.periods = (cfg.age_min_period_s, cfg.age_max_period_s, cfg.age_frequencies)
        self.register_buffer("omega", torch.empty(cfg.age_frequencies), persistent=False)  # rad/s
        self.reset_parameters()
        self.proj = nn.Linear(2 * cfg.age_frequencies, cfg.d_model, bias=cfg.bias)

    def reset_parameters(self) -> None:
        """Angular frequencies of geometric periods (a computed buffer; also after ``to_empty``)."""
        low, high, n = self.periods
        with torch.no_grad():
            self.omega.copy_(2 * math.pi / torch.logspace(math.log10(low), math.log10(high), n))

    def forward(self, age: torch.Tensor) -> torch.Tensor:
        phase = age.float().unsqueeze(-1) * self.omega  # (..., F)
        return self.proj(torch.cat([phase.sin(), phase.cos()], dim=-1))  # (..., d)


def random_shift(images: torch.Tensor, pad: int) -> torch.Tensor:
    """Shift each image (N, 3, H, W) by its own random integer offset in [-pad, pad] pixels per
    axis, borders replicated (DrQ's augmentation: small-data visuomotor policies stop
    memorising pixel positions). Same shape out.
    """
    n, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")  # (N, 3, H+2p, W+2p)
    off = torch.randint(0, 2 * pad + 1, (n, 2), device=images.device)
    rows = (off[:, :1] + torch.arange(h, device=images.device))[:, :, None]  # (N, H, 1)
    cols = (off[:, 1:] + torch.arange(w, device=images.device))[:, None, :]  # (N, 1, W)
    batch = torch.arange(n, device=images.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)  # (N, 3, H, W)


class ResidualBlock(nn.Module):
    """ResNet basic block with GroupNorm instead of BatchNorm (as Diffusion Policy does: batch
    statistics break with small, temporally correlated batches and at batch size 1 when serving).
    """

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(min(8, cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(min(8, cout), cout)
        self.skip = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.GroupNorm(min(8, cout), cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(y)) + self.skip(x))


def image_stem(cfg: PolicyConfig) -> nn.Sequential:
    """(N, 3, H, W) in [-1, 1] -> (N, 4c, H/s, W/s) feature map, c = ``image_channels``, s = ``image_stride``."""
    c = cfg.image_channels
    last = 2 if cfg.image_stride == 8 else 1  # the last stage's stride
    if cfg.image_encoder == "conv":
        return nn.Sequential(
            nn.Conv2d(3, c, 5, stride=2, padding=2), nn.GroupNorm(min(8, c), c), nn.GELU(),
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.GroupNorm(min(8, 2 * c), 2 * c), nn.GELU(),
            nn.Conv2d(2 * c, 4 * c, 3, stride=last, padding=1), nn.GroupNorm(min(8, 4 * c), 4 * c), nn.GELU(),
        )
    layers: list[nn.Module] = [nn.Conv2d(3, c, 3, stride=2, padding=1, bias=False), nn.GroupNorm(min(8, c), c),
                               nn.ReLU()]
    cin = c
    for cout, stride in ((c, 1), (2 * c, 2), (4 * c, last)):  # the ResNet stages, one stride-2 fewer for small images
        for b in range(cfg.image_blocks):
            layers.append(ResidualBlock(cin, cout, stride if b == 0 else 1))
            cin = cout
    return nn.Sequential(*layers)


class SpatialSoftmax(nn.Module):
    """Learned keypoints of a feature map (Levine et al. 2016; robomimic, Diffusion Policy).

    (N, Ch, h, w) -> (N, K, 2 + Ch): per keypoint its expected image position (x, y) in
    [-1, 1] under a softmax over the map, and the features pooled with the same weights.
    """

    def __init__(self, channels: int, keypoints: int) -> None:
        super().__init__()
        self.logits = nn.Conv2d(channels, keypoints, 1)
        self.log_temperature = nn.Parameter(torch.zeros(()))  # learned sharpness of the softmax

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.log_temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        attn = (self.logits(x).flatten(2) / self.log_temperature.exp()).softmax(dim=-1)  # (N, K, h*w)
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h, device=x.device), torch.linspace(-1, 1, w, device=x.device),
                                indexing="ij")
        grid = torch.stack([xs.flatten(), ys.flatten()], dim=-1).to(attn.dtype)  # (h*w, 2)
        feats = attn @ x.flatten(2).transpose(1, 2)  # (N, K, Ch)
        return torch.cat([attn @ grid, feats], dim=-1)  # (N, K, 2 + Ch)


class ImageEncoder(nn.Module):
    """A stem shared by all cameras, read out as tokens.

    uint8 (B, C, 3, H, W) -> (B, C * n, d), any H, W >= 8, n = ``cfg.image_tokens``: a grid
    of average-pooled patches or learned keypoints (``image_pool``) of the stem's feature
    map. The stem is the conv/resnet stem, or with a vision backbone its pretrained tower's
    patch features (``backbone``: where its config is read, default ``cfg.vision_backbone``;
    a checkpoint passes its saved copy). Each token gets a camera-index embedding and a
    grid-position or keypoint embedding; the caller adds the age. In training,
    ``image_shift`` > 0 shifts every image randomly first.
    """

    def __init__(self, cfg: PolicyConfig, backbone: str | None = None) -> None:
        super().__init__()
        backbone = cfg.vision_backbone if backbone is None else backbone
        if backbone:
            self.stem: nn.Module = VisionTower(backbone, cfg.freeze_backbone)
            width = self.stem.width
        else:
            self.stem = image_stem(cfg)
            width = 4 * cfg.image_channels
        if cfg.image_pool == "avg":
            self.pool: nn.Module = nn.Sequential(nn.AdaptiveAvgPool2d(cfg.image_grid), nn.Flatten(2))
            self.proj = nn.Linear(width, cfg.d_model, bias=cfg.bias)
        else:
            self.pool = SpatialSoftmax(width, cfg.image_keypoints)
            self.proj = nn.Linear(width + 2, cfg.d_model, bias=cfg.bias)
        self.camera_emb = nn.Embedding(cfg.max_cameras, cfg.d_model)
        self.grid_emb = nn.Parameter(torch.zeros(cfg.image_tokens, cfg.d_model))
        self.max_cameras = cfg.max_cameras
        self.shift = cfg.image_shift
        self.avg = cfg.image_pool == "avg"

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.grid_emb)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b, c, _, h, w = images.shape
        if c > self.max_cameras:
            raise ValueError(f"{c} cameras exceed the model's max_cameras={self.max_cameras}")
        x = images.reshape(b * c, 3, h, w).float() / 127.5 - 1.0  # (B*C, 3, H, W) in [-1, 1]
        if self.training and self.shift:
            x = random_shift(x, self.shift)
        x = self.pool(self.stem(x))  # avg: (B*C, width, n); spatial softmax: (B*C, n, 2 + width)
        x = self.proj(x.transpose(1, 2) if self.avg else x) + self.grid_emb  # (B*C, n, d)
        x = x.reshape(b, c, -1, x.shape[-1]) + self.camera_emb.weight[:c, None, :]  # (B, C, n, d)
        return x.flatten(1, 2)  # (B, C*n, d)


class ObjectReadout(nn.Module):
    """Where the scene's objects are, read from the image tokens alone (PolicyConfig.object_weight).

    tokens (B, N, d), mask (B, N) -> positions (B, S, 3) in metres: each of S learned queries
    attends over the image tokens (one head) and a small MLP maps what it gathered to a position.
    """

    def __init__(self, cfg: PolicyConfig) -> None:
        super().__init__()
        self.query = nn.Embedding(cfg.object_slots, cfg.d_model)
        self.key = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias), nn.GELU(),
                                 nn.Linear(cfg.d_model, 3))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = torch.einsum("sd,bnd->bsn", self.query.weight, self.key(tokens)) / math.sqrt(tokens.shape[-1])
        scores = scores.float().masked_fill(~mask.bool()[:, None, :], float("-inf"))  # (B, S, N)
        gathered = scores.softmax(-1).to(tokens.dtype) @ tokens  # (B, S, d)
        return self.mlp(gathered).float()


def slot_distances(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared distances (B, S, M) in dm^2 between predicted slots (B, S, 3) and objects (B, M, 3), m."""
    return (pred[:, :, None, :] - target[:, None, :, :].float()).square().sum(-1) / 0.01


def object_set_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Chamfer loss between predicted (B, S, 3) and true object positions (B, M, 3) with mask (B, M), m.

    Returns (loss in dm^2: each object's squared distance to its nearest slot plus each slot's to
    its nearest object, over the samples with objects; 0 when none has any, mean distance in cm of
    each object to its nearest slot).
    """
    has = mask.any(1)  # (B,)
    if not bool(has.any()):
        zero = pred.sum() * 0.0  # keeps the graph: every rank runs the same backward
        return zero, zero.detach()
    d2 = slot_distances(pred, target).masked_fill(~mask.bool()[:, None, :], float("inf"))
    to_slot = d2.min(1).values  # (B, M): each object to its nearest slot
    from_slot = d2[has].min(2).values  # (B', S): each slot to its nearest object
    objects = torch.where(mask.bool(), to_slot, torch.zeros_like(to_slot))
    n = mask.sum().clamp_min(1)
    loss = objects.sum() / n + from_slot.mean()
    cm = torch.where(mask.bool(), to_slot.clamp_min(0).sqrt() * 10.0, torch.zeros_like(to_slot)).sum() / n
    return loss, cm.detach()


class JointSetEncoder(nn.Module):
    """Per-step summary of a joint-space vector: mean over valid joints of MLP(descriptor, value).

    values (B, S, D), descriptors (B, D, 12), joint_mask (B, D) -> (B, S, d).
    Used for proprioception steps and committed-prefix steps.
    """

    def __init__(self, cfg: PolicyConfig) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(cfg.joint_descriptor_dim + 1, cfg.d_model, bias=cfg.bias), nn.GELU(),
            nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias),
        )

    def forward(self, values: torch.Tensor, descriptors: torch.Tensor, joint_mask: torch.Tensor) -> torch.Tensor:
        s = values.shape[1]
        desc = descriptors.unsqueeze(1).expand(-1, s, -1, -1)  # (B, S, D, 12)
        x = self.mlp(torch.cat([desc, values.unsqueeze(-1)], dim=-1))  # (B, S, D, d)
        w = joint_mask.to(x.dtype)[:, None, :, None]  # (B, 1, D, 1)
        return (x * w).sum(2) / w.sum(2).clamp_min(1.0)  # (B, S, d)


class JointTokenEncoder(nn.Module):
    """One token per actuated joint: its descriptor, its latest position and its committed prefix.

    descriptors (B, D, 12), latest (B, D), prefix (B, P, D), committed (B, P) -> (B, D, d).
    The action head reads each joint's chunk from this token after the trunk.
    """

    def __init__(self, cfg: PolicyConfig) -> None:
        super().__init__()
        p = cfg.max_prefix_steps
        self.desc = nn.Sequential(
            nn.Linear(cfg.joint_descriptor_dim, cfg.d_model, bias=cfg.bias), nn.GELU(),
            nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias),
        )
        self.motion = nn.Linear(1 + 2 * p, cfg.d_model, bias=cfg.bias)  # latest, prefix values, prefix flags

    def forward(
        self, descriptors: torch.Tensor, latest: torch.Tensor, prefix: torch.Tensor, committed: torch.Tensor
    ) -> torch.Tensor:
        flags = committed.to(prefix.dtype).unsqueeze(-1).expand_as(prefix)  # (B, P, D)
        motion = torch.cat([latest.unsqueeze(1), prefix, flags], dim=1).transpose(1, 2)  # (B, D, 1+2P)
        return self.desc(descriptors) + self.motion(motion)  # (B, D, d)


class InstructionEncoder(nn.Module):
    """Byte tokens (B, L), mask (B, L) -> (B, L, d): token embedding plus learned position embedding.

    The mask is not read here (the trunk masks padding); it is the interface of ``TextTower``.
    """

    def __init__(self, cfg: PolicyConfig) -> None:
        super().__init__()
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = nn.Embedding(cfg.max_instruction_len, cfg.d_model)
        self.max_len = cfg.max_instruction_len

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[1]
        if n > self.max_len:
            raise ValueError(f"{n} instruction tokens exceed the model's max_instruction_len={self.max_len}")
        return self.tok(tokens) + self.pos.weight[:n]  # (B, L, d)


def masked_last(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Last valid entry along dim 1: x (B, T, ...), mask (B, T) -> (B, ...); zeros where none is valid."""
    t = torch.arange(mask.shape[1], device=mask.device)
    idx = torch.where(mask, t, -1).amax(dim=1)  # (B,)
    out = x[torch.arange(x.shape[0], device=x.device), idx.clamp_min(0)]
    return out * (idx >= 0).to(x.dtype).view(-1, *([1] * (out.dim() - 1)))

