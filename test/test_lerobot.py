"""LeRobotDataset v3 export and import: the layout, and a round trip back to the same episodes."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from data_helpers import episode_frames, make_episode

from gen_theta_model.data.episode import ACTION_POSITION, ACTION_STAMP, JOINT_POSITION, JOINT_STAMP
from gen_theta_model.data.lerobot import main
from gen_theta_model.data.manifest import finalize_dataset, open_dataset, read_episode
from gen_theta_model.data.video import decode_all
from gen_theta_model.embodiment import load_robot


def test_round_trip(tmp_path):
    spec = load_robot("arm7")
    src = tmp_path / "src"
    make_episode(src, spec, "e0", duration=1.0, task="stack", category="dexterity", instruction="stack them")
    make_episode(src, spec, "e1", duration=1.4, task="pick", instruction="pick the cube", seed=1)
    finalize_dataset(src, {"arm7": spec})
    lr = tmp_path / "lerobot"
    assert main(["export", str(src), str(lr)]) == 0
    info = json.loads((lr / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_episodes"] == 2 and info["fps"] == 50.0
    assert info["features"]["action"]["names"] == spec.joint_names
    data = pq.read_table(lr / "data/chunk-000/file-000.parquet")
    assert data.num_rows == info["total_frames"] == 50 + 70
    eps = pq.read_table(lr / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["tasks"] for e in eps] == [["stack them"], ["pick the cube"]]
    tasks = pq.read_table(lr / "meta/tasks.parquet")  # LeRobot's layout: the strings are the pandas index
    assert tasks.to_pydict() == {"task_index": [0, 1], "__index_level_0__": ["pick the cube", "stack them"]}
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["__index_level_0__"]
    assert data["task_index"].to_pylist() == [1] * 50 + [0] * 70
    stats = json.loads((lr / "meta/stats.json").read_text())
    frames = decode_all(lr / "videos/observation.images.wrist/chunk-000/file-000.mp4") / 255
    np.testing.assert_allclose(np.ravel(stats["observation.images.wrist"]["mean"]), frames.mean((0, 1, 2)), atol=2e-3)
    video = decode_all(lr / "videos/observation.images.scene/chunk-000/file-000.mp4")
    assert len(video) == 120 and eps[1]["videos/observation.images.scene/from_timestamp"] == pytest.approx(1.0)

    back = tmp_path / "back"
    assert main(["import", str(lr), str(back), "--robot", "arm7"]) == 0
    ds = open_dataset(back)
    assert [(m.episode, m.task, m.category, m.instruction) for m in ds.episodes] == [
        ("e0", "stack", "dexterity", "stack them"), ("e1", "pick", "real_world", "pick the cube")]
    for name in ("e0", "e1"):
        a, b = read_episode(src, name), read_episode(back, name)
        np.testing.assert_array_equal(a.arrays[ACTION_STAMP], b.arrays[ACTION_STAMP])
        np.testing.assert_allclose(a.arrays[ACTION_POSITION], b.arrays[ACTION_POSITION], atol=1e-6)
        grid = a.arrays[ACTION_STAMP]
        idx = np.maximum(np.searchsorted(a.arrays[JOINT_STAMP], grid, side="right") - 1, 0)
        np.testing.assert_allclose(b.arrays[JOINT_POSITION], a.arrays[JOINT_POSITION][idx], atol=1e-6)
        frames_a, frames_b = episode_frames(a, "wrist"), episode_frames(b, "wrist")
        stamps = a.arrays["camera.wrist.stamp_ns"]
        want = frames_a[np.maximum(np.searchsorted(stamps, grid, side="right") - 1, 0)]
        assert frames_b.shape == want.shape and np.abs(frames_b.astype(int) - want).mean() < 3


def test_multi_file_round_trip(tmp_path):
    spec = load_robot("arm6")
    for i in range(3):
        make_episode(tmp_path / "src", spec, f"e{i}", duration=(0.4, 0.6, 0.8)[i], seed=i)
    finalize_dataset(tmp_path / "src", {"arm6": spec})
    lr = tmp_path / "lr"
    assert main(["export", str(tmp_path / "src"), str(lr), "--data-file-mb", "0.001", "--video-file-mb", "0.001",
                 "--chunks-size", "2"]) == 0
    files = sorted(p.relative_to(lr).as_posix() for p in lr.glob("data/*/*.parquet"))
    assert files == ["data/chunk-000/file-000.parquet", "data/chunk-000/file-001.parquet",
                     "data/chunk-001/file-000.parquet"]
    assert [pq.read_table(lr / f)["episode_index"].to_pylist()[0] for f in files] == [0, 1, 2]
    assert main(["import", str(lr), str(tmp_path / "back"), "--robot", "arm6"]) == 0
    for name in ("e0", "e1", "e2"):
        a, b = read_episode(tmp_path / "src", name), read_episode(tmp_path / "back", name)
        np.testing.assert_allclose(a.arrays[ACTION_POSITION], b.arrays[ACTION_POSITION], atol=1e-6)
        grid = a.arrays[ACTION_STAMP]
        want = episode_frames(a, "scene")[np.maximum(np.searchsorted(
            a.arrays["camera.scene.stamp_ns"], grid, side="right") - 1, 0)]
        assert np.abs(episode_frames(b, "scene").astype(int) - want).mean() < 3


def test_import_rejects_a_different_robot(tmp_path, capsys):
    spec = load_robot("arm6")
    make_episode(tmp_path / "src", spec, "e0", duration=0.5)
    finalize_dataset(tmp_path / "src", {"arm6": spec})
    assert main(["export", str(tmp_path / "src"), str(tmp_path / "lr")]) == 0
    assert main(["import", str(tmp_path / "lr"), str(tmp_path / "back"), "--robot", "arm7"]) == 2
    assert "arm7" in capsys.readouterr().err
