"""A torch Dataset over ingested episodes: one sample = (episode, action step t).

Given a sample key ``(episode, step, seed)`` it returns the layout of
gen_theta_model/batch.py: the latest frame of each camera at or before t and its
age, the last ``history`` joint states at or before t with their ages, the
commanded positions t + k/rate for k < H (canonical), the committed-prefix
length, and the embodiment/episode indices. Only the frames a sample needs are
decoded (seek to the keyframe, decoder kept open per worker).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from gen_theta_model import batch
from gen_theta_model.data.episode import (
    ACTION_POSITION,
    ACTION_STAMP,
    JOINT_POSITION,
    JOINT_STAMP,
    CameraInfo,
    EpisodeMeta,
    camera_stamp_key,
    read_episode_doc,
)
from gen_theta_model.data.video import VideoReader
from gen_theta_model.embodiment import EmbodimentSpec
from gen_theta_model.harmonic import HarmonicConfig, sample_delay
from gen_theta_model.observation import ObservationConfig, build_observation


@dataclass
class EpisodeRef:
    """One episode of the combined (possibly multi-directory) dataset."""

    path: Path  # episodes/<id>
    meta: EpisodeMeta
    dataset: str  # name of the sub-dataset (its directory name)
    embodiment_index: int
    cameras: list[CameraInfo]
    num_steps: int  # action steps in the episode (control-rate grid)
    first_step: int  # first step at which every stream has an observation


class EpisodeDataset(Dataset):
    """Map-style dataset; keys are ``(episode index, step, seed)`` tuples from a sampler."""

    def __init__(
        self,
        episodes: list[EpisodeRef],
        specs: list[EmbodimentSpec],
        obs: ObservationConfig,
        horizon: int,
        harmonic: HarmonicConfig,
        augment: bool = False,
        max_open_videos: int = 16,
    ) -> None:
        self.episodes = episodes
        self.specs = specs  # indexed by EpisodeRef.embodiment_index
        self.obs = obs
        self.horizon = horizon
        self.harmonic = harmonic
        self.augment = augment
        self.max_open_videos = max_open_videos
        self._pid = -1

    def __len__(self) -> int:
        return sum(e.num_steps - e.first_step for e in self.episodes)

    def _caches(self) -> None:
        # Decoders and arrays are per process: a DataLoader worker builds its own.
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._readers: OrderedDict[tuple[int, str], VideoReader] = OrderedDict()
            self._arrays: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()

    def arrays(self, ep: int) -> dict[str, np.ndarray]:
        """Numeric streams of episode ``ep`` (kept for the last 64 episodes used)."""
        self._caches()
        if ep not in self._arrays:
            from safetensors.numpy import load_file

            self._arrays[ep] = load_file(str(self.episodes[ep].path / "streams.safetensors"))
            if len(self._arrays) > 64:
                self._arrays.popitem(last=False)
        self._arrays.move_to_end(ep)
        return self._arrays[ep]

    def frame(self, ep: int, camera: CameraInfo, index: int) -> np.ndarray:
        """Frame ``index`` of a camera of episode ``ep``, (H, W, 3) uint8."""
        self._caches()
        key = (ep, camera.name)
        reader = self._readers.get(key)
        if reader is None:
            reader = VideoReader(self.episodes[ep].path / camera.file, gop=camera.gop)
            self._readers[key] = reader
            if len(self._readers) > self.max_open_videos:
                self._readers.popitem(last=False)[1].close()
        self._readers.move_to_end(key)
        return reader.frame(index)

    def __getitem__(self, key: tuple[int, int, int]) -> dict[str, np.ndarray]:
        ep, step, seed = (int(v) for v in key)
        ref = self.episodes[ep]
        spec = self.specs[ref.embodiment_index]
        rng = np.random.default_rng(seed)
        arrays = self.arrays(ep)
        t = int(arrays[ACTION_STAMP][step])

        frames: dict[str, np.ndarray | None] = {}
        ages: dict[str, float] = {}
        for cam in ref.cameras:
            stamps = arrays[camera_stamp_key(cam.name)]
            i = int(np.searchsorted(stamps, t, side="right")) - 1
            if i < 0:
                frames[cam.name] = None
                continue
            image = self.frame(ep, cam, i)
            frames[cam.name] = augment_image(image, rng) if self.augment else image
            ages[cam.name] = (t - int(stamps[i])) * 1e-9

        js = arrays[JOINT_STAMP]
        j = int(np.searchsorted(js, t, side="right"))
        lo = max(j - self.obs.history, 0)
        sample = build_observation(
            spec, frames, ages, arrays[JOINT_POSITION][lo:j], (t - js[lo:j]) * 1e-9, ref.meta.instruction, self.obs
        )

        actions = arrays[ACTION_POSITION][step: step + self.horizon]
        n = len(actions)
        canonical = np.zeros((self.horizon, spec.dof), dtype=np.float32)
        canonical[:n] = spec.normalize(actions)
        canonical[n:] = canonical[n - 1]  # past the end: hold the last command (masked out anyway)
        sample[batch.ACTION], _ = spec.pad(canonical, self.obs.max_dof)
        mask = np.zeros(self.horizon, dtype=bool)
        mask[:n] = True
        sample[batch.ACTION_MASK] = mask
        sample[batch.DELAY] = np.int64(min(sample_delay(self.harmonic, self.horizon, rng), max(n - 1, 0)))
        sample[batch.EMBODIMENT_INDEX] = np.int64(ref.embodiment_index)
        sample[batch.EPISODE_INDEX] = np.int64(ep)
        return sample


def augment_image(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Light photometric jitter: brightness +-10%, contrast +-10%, per frame. (H, W, 3) uint8."""
    x = image.astype(np.float32)
    mean = x.mean()
    x = (x - mean) * rng.uniform(0.9, 1.1) + mean * rng.uniform(0.9, 1.1)
    return np.clip(x, 0, 255).astype(np.uint8)


def episode_ref(path: Path, dataset: str, meta: EpisodeMeta, embodiment_index: int) -> EpisodeRef:
    """Index one episode: camera facts and the range of steps where every stream has started."""
    from safetensors import safe_open

    doc = read_episode_doc(path)
    cams = [CameraInfo(**c) for c in doc["cameras"]]
    with safe_open(str(path / "streams.safetensors"), framework="numpy") as f:
        steps = f.get_tensor(ACTION_STAMP)
        starts = [f.get_tensor(JOINT_STAMP)[:1]] + [f.get_tensor(camera_stamp_key(c.name))[:1] for c in cams]
    if any(len(s) == 0 for s in starts):
        first = len(steps)
    else:
        first = int(np.searchsorted(steps, max(int(s[0]) for s in starts), side="left"))
    return EpisodeRef(path, meta, dataset, embodiment_index, cams, len(steps), first)
