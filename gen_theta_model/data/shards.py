"""Shards: many episodes per file set, found through a Parquet index (docs/dataset_format.md).

A shard directory ``shards/<name>/`` holds

- ``streams.safetensors``: every numeric stream of its episodes, keyed
  ``<episode>/<stream>`` (stamps int64 ns, joint and action values float32);
- ``<camera>-<k>.mp4``: the frames of that camera for its episodes back to back,
  each episode starting on a keyframe (``k`` counts files of different size, rate
  or codec settings within the shard; usually only ``-0``).

Episodes are written one directory each while ingest runs (``EpisodeWriter``) and
then packed into shards: video packets are copied (no re-encoding), numeric
streams concatenated into one file. Each packed episode becomes one row of the
index (``INDEX_SCHEMA``): its metadata, where its data lie, the steps a sample can
start at and the moments for statistics, so that opening a dataset reads the index
and never touches the episodes.
"""

from __future__ import annotations

import shutil
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from safetensors import safe_open
from safetensors.numpy import save

from gen_theta_model.data.episode import (
    ACTION_STAMP,
    JOINT_STAMP,
    CameraInfo,
    EpisodeData,
    EpisodeMeta,
    camera_stamp_key,
    load_episode,
)
from gen_theta_model.data.stats import Moments

SHARDS = "shards"
STREAMS = "streams.safetensors"
SHARD_EPISODES = 256  # episodes per shard: a shard's mp4 index (moov) is read whole on open, ~1 ms per 1,000 frames

_MOMENTS = pa.struct([("count", pa.int64()), ("sum", pa.list_(pa.float64())), ("sum_sq", pa.list_(pa.float64())),
                      ("min", pa.list_(pa.float64())), ("max", pa.list_(pa.float64()))])
# In CameraInfo's field order (the loader builds CameraInfo(*row.values()) for speed).
_CAMERA = pa.struct([("name", pa.string()), ("file", pa.string()), ("width", pa.int64()), ("height", pa.int64()),
                     ("fps", pa.float64()), ("frames", pa.int64()), ("gop", pa.int64()), ("offset", pa.int64())])
META_FIELDS = [("episode", pa.string()), ("embodiment", pa.string()), ("urdf_sha256", pa.string()),
               ("task", pa.string()), ("category", pa.string()), ("instruction", pa.string()),
               ("success", pa.bool_()), ("start_ns", pa.int64()), ("duration_s", pa.float64()),
               ("num_trajectories", pa.int64()), ("complete", pa.bool_()), ("source", pa.string())]
INDEX_SCHEMA = pa.schema(META_FIELDS + [
    ("shard", pa.string()),  # shard directory, relative to the dataset root (absolute in a scaling view)
    ("num_steps", pa.int64()),  # action steps (control-rate grid)
    ("first_step", pa.int64()),  # first step at which every stream has an observation
    ("cameras", pa.list_(_CAMERA)),
    ("state_moments", _MOMENTS),  # canonical joint positions
    ("action_moments", _MOMENTS),  # canonical commanded positions
])


def _float32(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.ascontiguousarray(v.astype(np.float32) if v.dtype == np.float64 else v) for k, v in arrays.items()}


def first_step(arrays: dict[str, np.ndarray], cameras: list[CameraInfo]) -> int:
    """First action step at which the joint states and every camera have started."""
    steps = arrays[ACTION_STAMP]
    starts = [arrays[JOINT_STAMP][:1]] + [arrays[camera_stamp_key(c.name)][:1] for c in cameras]
    if any(len(s) == 0 for s in starts):
        return len(steps)
    return int(np.searchsorted(steps, max(int(s[0]) for s in starts), side="left"))


