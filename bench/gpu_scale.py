"""Issue 14, deliverable 5: the largest preset that fits one GPU, trained with FSDP + activation
checkpointing + bf16, saved as a sharded (DCP) checkpoint, resumed; samples/s, MFU, peak memory.

    .venv/bin/python bench/gpu_scale.py --out "$OUT"                    # one GPU, preset chosen to fit
    .venv/bin/python bench/gpu_scale.py --device cpu --preset tiny --steps 4 --resume-steps 1 --out /tmp/x

The code path is train.py's for FSDP: the policy is built on the meta device, wrapped
(activation checkpointing per block, ``fully_shard`` per block then the root, bf16 params
with fp32 reduction), materialised and initialised shard by shard (sharding.py), trained
with AdamW, saved with ``save_sharded`` and loaded into a fresh meta-built model with
``load_sharded`` (sharded_checkpoint.py). Batches are synthetic (example_batch: the model
card's reference input, 3 cameras of 96x96, history 4, mixing arm6, arm7 and humanoid16),
so no dataset has to be collected first. One process: a process group of one (nccl or gloo).

``--preset auto`` takes the largest preset whose model-card memory at one GPU (16 bytes/param
of sharded state + gathered blocks + activations of ``--micro-batch``) leaves 10% of the GPU
free and whose checkpoint (12 bytes/param: fp32 weights + two AdamW moments) fits the free
disk under ``--ckpt-dir`` (not with ``--no-checkpoint``: train only, for throughput and
memory; bench/gpu_scale.sh runs both within ten minutes). The resumed run's first loss is compared with the loss of the
same step taken by the run that saved it. Written to OUT/gpu_scale_<preset>.json and printed:
samples/s, model FLOP/s and MFU (model-card FLOPs, without the recompute of activation
checkpointing, over ``--peak-tflops``; 989 is the H100/H200 dense bf16 peak), peak device
memory (allocated and reserved), peak host RSS, save and load seconds, checkpoint size.
A wall-clock budget (``--budget-s``) cuts the timed steps short so that the whole run ends
within ten minutes.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import shutil
import time
from pathlib import Path

import torch
import torch.distributed as dist

from gen_theta_model import batch as K
from gen_theta_model.distributed import DistEnv, autocast, free_local_port, wrap_model
from gen_theta_model.embodiment import load_robot
from gen_theta_model.policy.config import PRESET_NAMES, preset
from gen_theta_model.policy.example import example_batch, example_norm_stats
from gen_theta_model.policy.model_card import count_params, model_card
from gen_theta_model.policy.policy import Policy, build_policy
from gen_theta_model.sharded_checkpoint import load_sharded, save_sharded
from gen_theta_model.sharding import materialise
from gen_theta_model.train_config import TrainConfig

GIB = 1024**3
ROBOTS = ("arm6", "arm7", "humanoid16")


def pick_preset(device: torch.device, micro_batch: int, ckpt_dir: Path | None) -> str:
    """Return the largest preset that fits the GPU's memory and the checkpoint disk (tiny on a CPU)."""
    if device.type != "cuda":
        return "tiny"
    gpu = torch.cuda.get_device_properties(device).total_memory / GIB
    disk = shutil.disk_usage(ckpt_dir).free / GIB if ckpt_dir else float("inf")
    fits = [n for n in PRESET_NAMES if model_card(n, 1, micro_batch).total_gib_per_gpu <= 0.9 * gpu
            and 12 * count_params(preset(n))[0] / GIB <= 0.8 * disk]
    return fits[-1]


def build(name: str, env: DistEnv) -> tuple[Policy, torch.nn.Module, torch.optim.Optimizer]:
    """Meta build, activation checkpointing, FSDP with bf16, materialise and initialise; AdamW."""
    torch.manual_seed(0)
    specs = [load_robot(r) for r in ROBOTS]
    policy = build_policy(preset(name, chunk_len=50), specs, {s.name: example_norm_stats(s, 0.0, 0.3) for s in specs},
                          device="meta")
    model = wrap_model(policy.model, "fsdp", env, bf16=True, checkpointing=True)
    materialise(policy, env.device, pretrained=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1,
                                  fused=env.device.type == "cuda")
    return policy, model, optimizer


