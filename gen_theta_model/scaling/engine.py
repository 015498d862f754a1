"""Run trials: in this process, on a local process pool, or on Ray (one task per trial).

Finished trials (``<trial_dir>/result.json`` present) are skipped, so re-running an
interrupted sweep continues where it stopped; an unfinished trial resumes its
training runs from their checkpoints. Trials receive their spec as JSON text.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from gen_theta_model.ray_cluster import init_ray
from gen_theta_model.scaling.results import RESULT_FILE
from gen_theta_model.scaling.trial import TrialSpec, run_trial_json

Engine = Literal["local", "ray"]


@dataclass(frozen=True)
class EngineConfig:
    engine: Engine = "local"
    workers: int = 1  # trials at once (local pool size; Ray: concurrency follows cpus_per_trial)
    cpus_per_trial: int = 1  # torch threads per trial, and the Ray task's num_cpus
    ray_address: str = ""  # "": start a local Ray instance; HOST:PORT, "auto" or ray://...: join a cluster

    def __post_init__(self) -> None:
        if self.workers < 1 or self.cpus_per_trial < 1:
            raise ValueError(f"workers and cpus_per_trial must be >= 1, got {self.workers}, {self.cpus_per_trial}")


def pending(specs: list[TrialSpec]) -> list[TrialSpec]:
    """Return the specs whose trial has no result.json yet."""
    return [s for s in specs if not (Path(s.trial_dir) / RESULT_FILE).is_file()]


def run_trials(
    specs: list[TrialSpec], cfg: EngineConfig, report: Callable[[str], None] = print
) -> list[Path]:
    """Run the unfinished trials of ``specs``; returns the result.json of every spec."""
    todo = pending(specs)
    report(f"{len(specs) - len(todo)} of {len(specs)} trials already finished; running {len(todo)} "
           f"({cfg.engine}, {cfg.workers} at once, {cfg.cpus_per_trial} thread(s) each)")
    jsons = [replace(s, threads=cfg.cpus_per_trial).to_json() for s in todo]
    if jsons and cfg.engine == "ray":
        _run_ray(jsons, cfg, report)
    elif jsons and cfg.workers > 1:
        _run_pool(jsons, cfg, report)
    else:  # in this process, one after another
        for i, text in enumerate(jsons):
            report(f"[{i + 1}/{len(jsons)}] done: {run_trial_json(text)}")
    return [Path(s.trial_dir) / RESULT_FILE for s in specs]


def _run_pool(jsons: list[str], cfg: EngineConfig, report: Callable[[str], None]) -> None:
    # spawn, not fork: the trials use torch and DataLoader workers, which do not survive a fork safely
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=cfg.workers, mp_context=ctx) as pool:
        futures = [pool.submit(run_trial_json, text) for text in jsons]
        for i, fut in enumerate(as_completed(futures)):
            report(f"[{i + 1}/{len(jsons)}] done: {fut.result()}")


def _run_ray(jsons: list[str], cfg: EngineConfig, report: Callable[[str], None]) -> None:
    import ray

    started = not ray.is_initialized()
    if started:
        gcs = init_ray(cfg.ray_address, cfg.workers * cfg.cpus_per_trial)
        report(f"Ray cluster at {gcs}")
    try:
        task = ray.remote(num_cpus=cfg.cpus_per_trial, max_retries=0)(run_trial_json)
        refs = [task.remote(text) for text in jsons]
        done = 0
        while refs:
            ready, refs = ray.wait(refs, num_returns=1)
            done += 1
            report(f"[{done}/{len(jsons)}] done: {ray.get(ready[0])}")
    finally:
        if started:
            ray.shutdown()
