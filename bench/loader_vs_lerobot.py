"""gen_theta's loader against LeRobot 0.4.4's and against the decode limits of the same files, in one run.

1. Writes N synthetic arm6 episodes (textured 128x128 frames on both cameras at the
   robot's 15 fps, joint states at 100 Hz, commands on the 50 Hz grid) into a gen_theta
   dataset (shards + index), and exports them with `gen-theta lerobot export`.
2. gen_theta samples/s with 0, 1 and 2 DataLoader workers, streaming and random access
   (horizon 50, batch 32, history 1, image_size 128), steady state over an epoch that
   covers every step; next to each, batch diversity: distinct episodes per batch and the
   mean correlation between the action chunks of two samples of a batch.
3. The decode limits of gen_theta's files: random access (PyAV: seek to the keyframe and
   decode to the frame, both cameras, for the same sample keys) and sequential decoding
   of every frame, as samples/s.
4. LeRobot's LeRobotDataset + DataLoader (shuffle) on the exported episodes, in the LeRobot
   venv (`$LRB/V/bin/python bench/lerobot_rate.py`; LRB defaults to ~/lrb), 0/1/2 workers,
   with LeRobot's default video backend (torchcodec), each worker count in a process of its own.

Run: `.venv/bin/python bench/loader_vs_lerobot.py [episodes] [seconds per episode]`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from gen_theta_model import batch
from gen_theta_model.data.episode import (
    ACTION_POSITION,
    ACTION_STAMP,
    ACTION_VELOCITY,
    COMMAND_STAMP,
    JOINT_POSITION,
    JOINT_STAMP,
    JOINT_VELOCITY,
    EpisodeMeta,
    EpisodeWriter,
    camera_stamp_key,
)
from gen_theta_model.data.lerobot import export
from gen_theta_model.data.loader import DataConfig, make_dataloaders
from gen_theta_model.data.manifest import EPISODES, finalize_dataset
from gen_theta_model.data.video import VideoConfig
from gen_theta_model.embodiment import EmbodimentSpec, load_robot
from gen_theta_model.observation import ObservationConfig

T0 = 1_700_000_000_000_000_000
SIDE, HORIZON, BATCH, BATCHES = 128, 50, 32, 60
LEROBOT_BATCHES = 30  # LeRobot with 0 workers runs at ~20 samples/s here: 30 batches take ~1 min
LRB_PYTHON = Path(os.environ.get("LRB", Path.home() / "lrb")) / "V" / "bin" / "python"


def textured_frame(t: float, seed: int, camera: int) -> np.ndarray:
    """Draw a (SIDE, SIDE, 3) uint8 frame that moves with time: gradients, a moving square and sensor noise."""
    rng = np.random.default_rng([seed, camera, int(t * 1000)])
    y, x = np.mgrid[0:SIDE, 0:SIDE].astype(np.float32)
    img = np.stack([(x + 40 * t + 30 * camera) % 256, (y * 0.7 + 25 * t) % 256, (x + y + seed * 17) % 256], -1)
    cx, cy = int(SIDE / 2 + 40 * np.sin(t + seed)), int(SIDE / 2 + 40 * np.cos(0.7 * t))
    img[max(cy - 12, 0):cy + 12, max(cx - 12, 0):cx + 12] = (220, 40, 40)
    return np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)


def write_episode(root: Path, spec: EmbodimentSpec, episode: str, seconds: float, seed: int) -> None:
    w = EpisodeWriter(root / EPISODES, episode, spec, VideoConfig())
    for c, cam in enumerate(spec.cameras):
        for i in range(int(seconds * cam.fps)):
            t = i / cam.fps
            w.add_frame(cam.name, T0 + int(t * 1e9), textured_frame(t, seed, c))
    mid, half = (spec.lower + spec.upper) / 2, (spec.upper - spec.lower) / 2

    def q(t: np.ndarray) -> np.ndarray:
        return mid + 0.5 * half * np.sin(0.7 * t[:, None] + np.arange(spec.dof)[None, :] + seed)

    js_t, a_t = np.arange(0.0, seconds, 0.01), np.arange(0.0, seconds, 1.0 / spec.control_rate_hz)
    w.set_streams({JOINT_STAMP: (T0 + js_t * 1e9).astype(np.int64), JOINT_POSITION: q(js_t),
                   JOINT_VELOCITY: np.zeros((len(js_t), spec.dof)), ACTION_STAMP: (T0 + a_t * 1e9).astype(np.int64),
                   ACTION_POSITION: q(a_t + 0.1), ACTION_VELOCITY: np.zeros((len(a_t), spec.dof)),
                   COMMAND_STAMP: np.array([T0], np.int64)})
    w.finish(EpisodeMeta(episode=episode, embodiment=spec.name, urdf_sha256=spec.urdf_sha256, task="pick",
                         category="real_world", instruction="pick the red cube", success=True, start_ns=T0,
                         duration_s=seconds, num_trajectories=1, source=f"synthetic/{episode}"))


def pair_correlation(actions: np.ndarray) -> float:
    """Mean Pearson correlation between the flattened action chunks of two samples of a batch (B, H, D)."""
    c = np.corrcoef(actions.reshape(len(actions), -1).astype(np.float64))
    return float(c[~np.eye(len(c), dtype=bool)].mean())


def config(workers: int, streaming: bool) -> DataConfig:
    return DataConfig(observation=ObservationConfig(image_size=SIDE, max_cameras=2, history=1), horizon=HORIZON,
                      batch_size=BATCH, num_workers=workers, val_fraction=0.0, streaming=streaming)


def gen_theta_rate(ds: Path, workers: int, streaming: bool, dof: int) -> dict:
    train, _, _ = make_dataloaders(ds, config(workers, streaming))
    it = iter(train)
    next(it)  # workers started, shuffle buffers filled
    distinct, corr = [], []
    t0 = time.perf_counter()
    for _ in range(BATCHES):
        b = next(it)
        distinct.append(len(set(b[batch.EPISODE_INDEX].tolist())))
        corr.append(pair_correlation(b[batch.ACTION][:, :, :dof].numpy()))
    rate = BATCH * BATCHES / (time.perf_counter() - t0)
    del it
    return {"samples_per_s": rate, "distinct_episodes": float(np.mean(distinct)),
            "pair_correlation": float(np.mean(corr))}


def decode_limits(ds: Path) -> tuple[float, float]:
    """(random-access, sequential) samples/s of PyAV alone on the dataset's videos, all cameras per sample."""
    train, _, _ = make_dataloaders(ds, config(0, False))
    data = train.dataset
    keys = train.sampler.keys(0)[: BATCH * BATCHES]
    rgb = VideoReformatter()
    containers: dict[Path, av.container.InputContainer] = {}
    t0 = time.perf_counter()
    for ep, step, _ in keys:
        ref, arrays = data.episodes[ep], data.arrays(int(ep))
        t = arrays[ACTION_STAMP][step]
        for cam in ref.cameras:
            i = cam.offset + max(int(np.searchsorted(arrays[camera_stamp_key(cam.name)], t, side="right")) - 1, 0)
            path = ref.path / cam.file
            c = containers.get(path) or containers.setdefault(path, av.open(str(path)))
            stream = c.streams.video[0]
            c.seek(int(round(i / float(stream.average_rate) / float(stream.time_base))), stream=stream,
                   backward=True)
            for frame in c.decode(stream):
                if int(round(frame.pts * frame.time_base * stream.average_rate)) >= i:
                    rgb.reformat(frame, format="rgb24").to_ndarray()
                    break
    random_rate = len(keys) / (time.perf_counter() - t0)
    for c in containers.values():
        c.close()
    frames, t0 = 0, time.perf_counter()
    for path in sorted({r.path / c.file for r in data.episodes for c in r.cameras}):
        with av.open(str(path)) as c:
            for frame in c.decode(video=0):
                rgb.reformat(frame, format="rgb24").to_ndarray()
                frames += 1
    seconds = time.perf_counter() - t0
    samples = sum(r.num_steps - r.first_step for r in data.episodes)
    return random_rate, samples / seconds  # sequential: every sample's frames decoded once, in file order


