"""LeRobot interop checked by LeRobot itself: the real `lerobot` (0.4.4, its own venv) loads our exports,
and we import datasets that `lerobot` wrote, both split over several data and video files.

Collected only where the LeRobot venv exists (``LEROBOT_PYTHON``, default ``~/lrb/V/bin/python``,
built by ../shared/lerobot/setup.sh); lerobot runs in a subprocess (test/lerobot_side.py), offline.
Tolerances: numeric streams exact (float32). Import: frame-exact (every pixel of every frame as LeRobot
decodes it; the import re-encodes losslessly here). Export: the right frames (each frame's content is
distinct, and every frame must be nearest to the one it should be) within codec error (mean |difference|
per frame < 3 levels of 255; h264 yuv420p crf 23).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from data_helpers import episode_frames, make_episode
from lerobot_venv import LEROBOT_PYTHON, NO_VENV, run_side

from gen_theta_model.data.episode import (
    ACTION_POSITION,
    ACTION_STAMP,
    JOINT_POSITION,
    JOINT_STAMP,
    camera_stamp_key,
)
from gen_theta_model.data.lerobot import FileLimits, export, import_dataset
from gen_theta_model.data.manifest import finalize_dataset, open_dataset, read_episode
from gen_theta_model.data.video import VideoConfig
from gen_theta_model.embodiment import load_robot

SIDE = Path(__file__).with_name("lerobot_side.py")
TINY = FileLimits(data_mb=0.001, video_mb=0.001, chunks_size=2)  # a new file for every episode

pytestmark = pytest.mark.skipif(not LEROBOT_PYTHON.is_file(), reason=NO_VENV)


def lerobot(*args: str | Path) -> None:
    """Run test/lerobot_side.py with the LeRobot venv, offline."""
    run_side(SIDE, *args, hf_home=Path(args[1]).parent / "hf")


def assert_same_frames(got: np.ndarray, want: np.ndarray, what: str) -> float:
    """(N, H, W, 3) frames: each is nearest to its counterpart and within codec error; returns the worst mean error."""
    err = np.abs(got[:, None].astype(np.int16) - want[None].astype(np.int16)).mean(axis=(2, 3, 4))  # (N, N)
    assert (err.argmin(axis=1) == np.arange(len(got))).all(), f"{what}: frames out of place"
    worst = float(err.diagonal().max())
    assert worst < 3, f"{what}: mean |error| {worst:.2f} levels"
    return worst


def test_lerobot_loads_our_multi_file_export(tmp_path):
    spec = load_robot("arm6")
    src = tmp_path / "src"
    instructions = ["stack the blocks", "pick the cube", "stack the blocks"]
    for i, (text, duration) in enumerate(zip(instructions, (0.6, 0.8, 0.5), strict=True)):
        make_episode(src, spec, f"e{i}", duration=duration, instruction=text, seed=i)
    finalize_dataset(src, {"arm6": spec})
    out = tmp_path / "lr"
    n = export(src, out, limits=TINY)
    assert sorted(p.relative_to(out).as_posix() for p in out.glob("data/*/*.parquet")) == [
        "data/chunk-000/file-000.parquet", "data/chunk-000/file-001.parquet", "data/chunk-001/file-000.parquet"]
    # a video file is full once its encoded packets reach the limit; the encoder holds a few frames
    # back, so episodes can share a file: then the next one starts at from_timestamp > 0
    rows = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    key = "videos/observation.images.scene"
    assert len(list(out.glob(f"{key}/chunk-*/*.mp4"))) == len({(r[f"{key}/chunk_index"], r[f"{key}/file_index"])
                                                              for r in rows}) >= 2

    lerobot("load", out, tmp_path / "loaded.npz")
    got = np.load(tmp_path / "loaded.npz")
    assert len(got["index"]) == n == 30 + 40 + 25
    assert list(got["task"]) == [instructions[e] for e in got["episode_index"]]  # strings, not task indices
    worst = 0.0
    for e in range(3):
        ep = read_episode(src, f"e{e}")
        sel = got["episode_index"] == e
        grid = ep.arrays[ACTION_STAMP]
        latest = np.maximum(np.searchsorted(ep.arrays[JOINT_STAMP], grid, side="right") - 1, 0)
        state = ep.arrays[JOINT_POSITION][latest].astype(np.float32)
        np.testing.assert_array_equal(got["observation.state"][sel], state)
        np.testing.assert_array_equal(got["action"][sel], ep.arrays[ACTION_POSITION].astype(np.float32))
        np.testing.assert_allclose(got["timestamp"][sel], np.arange(len(grid)) / spec.control_rate_hz, atol=1e-6)
        for cam in ep.cameras:
            stamps = ep.arrays[camera_stamp_key(cam.name)]
            want = episode_frames(ep, cam.name)[np.maximum(np.searchsorted(stamps, grid, side="right") - 1, 0)]
            # a camera frame repeats over several control steps: compare the distinct ones
            first = np.r_[True, np.diff(np.maximum(np.searchsorted(stamps, grid, side="right") - 1, 0)) > 0]
            worst = max(worst, assert_same_frames(got[f"observation.images.{cam.name}"][sel][first], want[first],
                                                  f"e{e} {cam.name}"))
    stats = json.loads((out / "meta/stats.json").read_text())["observation.images.scene"]
    assert np.asarray(stats["mean"]).shape == (3, 1, 1) and stats["count"] == [n]
    print(f"lerobot load of our export: {n} frames in 3 data files, worst mean |frame error| {worst:.2f}/255")


def test_import_of_a_lerobot_written_multi_file_dataset(tmp_path):
    spec = load_robot("arm6")
    side = {"fps": int(spec.control_rate_hz), "joint_names": spec.joint_names,
            "cameras": {c.name: [c.height, c.width] for c in spec.cameras}, "episodes": [20, 26, 18, 23, 21],
            "tasks": ["pick the cube", "stack them", "pick the cube", "open the drawer", "stack them"],
            "data_mb": 0.001, "video_mb": 0.01}  # ~3 kB of video per episode: episodes share video files
    (tmp_path / "spec.json").write_text(json.dumps(side))
    lr = tmp_path / "lr"
    lerobot("write", lr, tmp_path / "spec.json")
    lerobot("load", lr, tmp_path / "truth.npz")  # what LeRobot itself reads back from its files
    truth = np.load(tmp_path / "truth.npz")
    eps = pq.read_table(lr / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert len({(r["data/chunk_index"], r["data/file_index"]) for r in eps}) == 5  # LeRobot split it
    assert max(r["data/chunk_index"] for r in eps) == 2
    assert max(r["videos/observation.images.wrist/from_timestamp"] for r in eps) > 0

    back = tmp_path / "back"
    # lossless re-encoding (x264 rgb, crf 0), so that what import read from LeRobot's files shows exactly
    assert import_dataset(lr, back, "arm6", VideoConfig(codec="libx264rgb", pix_fmt="rgb24", crf=0)) == 5
    metas = open_dataset(back).episodes
    assert [m.instruction for m in metas] == side["tasks"]
    for e, meta in enumerate(metas):
        ep = read_episode(back, meta.episode)
        sel = truth["episode_index"] == e
        assert list(truth["task"][sel]) == [meta.instruction] * side["episodes"][e]
        np.testing.assert_array_equal(ep.arrays[JOINT_POSITION], truth["observation.state"][sel])
        np.testing.assert_array_equal(ep.arrays[ACTION_POSITION], truth["action"][sel])  # same fps: same grid
        assert len(ep.arrays[ACTION_STAMP]) == side["episodes"][e]
        for cam in ep.cameras:
            np.testing.assert_array_equal(episode_frames(ep, cam.name), truth[f"observation.images.{cam.name}"][sel])


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-s"]))
