"""Start-up and append cost against the size of the dataset: an empty one and one of 100,000 episodes.

1. A real dataset of 4 synthetic episodes (one shard); its index rows copied into a
   synthetic index of N episodes (default 100,000) in 100 index files, as 100 appends of
   N/100 episodes would leave it (every row points at the real shard; statistics merged).
2. Times `open_dataset` and `make_dataloaders` (everything up to the first decode) on it.
3. Records 10 expert episodes in the sim as rosbag2 bags (bench/ingest_loader.py) and
   ingests them, one worker, into an empty dataset and into the big one, twice each,
   alternating, so that the difference can be told from the noise.

Run: `.venv/bin/python bench/index_scale.py [episodes]`.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import yaml
from ingest_loader import ROBOT, sim_bag
from loader_vs_lerobot import write_episode

from gen_theta_model.data.ingest import IngestOptions, ingest
from gen_theta_model.data.loader import DataConfig, make_dataloaders
from gen_theta_model.data.manifest import (
    INDEX,
    INFO,
    finalize_dataset,
    index_files,
    open_dataset,
    sum_moments,
    write_stats,
)
from gen_theta_model.data.shards import read_index, write_index_part
from gen_theta_model.embodiment import load_robot
from gen_theta_model.sim.episode import SimSession

PARTS = 100


def synthetic_dataset(root: Path, n: int) -> None:
    """Grow the real dataset at ``root`` to ``n`` index rows (copies of its own rows, new ids and sources)."""
    real = read_index(index_files(root))
    shutil.rmtree(root / INDEX)
    (root / INDEX).mkdir()
    per = n // PARTS
    for p in range(PARTS):
        ids = [f"syn{i:07d}" for i in range(p * per, (p + 1) * per)]
        t = real.take(pa.array([i % len(real) for i in range(p * per, (p + 1) * per)]))
        t = t.set_column(t.schema.get_field_index("episode"), "episode", pa.array(ids))
        t = t.set_column(t.schema.get_field_index("source"), "source", pa.array([f"/synthetic/{i}" for i in ids]))
        write_index_part(root / INDEX / f"part-{p:06d}.parquet", t)
    table = read_index(index_files(root))
    write_stats(root, ROBOT, sum_moments(table.column("state_moments")), sum_moments(table.column("action_moments")))
    info = yaml.safe_load((root / INFO).read_text()) | {"episodes": len(table)}
    (root / INFO).write_text(yaml.safe_dump(info, sort_keys=False))


def main(n: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="index_bench_"))
    spec = load_robot(ROBOT)
    big = tmp / "big"
    for i in range(4):
        write_episode(big, spec, f"real{i}", 2.0, seed=i)
    finalize_dataset(big, {ROBOT: spec})
    t0 = time.perf_counter()
    synthetic_dataset(big, n)
    print(f"synthetic index of {n} episodes in {PARTS} files written in {time.perf_counter() - t0:.1f} s")
    for _ in range(2):
        t0 = time.perf_counter()
        ix = open_dataset(big)
        t_open = time.perf_counter() - t0
        t0 = time.perf_counter()
        train, _, info = make_dataloaders(big, DataConfig(num_workers=0))
        t_make = time.perf_counter() - t0
        print(f"  {len(ix.episodes)} episodes: open_dataset {t_open:.2f} s, make_dataloaders {t_make:.2f} s "
              f"({len(info.train_episodes)} training episodes, {info.num_train_samples} samples)")
    session = SimSession(spec)
    t0 = time.perf_counter()
    bags = []
    for i in range(10):
        sim_bag(session, tmp / "bags" / f"ep{i:02d}", seed=i)
        bags.append(tmp / "bags" / f"ep{i:02d}")
    session.close()
    print(f"10 sim bags recorded in {time.perf_counter() - t0:.0f} s; ingest, 1 worker:")
    for run in range(2):
        for name in ("empty", "big"):
            out = tmp / f"empty{run}" if name == "empty" else big
            before = len(open_dataset(out).episodes) if out.exists() else 0
            report = ingest(bags, out, IngestOptions(include_failed=True), jobs=1, progress=False)
            assert len(report.added) == 10, report
            after = len(open_dataset(out).episodes)
            print(f"  into {name:>5} ({before:>6} -> {after:>6} episodes): {report.seconds:5.2f} s")
            if name == "big":  # take the 10 out again for the next round: drop their index file and shard
                last = index_files(big)[-1]
                shutil.rmtree(big / "shards" / last.stem.split("-")[1])
                last.unlink()
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
