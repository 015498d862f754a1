"""A torch Dataset over ingested episodes: one sample = (episode, action step t).

Given a sample key ``(episode, step, seed)`` it returns the layout of
gen_theta_model/batch.py: the latest frame of each camera at or before t and its
age, the last ``history`` joint states at or before t with their ages (with
``harmonic.max_staleness_s``: at or before t - s, s drawn per sample, ages still to t), the
commanded positions t + k/rate for k < H (canonical), the committed-prefix
length, and the embodiment/episode indices. Only the frames a sample needs are
decoded. Decoders are kept open per worker in a bounded LRU keyed by (shard video,
slot): random access uses slot 0 (one decoder per shard video, seeking), the
streaming loader one slot per episode it reads at a time (each decodes forward).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
from safetensors import safe_open
from torch.utils.data import Dataset

from gen_theta_model import batch
from gen_theta_model.data.episode import (
    ACTION_POSITION,
    ACTION_STAMP,
    JOINT_POSITION,
    JOINT_STAMP,
    CameraInfo,
    camera_stamp_key,
)
from gen_theta_model.data.index import EpisodeIndex
from gen_theta_model.data.object_poses import OBJECT_POSITION, OBJECT_STAMP, objects_at
from gen_theta_model.data.shards import STREAMS
from gen_theta_model.data.video import VideoReader
from gen_theta_model.embodiment import EmbodimentSpec
from gen_theta_model.harmonic import HarmonicConfig, sample_delay, sample_staleness_ns
from gen_theta_model.observation import ObservationConfig, build_observation

NEXT_EVENT = "next_gripper_event"  # (N,) per action step: the step of the next gripper event (KEYPOSE)


class EpisodeDataset(Dataset):
    """Map-style dataset; keys are ``(episode index, step, seed)`` tuples from a sampler."""

    def __init__(
        self,
        episodes: EpisodeIndex,
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
        return int((self.episodes.num_steps - self.episodes.first_step).sum())

    def _caches(self) -> None:
        # Decoders, open shard files and arrays are per process: a DataLoader worker builds its own.
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._readers: OrderedDict[tuple[Path, str, int], VideoReader] = OrderedDict()
            self._shards: OrderedDict[Path, tuple[object, set[str]]] = OrderedDict()  # handle, its keys
            self._arrays: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()

    def arrays(self, ep: int) -> dict[str, np.ndarray]:
        """Numeric streams a sample of episode ``ep`` needs (kept for the last 64 episodes used)."""
        self._caches()
        if ep not in self._arrays:
            ref = self.episodes[ep]
            if ref.path not in self._shards:
                handle = safe_open(str(ref.path / STREAMS), framework="numpy")
                self._shards[ref.path] = (handle, set(handle.keys()))
                if len(self._shards) > 8:
                    self._shards.popitem(last=False)
            self._shards.move_to_end(ref.path)
            shard, recorded = self._shards[ref.path]
            keys = [JOINT_STAMP, JOINT_POSITION, ACTION_STAMP, ACTION_POSITION]
            keys += [camera_stamp_key(c.name) for c in ref.cameras]
            # object poses only where the source published them
            keys += [k for k in (OBJECT_STAMP, OBJECT_POSITION) if f"{ref.meta.episode}/{k}" in recorded]
            self._arrays[ep] = {k: shard.get_tensor(f"{ref.meta.episode}/{k}") for k in keys}
            spec = self.specs[ref.embodiment_index]
            self._arrays[ep][NEXT_EVENT] = spec.next_gripper_event(self._arrays[ep][ACTION_POSITION])
            if len(self._arrays) > 64:
                self._arrays.popitem(last=False)
        self._arrays.move_to_end(ep)
        return self._arrays[ep]

    def frame(self, ep: int, camera: CameraInfo, index: int, slot: int = 0) -> np.ndarray:
        """Frame ``index`` of a camera of episode ``ep``, (H, W, 3) uint8, decoded by decoder ``slot``."""
        self._caches()
        key = (self.episodes[ep].path, camera.file, slot)
        reader = self._readers.get(key)
        if reader is None:
            reader = VideoReader(key[0] / camera.file, gop=camera.gop)
            self._readers[key] = reader
            if len(self._readers) > self.max_open_videos:
                self._readers.popitem(last=False)[1].close()
        self._readers.move_to_end(key)
        return reader.frame(camera.offset + index)

    def __getitem__(self, key: tuple[int, int, int]) -> dict[str, np.ndarray]:
        ep, step, seed = (int(v) for v in key)
        return self.sample(ep, step, seed)

    def sample(self, ep: int, step: int, seed: int, slot: int = 0) -> dict[str, np.ndarray]:
        """Build the sample at action ``step`` of episode ``ep``; ``seed`` drives delay and augmentation."""
        ref = self.episodes[ep]
        spec = self.specs[ref.embodiment_index]
        rng = np.random.default_rng(seed)
        arrays = self.arrays(ep)
        t = int(arrays[ACTION_STAMP][step])
        js = arrays[JOINT_STAMP]
        # The streams as seen `staleness` before the chunk starts, never before the first joint state.
        seen = max(t - sample_staleness_ns(self.harmonic, rng), int(js[0]))

        frames: dict[str, np.ndarray | None] = {}
        ages: dict[str, float] = {}
        for cam in ref.cameras:
            stamps = arrays[camera_stamp_key(cam.name)]
            i = int(np.searchsorted(stamps, seen, side="right")) - 1
            if i < 0:
                frames[cam.name] = None
                continue
            image = self.frame(ep, cam, i, slot)
            frames[cam.name] = augment_image(image, rng) if self.augment else image
            ages[cam.name] = (t - int(stamps[i])) * 1e-9

        j = int(np.searchsorted(js, seen, side="right"))
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
        keypose = spec.normalize(arrays[ACTION_POSITION][arrays[NEXT_EVENT][step]]).astype(np.float32)
        sample[batch.KEYPOSE], _ = spec.pad(keypose, self.obs.max_dof)
        sample[batch.OBJECTS], sample[batch.OBJECTS_MASK] = objects_at(
            arrays.get(OBJECT_STAMP, np.zeros(0, np.int64)), arrays.get(OBJECT_POSITION), t, batch.MAX_OBJECTS)
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
