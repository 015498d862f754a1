"""Training throughput of the policy presets, and the model-card table of all presets.

    .venv/bin/python bench/train_throughput.py [--presets tiny small] [--device cpu|cuda]
                                               [--data DATASET] [--steps 10]

For each preset: samples/s and experience-seconds/s of full optimizer steps
(forward, backward, AdamW) on batches mixing arm6, arm7 and humanoid16 (example
batches in the loader's layout: 3 cameras of 96x96, history 4, H = 50), with bf16
autocast on GPUs. A sample is one control step of one robot, so experience-s =
samples / 50 Hz (the loader bench's definition). With ``--data`` the same is measured
end to end through ``make_dataloaders`` (video decoding included, 1 worker).
Then the model card of every preset (parameters, FLOPs/sample, FSDP memory per GPU).
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch

from gen_theta_model import batch as K
from gen_theta_model.cli_args import ExtendAction
from gen_theta_model.distributed import autocast, use_bf16
from gen_theta_model.embodiment import load_robot
from gen_theta_model.policy.config import PRESET_NAMES, preset
from gen_theta_model.policy.example import example_batch, example_norm_stats
from gen_theta_model.policy.model_card import format_table, model_card
from gen_theta_model.policy.policy import build_policy

RATE_HZ = 50.0
BATCH = {"tiny": 16, "small": 8, "base": 8}


def measure(policy, batches, steps: int, device: torch.device) -> tuple[float, float]:
    """Samples/s and steps/s of ``steps`` optimizer steps after 2 warm-up steps."""
    opt = torch.optim.AdamW(policy.model.parameters(), lr=1e-4)
    bf16 = use_bf16("auto", device)
    n = 0
    start = time.perf_counter()
    for i in range(steps + 2):
        if i == 2:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start, n = time.perf_counter(), 0
        batch = {k: v.to(device, non_blocking=True) for k, v in next(batches).items()}
        with autocast(bf16, device):
            loss, _ = policy.loss(batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        n += batch[K.ACTION].shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return n / elapsed, steps / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", action=ExtendAction, default=["tiny", "small"], choices=PRESET_NAMES)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=0, help="default: 16 tiny, 8 small/base, 4 larger")
    parser.add_argument("--data", help="a dataset directory for the end-to-end figure")
    parser.add_argument("--no-card", action="store_true", help="skip the model-card table")
    args = parser.parse_args()
    device = torch.device(args.device)
    specs = [load_robot(n) for n in ("arm6", "arm7", "humanoid16")]
    stats = {s.name: example_norm_stats(s) for s in specs}
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, bf16 {use_bf16('auto', device)}")
    print(f"{'preset':<6} {'source':<10} {'batch':>5} {'samples/s':>10} {'exp-s/s':>8} {'steps/s':>8}")
    for name in args.presets:
        torch.manual_seed(0)
        cfg = preset(name)
        bs = args.batch_size or BATCH.get(name, 4)
        policy = build_policy(cfg, specs, stats).to(device)
        batch = example_batch(specs, cfg, bs, cameras=3, history=4)
        sps, steps = measure(policy, itertools.repeat(batch), args.steps, device)
        print(f"{name:<6} {'synthetic':<10} {bs:>5} {sps:>10.1f} {sps / RATE_HZ:>8.2f} {steps:>8.2f}")
        if args.data:
            from gen_theta_model.data.loader import DataConfig, make_dataloaders
            from gen_theta_model.train import forever

            data_cfg = DataConfig(batch_size=bs, num_workers=1, horizon=cfg.chunk_len)
            train, _, info = make_dataloaders(args.data, data_cfg)
            real = build_policy(cfg, [info.specs[n] for n in info.embodiment_names], info.norm_stats).to(device)
            sps, steps = measure(real, forever(train), args.steps, device)
            print(f"{name:<6} {'dataset':<10} {bs:>5} {sps:>10.1f} {sps / RATE_HZ:>8.2f} {steps:>8.2f}")
        del policy
    if not args.no_card:
        print("\nmodel card (gen-theta model-card all): FSDP over 8 GPUs, bf16, micro-batch 8, checkpointing per block")
        print(format_table([model_card(n) for n in PRESET_NAMES]))


if __name__ == "__main__":
    main()
