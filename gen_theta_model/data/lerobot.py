"""LeRobotDataset v3 export and import: `gen-theta lerobot export|import`.

Layout written and read (codebase_version "v3.0")::

    meta/info.json                         fps, features (shapes, joint names, video info), paths
    meta/tasks.parquet                     task, task_index
    meta/episodes/chunk-000/file-000.parquet   per episode: length, tasks, data and video ranges
    meta/stats.json                        mean/std/min/max of observation.state and action
    data/chunk-000/file-000.parquet        observation.state, action, timestamp, frame_index,
                                           episode_index, index, task_index
    videos/observation.images.<camera>/chunk-000/file-000.mp4   episodes back to back

LeRobot datasets are synchronous at one fps, so export samples every stream on the
control-rate grid (state: latest joint state at or before each step; images:
latest frame; action: the commanded position). Import turns such a dataset back
into episodes whose streams share that grid (actions resampled to the robot's
control rate if the fps differs). Positions are in joint units (rad, m).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

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
from gen_theta_model.data.manifest import EPISODES, finalize_dataset, open_dataset
from gen_theta_model.data.shards import read_packed_episode
from gen_theta_model.data.video import VideoConfig, VideoReader, VideoWriter
from gen_theta_model.embodiment import load_robot

DATA = "data/chunk-000/file-000.parquet"
EPISODES_META = "meta/episodes/chunk-000/file-000.parquet"
CODEC_NAMES = {"libx264": "h264", "libx265": "hevc", "libsvtav1": "av1", "libvpx-vp9": "vp9"}  # as LeRobot names them


def video_key(camera: str) -> str:
    return f"observation.images.{camera}"


def _latest(stamps: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Index of the latest stamp <= each t (the first one before any)."""
    return np.maximum(np.searchsorted(stamps, t, side="right") - 1, 0)


