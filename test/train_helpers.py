"""Helpers for training tests: tiny real datasets and few-second training runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from data_helpers import make_episode

from gen_theta_model.config import share_dir
from gen_theta_model.data.manifest import finalize_dataset
from gen_theta_model.embodiment import load_robot
from gen_theta_model.train import main as train_main

CONFIG = share_dir() / "config" / "train" / "tiny_pretrain.yaml"
SMALL = [  # a few-second run: small batches, a narrow model, no workers, no progress bar
    "data.batch_size=4", "data.num_workers=0", "data.val_samples=8", "data.horizon=20",
    "data.harmonic.max_delay_steps=6", "policy={d_model: 64, n_layer: 2, n_head: 2, image_grid: 2}",
    "optim.warmup_steps=2", "log_interval=1", "eval_interval=1000", "eval_batches=1", "progress=false",
]


def fit_batch(policy, batch: dict, steps: int, lr: float = 3e-3) -> tuple[list[float], dict]:
    """Take ``steps`` AdamW steps on one fixed ``batch``; the losses and the last step's logs."""
    opt = torch.optim.AdamW(policy.model.parameters(), lr=lr)
    losses, logs = [], {}
    for _ in range(steps):
        loss, logs = policy.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, logs


def build_dataset(root: Path, robots: dict[str, int]) -> Path:
    specs = {n: load_robot(n) for n in robots}
    for name, count in robots.items():
        for i in range(count):
            make_episode(root, specs[name], f"{name}_{i}", duration=1.5, task=f"task{i % 2}",
                         category=("dexterity", "real_world")[i % 2], seed=i)
    finalize_dataset(root, specs)
    return root


def run(out: Path, data: Path, *sets: str, config: Path = CONFIG) -> int:
    args = [str(config), "--set", f"dataset=[{data}]", "--set", f"out_dir={out}"]
    for s in (*SMALL, *sets):
        args += ["--set", s]
    return train_main(args)


def losses(out: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def torchrun(out: Path, data: Path, *sets: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "gen_theta_model.train", str(CONFIG), "--set", f"dataset=[{data}]", "--set", f"out_dir={out}"]
    for s in (*SMALL, *sets):
        args += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # A session of its own, so that a hang is ended with the workers, not just the launcher.
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"torchrun did not finish in 240 s:\n{err[-3000:]}")
    return subprocess.CompletedProcess(args, proc.returncode, out, err)
