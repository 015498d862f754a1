"""Ingest: bags (MCAP and sqlite3, recorder's and foreign) -> dataset; bad episodes reported and skipped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from bag_helpers import T0, frame_value, target, write_bag
from data_helpers import episode_frames

from gen_theta_model.data.episode import (
    ACTION_POSITION,
    ACTION_STAMP,
    JOINT_POSITION,
    JOINT_STAMP,
    camera_stamp_key,
)
from gen_theta_model.data.ingest import IngestOptions, ingest, main
from gen_theta_model.data.manifest import open_dataset, read_episode
from gen_theta_model.data.stats import NormStats
from gen_theta_model.embodiment import load_robot


@pytest.fixture(scope="module")
def arm6():
    return load_robot("arm6")


def test_ingest_good_and_bad_bags_incrementally(tmp_path, arm6):
    bags = tmp_path / "bags"
    bags.mkdir()
    write_bag(bags / "ep_mcap", arm6)
    write_bag(bags / "ep_sqlite", arm6, storage="sqlite3", task="stack")
    write_bag(bags / "ep_crash", arm6, fault="crash")
    bad = {f: write_bag(bags / f"bad_{f}", arm6, fault=f) for f in
           ("nonmonotonic", "wrong_joints", "missing_topic", "truncate")}
    out = tmp_path / "ds"
    report = ingest(sorted(bags.iterdir()), out, IngestOptions(), jobs=2, progress=False)
    assert sorted(report.added) == ["ep_crash", "ep_mcap", "ep_sqlite"] and report.recovered == ["ep_crash"]
    errors = {Path(k).name: v for k, v in report.failed.items()}
    assert set(errors) == {p.name for p in bad.values()}
    assert "does not increase" in errors["bad_nonmonotonic"] and "/arm6/joint_states" in errors["bad_nonmonotonic"]
    assert "arm6_joint1" in errors["bad_wrong_joints"] or "missing" in errors["bad_wrong_joints"]
    assert "missing topic '/arm6/camera/scene/image_raw'" in errors["bad_missing_topic"]
    assert "corrupt or truncated" in errors["bad_truncate"] and "bad_truncate" in errors["bad_truncate"]
    assert not list((out / "episodes").iterdir())  # every converted episode packed into a shard

    ds = open_dataset(out)
    metas = {m.episode: m for m in ds.episodes}
    assert metas["ep_mcap"].success is True and metas["ep_mcap"].num_trajectories == 1
    assert metas["ep_sqlite"].task == "stack" and metas["ep_crash"].complete is False
    assert metas["ep_mcap"].instruction == "pick the red cube"
    assert metas["ep_mcap"].duration_s == pytest.approx(1.6, abs=0.05)
    ep = read_episode(out, "ep_mcap")
    js = ep.arrays[JOINT_STAMP]
    assert js[0] == T0 and np.all(np.diff(js) > 0) and len(js) == 160  # header stamps, as recorded
    np.testing.assert_allclose(ep.arrays[JOINT_POSITION], np.tile(arm6.home_positions, (160, 1)), atol=1e-6)
    a_t = (ep.arrays[ACTION_STAMP] - T0) * 1e-9
    assert np.allclose(np.diff(a_t), 1 / arm6.control_rate_hz)
    q = ep.arrays[ACTION_POSITION]
    np.testing.assert_allclose(q[a_t < 0.2], np.tile(arm6.home_positions, ((a_t < 0.2).sum(), 1)), atol=1e-6)
    np.testing.assert_allclose(q[a_t >= 0.7], np.tile(target(arm6), ((a_t >= 0.7).sum(), 1)), atol=1e-6)  # float32
    mid = np.argmin(abs(a_t - 0.45))  # inside the 0.5 s linear move received at 0.2 s
    frac = (a_t[mid] - 0.2) / 0.5
    np.testing.assert_allclose(q[mid], arm6.home_positions + frac * (target(arm6) - arm6.home_positions), atol=1e-6)
    frames = episode_frames(ep, "scene")
    assert len(frames) == len(ep.arrays[camera_stamp_key("scene")]) == 24
    assert all(abs(float(f.mean()) - frame_value(i)) < 3 for i, f in enumerate(frames))
    stats = NormStats.load(out / "stats" / "arm6.json")
    assert stats.count_state == 3 * 160 and stats.state_mean.shape == (arm6.dof,)
    np.testing.assert_allclose(stats.state_mean, arm6.normalize(arm6.home_positions), atol=1e-6)

    # Re-run over a grown set: only the new bag is converted, appended as a new shard and index file.
    first = {p: p.read_bytes() for p in [*(out / "index").iterdir(), *(out / "shards").rglob("*.*")]}
    write_bag(bags / "ep_new", arm6)
    again = ingest([bags / "ep_mcap", bags / "ep_new"], out, IngestOptions(), jobs=1, progress=False)
    assert again.added == ["ep_new"] and again.skipped == ["ep_mcap"]
    assert [m.episode for m in open_dataset(out).episodes] == ["ep_crash", "ep_mcap", "ep_sqlite", "ep_new"]
    assert all(p.read_bytes() == data for p, data in first.items())  # nothing written before was rewritten
    assert sorted(p.name for p in (out / "index").iterdir()) == ["part-000000.parquet", "part-000001.parquet"]


def test_foreign_bag_with_topic_map_through_the_cli(tmp_path, arm6, capsys):
    bag = write_bag(tmp_path / "rosbag2_2024_01_01-00_00_00", arm6, storage="sqlite3", record=False)
    tmap = tmp_path / "map.yaml"
    tmap.write_text("cameras: {scene: /arm6/camera/scene/image_raw, wrist: /arm6/camera/wrist/image_raw}\n")
    out = tmp_path / "ds"
    rc = main([str(tmp_path), "--out", str(out), "--robot", "arm6", "--task", "pick", "--category", "dexterity",
               "--topic-map", str(tmap), "--jobs", "1", "--codec", "libvpx-vp9", "--gop", "4",
               "--include-unknown"])  # a foreign bag has no success mark
    assert rc == 0, capsys.readouterr()
    (meta,) = open_dataset(out).episodes
    assert (meta.episode, meta.category, meta.success) == (bag.name, "dexterity", None)
    assert meta.instruction == "pick the red cube"  # from the instruction topic
    (row,) = pq.read_table(out / "index").to_pylist()  # an independent reader of the index
    assert row["embodiment"] == "arm6" and row["episode"] == bag.name and "ingest: 1 added" in capsys.readouterr().out


def test_compressed_cameras(tmp_path, arm6):
    bag = write_bag(tmp_path / "bags" / "ep_jpeg", arm6, compressed=True)
    report = ingest([bag], tmp_path / "ds", IngestOptions(), jobs=1, progress=False)
    assert report.added == ["ep_jpeg"], report.failed
    frames = episode_frames(read_episode(tmp_path / "ds", "ep_jpeg"), "wrist")
    assert len(frames) == 24 and all(abs(float(f.mean()) - frame_value(i)) < 3 for i, f in enumerate(frames))


def test_ray_engine_runs_the_same_tasks(tmp_path, arm6):
    import ray

    write_bag(tmp_path / "bags" / "ep0", arm6)
    write_bag(tmp_path / "bags" / "ep1", arm6, fault="wrong_joints")
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    try:
        report = ingest(sorted((tmp_path / "bags").iterdir()), tmp_path / "ds", IngestOptions(), engine="ray",
                        progress=False)
    finally:
        ray.shutdown()
    assert report.added == ["ep0"] and list(report.failed) == [str(tmp_path / "bags" / "ep1")]
    assert len(read_episode(tmp_path / "ds", "ep0").arrays[JOINT_STAMP]) == 160
