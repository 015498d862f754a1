"""One dataset episode on disk: numeric streams, camera videos and metadata.

Layout (docs/dataset_format.md)::

    episodes/<id>/episode.yaml          EpisodeMeta + per-camera video facts + moments
    episodes/<id>/streams.safetensors   numeric streams, each with its own int64 ns stamps
    episodes/<id>/<camera>.mp4          one video per camera (pts = frame index)

An episode is written into a temporary sibling directory and renamed into place
when complete, so a crash or a bad input never leaves a half episode behind.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from safetensors.numpy import load_file, save

from gen_theta_model.data.stats import Moments
from gen_theta_model.data.video import VideoConfig, VideoWriter
from gen_theta_model.embodiment import EmbodimentSpec

JOINT_STAMP = "joint_states.stamp_ns"
JOINT_POSITION = "joint_states.position"
JOINT_VELOCITY = "joint_states.velocity"
ACTION_STAMP = "action.stamp_ns"
ACTION_POSITION = "action.position"
ACTION_VELOCITY = "action.velocity"
COMMAND_STAMP = "commands.stamp_ns"


def camera_stamp_key(camera: str) -> str:
    return f"camera.{camera}.stamp_ns"


@dataclass(frozen=True)
class EpisodeMeta:
    """What is known about an episode; also the first columns of its row in the dataset index."""

    episode: str  # unique id (the bag directory name)
    embodiment: str
    urdf_sha256: str = ""
    task: str = ""
    category: str = ""  # dexterity | real_world | generalization | ...
    instruction: str = ""
    success: bool | None = None  # None: never marked
    start_ns: int = 0  # first stamp of any stream, ns since the epoch
    duration_s: float = 0.0
    num_trajectories: int = 0  # JointTrajectory commands in the episode
    complete: bool = True  # False: recovered from a bag that was never closed
    source: str = ""  # the bag it came from

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CameraInfo:
    name: str
    file: str
    width: int
    height: int
    fps: float
    frames: int
    gop: int
    offset: int = 0  # index of the episode's first frame in ``file`` (a shard holds many episodes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EpisodeFiles:
    """What ``EpisodeWriter.finish`` wrote: metadata, cameras and per-episode moments."""

    meta: EpisodeMeta
    cameras: list[CameraInfo] = field(default_factory=list)
    state_moments: Moments | None = None  # canonical joint positions
    action_moments: Moments | None = None  # canonical commanded positions


class EpisodeWriter:
    """Write one episode under ``episodes_dir/<episode>``; nothing appears there until ``finish``.

    Frames are streamed to the encoder as they arrive (``add_frame``), numeric
    streams are given whole (``set_streams``), then ``finish(meta)`` renames the
    temporary directory into place. ``abort()`` removes everything.
    """

    def __init__(self, episodes_dir: str | Path, episode: str, spec: EmbodimentSpec, video: VideoConfig) -> None:
        self.final = Path(episodes_dir) / episode
        if self.final.exists():
            raise FileExistsError(f"{self.final}: episode exists already, not overwriting")
        self.tmp = Path(episodes_dir) / f".{episode}.tmp-{os.getpid()}"
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self.spec = spec
        self.video = video
        self._writers: dict[str, VideoWriter] = {}
        self._fps = {c.name: c.fps for c in spec.cameras}
        self._stamps: dict[str, list[int]] = {}
        self._arrays: dict[str, np.ndarray] = {}

    def add_frame(self, camera: str, stamp_ns: int, image: np.ndarray) -> None:
        """Append a (H, W, 3) uint8 rgb frame of ``camera`` sensed at ``stamp_ns``."""
        if camera not in self._writers:
            h, w = image.shape[:2]
            path = self.tmp / f"{camera}.mp4"
            self._writers[camera] = VideoWriter(path, w, h, self._fps.get(camera, 15.0), self.video)
            self._stamps[camera] = []
        stamps = self._stamps[camera]
        if stamps and stamp_ns <= stamps[-1]:
            raise ValueError(
                f"camera '{camera}': frame stamp {stamp_ns} ns does not increase (previous {stamps[-1]} ns)"
            )
        self._writers[camera].add(image)
        stamps.append(int(stamp_ns))

    def set_streams(self, arrays: dict[str, np.ndarray]) -> None:
        """Numeric streams by key (module constants), e.g. JOINT_STAMP (N,) int64, JOINT_POSITION (N, dof)."""
        self._arrays.update(arrays)

    def finish(self, meta: EpisodeMeta) -> EpisodeFiles:
        cams = []
        for name, writer in self._writers.items():
            writer.close()
            fps = self._fps.get(name, 15.0)
            cams.append(CameraInfo(name, writer.path.name, writer.width, writer.height, fps, writer.count,
                                   self.video.gop))
            self._arrays[camera_stamp_key(name)] = np.asarray(self._stamps[name], dtype=np.int64)
        self._writers = {}
        arrays = {k: np.ascontiguousarray(v) for k, v in self._arrays.items()}
        (self.tmp / "streams.safetensors").write_bytes(save(arrays))  # a full disk: OSError, as for the videos
        files = EpisodeFiles(
            meta=meta,
            cameras=cams,
            state_moments=Moments.of(self.spec.normalize(arrays[JOINT_POSITION])),
            action_moments=Moments.of(self.spec.normalize(arrays[ACTION_POSITION])),
        )
        doc = {
            "meta": meta.to_dict(),
            "joint_names": self.spec.joint_names,
            "cameras": [c.to_dict() for c in cams],
            "moments": {"state": files.state_moments.to_dict(), "action": files.action_moments.to_dict()},
        }
        (self.tmp / "episode.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        self.tmp.rename(self.final)
        return files

    def abort(self) -> None:
        for writer in self._writers.values():
            writer.discard()
        self._writers = {}
        shutil.rmtree(self.tmp, ignore_errors=True)


@dataclass
class EpisodeData:
    """An episode read back: metadata, joint names, camera facts and the numeric streams."""

    path: Path
    meta: EpisodeMeta
    joint_names: list[str]
    cameras: list[CameraInfo]
    arrays: dict[str, np.ndarray]
    state_moments: Moments
    action_moments: Moments


def read_episode_doc(path: str | Path) -> dict[str, Any]:
    p = Path(path) / "episode.yaml"
    try:
        return yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"{p}: cannot read episode metadata: {err}") from err


def load_episode(path: str | Path) -> EpisodeData:
    """Read an episode directory (metadata and every numeric stream)."""
    p = Path(path)
    doc = read_episode_doc(p)
    return EpisodeData(
        path=p,
        meta=EpisodeMeta(**doc["meta"]),
        joint_names=list(doc["joint_names"]),
        cameras=[CameraInfo(**c) for c in doc["cameras"]],
        arrays=load_file(str(p / "streams.safetensors")),
        state_moments=Moments.from_dict(doc["moments"]["state"]),
        action_moments=Moments.from_dict(doc["moments"]["action"]),
    )
