"""FSDP2 sharding and meta-device initialisation: no rank ever holds the whole model.

The large presets are built on the meta device (shapes only, no memory), sharded with
``fully_shard`` (one unit per transformer block, then the root), then materialised with
``to_empty`` (each rank allocates its own shards: 1/world of the parameters) and
initialised in place by ``init_sharded``. That replays what ``HarmonicTransformer(cfg)``
does on one CPU, module by module: the constructors' defaults (``reset_parameters``
in construction order), then the model's ``init_steps``. Each module's parameters are
drawn full size on every rank from the same seed and each rank keeps its own slice,
so the sharded model equals the one built whole (bit for bit on CPU; test/test_sharding.py)
while at most one module's full parameters exist at a time. Pretrained towers are then
overwritten with their pretrained weights the same way (the modules built after a tower
draw their initial values from another point of the random stream than a whole build).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor

from gen_theta_model.policy.backbones import towers
from gen_theta_model.policy.model import HarmonicTransformer
from gen_theta_model.policy.policy import Policy
from gen_theta_model.policy.trunk import Block


def shard(model: nn.Module, bf16: bool) -> nn.Module:
    """Shard ``model`` in place with FSDP2: each ``Block`` one unit, then the root (the encoders and head).

    With ``bf16`` the gathered weights and the compute are bf16 while the sharded master
    weights, the gradient reduction and AdamW stay fp32.
    """
    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16
          else MixedPrecisionPolicy())
    for block in [m for m in model.modules() if isinstance(m, Block)]:
        fully_shard(block, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


def materialise(policy: Policy, device: torch.device, pretrained: bool) -> None:
    """Allocate this rank's shards of a meta-built, sharded policy on ``device`` and initialise them.

    ``pretrained``: copy the pretrained towers' weights in (a fresh run; a resumed one reads all
    its weights from its checkpoint afterwards, and its towers name only their saved configs).
    """
    policy.model.to_empty(device=device)
    init_sharded(policy.model)
    restore_towers(policy.model, pretrained)
    policy.normalizer.to(device)


@torch.no_grad()
def init_sharded(model: HarmonicTransformer) -> None:
    """Initialise a materialised (``to_empty``) model, sharded or not, as its constructor would have.

    Every rank must hold the same RNG state (``torch.manual_seed(seed)`` on all ranks).
    """
    for module in model.modules():  # pre-order = construction order: the constructors' defaults
        if hasattr(module, "reset_parameters"):
            with full_size(module):
                module.reset_parameters()
    for module, init in model.init_steps():
        with full_size(module):
            init(module)


@torch.no_grad()
def restore_towers(model: HarmonicTransformer, pretrained: bool) -> None:
    """Fill ``model``'s towers after ``init_sharded``: with ``pretrained`` their pretrained weights,
    module by module (each rank keeps its slice); always their buffers, which ``to_empty`` left
    uninitialised and no checkpoint holds (SigLIP's position ids are non-persistent). One tower's
    full weights exist on the CPU at a time.
    """
    for tower in towers(model).values():
        source = tower.pretrained_module() if pretrained else type(tower.model)._from_config(tower.model.config)
        if pretrained:
            for prefix, module in tower.model.named_modules():
                with full_size(module):
                    for name, p in module.named_parameters(recurse=False):
                        p.copy_(source.get_parameter(f"{prefix}.{name}" if prefix else name))
        for name, buffer in tower.model.named_buffers():
            buffer.copy_(source.get_buffer(name))


@contextmanager
def full_size(module: nn.Module) -> Iterator[None]:
    """Swap ``module``'s own sharded parameters for full-size tensors, then keep this rank's slice of them.

    The full tensors start uninitialised: the init run inside must set every parameter of
    the module (``reset_parameters`` and ``HarmonicTransformer.init_steps`` do), so nothing is gathered.
    """
    sharded = {name: p for name, p in module.named_parameters(recurse=False) if isinstance(p, DTensor)}
    for name, p in sharded.items():
        module._parameters[name] = nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device=p.to_local().device),
                                                requires_grad=p.requires_grad)
    try:
        yield
    finally:
        for name, p in sharded.items():
            full = module._parameters[name].detach()
            # src_data_rank=None: every rank holds the same full tensor and slices it, no communication
            p.to_local().copy_(distribute_tensor(full, p.device_mesh, p.placements, src_data_rank=None).to_local())
            module._parameters[name] = p
