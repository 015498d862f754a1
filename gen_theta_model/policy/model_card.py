"""`gen-theta model-card PRESET|all [--gpus N] [--micro-batch B]`: size, memory and compute of a preset.

The model is built on the meta device (no memory, no weights), so even the 10B
preset is described in seconds on a laptop. Printed per preset:

* parameters, exact, and the ratio to the preset's nominal size;
* training FLOPs per sample: the forward pass counted by torch's FlopCounterMode on
  one sample of the reference input, times 3 (backward ~ 2x forward), except for frozen
  pretrained towers (``freeze_backbone``), which run forward only;
* memory per GPU under FSDP full sharding over ``--gpus`` GPUs with bf16 mixed
  precision. Assumptions: fp32 master weights, fp32 gradients and two fp32 AdamW
  moments, all sharded (16 bytes/param / gpus; a frozen tower's 4 bytes/param of
  weights only, and it keeps no activations for backward); two transformer blocks' bf16
  weights gathered at a time (the running and the prefetched one); activations of
  ``--micro-batch`` samples in bf16 with activation checkpointing per block (the
  block inputs of every layer plus one block's internals, 34*N*d + 5*h*N^2 bytes per
  sample, Korthikanti et al. 2022), or for all layers with ``--no-checkpointing``.
  CUDA context, allocator fragmentation and the data loader are not included
  (budget ~2-4 GiB more).

Reference input: 3 cameras of 96x96, 4 proprioception steps, max_instruction_len
instruction tokens, max_dof joint tokens and max_prefix_steps prefix tokens.

Presets on pretrained backbones are built from the backbone's config (shipped for the
preset backbones, config/backbones/), so no weights are read and nothing is downloaded.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from gen_theta_model import batch as K
from gen_theta_model.embodiment import load_robot
from gen_theta_model.policy.backbones import Tower
from gen_theta_model.policy.config import PRESET_NAMES, PolicyConfig, nominal_params, preset
from gen_theta_model.policy.example import example_batch
from gen_theta_model.policy.model import ANCHOR, HarmonicTransformer

GIB = 1024**3
REFERENCE_CAMERAS = 3
REFERENCE_HISTORY = 4


@dataclass(frozen=True)
class ModelCard:
    preset: str
    params: int
    frozen_params: int  # pretrained towers with freeze_backbone: no gradients, no optimizer state
    nominal: int
    trunk_params: int
    tokens: int
    train_flops_per_sample: float
    state_gib_per_gpu: float  # sharded weights, gradients, optimizer
    gathered_gib: float  # bf16 blocks gathered for compute
    activation_gib: float
    gpus: int
    micro_batch: int

    @property
    def total_gib_per_gpu(self) -> float:
        return self.state_gib_per_gpu + self.gathered_gib + self.activation_gib


def count_params(cfg: PolicyConfig, frozen: bool = False) -> tuple[int, int]:
    """(all parameters, trunk parameters) of a model built on the meta device; only the frozen ones with ``frozen``."""
    with torch.device("meta"):
        model = HarmonicTransformer(cfg)

    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters() if not (frozen and p.requires_grad))

    return count(model), count(model.trunk)


def reference_tokens(cfg: PolicyConfig) -> int:
    """Tokens per sample of the reference input."""
    return (REFERENCE_CAMERAS * cfg.image_tokens + REFERENCE_HISTORY + cfg.max_instruction_len
            + cfg.max_dof + cfg.max_prefix_steps)


def forward_flops(cfg: PolicyConfig) -> tuple[int, int]:
    """(FLOPs of one forward pass on one reference sample, those of its frozen towers); meta device,
    nothing computed. Byte tokens stand in for a text tower's (only the shapes count).
    """
    specs = [load_robot("humanoid16")]
    batch = example_batch(specs, dataclasses.replace(cfg, text_backbone=""), 1, cameras=REFERENCE_CAMERAS,
                          history=REFERENCE_HISTORY)
    with torch.device("meta"):
        model = HarmonicTransformer(cfg)
    meta = {k: v.to("meta") for k, v in batch.items()}
    meta[ANCHOR] = torch.zeros(meta[K.JOINT_MASK].shape, device="meta")  # added by the Normalizer in a Policy
    with FlopCounterMode(display=False) as counter:
        model(meta)
    frozen = [f"{type(model).__name__}.{path}.model" for path, tower in model.named_modules()
              if isinstance(tower, Tower) and tower.frozen]
    counts = counter.get_flop_counts()
    return counter.get_total_flops(), sum(sum(counts[path].values()) for path in frozen)


def model_card(name: str, gpus: int = 8, micro_batch: int = 8, checkpointing: bool = True) -> ModelCard:
    cfg = preset(name)
    params, trunk = count_params(cfg)
    frozen = count_params(cfg, frozen=True)[0]
    flops, frozen_flops = forward_flops(cfg)
    n, d, layers = reference_tokens(cfg), cfg.d_model, cfg.n_layer
    block_params = trunk / layers
    per_layer_act = 34 * n * d + 5 * cfg.n_head * n * n  # bytes per sample, bf16 (Korthikanti et al.)
    if checkpointing:
        act = micro_batch * (layers * 2 * n * d + per_layer_act)
    else:
        act = micro_batch * layers * per_layer_act
    return ModelCard(
        preset=name, params=params, frozen_params=frozen, nominal=nominal_params(name), trunk_params=trunk,
        tokens=n, train_flops_per_sample=3.0 * flops - 2.0 * frozen_flops,
        state_gib_per_gpu=(16 * (params - frozen) + 4 * frozen) / gpus / GIB, gathered_gib=2 * 2 * block_params / GIB,
        activation_gib=act / GIB, gpus=gpus, micro_batch=micro_batch,
    )


def format_table(cards: list[ModelCard]) -> str:
    head = (f"{'preset':<9} {'params':>14} {'frozen':>12} {'/nominal':>8} {'tokens':>6} {'train GFLOP/sample':>18} "
            f"{'state GiB':>9} {'gathered':>8} {'activ.':>8} {'GiB/GPU':>8}")
    rows = [head, "-" * len(head)]
    for c in cards:
        rows.append(
            f"{c.preset:<9} {c.params:>14,} {c.frozen_params:>12,} {c.params / c.nominal:>8.3f} {c.tokens:>6} "
            f"{c.train_flops_per_sample / 1e9:>18,.1f} {c.state_gib_per_gpu:>9.2f} {c.gathered_gib:>8.2f} "
            f"{c.activation_gib:>8.2f} {c.total_gib_per_gpu:>8.2f}"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gen-theta model-card", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("preset", choices=[*PRESET_NAMES, "all"], help="policy preset, or all of them")
    parser.add_argument("--gpus", type=int, default=8, help="GPUs the FSDP run shards over (default 8)")
    parser.add_argument("--micro-batch", type=int, default=8, help="samples per GPU per step (default 8)")
    parser.add_argument("--no-checkpointing", action="store_true", help="no activation checkpointing")
    args = parser.parse_args(argv)
    if args.gpus < 1 or args.micro_batch < 1:
        parser.error("--gpus and --micro-batch must be >= 1")
    names = PRESET_NAMES if args.preset == "all" else (args.preset,)
    cards = [model_card(n, args.gpus, args.micro_batch, not args.no_checkpointing) for n in names]
    print(f"FSDP full shard over {args.gpus} GPU(s), bf16 mixed precision, micro-batch {args.micro_batch}, "
          f"activation checkpointing {'off' if args.no_checkpointing else 'per block'}")
    print(format_table(cards))
    return 0


if __name__ == "__main__":
    sys.exit(main())
