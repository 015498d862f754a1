"""LeRobot's own loader on a LeRobotDataset v3: samples/s. Runs in the LeRobot venv (../shared/lerobot).

Called by bench/loader_vs_lerobot.py as
`$LRB/V/bin/python bench/lerobot_rate.py ROOT HORIZON BATCH BATCHES WORKERS...`; prints one JSON
line per worker count: {"workers", "samples_per_s", "distinct_episodes", "pair_correlation"}.
Give one worker count per process when any is above 1: LeRobot 0.4.4 caches its torchcodec
decoders process-wide, and workers forked after an earlier count decoded in this process share
those decoders' file offsets and fail ("Could not push packet to decoder"; lerobot issue #2488).
Uses only lerobot, torch and numpy (never gen_theta), so that it runs where gen_theta is absent.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
from lerobot.datasets.lerobot_dataset import LeRobotDataset  # noqa: E402


def pair_correlation(actions: np.ndarray) -> float:
    """Mean Pearson correlation between the flattened action chunks of two samples of a batch (B, H, D)."""
    flat = actions.reshape(len(actions), -1).astype(np.float64)
    c = np.corrcoef(flat)
    return float(c[~np.eye(len(c), dtype=bool)].mean())


def main(root: str, horizon: int, batch: int, batches: int, workers: list[int]) -> None:
    meta = LeRobotDataset(repo_id="local/bench", root=root).meta
    # LeRobot's default video backend (torchcodec where it is installed, as in the LeRobot venv).
    ds = LeRobotDataset(repo_id="local/bench", root=root,
                        delta_timestamps={"action": [k / meta.fps for k in range(horizon)]})
    for w in workers:
        loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=w, drop_last=True,
                                             generator=torch.Generator().manual_seed(0))
        it = iter(loader)
        next(it)  # workers started, first batch out
        distinct, corr = [], []
        t0 = time.perf_counter()
        for _ in range(batches):
            b = next(it)
            distinct.append(len(set(b["episode_index"].tolist())))
            corr.append(pair_correlation(b["action"].numpy()))
        rate = batch * batches / (time.perf_counter() - t0)
        print(json.dumps({"workers": w, "samples_per_s": rate, "distinct_episodes": float(np.mean(distinct)),
                          "pair_correlation": float(np.mean(corr))}), flush=True)
        del it


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), [int(w) for w in sys.argv[5:]])
