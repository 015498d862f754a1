"""HarmonicTransformer: the bare nn.Module (normalised batch in, ChunkMixture out) and its loss.

Token layout (N = C*g*g + T + L + D + P), each group with a learned type embedding:

    images        (B, C*g*g, d)  conv or pretrained-tower patches + camera index + age of the frame
    proprio       (B, T, d)      per history step: joint-set summary + age
    instruction   (B, L, d)      byte tokens, or a pretrained text tower's features
    joints        (B, D, d)      per joint: descriptor + latest position + committed prefix;
                                 the action head reads these after the trunk
    prefix        (B, P, d)      per committed step: joint-set summary + committed flag + step

The batch follows gen_theta_model.batch; STATE and ACTION must already be
normalised (gen_theta_model.policy.normalize). ACTION is only read for its first
P = max_prefix_steps steps, and only where ``step < DELAY``: the committed prefix.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch
from torch import nn

from gen_theta_model import batch as K
from gen_theta_model.embodiment import GRIPPER_DESCRIPTOR
from gen_theta_model.policy.backbones import TEXT, VISION, TextTower
from gen_theta_model.policy.config import PolicyConfig
from gen_theta_model.policy.encoders import (
    AgeEmbedding,
    ImageEncoder,
    InstructionEncoder,
    JointSetEncoder,
    JointTokenEncoder,
    ObjectReadout,
    masked_last,
    object_set_loss,
)
from gen_theta_model.policy.head import ChunkMixture, MixtureHead
from gen_theta_model.policy.trunk import Block, Trunk

N_TOKEN_TYPES = 5  # images, proprio, instruction, joints, prefix
ANCHOR = "policy.anchor"  # (B, D) normalised last committed action (0 without a prefix), added by the Normalizer


def committed_prefix(
    actions: torch.Tensor, delay: torch.Tensor, action_mask: torch.Tensor, steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Build the committed prefix as model input.

    actions (B, H, D), delay (B,) int, action_mask (B, H) -> prefix (B, P, D) with
    zeros where not committed, committed (B, P) bool = step < delay and step valid.
    """
    b, h, d = actions.shape
    p = min(steps, h)
    step = torch.arange(steps, device=actions.device)
    committed = step[None, :] < delay[:, None]  # (B, P)
    committed[:, :p] &= action_mask[:, :p]
    committed[:, p:] = False
    prefix = actions.new_zeros(b, steps, d)
    prefix[:, :p] = actions[:, :p]
    return prefix * committed[..., None].to(prefix.dtype), committed


def scored_steps(delay: torch.Tensor, action_mask: torch.Tensor) -> torch.Tensor:
    """Return the steps the loss and the metrics score: (B, H) bool = valid and at or after the delay."""
    step = torch.arange(action_mask.shape[1], device=action_mask.device)
    return action_mask & (step[None, :] >= delay[:, None])


