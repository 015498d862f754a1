"""The LeRobot side of the interop tests: run with the LeRobot venv's python, never the project's.

    python lerobot_side.py write ROOT SPEC.json   # LeRobot writes a multi-file dataset at ROOT
    python lerobot_side.py load ROOT OUT.npz      # LeRobot loads ROOT; every sample goes to OUT.npz

``write`` uses ``LeRobotDataset.create / add_frame / save_episode / finalize`` with LeRobot's own
encoder (libsvtav1), and file-size limits small enough that episodes start new data and
video files (and, at 2 files per chunk, new chunks). SPEC: fps, joint_names, cameras {name: [H, W]},
episodes (frames per episode), tasks (one per episode).
``load`` writes, per sample in index order: episode_index, frame_index, timestamp (s),
observation.state and action (float32), task (the string LeRobot returns) and every camera as
(N, H, W, 3) uint8 (LeRobot's float [0, 1] CHW frames times 255, rounded).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from lerobot.datasets.lerobot_dataset import LeRobotDataset


def frame_image(e: int, i: int, h: int, w: int) -> np.ndarray:
    """Draw a frame that tells (episode e < 5, frame i < 30) apart, (h, w, 3) uint8: a horizontal ramp, red
    level 20 + 6 i, blue 30 + 40 e, and a white bar 3 columns wide at column 3 i.
    """
    ramp = np.linspace(0, 40, w, dtype=np.float32)[None, :]
    img = np.empty((h, w, 3), np.float32)
    img[..., 0] = 20 + 6 * i + ramp
    img[..., 1] = 215 - ramp
    img[..., 2] = 30 + 40 * e + ramp
    img[:, 3 * i % w:3 * i % w + 3] = 250
    return img.astype(np.uint8)


def write(root: Path, spec: dict) -> None:
    dof = len(spec["joint_names"])
    features = {k: {"dtype": "float32", "shape": (dof,), "names": spec["joint_names"]}
                for k in ("observation.state", "action")}
    for cam, (h, w) in spec["cameras"].items():
        features[f"observation.images.{cam}"] = {"dtype": "video", "shape": (h, w, 3),
                                                 "names": ["height", "width", "channels"]}
    ds = LeRobotDataset.create("local/interop", fps=spec["fps"], features=features, root=root,
                               robot_type="interop", use_videos=True)
    # kB limits instead of 100 / 200 MB: episodes are split over data and video files, and a new
    # chunk starts every 2 files, as in any dataset over 100 MB of data or 200 MB of video.
    ds.meta.update_chunk_settings(chunks_size=2, data_files_size_in_mb=spec["data_mb"],
                                  video_files_size_in_mb=spec["video_mb"])
    for e, (n, task) in enumerate(zip(spec["episodes"], spec["tasks"], strict=True)):
        for i in range(n):
            t = i / spec["fps"]
            frame = {"observation.state": (np.sin(0.5 * t + np.arange(dof)) * 0.3 + 0.01 * e).astype(np.float32),
                     "action": (np.cos(0.5 * t + np.arange(dof)) * 0.3 + 0.01 * e).astype(np.float32),
                     "task": task}
            for cam, (h, w) in spec["cameras"].items():
                frame[f"observation.images.{cam}"] = frame_image(e, i, h, w)
            ds.add_frame(frame)
        ds.save_episode()
    ds.finalize()


def load(root: Path, out: Path) -> None:
    ds = LeRobotDataset("local/interop", root=root)
    cols: dict[str, list] = {}
    for i in range(len(ds)):
        item = ds[i]
        for k, v in item.items():
            if k.startswith("observation.images."):
                v = (v.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            elif hasattr(v, "numpy"):
                v = v.numpy()
            cols.setdefault(k, []).append(v)
    np.savez(out, **{k: np.asarray(v) for k, v in cols.items()})


if __name__ == "__main__":
    cmd, root = sys.argv[1], Path(sys.argv[2])
    if cmd == "write":
        write(root, json.loads(Path(sys.argv[3]).read_text()))
    elif cmd == "load":
        load(root, Path(sys.argv[3]))
    else:
        sys.exit(f"unknown command {cmd!r}: write | load")
