"""`gen-theta pretrain-vision CONFIG.yaml --layouts FILE... --out DIR`: teach the image encoder where objects are.

Before the policy learns from demonstrations, its image encoder and object readout
(PolicyConfig.object_weight) learn to place the scene's objects on rendered layouts
(gen_theta_model/sim/layouts.py: thousands of scenes, the arm anywhere), the way Levine et al.
(2016) pretrained their spatial-softmax encoder on object positions. The policy is built exactly
as ``gen-theta train CONFIG.yaml`` builds it (the same preset, overrides and normalisation of
the config's datasets), only the image encoder and the readout train, and the result is written
as a checkpoint that the policy training starts from::

    gen-theta pretrain-vision CONFIG.yaml --layouts runs/layouts.safetensors --out runs/vision
    gen-theta train CONFIG.yaml --init-from runs/vision/checkpoint

DIR gets train_log.jsonl and tensorboard/ and checkpoint/. The log's placement errors (cm, each
object to the readout's nearest slot): ``pretrain/object_cm`` on training batches;
``val/layouts_object_cm`` and ``val/layouts/<task>_object_cm`` on held-out layouts;
``val/object_cm`` on the held-out demonstration frames of the config's datasets where they have
object poses, and split into ``val/object_cm_table`` (objects on the table) and
``val/object_cm_raised`` (lifted, carried or stacked: layouts never show those).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from gen_theta_model import batch as K
from gen_theta_model.checkpoint import CheckpointError, export_checkpoint
from gen_theta_model.config import ConfigError
from gen_theta_model.data.dataset import augment_image
from gen_theta_model.data.loader import make_dataloaders
from gen_theta_model.policy.encoders import object_set_loss, slot_distances
from gen_theta_model.policy.model import HarmonicTransformer
from gen_theta_model.policy.policy import build_policy
from gen_theta_model.sim.layouts import load_layouts
from gen_theta_model.sim.tasks import TASKS
from gen_theta_model.train import RunLog, warmup_cosine
from gen_theta_model.train_config import TrainConfig, load_train_config, policy_config

TASK_NAMES = tuple(TASKS)  # a layout's `task` indexes this
RAISED_M = 0.05  # an object's centre this far above the table: lifted, carried or stacked (a cube rests at 0.02)


@dataclass(frozen=True)
class VisionPretrainConfig:
    steps: int = 4000  # optimizer steps
    batch_size: int = 64  # frames per step
    lr: float = 1e-3  # peak; linear warmup over 100 steps, cosine to min_lr
    min_lr: float = 1e-4
    weight_decay: float = 0.05
    val_fraction: float = 0.1  # share of the layouts (whole scenes) held out
    eval_interval: int = 250
    eval_batches: int = 8  # batches of held-out demonstration frames per validation
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.eval_interval < 1 or self.eval_batches < 0:
            raise ValueError(f"need steps, batch_size, eval_interval >= 1 and eval_batches >= 0, got {self}")
        if not 0.0 < self.val_fraction < 1.0 or not 0.0 <= self.min_lr <= self.lr:
            raise ValueError(f"need 0 < val_fraction < 1 and 0 <= min_lr <= lr, got {self}")


def split_layouts(layout: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame indices (train, held out), whole layouts held out: (n_train,), (n_val,) int64."""
    ids = np.unique(layout)
    rng = np.random.default_rng(seed)
    held = rng.choice(ids, max(1, round(len(ids) * val_fraction)), replace=False)
    val = np.isin(layout, held)
    return np.flatnonzero(~val), np.flatnonzero(val)


def readout_slots(model: HarmonicTransformer, images: torch.Tensor, image_mask: torch.Tensor) -> torch.Tensor:
    """Where the readout places the objects (B, S, 3), m, from uint8 images (B, C, 3, H, W) and their mask (B, C)."""
    tokens = model.image(images)  # (B, C*n, d)
    return model.objects(tokens, image_mask.repeat_interleave(model.cfg.image_tokens, dim=1))


