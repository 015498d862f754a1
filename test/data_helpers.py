"""Synthetic episodes written through the real dataset writer (real mp4, real safetensors).

Frame i of a camera is a flat image of value ``frame_value(i)`` so a test can tell
which frame a sample got; joint positions and commands are smooth known functions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gen_theta_model.data.episode import (
    ACTION_POSITION,
    ACTION_STAMP,
    ACTION_VELOCITY,
    COMMAND_STAMP,
    JOINT_POSITION,
    JOINT_STAMP,
    JOINT_VELOCITY,
    EpisodeData,
    EpisodeMeta,
    EpisodeWriter,
)
from gen_theta_model.data.manifest import EPISODES
from gen_theta_model.data.video import VideoConfig, decode_all
from gen_theta_model.embodiment import EmbodimentSpec

T0 = 1_700_000_000_000_000_000  # ns since the epoch


def frame_value(i: int) -> int:
    return (40 + 9 * i) % 200 + 20


def joint_positions(spec: EmbodimentSpec, t: np.ndarray) -> np.ndarray:
    """(N, dof) smooth positions inside the limits at times t (s)."""
    mid, half = (spec.lower + spec.upper) / 2, (spec.upper - spec.lower) / 2
    phase = np.arange(spec.dof)[None, :]
    return mid + 0.5 * half * np.sin(0.7 * t[:, None] + phase)


def make_episode(
    root: Path, spec: EmbodimentSpec, episode: str, duration: float = 2.0, task: str = "pick",
    category: str = "real_world", instruction: str = "pick the cube", seed: int = 0,
    video: VideoConfig | None = None,
) -> EpisodeMeta:
    rng = np.random.default_rng(seed)
    w = EpisodeWriter(root / EPISODES, episode, spec, video or VideoConfig())
    for cam in spec.cameras:
        n = int(duration * cam.fps)
        t = np.arange(n) / cam.fps + rng.uniform(0, 0.02)
        for i in range(n):
            w.add_frame(cam.name, T0 + int(t[i] * 1e9), np.full((cam.height, cam.width, 3), frame_value(i), np.uint8))
    js_t = np.arange(0.0, duration, 0.01) + rng.uniform(0, 0.003, int(round(duration / 0.01)))
    a_t = np.arange(0.0, duration, 1.0 / spec.control_rate_hz)
    w.set_streams({
        JOINT_STAMP: (T0 + js_t * 1e9).astype(np.int64),
        JOINT_POSITION: joint_positions(spec, js_t),
        JOINT_VELOCITY: np.zeros((len(js_t), spec.dof)),
        ACTION_STAMP: (T0 + a_t * 1e9).astype(np.int64),
        ACTION_POSITION: joint_positions(spec, a_t + 0.1),
        ACTION_VELOCITY: np.zeros((len(a_t), spec.dof)),
        COMMAND_STAMP: np.array([T0], dtype=np.int64),
    })
    meta = EpisodeMeta(episode=episode, embodiment=spec.name, urdf_sha256=spec.urdf_sha256, task=task,
                       category=category, instruction=instruction, success=True, start_ns=T0,
                       duration_s=duration, num_trajectories=1, source="synthetic")
    w.finish(meta)
    return meta


def episode_frames(episode: EpisodeData, camera: str) -> np.ndarray:
    """Every frame of one camera of a packed episode, (F, H, W, 3) uint8, decoded from its shard's video."""
    cam = next(c for c in episode.cameras if c.name == camera)
    return decode_all(episode.path / cam.file)[cam.offset: cam.offset + cam.frames]
