"""Host memory per rank of building a preset for FSDP on N CPU processes: before vs after meta init.

    OMP_NUM_THREADS=1 .venv/bin/python bench/fsdp_memory.py --preset 1b [--procs 2] [--mode both]

``before``: what train.py did until issue 14, and still does for ``init_from``: every rank
builds the whole fp32 model (``HarmonicTransformer(cfg)``), then ``fully_shard`` keeps its
slice. ``after``: the model is built on the meta device, sharded, materialised with
``to_empty`` and initialised shard by shard (gen_theta_model/sharding.py), as train.py now
does for FSDP runs. Each mode runs in fresh processes (gloo), so the peak resident set
(ru_maxrss, torch import included) is that mode's. Printed per rank: parameter bytes
held, peak RSS, RSS growth over the process's RSS after imports, and the build time.

Before running ``before`` the script checks /proc/meminfo: it needs about 1.5 x 4 bytes x
parameters per process (the whole model plus the shard being copied out of it) and
refuses when MemAvailable is short, rather than push a shared machine into the OOM killer.
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gen_theta_model.distributed import free_local_port, setup, teardown
from gen_theta_model.policy.config import PRESET_NAMES, preset
from gen_theta_model.policy.model import HarmonicTransformer
from gen_theta_model.policy.model_card import count_params
from gen_theta_model.sharding import init_sharded, shard

GIB = 1024**3


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise OSError("no MemAvailable in /proc/meminfo")


def worker(rank: int, procs: int, port: int, name: str, mode: str, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(procs))
    torch.set_num_threads(1)
    env = setup("cpu")
    try:
        torch.manual_seed(0)
        start_rss, start = rss_bytes(), time.perf_counter()
        if mode == "before":
            model = shard(HarmonicTransformer(preset(name)), bf16=False)
        else:
            with torch.device("meta"):
                model = shard(HarmonicTransformer(preset(name)), bf16=False)
            model.to_empty(device="cpu")
            init_sharded(model)
        dist.barrier()
        seconds = time.perf_counter() - start
        held = sum(p.to_local().numel() * p.element_size() for p in model.parameters())
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        out[(mode, rank)] = (held, peak, peak - start_rss, seconds)
    finally:
        teardown(env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="1b", choices=PRESET_NAMES)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--mode", default="both", choices=("before", "after", "both"))
    args = parser.parse_args()
    params = count_params(preset(args.preset))[0]
    print(f"preset {args.preset}: {params:,} parameters, {4 * params / GIB:.2f} GiB fp32; {args.procs} CPU processes")
    modes = ("after", "before") if args.mode == "both" else (args.mode,)
    results = mp.Manager().dict()
    for mode in modes:
        need = int(1.5 * 4 * params * args.procs) if mode == "before" else int(4 * params)
        if mem_available() < need + 2 * GIB:
            print(f"{mode}: skipped, needs ~{need / GIB:.1f} GiB + 2 GiB spare, MemAvailable "
                  f"{mem_available() / GIB:.1f} GiB")
            continue
        mp.spawn(worker, args=(args.procs, free_local_port(), args.preset, mode, results), nprocs=args.procs, join=True)
    print(f"{'mode':<7} {'rank':>4} {'param GiB':>9} {'peak RSS GiB':>12} {'RSS growth GiB':>14} {'build s':>8}")
    for (mode, rank), (held, peak, growth, seconds) in sorted(results.items()):
        print(f"{mode:<7} {rank:>4} {held / GIB:>9.2f} {peak / GIB:>12.2f} {growth / GIB:>14.2f} {seconds:>8.1f}")


if __name__ == "__main__":
    main()