def readout_loss(model: HarmonicTransformer, images: torch.Tensor, image_mask: torch.Tensor, objects: torch.Tensor,
                 objects_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the readout's object set loss (dm^2) and mean placement error (cm) on uint8 images (B, C, 3, H, W)."""
    return object_set_loss(readout_slots(model, images, image_mask), objects, objects_mask)


def _frames(arrays: dict[str, np.ndarray], idx: np.ndarray, rng: np.random.Generator | None) -> list[torch.Tensor]:
    images = arrays["images"][idx]
    if rng is not None:  # the loader's photometric jitter, per frame
        images = images.copy()
        for i, j in np.ndindex(*images.shape[:2]):
            images[i, j] = augment_image(images[i, j].transpose(1, 2, 0), rng).transpose(2, 0, 1)
    return [torch.from_numpy(images), torch.from_numpy(arrays["image_mask"][idx]),
            torch.from_numpy(arrays["objects"][idx]), torch.from_numpy(arrays["objects_mask"][idx])]


def pretrain_vision(train_cfg: TrainConfig, layout_files: list[str], out_dir: str | Path,
                    cfg: VisionPretrainConfig) -> Path:
    """Pretrain the policy's image encoder and object readout on the layouts; returns the checkpoint directory."""
    pc = policy_config(train_cfg)
    if pc.object_weight <= 0:
        raise ConfigError("pretrain-vision trains the object readout: set policy.object_weight > 0 in the config "
                          "(the policy training then keeps the readout's loss at that weight)")
    out = Path(out_dir)
    if (out / "checkpoint").exists():
        raise CheckpointError(f"{out / 'checkpoint'} exists; name a new --out directory")
    parts = [load_layouts(f) for f in layout_files]
    arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k != "layout"}
    offsets = np.cumsum([0] + [int(p["layout"].max()) + 1 for p in parts[:-1]])
    arrays["layout"] = np.concatenate([p["layout"] + o for p, o in zip(parts, offsets)])
    obs = train_cfg.data.observation
    cams, size = arrays["images"].shape[1], arrays["images"].shape[-1]
    if cams > obs.max_cameras or size != obs.image_size:
        raise ValueError(f"layout frames of {cams} cameras at {size} px do not fit the config's observation "
                         f"({obs.max_cameras} cameras, {obs.image_size} px): render them at its size")
    used = int(np.flatnonzero(arrays["image_mask"].any(0)).max()) + 1  # padded camera slots cost compute only
    arrays["images"], arrays["image_mask"] = arrays["images"][:, :used], arrays["image_mask"][:, :used]
    train_idx, val_idx = split_layouts(arrays["layout"], cfg.val_fraction, cfg.seed)

    torch.manual_seed(train_cfg.seed)  # the policy's own initialisation: its other weights as train would draw
    _, val_loader, info = make_dataloaders(list(train_cfg.dataset), train_cfg.data)
    policy = build_policy(pc, [info.specs[n] for n in info.embodiment_names], info.norm_stats, obs,
                          torch.device("cpu"))
    model = policy.model
    params = [*model.image.parameters(), *model.objects.parameters()]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    log = RunLog(out, True)
    log.info(f"{len(train_idx)} layout frames for training, {len(val_idx)} held out "
             f"({len(np.unique(arrays['layout']))} layouts); {sum(p.numel() for p in params):,} parameters train")
    rng = np.random.default_rng(cfg.seed)
    metrics: dict[str, float] = {}
    for step in tqdm(range(cfg.steps), disable=not sys.stderr.isatty(), dynamic_ncols=True):
        model.train()
        loss, cm = readout_loss(model, *_frames(arrays, rng.choice(train_idx, cfg.batch_size), rng))
        for group in optimizer.param_groups:
            group["lr"] = warmup_cosine(step, cfg.lr, cfg.min_lr, min(100, cfg.steps // 10), cfg.steps)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if (step + 1) % 10 == 0:
            log.scalars(step + 1, {"pretrain/loss": loss.item(), "pretrain/object_cm": cm.item()})
        if (step + 1) % cfg.eval_interval == 0 or step + 1 == cfg.steps:
            metrics = validate_readout(model, arrays, val_idx, val_loader, cfg)
            log.scalars(step + 1, metrics)
            log.info(f"step {step + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()))
    return export_checkpoint(out / "checkpoint", 0, policy, train_cfg, metrics)


def placement_cm(model: HarmonicTransformer, images: torch.Tensor, image_mask: torch.Tensor,
                 objects: torch.Tensor) -> torch.Tensor:
    """Each object's distance (B, M) in cm to the readout's nearest slot, from uint8 images (B, C, 3, H, W)."""
    return slot_distances(readout_slots(model, images, image_mask), objects).min(1).values.sqrt() * 10.0


def _means(groups: dict[str, list[torch.Tensor]]) -> dict[str, float]:
    """Return the mean of each group's errors, for the groups that have any."""
    joined = {k: torch.cat(v) for k, v in groups.items() if v}
    return {k: float(v.mean()) for k, v in joined.items() if len(v)}


@torch.no_grad()
def validate_readout(model: HarmonicTransformer, arrays: dict[str, np.ndarray], val_idx: np.ndarray,
                     val_loader, cfg: VisionPretrainConfig) -> dict[str, float]:
    """Mean placement error (cm) per object: on the held-out layouts (all, and per task) and on
    held-out demonstration frames with poses (all; within ``RAISED_M`` of the table; above it:
    lifted, carried or stacked).
    """
    model.eval()
    per_task: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(val_idx), 256):
        idx = val_idx[start:start + 256]
        images, image_mask, objects, mask = _frames(arrays, idx, None)
        cm = placement_cm(model, images, image_mask, objects)
        for i, task in enumerate(arrays["task"][idx]):
            per_task.setdefault(TASK_NAMES[task], []).append(cm[i][mask[i]])
    groups = {"val/layouts_object_cm": [e for v in per_task.values() for e in v],
              **{f"val/layouts/{t}_object_cm": v for t, v in sorted(per_task.items())}}
    table: list[torch.Tensor] = []
    raised: list[torch.Tensor] = []
    for i, b in enumerate(val_loader):
        if i >= cfg.eval_batches:
            break
        cm = placement_cm(model, b[K.IMAGES], b[K.IMAGE_MASK], b[K.OBJECTS])
        up = b[K.OBJECTS][..., 2] > RAISED_M
        table.append(cm[b[K.OBJECTS_MASK] & ~up])
        raised.append(cm[b[K.OBJECTS_MASK] & up])
    groups.update({"val/object_cm": table + raised, "val/object_cm_table": table, "val/object_cm_raised": raised})
    return _means(groups)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gen-theta pretrain-vision", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="the training YAML the policy will be trained with")
    parser.add_argument("--layouts", nargs="+", required=True, help="layout files (gen-theta layouts)")
    parser.add_argument("--out", required=True, help="directory for the log and checkpoint/")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    defaults = VisionPretrainConfig()
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--seed", type=int, default=defaults.seed, help="the held-out layouts and the batches")
    a = parser.parse_args(argv)
    try:
        train_cfg = load_train_config(a.config, a.set)
        cfg = VisionPretrainConfig(steps=a.steps, batch_size=a.batch_size, lr=a.lr,
                                   min_lr=min(defaults.min_lr, a.lr), seed=a.seed)
        path = pretrain_vision(train_cfg, a.layouts, a.out, cfg)
    except (ConfigError, CheckpointError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"checkpoint {path}: gen-theta train {a.config} --init-from {path}")
    return 0