class VideoConcat:
    """Append whole mp4 files of one camera to one mp4 by copying their packets.

    Each appended file starts on a keyframe (every file ``VideoWriter`` writes does), so
    every episode in the shard can be decoded from its first frame.
    """

    def __init__(self, path: Path, template: av.video.stream.VideoStream) -> None:
        self.path = path
        self.frames = 0
        self._out = av.open(str(path), mode="w")
        self._stream = self._out.add_stream_from_template(template)
        self.key = stream_key(template)

    def append(self, src: Path) -> int:
        """Copy every frame of ``src``; returns the index of its first frame in this file."""
        offset = self.frames
        with av.open(str(src)) as inp:
            stream = inp.streams.video[0]
            rate = Fraction(stream.average_rate)
            tb = stream.time_base
            for packet in inp.demux(stream):
                if packet.dts is None:  # the demuxer's end-of-stream marker
                    continue
                index = int(round(packet.pts * tb * rate))
                packet.time_base = 1 / rate  # pts, dts and duration in frames; the muxer rescales them
                packet.pts = packet.dts = offset + index
                packet.duration = 1
                packet.stream = self._stream
                self._out.mux(packet)
                self.frames = max(self.frames, offset + index + 1)
        return offset

    def close(self) -> None:
        self._out.close()


def stream_key(stream: av.video.stream.VideoStream) -> tuple:
    """Return what two videos must share to be concatenated by copying packets."""
    ctx = stream.codec_context
    return ctx.name, ctx.width, ctx.height, ctx.pix_fmt, Fraction(stream.average_rate), bytes(ctx.extradata or b"")


def pack_shard(episode_dirs: list[Path], root: Path, name: str) -> list[dict]:
    """Pack episode directories (as ``EpisodeWriter`` writes them) into ``root/shards/<name>``.

    Returns one index row per episode. The shard is built in a temporary directory and
    renamed when complete; the episode directories are left for the caller to remove.
    """
    final = root / SHARDS / name
    tmp = root / SHARDS / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    videos: dict[tuple[str, tuple], VideoConcat] = {}
    arrays: dict[str, np.ndarray] = {}
    rows = []
    try:
        for d in episode_dirs:
            ep = load_episode(d)
            arrays.update({f"{ep.meta.episode}/{k}": v for k, v in _float32(ep.arrays).items()})
            cams = []
            for cam in ep.cameras:
                with av.open(str(d / cam.file)) as inp:
                    key = (cam.name, stream_key(inp.streams.video[0]))
                    if key not in videos:
                        k = sum(c == cam.name for c, _ in videos)
                        videos[key] = VideoConcat(tmp / f"{cam.name}-{k}.mp4", inp.streams.video[0])
                offset = videos[key].append(d / cam.file)
                cams.append({**cam.to_dict(), "file": videos[key].path.name, "offset": offset})
            rows.append({**ep.meta.to_dict(), "shard": f"{SHARDS}/{name}", "num_steps": len(ep.arrays[ACTION_STAMP]),
                         "first_step": first_step(ep.arrays, ep.cameras), "cameras": cams,
                         "state_moments": ep.state_moments.to_dict(), "action_moments": ep.action_moments.to_dict()})
        for v in videos.values():
            v.close()
        (tmp / STREAMS).write_bytes(save(arrays))
        tmp.rename(final)
    except BaseException:
        for v in videos.values():
            v.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return rows


def index_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=INDEX_SCHEMA)


def write_index_part(path: Path, table: pa.Table) -> None:
    """Write one index file atomically (a temporary name, then a rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


def read_index(paths: list[Path], columns: list[str] | None = None) -> pa.Table:
    """Read the rows of every index file, in file order (``columns``: only those)."""
    tables = [pq.read_table(p, columns=columns, schema=INDEX_SCHEMA) for p in paths]
    if not tables:
        schema = INDEX_SCHEMA if columns is None else pa.schema([INDEX_SCHEMA.field(c) for c in columns])
        return schema.empty_table()
    return pa.concat_tables(tables)


def read_packed_episode(root: Path, row: dict, joint_names: list[str]) -> EpisodeData:
    """One episode of a shard (an index row as a dict): metadata, cameras (with offsets) and streams.

    ``EpisodeData.path`` is the shard directory: camera ``c``'s frame i is frame
    ``c.offset + i`` of ``path / c.file``.
    """
    shard = root / row["shard"]
    prefix = f"{row['episode']}/"
    with safe_open(str(shard / STREAMS), framework="numpy") as f:
        arrays = {k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
    meta = EpisodeMeta(**{name: row[name] for name, _ in META_FIELDS})
    return EpisodeData(path=shard, meta=meta, joint_names=joint_names,
                       cameras=[CameraInfo(**c) for c in row["cameras"]], arrays=arrays,
                       state_moments=Moments.from_dict(row["state_moments"]),
                       action_moments=Moments.from_dict(row["action_moments"]))
