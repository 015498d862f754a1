"""Sharded checkpoints of FSDP runs with torch.distributed.checkpoint (DCP), and their consolidation.

An FSDP run saves model and AdamW state as a DCP directory (``step_N/sharded/``): every
rank writes the shards it holds and reads back the ones it needs, so no rank gathers the
full state (a 10B run would need ~120 GB on the master for weights and moments). The
rest of the checkpoint (config, statistics, embodiments, RNG and loader state) is written
by the master as for an unsharded run (gen_theta_model/checkpoint.py). DCP reshards on
load, so a run resumes under another number of processes or another strategy (FSDP on 2
processes -> one process, tested).

`gen-theta checkpoint consolidate RUN_OR_CHECKPOINT --out DIR` writes the serving format
(one ``model.safetensors``) that ``load_policy``, ``gen-theta evaluate`` and the policy
server read fastest; ``load_policy`` also reads a sharded checkpoint directly.
`gen-theta checkpoint average CKPT CKPT... --out DIR` writes the mean of the weights of
several checkpoints of one run in the same format (see ``average``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from gen_theta_model.checkpoint import (
    SHARDED,
    CheckpointError,
    export_checkpoint,
    load_policy,
    load_sharded_state,
    read_checkpoint_config,
    resolve_checkpoint,
    save_checkpoint,
    stage_checkpoint,
    staging_dir,
)
from gen_theta_model.data.stats import ARRAY_FIELDS
from gen_theta_model.distributed import DistEnv, bare_model
from gen_theta_model.policy.policy import Policy
from gen_theta_model.train_config import TrainConfig


def save_sharded(run_dir: Path, step: int, policy: Policy, cfg: TrainConfig, model: nn.Module,
                 optimizer: torch.optim.Optimizer, training_state: dict[str, Any], metrics: dict[str, float],
                 env: DistEnv) -> Path | None:
    """Checkpoint ``step``: every process writes its shards, the master the rest; the directory on the master."""
    if env.master:
        (stage_checkpoint(run_dir, step) / SHARDED).mkdir()
    _barrier(env)
    model_sd, optim_sd = get_state_dict(bare_model(model), optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=staging_dir(run_dir, step) / SHARDED)
    path = None
    if env.master:
        path = save_checkpoint(run_dir, step, policy, cfg, None, training_state, metrics, cfg.keep_checkpoints)
    _barrier(env)
    return path


def load_sharded(checkpoint: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load model and optimizer state of a sharded checkpoint into ``model`` (sharded or not) and ``optimizer``.

    Every process reads the parts of the shards it holds; collective when a process group exists.
    """
    bare = bare_model(model)
    model_sd, optim_sd = get_state_dict(bare, optimizer)  # a fresh optimizer's moments are allocated here
    load_sharded_state({"model": model_sd, "optim": optim_sd}, resolve_checkpoint(checkpoint))
    set_state_dict(bare, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd)


def consolidate(source: str | Path, out: str | Path) -> Path:
    """Write checkpoint ``source`` (sharded or not; a run directory: its latest) as the serving checkpoint ``out``."""
    ckpt = resolve_checkpoint(source)
    train_cfg, _, doc = read_checkpoint_config(ckpt)
    return export_checkpoint(out, int(doc["step"]), load_policy(ckpt), train_cfg, doc.get("metrics"))


def average(sources: Sequence[str | Path], out: str | Path) -> Path:
    """Write the mean of the weights of checkpoints ``sources`` as the serving checkpoint ``out``.

    The sources must share architecture, embodiments and normalisation statistics (the
    checkpoints of one run); config and step are the last one's, validation metrics are left
    out (they measured the sources, not their mean). Polyak averaging over checkpoints (as in
    SWA) smooths the step-to-step noise of the weights; whether that helps in closed loop is
    measured per run (docs/training.md).
    """
    ckpts = [resolve_checkpoint(s) for s in sources]
    if len(ckpts) < 2:
        raise CheckpointError(f"average needs at least 2 checkpoints, got {len(ckpts)}")
    policies = [load_policy(c) for c in ckpts]
    last = policies[-1]
    for ckpt, policy in zip(ckpts[:-1], policies[:-1], strict=True):
        if policy.config != last.config:
            raise CheckpointError(f"{ckpt}: another architecture than {ckpts[-1]}")
        if policy.normalizer.names != last.normalizer.names or any(
                not np.array_equal(getattr(policy.normalizer.stats[n], k), getattr(last.normalizer.stats[n], k))
                for n in last.normalizer.names for k in ARRAY_FIELDS):
            raise CheckpointError(f"{ckpt}: other embodiments or statistics than {ckpts[-1]} (not one run)")
    states = [p.model.state_dict() for p in policies]
    mean = {k: torch.stack([s[k] for s in states]).mean(0) if v.is_floating_point() else v
            for k, v in states[-1].items()}
    last.model.load_state_dict(mean)
    train_cfg, _, doc = read_checkpoint_config(ckpts[-1])
    return export_checkpoint(out, int(doc["step"]), last, train_cfg)


def _barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gen-theta checkpoint", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parser.add_subparsers(dest="verb", required=True)
    cons = verbs.add_parser("consolidate", help="write a (sharded) checkpoint as one model.safetensors")
    cons.add_argument("checkpoint", help="checkpoint directory, or a run directory (its latest checkpoint)")
    cons.add_argument("--out", required=True, help="new directory for the serving checkpoint")
    avg = verbs.add_parser("average", help="write the mean of the weights of checkpoints of one run")
    avg.add_argument("checkpoints", nargs="+", help="checkpoint directories (at least 2)")
    avg.add_argument("--out", required=True, help="new directory for the serving checkpoint")
    args = parser.parse_args(argv)
    try:
        out = consolidate(args.checkpoint, args.out) if args.verb == "consolidate" else average(args.checkpoints,
                                                                                                   args.out)
    except CheckpointError as err:
        parser.error(str(err))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
