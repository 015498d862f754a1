"""Distributed training, decided once from the environment (torchrun), as in nanoGPT.

Under torchrun (RANK, WORLD_SIZE, LOCAL_RANK set) a process group is created: nccl
on GPUs, gloo on CPUs. ``wrap_model`` then applies DDP, or FSDP (FSDP2
``fully_shard``, one unit per transformer block, then the root; gen_theta_model/sharding.py,
which also builds such models on the meta device) for the large presets. Without
torchrun everything runs in one process, unwrapped.
"""

from __future__ import annotations

import os
import socket
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

FSDP_AUTO_PARAMS = 500_000_000  # "auto" shards models this large; smaller ones replicate (DDP is faster)


@dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def master(self) -> bool:
        """The process that logs, validates on the full set, and writes checkpoints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto") -> DistEnv:
    """Read the torchrun environment, start the process group and pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo",
                                device_id=dev if dev.type == "cuda" else None)
    return DistEnv(rank, local, world, dev)


def free_local_port() -> int:
    """Return a TCP port free on 127.0.0.1 now: a single-machine rendezvous (or a local test server)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def teardown(env: DistEnv) -> None:
    if env.enabled and dist.is_initialized():
        dist.destroy_process_group()


def use_bf16(precision: str, device: torch.device) -> bool:
    """bf16 autocast: on request, or ("auto") on GPUs that support it; CPUs train in fp32."""
    if precision == "bf16":
        return True
    return precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()


def autocast(enabled: bool, device: torch.device) -> AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else nullcontext()


def choose_strategy(strategy: str, n_params: int, env: DistEnv) -> str:
    """'none' for one process; 'fsdp' or 'ddp' as configured ('auto': FSDP at >= 500M parameters)."""
    if not env.enabled:
        return "none"
    if strategy == "auto":
        return "fsdp" if n_params >= FSDP_AUTO_PARAMS else "ddp"
    return strategy


def wrap_model(model: nn.Module, strategy: str, env: DistEnv, bf16: bool, checkpointing: bool) -> nn.Module:
    """Return the module the training step calls: ``model`` itself, a DDP wrapper, or the model sharded in place."""
    if checkpointing:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

        from gen_theta_model.policy.trunk import Block

        apply_activation_checkpointing(model, check_fn=lambda m: isinstance(m, Block))
    if strategy == "none":
        return model
    if strategy == "ddp":
        ids = [env.device.index] if env.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if strategy != "fsdp":
        raise ValueError(f"unknown distributed strategy {strategy!r}")
    from gen_theta_model.sharding import shard

    return shard(model, bf16)


def no_sync(wrapped: nn.Module, last_micro_step: bool) -> AbstractContextManager:
    """Skip the gradient all-reduce on all but the last micro-step of an accumulation (DDP)."""
    if isinstance(wrapped, nn.parallel.DistributedDataParallel) and not last_micro_step:
        return wrapped.no_sync()
    return nullcontext()


def mean_across(value: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Average a scalar tensor over all processes (identity for one process)."""
    if not env.enabled:
        return value
    out = value.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / env.world_size


def sum_across(values: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum a tensor over all processes (identity for one process)."""
    if not env.enabled:
        return values
    out = values.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def agree(flag: bool, env: DistEnv) -> bool:
    """Return True on every process when ``flag`` is True on any (e.g. the master's clock says stop)."""
    if not env.enabled:
        return flag
    t = torch.tensor([int(flag)], dtype=torch.int64, device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t)


def min_across(value: int, env: DistEnv) -> int:
    """Return the smallest ``value`` over all processes."""
    if not env.enabled:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=env.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t)


def gather_objects(obj: Any, env: DistEnv) -> list[Any]:
    """``obj`` of every process, in rank order (on every process)."""
    if not env.enabled:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer | None, env: DistEnv
               ) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Unsharded model and optimizer state dicts on CPU, keyed by parameter name.

    Names are those of the bare model (no DDP / checkpoint-wrapper prefixes), so a run
    resumes under another world size or strategy. Under FSDP every process must call
    this (the shards are gathered collectively); the result is complete on the master.
    """
    options = StateDictOptions(full_state_dict=True, cpu_offload=env.enabled)
    bare = bare_model(model)
    model_sd = {k: v.detach().cpu() for k, v in get_model_state_dict(bare, options=options).items()}
    optim_sd = get_optimizer_state_dict(bare, optimizer, options=options) if optimizer is not None else None
    return model_sd, optim_sd


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, optim_sd: dict) -> None:
    """Load a full optimizer state dict (as saved by ``full_state``) for a possibly wrapped or sharded model."""
    set_optimizer_state_dict(bare_model(model), optimizer, optim_sd, options=StateDictOptions(full_state_dict=True))


def bare_model(model: nn.Module) -> nn.Module:
    """Return the module without its DDP wrapper (FSDP2 and activation checkpointing wrap in place)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
