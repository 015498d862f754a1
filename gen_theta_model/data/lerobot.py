"""LeRobotDataset v3 export and import: `gen-theta lerobot export|import`.

Layout written and read (codebase_version "v3.0"; paths from info.json's ``data_path`` and
``video_path``)::

    meta/info.json                 fps, features (shapes, joint names, video codec/fps/pix_fmt), paths,
                                   file-size limits
    meta/tasks.parquet             the task strings as the (pandas) index, task_index: LeRobot's
                                   ``sample["task"]`` is the string of a frame's task_index
    meta/episodes/chunk-C/file-F.parquet   per episode: length, tasks, the data file and row range,
                                   per camera the video file and its from/to timestamps (s)
    meta/stats.json                mean/std/min/max(/count) of observation.state and action, and
                                   per camera of the rgb frames in [0, 1], shape (3, 1, 1)
    data/chunk-C/file-F.parquet    observation.state, action, timestamp, frame_index,
                                   episode_index, index, task_index
    videos/observation.images.<camera>/chunk-C/file-F.mp4   episodes back to back

Episodes fill a data file (or a video file) until it holds ``data_files_size_in_mb``
(``video_files_size_in_mb``), then the next one starts: file index F + 1, or chunk C + 1
and F = 0 after ``chunks_size`` files, as LeRobot's writer does; import reads the
chunk and file of every episode from meta/episodes.

LeRobot datasets are synchronous at one fps, so export samples every stream on the
control-rate grid (state: latest joint state at or before each step; images:
latest frame; action: the commanded position). Import turns such a dataset back
into episodes whose streams share that grid (actions resampled to the robot's
control rate if the fps differs); a camera's frame for a data row is the one at
``from_timestamp + timestamp`` in its video, at the video's fps. Positions are in
joint units (rad, m). Checked against the real ``lerobot`` in test/test_lerobot_interop.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import av
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
from gen_theta_model.trajectory import resample_positions

DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_META = "meta/episodes/chunk-000/file-000.parquet"
TASKS = "meta/tasks.parquet"
CODEC_NAMES = {"libx264": "h264", "libx265": "hevc", "libsvtav1": "av1", "libvpx-vp9": "vp9"}  # as LeRobot names them
NUMERIC = ("observation.state", "action")


@dataclass(frozen=True)
class FileLimits:
    """When a data or video file is full (LeRobot's defaults); a smaller limit splits a dataset into more files."""

    data_mb: float = 100.0  # MiB of frame rows (uncompressed) per data parquet file
    video_mb: float = 200.0  # MiB of encoded video per mp4 file
    chunks_size: int = 1000  # files per chunk directory

    def __post_init__(self) -> None:
        if not (self.data_mb > 0 and self.video_mb > 0 and self.chunks_size >= 1):
            raise ValueError(f"file limits must be positive, got {self}")

    def next(self, chunk: int, file: int) -> tuple[int, int]:
        """Return the (chunk, file) index after (chunk, file)."""
        return (chunk, file + 1) if file + 1 < self.chunks_size else (chunk + 1, 0)


def video_key(camera: str) -> str:
    return f"observation.images.{camera}"


def _latest(stamps: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Index of the latest stamp <= each t (the first one before any)."""
    return np.maximum(np.searchsorted(stamps, t, side="right") - 1, 0)


class _DataFiles:
    """Frame rows buffered into data/chunk-C/file-F.parquet files of at most ``limits.data_mb``."""

    def __init__(self, out: Path, dof: int, limits: FileLimits) -> None:
        self.out, self.limits, self.pos = out, limits, (0, 0)
        self.type = pa.list_(pa.float32(), dof)
        self.row_bytes = 2 * 4 * dof + 4 + 4 * 8  # state, action float32; timestamp; four int64
        self.rows: list[pa.Table] = []
        self.total = 0  # rows written or buffered: the next frame's global index

    def add(self, e: int, state: np.ndarray, action: np.ndarray, fps: float, task: int) -> tuple[int, int]:
        """Append one episode's (n, dof) state and action; returns its (chunk, file)."""
        n = len(state)
        if self.rows and (sum(len(t) for t in self.rows) + n) * self.row_bytes >= self.limits.data_mb * 2**20:
            self.flush()
            self.pos = self.limits.next(*self.pos)
        self.rows.append(pa.table({
            "observation.state": pa.FixedSizeListArray.from_arrays(state.astype(np.float32).ravel(), type=self.type),
            "action": pa.FixedSizeListArray.from_arrays(action.astype(np.float32).ravel(), type=self.type),
            "timestamp": (np.arange(n) / fps).astype(np.float32), "frame_index": np.arange(n),
            "episode_index": np.full(n, e), "index": np.arange(self.total, self.total + n),
            "task_index": np.full(n, task),
        }))
        self.total += n
        return self.pos

    def flush(self) -> None:
        if self.rows:
            pq.write_table(pa.concat_tables(self.rows), _mkdir(self.out / DATA_PATH.format(
                chunk_index=self.pos[0], file_index=self.pos[1])))
            self.rows = []


class _VideoFiles:
    """One camera's episodes back to back in videos/<key>/chunk-C/file-F.mp4 files of ~``limits.video_mb``,
    with the running sums of its frames for meta/stats.json.
    """

    def __init__(self, out: Path, key: str, width: int, height: int, fps: float, cfg: VideoConfig,
                 limits: FileLimits) -> None:
        self.out, self.key, self.size, self.fps, self.cfg, self.limits = out, key, (width, height), fps, cfg, limits
        self.pos = (0, 0)
        self.writer = self._open()
        self.sum, self.sq = np.zeros(3), np.zeros(3)
        self.min, self.max = np.full(3, 255), np.zeros(3, int)
        self.frames = 0

    def _open(self) -> VideoWriter:
        path = self.out / VIDEO_PATH.format(video_key=self.key, chunk_index=self.pos[0], file_index=self.pos[1])
        return VideoWriter(_mkdir(path), *self.size, self.fps, self.cfg)

    def start_episode(self) -> dict:
        """Start the next file if this one is full; the episode's chunk, file and from_timestamp columns."""
        if self.writer.count and self.writer.size >= self.limits.video_mb * 2**20:
            self.writer.close()
            self.pos = self.limits.next(*self.pos)
            self.writer = self._open()
        return {f"videos/{self.key}/chunk_index": self.pos[0], f"videos/{self.key}/file_index": self.pos[1],
                f"videos/{self.key}/from_timestamp": self.writer.count / self.fps}

    def add(self, frame: np.ndarray) -> None:
        """Append one (H, W, 3) uint8 rgb frame."""
        self.writer.add(frame)
        px = frame.reshape(-1, 3)
        self.sum += px.sum(0)
        self.sq += (px.astype(np.float64) ** 2).sum(0)
        self.min, self.max = np.minimum(self.min, px.min(0)), np.maximum(self.max, px.max(0))
        self.frames += 1

    def stats(self) -> dict:
        """Per-channel mean/std/min/max of the rgb frames scaled to [0, 1], shape (3, 1, 1), as LeRobot's."""
        n = self.frames * self.size[0] * self.size[1]
        mean = self.sum / n
        std = np.sqrt(np.maximum(self.sq / n - mean**2, 0))
        return {"mean": _chw(mean), "std": _chw(std), "min": _chw(self.min), "max": _chw(self.max),
                "count": [self.frames]}


def _chw(rgb: np.ndarray) -> list:
    """Per-channel values in 0..255 as LeRobot's (3, 1, 1) image statistics in [0, 1]."""
    return (np.asarray(rgb, np.float64) / 255).reshape(3, 1, 1).tolist()


def export(dataset: Path, out: Path, embodiment: str = "", video: VideoConfig | None = None,
           limits: FileLimits | None = None) -> int:
    """Write the episodes of one embodiment as a LeRobotDataset v3; returns the number of frames."""
    cfg = video or VideoConfig(pix_fmt="yuv420p")  # LeRobot's own encoding (and what its players expect)
    limits = limits or FileLimits()
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
    data = _DataFiles(out, spec.dof, limits)
    videos: dict[str, _VideoFiles] = {}
    sums = {k: [] for k in NUMERIC}
    ep_rows: list[dict] = []
    rows = [r for r in ix.table.to_pylist() if r["embodiment"] == name]
    for e, (meta, row) in enumerate(zip(metas, rows)):
        ep = read_packed_episode(ix.root, row, spec.joint_names)
        grid = ep.arrays[ACTION_STAMP]
        task = meta.instruction or meta.task
        state = ep.arrays[JOINT_POSITION][_latest(ep.arrays[JOINT_STAMP], grid)]
        action = ep.arrays[ACTION_POSITION]
        lo = data.total
        chunk, file = data.add(e, state, action, fps, tasks.index(task))
        row = {"episode_index": e, "tasks": [task], "length": len(grid), "data/chunk_index": chunk,
               "data/file_index": file, "dataset_from_index": lo, "dataset_to_index": data.total,
               "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0,
               "gen_theta/episode": meta.episode, "gen_theta/task": meta.task,
               "gen_theta/category": meta.category, "gen_theta/success": meta.success,
               "gen_theta/start_ns": int(grid[0])}
        for cam in ep.cameras:
            key = video_key(cam.name)
            if key not in videos:
                videos[key] = _VideoFiles(out, key, cam.width, cam.height, fps, cfg, limits)
            v = videos[key]
            row.update(v.start_episode())
            reader = VideoReader(ep.path / cam.file, gop=cam.gop)
            for i in _latest(ep.arrays[camera_stamp_key(cam.name)], grid):
                v.add(reader.frame(cam.offset + int(i)))
            reader.close()
            row[f"videos/{key}/to_timestamp"] = v.writer.count / fps
        for k, x in zip(NUMERIC, (state, action), strict=True):
            sums[k].append(x.astype(np.float32))
        ep_rows.append(row)
    data.flush()
    for v in videos.values():
        v.writer.close()
    pq.write_table(pa.Table.from_pylist(ep_rows), _mkdir(out / EPISODES_META))
    _write_tasks(out, tasks)
    stats = {}
    for k in NUMERIC:
        x = np.concatenate(sums[k]).astype(np.float64)
        stats[k] = {"mean": x.mean(0).tolist(), "std": x.std(0).tolist(), "min": x.min(0).tolist(),
                    "max": x.max(0).tolist(), "count": [len(x)]}
    stats.update({k: v.stats() for k, v in videos.items()})
    (out / "meta/stats.json").write_text(json.dumps(stats, indent=1))
    features = {k: {"dtype": "float32", "shape": [spec.dof], "names": spec.joint_names} for k in NUMERIC}
    for k, dtype in (("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
                     ("index", "int64"), ("task_index", "int64")):
        features[k] = {"dtype": dtype, "shape": [1], "names": None}
    codec = CODEC_NAMES.get(cfg.codec, cfg.codec)
    for cam in spec.cameras:
        key = video_key(cam.name)
        if key in videos:
            w = videos[key].writer
            features[key] = {"dtype": "video", "shape": [w.height, w.width, 3],
                             "names": ["height", "width", "channels"],
                             "info": {"video.height": w.height, "video.width": w.width, "video.codec": codec,
                                      "video.pix_fmt": w.pix_fmt, "video.is_depth_map": False, "video.fps": fps,
                                      "video.channels": 3, "has_audio": False}}
    info = {"codebase_version": "v3.0", "robot_type": name, "total_episodes": len(metas),
            "total_frames": data.total, "total_tasks": len(tasks), "chunks_size": limits.chunks_size,
            "data_files_size_in_mb": limits.data_mb, "video_files_size_in_mb": limits.video_mb, "fps": fps,
            "splits": {"train": f"0:{len(metas)}"}, "data_path": DATA_PATH, "video_path": VIDEO_PATH,
            "features": features}
    (out / "meta/info.json").write_text(json.dumps(info, indent=1))
    return data.total


def _write_tasks(out: Path, tasks: list[str]) -> None:
    """meta/tasks.parquet as LeRobot writes it (pandas ``DataFrame({"task_index": ...}, index=tasks)``):
    the strings are the index, so ``tasks.iloc[task_index].name`` is the task string.
    """
    pandas = {"index_columns": ["__index_level_0__"],
              "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
                                  "metadata": {"encoding": "UTF-8"}}],
              "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                           "numpy_type": "int64", "metadata": None},
                          {"name": None, "field_name": "__index_level_0__", "pandas_type": "unicode",
                           "numpy_type": "object", "metadata": None}],
              "attributes": {}, "creator": {"library": "pyarrow", "version": pa.__version__}}
    table = pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()), "__index_level_0__": tasks})
    pq.write_table(table.replace_schema_metadata({"pandas": json.dumps(pandas)}), _mkdir(out / TASKS))