def export(dataset: Path, out: Path, embodiment: str = "", video: VideoConfig | None = None) -> int:
    """Write the episodes of one embodiment as a LeRobotDataset v3; returns the number of frames."""
    cfg = video or VideoConfig(pix_fmt="yuv420p")  # LeRobot's own encoding (and what its players expect)
    ix = open_dataset(dataset)
    name = embodiment or (ix.embodiment_names[0] if len(ix.embodiment_names) == 1 else "")
    if name not in ix.specs:
        raise ValueError(f"{dataset}: choose one embodiment with --embodiment (has {ix.embodiment_names})")
    spec = ix.specs[name]
    fps = spec.control_rate_hz
    metas = [m for m in ix.episodes if m.embodiment == name]
    if out.exists():
        raise FileExistsError(f"{out}: exists already, not overwriting")
    tasks = sorted({m.instruction or m.task for m in metas})
    writers: dict[str, VideoWriter] = {}
    cols: dict[str, list] = {k: [] for k in ("observation.state", "action", "timestamp", "frame_index",
                                             "episode_index", "index", "task_index")}
    ep_rows: list[dict] = []
    rows = [r for r in ix.table.to_pylist() if r["embodiment"] == name]
    for e, (meta, row) in enumerate(zip(metas, rows)):
        ep = read_packed_episode(ix.root, row, spec.joint_names)
        grid = ep.arrays[ACTION_STAMP]
        n = len(grid)
        task = meta.instruction or meta.task
        row = {"episode_index": e, "tasks": [task], "length": n, "data/chunk_index": 0, "data/file_index": 0,
               "dataset_from_index": len(cols["index"]), "dataset_to_index": len(cols["index"]) + n,
               "gen_theta/episode": meta.episode, "gen_theta/task": meta.task,
               "gen_theta/category": meta.category, "gen_theta/success": meta.success,
               "gen_theta/start_ns": int(grid[0])}
        for cam in ep.cameras:
            key = video_key(cam.name)
            if key not in writers:
                writers[key] = VideoWriter(_mkdir(out / f"videos/{key}/chunk-000/file-000.mp4"), cam.width,
                                           cam.height, fps, cfg)
            w = writers[key]
            row[f"videos/{key}/chunk_index"], row[f"videos/{key}/file_index"] = 0, 0
            row[f"videos/{key}/from_timestamp"] = w.count / fps
            reader = VideoReader(ep.path / cam.file, gop=cam.gop)
            for i in _latest(ep.arrays[camera_stamp_key(cam.name)], grid):
                w.add(reader.frame(cam.offset + int(i)))
            reader.close()
            row[f"videos/{key}/to_timestamp"] = w.count / fps
        state = ep.arrays[JOINT_POSITION][_latest(ep.arrays[JOINT_STAMP], grid)]
        cols["observation.state"] += list(state.astype(np.float32))
        cols["action"] += list(ep.arrays[ACTION_POSITION].astype(np.float32))
        cols["timestamp"] += list((np.arange(n) / fps).astype(np.float32))
        cols["frame_index"] += list(range(n))
        cols["episode_index"] += [e] * n
        cols["index"] += list(range(len(cols["index"]), len(cols["index"]) + n))
        cols["task_index"] += [tasks.index(task)] * n
        ep_rows.append(row)
    for w in writers.values():
        w.close()
    vec = pa.list_(pa.float32(), spec.dof)
    table = pa.table({k: pa.array([np.asarray(v) for v in cols[k]], type=vec) if k in ("observation.state", "action")
                      else pa.array(cols[k]) for k in cols})
    pq.write_table(table, _mkdir(out / DATA))
    pq.write_table(pa.Table.from_pylist(ep_rows), _mkdir(out / EPISODES_META))
    pq.write_table(pa.table({"task": tasks, "task_index": list(range(len(tasks)))}), _mkdir(out / "meta/tasks.parquet"))
    stats = {k: {"mean": np.mean(cols[k], 0).tolist(), "std": np.std(cols[k], 0).tolist(),
                 "min": np.min(cols[k], 0).tolist(), "max": np.max(cols[k], 0).tolist(), "count": [len(cols[k])]}
             for k in ("observation.state", "action")}
    (out / "meta/stats.json").write_text(json.dumps(stats, indent=1))
    features = {k: {"dtype": "float32", "shape": [spec.dof], "names": spec.joint_names}
                for k in ("observation.state", "action")}
    for k, dtype in (("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
                     ("index", "int64"), ("task_index", "int64")):
        features[k] = {"dtype": dtype, "shape": [1], "names": None}
    codec = CODEC_NAMES.get(cfg.codec, cfg.codec)
    for cam in spec.cameras:
        key = video_key(cam.name)
        if key in writers:
            w = writers[key]
            features[key] = {"dtype": "video", "shape": [w.height, w.width, 3],
                             "names": ["height", "width", "channels"],
                             "info": {"video.height": w.height, "video.width": w.width, "video.codec": codec,
                                      "video.pix_fmt": w.pix_fmt, "video.is_depth_map": False, "video.fps": fps,
                                      "video.channels": 3, "has_audio": False}}
    info = {"codebase_version": "v3.0", "robot_type": name, "total_episodes": len(metas),
            "total_frames": len(cols["index"]), "total_tasks": len(tasks), "chunks_size": 1000,
            "data_files_size_in_mb": 100, "video_files_size_in_mb": 200, "fps": fps,
            "splits": {"train": f"0:{len(metas)}"},
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
            "features": features}
    (out / "meta/info.json").write_text(json.dumps(info, indent=1))
    return len(cols["index"])


def import_dataset(src: Path, out: Path, robot: str, video: VideoConfig | None = None) -> int:
    """Turn a LeRobotDataset v3 into gen_theta episodes under ``out``; returns the number of episodes."""
    spec = load_robot(robot)
    try:
        info = json.loads((src / "meta/info.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{src}: not a LeRobotDataset (meta/info.json: {err})") from err
    if not str(info.get("codebase_version", "")).startswith("v3"):
        raise ValueError(f"{src}: codebase_version {info.get('codebase_version')!r}, only v3.x is supported")
    fps = float(info["fps"])
    feats = info["features"]
    for key in ("observation.state", "action"):
        names = feats[key].get("names")
        if isinstance(names, list) and len(names) == spec.dof and names != spec.joint_names:
            raise ValueError(f"{src}: {key} joint names {names} do not match '{robot}' {spec.joint_names}")
        if feats[key]["shape"] != [spec.dof]:
            raise ValueError(f"{src}: {key} has shape {feats[key]['shape']}, '{robot}' has {spec.dof} joints")
    cams = [k.removeprefix("observation.images.") for k, f in feats.items() if f.get("dtype") == "video"]
    unknown = [c for c in cams if c not in [c.name for c in spec.cameras]]
    if unknown:
        raise ValueError(f"{src}: camera '{unknown[0]}' is not a camera of '{robot}'")
    data = pq.read_table(src / DATA).to_pydict()
    episodes = pq.read_table(src / EPISODES_META).to_pylist()
    readers = {c: VideoReader(src / f"videos/{video_key(c)}/chunk-000/file-000.mp4") for c in cams}
    step_ns = int(round(1e9 / spec.control_rate_hz))
    for row in episodes:
        lo, hi = row["dataset_from_index"], row["dataset_to_index"]
        start = int(row.get("gen_theta/start_ns") or 0)
        # float32 seconds in the parquet: round to the microsecond to get the grid back exactly
        t_ns = start + (np.asarray(data["timestamp"][lo:hi], np.float64) * 1e6).round().astype(np.int64) * 1000
        episode = row.get("gen_theta/episode") or f"lerobot_{src.name}_{row['episode_index']:06d}"
        w = EpisodeWriter(out / EPISODES, episode, spec, video or VideoConfig())
        for c, reader in readers.items():
            first = int(round(row[f"videos/{video_key(c)}/from_timestamp"] * fps))
            for i in range(hi - lo):
                w.add_frame(c, int(t_ns[i]), reader.frame(first + i))
        state = np.asarray(data["observation.state"][lo:hi], np.float64)
        action = np.asarray(data["action"][lo:hi], np.float64)
        grid = np.arange(t_ns[0], t_ns[-1] + 1, step_ns, dtype=np.int64)
        q = np.stack([np.interp(grid, t_ns, action[:, j]) for j in range(spec.dof)], axis=1)
        qd = np.gradient(q, axis=0) / (step_ns * 1e-9) if len(q) > 1 else np.zeros_like(q)
        w.set_streams({JOINT_STAMP: t_ns, JOINT_POSITION: state, JOINT_VELOCITY: np.full_like(state, np.nan),
                       ACTION_STAMP: grid, ACTION_POSITION: q, ACTION_VELOCITY: qd,
                       COMMAND_STAMP: np.zeros(0, np.int64)})
        task = row["tasks"][0] if row.get("tasks") else ""
        w.finish(EpisodeMeta(
            episode=episode, embodiment=spec.name, urdf_sha256=spec.urdf_sha256,
            task=row.get("gen_theta/task") or task, category=row.get("gen_theta/category") or "",
            instruction=task, success=row.get("gen_theta/success"), start_ns=int(t_ns[0]),
            duration_s=float(t_ns[-1] - t_ns[0]) * 1e-9, num_trajectories=0, source=str(src.resolve()),
        ))
    for reader in readers.values():
        reader.close()
    finalize_dataset(out, {spec.name: spec})
    return len(episodes)


def _mkdir(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gen-theta lerobot", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export", help="gen_theta dataset -> LeRobotDataset v3")
    ex.add_argument("dataset")
    ex.add_argument("out")
    ex.add_argument("--embodiment", default="", help="which embodiment (a LeRobot dataset holds one robot)")
    im = sub.add_parser("import", help="LeRobotDataset v3 -> gen_theta dataset")
    im.add_argument("lerobot")
    im.add_argument("out")
    im.add_argument("--robot", required=True, help="robot name or YAML whose joints match the dataset")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "export":
            n = export(Path(a.dataset), Path(a.out), a.embodiment)
            print(f"lerobot export: {n} frames -> {a.out}")
        else:
            n = import_dataset(Path(a.lerobot), Path(a.out), a.robot)
            print(f"lerobot import: {n} episodes -> {a.out}")
    except (ValueError, FileExistsError, KeyError) as err:
        print(f"gen-theta lerobot: {err}", file=sys.stderr)
        return 2
    return 0
