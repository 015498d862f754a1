"""Training state for exact resume, and the throughput meter of the training loop.

A resumed run continues with the same weights, AdamW moments, LR-schedule position,
RNG states and loader position (epoch and batches consumed; the loader's sample
keys and per-sample seeds are a function of these), so its losses equal those of a
run that was never stopped (test/test_train.py checks this).
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.optim.swa_utils import AveragedModel

from gen_theta_model.checkpoint import is_sharded, load_training_state, read_raw_weights, save_checkpoint
from gen_theta_model.distributed import DistEnv, bare_model, full_state, gather_objects, load_optimizer_state
from gen_theta_model.policy.policy import Policy
from gen_theta_model.sharded_checkpoint import load_sharded, save_sharded
from gen_theta_model.train_config import TrainConfig


def rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) generator states as tensors and plain types."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(run_dir: Path, step: int, policy: Policy, cfg: TrainConfig, model: nn.Module,
         optimizer: torch.optim.Optimizer, loader: Any, metrics: dict[str, float], env: DistEnv,
         ema: AveragedModel | None = None) -> Path | None:
    """Checkpoint ``step`` (every process calls this). Returns the directory on the master.

    Under FSDP every process writes its own shards (sharded_checkpoint.py); otherwise the
    master writes the full state. With ``ema`` the checkpoint serves the averaged weights and
    keeps the optimizer's own beside them (checkpoint.RAW_MODEL).
    """
    schedule = {"kind": "warmup_cosine", "lr": cfg.optim.lr, "min_lr": cfg.optim.min_lr,
                "warmup_steps": cfg.optim.warmup_steps, "decay_steps": cfg.decay_steps}
    state = {"step": step, "scheduler": schedule, "rng": rng_state(), "rank_rng": gather_objects(rng_state(), env),
             "loader": loader.state_dict(), "world_size": env.world_size}
    if isinstance(model, FSDPModule):
        return save_sharded(run_dir, step, policy, cfg, model, optimizer, state, metrics, env)
    model_sd, state["optimizer"] = full_state(model, optimizer, env)
    raw_sd = None
    if ema is not None:
        raw_sd, model_sd = model_sd, full_state(ema.module, None, env)[0]
        state["ema_updates"] = int(ema.n_averaged)
    path = None
    if env.master:
        path = save_checkpoint(run_dir, step, policy, cfg, model_sd, state, metrics, cfg.keep_checkpoints,
                               raw_model_state=raw_sd)
    if env.enabled:
        torch.distributed.barrier()
    return path


def restore(checkpoint: Path, model: nn.Module, optimizer: torch.optim.Optimizer, loader: Any,
            cfg: TrainConfig, env: DistEnv, ema: AveragedModel | None = None) -> int:
    """Load optimizer moments (and, sharded, the weights), RNG and loader state; returns the step.

    ``model`` arrives with the checkpoint's served weights, and ``ema`` (when given) was made from
    them; a checkpoint that served an average holds the optimizer's own weights too, and the model
    continues from those, the average from its update count.

    Each process gets its own RNG state back when the world size is unchanged, else the
    master's. The LR schedule is a function of the step; betas and weight decay come from
    ``cfg``, so a resumed run follows its (possibly edited) config, and exactly the old run when unedited.
    """
    state = load_training_state(checkpoint)
    raw = read_raw_weights(checkpoint)
    if raw is not None:
        bare_model(model).load_state_dict(raw)
    if ema is not None and "ema_updates" in state:
        ema.n_averaged.fill_(int(state["ema_updates"]))
    if is_sharded(checkpoint):
        load_sharded(checkpoint, model, optimizer)
    else:
        load_optimizer_state(model, optimizer, state["optimizer"])
    for group, decay in zip(optimizer.param_groups, (cfg.optim.weight_decay, 0.0)):
        group["betas"], group["weight_decay"] = cfg.optim.betas, decay
    same_world = state["world_size"] == env.world_size and "rank_rng" in state
    set_rng_state(state["rank_rng"][env.rank] if same_world else state["rng"])
    loader.load_state_dict(state["loader"])
    return int(state["step"])


class Throughput:
    """Samples/s and experience-seconds/s since the last ``pause`` (wall time, data loading included)."""

    def __init__(self) -> None:
        self.pause()

    def pause(self) -> None:
        self.start, self.samples, self.experience = time.perf_counter(), 0, 0.0

    def update(self, samples: int, experience_s: float) -> tuple[float, float]:
        self.samples += samples
        self.experience += experience_s
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        return self.samples / elapsed, self.experience / elapsed