def trim_padding(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the padded joints, instruction tokens and cameras that no sample of the batch uses.

    Masked tokens do not change the result (tested), so this only saves compute: a batch of
    7- and 8-DoF arms runs 8 joint tokens instead of max_dof. Joint-indexed outputs then
    have the trimmed D; ``ChunkMixture.pad_joints`` restores the caller's D.
    """
    out = dict(batch)
    for mask_key, keys, axis in (
        (K.JOINT_MASK, (K.JOINT_DESCRIPTORS, K.JOINT_MASK), 1),
        (K.INSTRUCTION_MASK, (K.INSTRUCTION, K.INSTRUCTION_MASK), 1),
        (K.IMAGE_MASK, (K.IMAGES, K.IMAGE_AGE, K.IMAGE_MASK), 1),
    ):
        used = torch.nonzero(batch[mask_key].any(0))
        n = int(used.max()) + 1 if len(used) else 1
        for key in keys:
            out[key] = batch[key].narrow(axis, 0, n)
        if mask_key == K.JOINT_MASK:
            for key in (K.STATE, K.ACTION, K.KEYPOSE, ANCHOR):
                if key in batch:
                    out[key] = batch[key][..., :n]
    return out


class HarmonicTransformer(nn.Module):
    """The policy network. Pretrained towers (``cfg.vision_backbone``, ``cfg.text_backbone``) are built
    from their configs, read from ``backbone_dir``/{vision,text} when given (a checkpoint's saved
    copies), with random weights: ``backbones.load_pretrained_backbones`` fills them in.
    """

    def __init__(self, cfg: PolicyConfig, backbone_dir: Path | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        vision = str(backbone_dir / VISION) if backbone_dir and cfg.vision_backbone else cfg.vision_backbone
        text = str(backbone_dir / TEXT) if backbone_dir and cfg.text_backbone else cfg.text_backbone
        self.image = ImageEncoder(cfg, vision)
        self.age = AgeEmbedding(cfg)
        self.proprio = JointSetEncoder(cfg)
        self.prefix = JointSetEncoder(cfg)
        self.instruction = (TextTower(text, cfg.freeze_backbone, cfg.d_model, cfg.max_instruction_len, cfg.bias)
                            if cfg.text_backbone else InstructionEncoder(cfg))
        self.joints = JointTokenEncoder(cfg)
        self.prefix_step = nn.Embedding(cfg.max_prefix_steps, cfg.d_model)
        self.prefix_flag = nn.Embedding(2, cfg.d_model)
        self.token_type = nn.Embedding(N_TOKEN_TYPES, cfg.d_model)
        self.trunk = Trunk(cfg)
        self.head = MixtureHead(cfg)
        # Only built when trained: checkpoints without it load unchanged.
        self.keypose = nn.Linear(cfg.d_model, 1, bias=cfg.bias) if cfg.keypose_weight > 0 else None
        # Per joint token: a gain for every (component, step) on the way to the keypose (PolicyConfig.keypose_path).
        self.keypose_gain = nn.Linear(cfg.d_model, cfg.n_components * cfg.chunk_len) if cfg.keypose_path else None
        self.objects = ObjectReadout(cfg) if cfg.object_weight > 0 else None
        self.init_weights()

    def init_steps(self) -> list[tuple[nn.Module, Callable[[nn.Module], None]]]:
        """Return the GPT-2 initialisation as (module, init of all its own parameters), in drawing order.

        normal(0, 0.02) for every Linear and Embedding (biases 0); the blocks' residual
        projections again with std 0.02/sqrt(2 n_layer); the head near N(0, 1). It overwrites
        the constructors' defaults (``reset_parameters``); sharding.init_sharded replays both.
        """
        steps: list[tuple[nn.Module, Callable[[nn.Module], None]]] = [
            (m, _init_linear_or_embedding) for m in self.modules() if isinstance(m, (nn.Linear, nn.Embedding))
        ]
        residual = partial(_init_linear_or_embedding, std=0.02 / math.sqrt(2 * self.cfg.n_layer))  # bias: 0 again
        for block in (m for m in self.modules() if isinstance(m, Block)):
            steps += [(block.attn.proj, residual), (block.mlp.proj, residual)]
        steps.append((self.head.proj, partial(_init_linear_or_embedding, std=0.02 / math.sqrt(self.cfg.d_model))))
        if self.keypose_gain is not None:  # zero gains: the chunk starts as it would without the path
            steps.append((self.keypose_gain, partial(_init_linear_or_embedding, std=0.0)))
        return steps

    def init_weights(self) -> None:
        """Apply ``init_steps`` in place (on a model whose constructors' defaults are set)."""
        with torch.no_grad():
            for module, init in self.init_steps():
                init(module)

    def forward(self, batch: dict[str, torch.Tensor]) -> ChunkMixture:
        """Normalised batch -> per-joint mixture over the chunk in normalised units (B, D, K, H)."""
        desc, jmask = batch[K.JOINT_DESCRIPTORS], batch[K.JOINT_MASK]  # (B, D, 12), (B, D)
        state, smask = batch[K.STATE], batch[K.STATE_MASK]  # (B, T, D), (B, T)
        if self.training and self.cfg.state_noise:  # grippers, padded joints and missing steps stay exact
            noisy = jmask & (desc[..., GRIPPER_DESCRIPTOR] < 0.5)  # (B, D)
            noise = torch.randn_like(state, dtype=torch.float32) * self.cfg.state_noise
            state = state + (noise * noisy[:, None, :] * smask[:, :, None]).to(state.dtype)
        prefix, committed = committed_prefix(batch[K.ACTION], batch[K.DELAY], batch[K.ACTION_MASK],
                                             self.cfg.max_prefix_steps)  # (B, P, D), (B, P)
        n = self.cfg.image_tokens
        image, image_mask = self.image(batch[K.IMAGES]), batch[K.IMAGE_MASK].repeat_interleave(n, dim=1)  # (B, C*n, d)
        groups = [
            (image + self.age(batch[K.IMAGE_AGE]).repeat_interleave(n, dim=1), image_mask),
            (self.proprio(state, desc, jmask) + self.age(batch[K.STATE_AGE]), smask),  # (B, T, d)
            (self.instruction(batch[K.INSTRUCTION], batch[K.INSTRUCTION_MASK]),
             batch[K.INSTRUCTION_MASK]),  # (B, L, d)
            (self.joints(desc, masked_last(state, smask), prefix, committed), jmask),  # (B, D, d)
            (self.prefix(prefix, desc, jmask) + self.prefix_step.weight + self.prefix_flag(committed.long()),
             torch.ones_like(committed)),  # (B, P, d): present (flagged) even when not committed
        ]
        tokens = torch.cat([x + self.token_type.weight[i] for i, (x, _) in enumerate(groups)], dim=1)  # (B, N, d)
        mask = torch.cat([m.bool() for _, m in groups], dim=1)  # (B, N)
        x = self.trunk(tokens, mask)
        start = sum(x.shape[1] for x, _ in groups[:3])
        joint_x = x[:, start : start + desc.shape[1]]  # (B, D, d)
        dist = self.head(joint_x, jmask)  # joint tokens -> (B, D, K, H)
        if self.cfg.residual:
            anchor = batch[ANCHOR].float()[:, :, None, None]  # (B, D, 1, 1)
            dist = replace(dist, mean=dist.mean + anchor)
        if self.keypose is not None:
            keypose = self.keypose(joint_x).squeeze(-1).float()  # (B, D)
            if self.keypose_gain is not None:
                # Stopped gradient: the keypose stays the estimate its own loss trains; the chunk only reads it.
                # The chunk's own mean moves that share of the way to it: gain 1 is exactly the keypose.
                toward = keypose.detach()[:, :, None, None] - dist.mean  # (B, D, K, H)
                gain = self.keypose_gain(joint_x).float().view_as(toward)
                dist = replace(dist, mean=dist.mean + gain * toward)
            dist = replace(dist, keypose=keypose)
        if self.objects is not None:
            dist = replace(dist, objects=self.objects(image, image_mask))
        return dist


def _init_linear_or_embedding(module: nn.Module, std: float = 0.02) -> None:
    nn.init.normal_(module.weight, mean=0.0, std=std)
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)


def chunk_loss(
    dist: ChunkMixture, batch: dict[str, torch.Tensor], mse_weight: float = 0.0, keypose_weight: float = 0.0,
    object_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """NLL per scored scalar (+ ``mse_weight`` * MSE of the mixture mean, + ``keypose_weight`` * MSE of
    the predicted KEYPOSE when the model predicts it, + ``object_weight`` * the object set loss of
    ``object_set_loss`` when it places objects and the batch has OBJECTS), normalised units.

    Only steps >= DELAY inside the episode (ACTION_MASK) of present joints (JOINT_MASK)
    count: the committed prefix and the padding never contribute.
    """
    target = batch[K.ACTION]  # (B, H, D)
    steps = scored_steps(batch[K.DELAY], batch[K.ACTION_MASK])  # (B, H)
    jmask = batch[K.JOINT_MASK]  # (B, D)
    weight = steps.float()[:, :, None] * jmask.float()[:, None, :]  # (B, H, D)
    n = weight.sum().clamp_min(1.0)
    nll = -dist.log_prob(target, steps, jmask).sum() / n
    mse = ((dist.expectation() - target.float()).square() * weight).sum() / n
    loss = nll + mse_weight * mse if mse_weight > 0 else nll
    stats = {"nll": nll.detach(), "mse": mse.detach()}
    if dist.keypose is not None and keypose_weight > 0:
        keypose = ((dist.keypose - batch[K.KEYPOSE].float()).square() * jmask).sum() / jmask.sum().clamp_min(1.0)
        loss = loss + keypose_weight * keypose
        stats["keypose_mse"] = keypose.detach()
    if dist.objects is not None and object_weight > 0 and K.OBJECTS in batch:
        objects, stats["object_cm"] = object_set_loss(dist.objects, batch[K.OBJECTS], batch[K.OBJECTS_MASK])
        loss = loss + object_weight * objects
    return loss, stats
