"""In-process rollout throughput: one process against ``--jobs`` worker processes, in one run.

Runs the same plan (the shipped checkpoint, arm6, ``--task``, ``--seeds``, harmonic at 0 ms,
35 ms model latency, no video) through ``gen_theta_ros.rollout.run_rollout`` with ``jobs=1``
and with ``jobs=N``, and prints episodes per minute for each, the ratio, and whether the two
gave the same figures for every episode (they must: each episode runs on its own simulated
clock and on fresh physics). The ideal ratio is N on N idle cores; the worker start-up (a fresh interpreter, torch,
pybullet and the checkpoint per worker) is what it costs. Run:
``.venv/bin/python bench/rollout_jobs.py [--jobs 2] [--seeds 1000..1007] [--checkpoint models/gen_theta_sim]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from gen_theta_model.closed_loop import parse_seeds
from gen_theta_ros.rollout import RolloutConfig, run_rollout


def timed_rollout(cfg: RolloutConfig) -> tuple[float, list[dict]]:
    """Wall time (s) of ``run_rollout(cfg)`` and the per-episode figures it wrote."""
    start = time.monotonic()
    run_rollout(cfg)
    seconds = time.monotonic() - start
    return seconds, json.loads((Path(cfg.out) / "results.json").read_text())["episodes"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="models/gen_theta_sim")
    parser.add_argument("--task", default="conveyor_pack")
    parser.add_argument("--seeds", nargs="+", default=["1000..1007"])
    parser.add_argument("--jobs", type=int, default=2)
    a = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = RolloutConfig(a.checkpoint, tasks=(a.task,), seeds=parse_seeds(a.seeds), modes=("harmonic",),
                             delays_ms=(0.0,), video=False, in_process=True, inference_ms=35.0,
                             out=str(Path(tmp) / "one"))
        one_s, one = timed_rollout(base)
        many_s, many = timed_rollout(replace(base, jobs=a.jobs, out=str(Path(tmp) / "many")))
    n = len(one)
    print(f"\n{n} episodes ({a.task}, {a.checkpoint})")
    print(f"| processes | wall s | episodes/min |\n|---|---|---|\n| 1 | {one_s:.1f} | {60 * n / one_s:.1f} |\n"
          f"| {a.jobs} | {many_s:.1f} | {60 * n / many_s:.1f} |")
    print(f"speed-up {one_s / many_s:.2f}x with {a.jobs} processes; same figures for every episode: {one == many}")
    for x, y in zip(one, many, strict=True):
        if x != y:
            print(f"  seed {x['seed']} differs: " + ", ".join(f"{k} {x[k]} / {y[k]}" for k in x if x[k] != y[k]))


if __name__ == "__main__":
    main()