def step(policy: Policy, model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict) -> float:
    """One optimizer step (bf16 autocast, grad clip 1); the loss."""
    with autocast(True, batch[K.ACTION].device):
        loss, _ = policy.loss(batch, model)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(policy, model, optimizer, batches, first: int, n: int, env: DistEnv, deadline: float
                ) -> tuple[list[float], float, int]:
    """Run up to ``n`` steps from batch ``first`` (stopping at ``deadline``); losses, seconds, samples."""
    losses, samples = [], 0
    sync(env.device)
    start = time.perf_counter()
    for i in range(first, first + n):
        batch = batches[i % len(batches)]
        losses.append(step(policy, model, optimizer, batch))
        samples += batch[K.ACTION].shape[0]
        if time.monotonic() > deadline:
            break
    sync(env.device)
    return losses, time.perf_counter() - start, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="auto", choices=("auto", *PRESET_NAMES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--micro-batch", type=int, default=8, help="samples per step (default 8)")
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps before the checkpoint (3 warm-up)")
    parser.add_argument("--resume-steps", type=int, default=10, help="steps after resuming")
    parser.add_argument("--out", type=Path, default=Path("gpu_scale_out"), help="where the report goes")
    parser.add_argument("--ckpt-dir", type=Path, default=Path("/tmp/gen_theta_gpu_scale"), help="scratch checkpoint")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the device")
    parser.add_argument("--budget-s", type=float, default=540.0, help="wall-clock budget of the whole run")
    parser.add_argument("--no-checkpoint", action="store_true",
                        help="train only (no save and resume; the preset then need not fit the disk)")
    args = parser.parse_args()
    if args.steps < 4 or args.resume_steps < 1:
        parser.error("need --steps >= 4 (3 are warm-up) and --resume-steps >= 1")
    deadline = time.monotonic() + args.budget_s
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                            init_method=f"tcp://127.0.0.1:{free_local_port()}",
                            rank=0, world_size=1)
    env = DistEnv(0, 0, 1, device)
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(args.ckpt_dir, ignore_errors=True)
    args.ckpt_dir.mkdir(parents=True)
    name = args.preset if args.preset != "auto" else pick_preset(device, args.micro_batch,
                                                                 None if args.no_checkpoint else args.ckpt_dir)
    card = model_card(name, 1, args.micro_batch)
    report: dict = {"preset": name, "params": card.params, "device": str(torch.cuda.get_device_name(device))
                    if device.type == "cuda" else "cpu", "micro_batch": args.micro_batch,
                    "model_card_gib": round(card.total_gib_per_gpu, 2)}
    print(f"preset {name}: {card.params:,} parameters, model card {card.total_gib_per_gpu:.1f} GiB at micro-batch "
          f"{args.micro_batch}", flush=True)
    try:
        specs = [load_robot(r) for r in ROBOTS]
        batches = [{k: v.to(device) for k, v in example_batch(specs, preset(name, chunk_len=50), args.micro_batch,
                                                              seed=i, cameras=3).items()} for i in range(4)]
        start = time.perf_counter()
        policy, model, optimizer = build(name, env)
        report["build_s"] = round(time.perf_counter() - start, 1)
        warm, _, _ = timed_steps(policy, model, optimizer, batches, 0, 3, env, deadline)
        losses, seconds, samples = timed_steps(policy, model, optimizer, batches, 3, args.steps - 3, env,
                                               deadline - 120)  # leave time to save, load and resume
        saved_at = 3 + len(losses)
        rate = samples / seconds
        flops = rate * card.train_flops_per_sample  # FLOP/s by the model card's count
        report.update(steps=saved_at, samples_per_s=round(rate, 2), model_tflops=round(flops / 1e12, 1),
                      mfu=round(flops / (args.peak_tflops * 1e12), 4), losses=[round(x, 4) for x in warm + losses])
        if device.type == "cuda":
            report["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated(device) / GIB, 2)
            report["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved(device) / GIB, 2)
        if args.no_checkpoint:
            return
        start = time.perf_counter()
        save_sharded(args.ckpt_dir, saved_at, policy, TrainConfig(preset=name), model, optimizer, {"step": saved_at},
                     {}, env)
        report["save_s"] = round(time.perf_counter() - start, 1)
        report["checkpoint_gib"] = round(sum(f.stat().st_size for f in args.ckpt_dir.rglob("*") if f.is_file())
                                         / GIB, 2)
        uninterrupted = step(policy, model, optimizer, batches[saved_at % len(batches)])
        del policy, model, optimizer
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        start = time.perf_counter()
        policy, model, optimizer = build(name, env)
        load_sharded(args.ckpt_dir / "checkpoints" / f"step_{saved_at:08d}", model, optimizer)
        report["load_s"] = round(time.perf_counter() - start, 1)
        resumed = step(policy, model, optimizer, batches[saved_at % len(batches)])
        report["resume_loss_diff"] = abs(resumed - uninterrupted)
        more, seconds, samples = timed_steps(policy, model, optimizer, batches, saved_at + 1, args.resume_steps,
                                             env, deadline)
        report["resumed_samples_per_s"] = round(samples / seconds, 2)
        report["resumed_losses"] = [round(x, 4) for x in [resumed, *more]]
    finally:
        report["peak_host_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB, 2)
        (args.out / f"gpu_scale_{name}.json").write_text(json.dumps(report, indent=1) + "\n")
        print(json.dumps(report, indent=1), flush=True)
        shutil.rmtree(args.ckpt_dir, ignore_errors=True)
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