def import_dataset(src: Path, out: Path, robot: str, video: VideoConfig | None = None) -> int:
    """Turn a LeRobotDataset v3 (any number of data and video files) into gen_theta episodes under ``out``;
    returns the number of episodes.
    """
    spec = load_robot(robot)
    try:
        info = json.loads((src / "meta/info.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{src}: not a LeRobotDataset (meta/info.json: {err})") from err
    if not str(info.get("codebase_version", "")).startswith("v3"):
        raise ValueError(f"{src}: codebase_version {info.get('codebase_version')!r}, only v3.x is supported")
    fps = float(info["fps"])
    feats = info["features"]
    for key in NUMERIC:
        names = feats[key].get("names")
        if isinstance(names, list) and len(names) == spec.dof and names != spec.joint_names:
            raise ValueError(f"{src}: {key} joint names {names} do not match '{robot}' {spec.joint_names}")
        if feats[key]["shape"] != [spec.dof]:
            raise ValueError(f"{src}: {key} has shape {feats[key]['shape']}, '{robot}' has {spec.dof} joints")
    cams = {k.removeprefix("observation.images."): f.get("info") or {} for k, f in feats.items()
            if f.get("dtype") == "video"}
    unknown = [c for c in cams if c not in [c.name for c in spec.cameras]]
    if unknown:
        raise ValueError(f"{src}: camera '{unknown[0]}' is not a camera of '{robot}'")
    for c, vinfo in cams.items():
        codec = vinfo.get("video.codec", "h264")
        try:
            av.codec.Codec(codec, "r")
        except av.codec.codec.UnknownCodecError as err:
            raise ValueError(f"{src}: camera '{c}' is {codec} video, which this PyAV build cannot decode") from err
    episodes = _read_episodes(src)
    data = _DataReader(src, info.get("data_path", DATA_PATH))
    videos = {c: _VideoSource(src, info.get("video_path", VIDEO_PATH), c, float(v.get("video.fps") or fps))
              for c, v in cams.items()}
    step_ns = int(round(1e9 / spec.control_rate_hz))
    for row in episodes:
        rows = data.episode(row)
        start = int(row.get("gen_theta/start_ns") or 0)
        # float32 seconds in the parquet: round to the microsecond to get the grid back exactly
        t_ns = start + (rows["timestamp"] * 1e6).round().astype(np.int64) * 1000
        episode = row.get("gen_theta/episode") or f"lerobot_{src.name}_{row['episode_index']:06d}"
        w = EpisodeWriter(out / EPISODES, episode, spec, video or VideoConfig())
        for c, v in videos.items():
            for i, frame in enumerate(v.frames(row, rows["timestamp"])):
                w.add_frame(c, int(t_ns[i]), frame)
        state, action = rows["observation.state"], rows["action"]
        grid = np.arange(t_ns[0], t_ns[-1] + 1, step_ns, dtype=np.int64)
        q, qd = resample_positions(t_ns, action, grid, spec.continuous_mask)
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
    for v in videos.values():
        v.close()
    finalize_dataset(out, {spec.name: spec})
    return len(episodes)


def _read_episodes(src: Path) -> list[dict]:
    """Every row of meta/episodes/chunk-*/file-*.parquet (per-episode statistics left out), by episode_index."""
    files = sorted((src / "meta/episodes").glob("chunk-*/file-*.parquet"))
    if not files:
        raise ValueError(f"{src}: no meta/episodes/chunk-*/file-*.parquet")
    rows = []
    for f in files:
        table = pq.read_table(f)
        rows += table.select([c for c in table.column_names if not c.startswith("stats/")]).to_pylist()
    return sorted(rows, key=lambda r: r["episode_index"])


class _DataReader:
    """The frame rows of one episode, from the data file that meta/episodes names (one file open at a time)."""

    def __init__(self, src: Path, template: str) -> None:
        self.src, self.template, self.path, self.table = src, template, None, None

    def episode(self, row: dict) -> dict[str, np.ndarray]:
        """Rows dataset_from_index..dataset_to_index: timestamp (n,) s, observation.state and action (n, dof)."""
        path = self.src / self.template.format(chunk_index=row["data/chunk_index"], file_index=row["data/file_index"])
        if path != self.path:
            try:
                self.table = pq.read_table(path, columns=["index", "timestamp", *NUMERIC])
            except (OSError, pa.ArrowInvalid) as err:
                raise ValueError(f"{path}: cannot read episode {row['episode_index']}'s data: {err}") from err
            self.path = path
        index = self.table["index"].to_numpy()
        lo, hi = np.searchsorted(index, [row["dataset_from_index"], row["dataset_to_index"]])
        if hi - lo != row["dataset_to_index"] - row["dataset_from_index"]:
            raise ValueError(f"{path}: holds {hi - lo} rows of episode {row['episode_index']}, meta/episodes says "
                             f"{row['dataset_to_index'] - row['dataset_from_index']}")
        part = self.table.slice(lo, hi - lo)
        return {"timestamp": part["timestamp"].to_numpy().astype(np.float64),
                **{k: np.stack(part[k].to_numpy(zero_copy_only=False)).astype(np.float64) for k in NUMERIC}}


class _VideoSource:
    """One camera's frames for an episode, from the video file and time range that meta/episodes names."""

    def __init__(self, src: Path, template: str, camera: str, fps: float) -> None:
        self.src, self.template, self.key, self.fps = src, template, video_key(camera), fps
        self.path, self.reader = None, None

    def frames(self, row: dict, timestamps: np.ndarray) -> list[np.ndarray]:
        """(H, W, 3) uint8 frames at ``from_timestamp + timestamps`` (s) of the episode's video file."""
        k = f"videos/{self.key}"
        path = self.src / self.template.format(video_key=self.key, chunk_index=row[f"{k}/chunk_index"],
                                               file_index=row[f"{k}/file_index"])
        if path != self.path:
            self.close()
            self.reader, self.path = VideoReader(path), path
        first = row[f"{k}/from_timestamp"]
        return [self.reader.frame(int(round((first + t) * self.fps))) for t in timestamps]

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()


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
    ex.add_argument("--codec", default="libx264", help="PyAV video encoder (libsvtav1: LeRobot's own)")
    ex.add_argument("--data-file-mb", type=float, default=FileLimits.data_mb, help="MiB of rows per data file")
    ex.add_argument("--video-file-mb", type=float, default=FileLimits.video_mb, help="MiB per video file")
    ex.add_argument("--chunks-size", type=int, default=FileLimits.chunks_size, help="files per chunk directory")
    im = sub.add_parser("import", help="LeRobotDataset v3 -> gen_theta dataset")
    im.add_argument("lerobot")
    im.add_argument("out")
    im.add_argument("--robot", required=True, help="robot name or YAML whose joints match the dataset")
    a = ap.parse_args(argv)
    try:
        if a.cmd == "export":
            n = export(Path(a.dataset), Path(a.out), a.embodiment, VideoConfig(codec=a.codec, pix_fmt="yuv420p"),
                       FileLimits(a.data_file_mb, a.video_file_mb, a.chunks_size))
            print(f"lerobot export: {n} frames -> {a.out}")
        else:
            n = import_dataset(Path(a.lerobot), Path(a.out), a.robot)
            print(f"lerobot import: {n} episodes -> {a.out}")
    except (ValueError, FileExistsError, KeyError) as err:
        print(f"gen-theta lerobot: {err}", file=sys.stderr)
        return 2
    return 0