def lerobot_rates(root: Path) -> list[dict]:
    """LeRobot's loader on the export, one fresh process per worker count (bench/lerobot_rate.py)."""
    if not LRB_PYTHON.exists():
        print(f"LeRobot venv not found at {LRB_PYTHON} (LRB=... bash ../shared/lerobot/setup.sh): skipped")
        return []
    rows = []
    for workers in (0, 1, 2):
        # A process of its own: LeRobot 0.4.4 keeps its torchcodec decoders (and their open files) in a
        # process-wide cache, and forked workers that inherit decoders opened by an earlier run read through
        # shared file offsets ("Could not push packet to decoder: Invalid data found when processing input").
        cmd = [str(LRB_PYTHON), str(Path(__file__).with_name("lerobot_rate.py")), str(root), str(HORIZON),
               str(BATCH), str(LEROBOT_BATCHES), str(workers)]
        run = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                             timeout=1800)
        if run.returncode != 0:
            raise RuntimeError(f"LeRobot loader failed ({workers} workers): {run.stderr[-3000:]}")
        rows += [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    return rows


def main(n: int, seconds: float) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="loader_bench_"))
    spec = load_robot("arm6")
    t0 = time.perf_counter()
    ds = tmp / "ds"
    for i in range(n):
        write_episode(ds, spec, f"ep{i:03d}", seconds, seed=i)
    finalize_dataset(ds, {"arm6": spec})
    export(ds, tmp / "lerobot")
    samples = n * int(seconds * spec.control_rate_hz)
    print(f"{n} episodes x {seconds:.0f} s (arm6, 2 cameras {SIDE}x{SIDE} @ {spec.cameras[0].fps:.0f} fps, "
          f"{spec.control_rate_hz:.0f} Hz: ~{samples} samples), written and exported in "
          f"{time.perf_counter() - t0:.0f} s")
    print(f"batch {BATCH}, horizon {HORIZON}, history 1, image_size {SIDE}; {BATCHES} batches after the first")
    rows = []
    for streaming in (True, False):
        for workers in (0, 1, 2):
            r = gen_theta_rate(ds, workers, streaming, spec.dof)
            rows.append((f"gen_theta {'streaming' if streaming else 'random access'}, {workers} workers", r))
            print(f"  {rows[-1][0]:<40} {r['samples_per_s']:8.0f} samples/s  {r['distinct_episodes']:5.1f} episodes "
                  f"per batch  pair corr {r['pair_correlation']:.3f}", flush=True)
    random_rate, sequential = decode_limits(ds)
    print(f"  {'decode limit, random access (PyAV seek)':<40} {random_rate:8.0f} samples/s")
    print(f"  {'decode limit, sequential (PyAV)':<40} {sequential:8.0f} samples/s")
    print(f"  (LeRobot: {LEROBOT_BATCHES} batches after the first, default video backend: bench/lerobot_rate.py)")
    for r in lerobot_rates(tmp / "lerobot"):
        print(f"  {'LeRobot 0.4.4, ' + str(r['workers']) + ' workers':<40} {r['samples_per_s']:8.0f} samples/s  "
              f"{r['distinct_episodes']:5.1f} episodes per batch  pair corr {r['pair_correlation']:.3f}", flush=True)
    best0 = rows[0][1]["samples_per_s"]
    print(f"gen_theta streaming, 0 workers / random-access decode limit: {best0 / random_rate:.2f}x")
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 40, float(sys.argv[2]) if len(sys.argv) > 2 else 8.0)
