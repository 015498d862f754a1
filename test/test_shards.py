"""Shards and the Parquet index: round trip checked by independent readers, appending, converting format 1."""

from __future__ import annotations

import json

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from data_helpers import frame_value, make_episode
from safetensors import safe_open

from gen_theta_model.data.episode import JOINT_POSITION, JOINT_STAMP, load_episode
from gen_theta_model.data.manifest import finalize_dataset, main, open_dataset, read_episode
from gen_theta_model.data.stats import Moments
from gen_theta_model.embodiment import load_robot


@pytest.fixture(scope="module")
def specs():
    return {n: load_robot(n) for n in ("arm6", "humanoid16")}


def test_shards_read_back_with_pyav_pyarrow_and_safetensors(tmp_path, specs):
    made = {}
    for i, (name, duration) in enumerate([("arm6", 1.0), ("humanoid16", 0.6), ("arm6", 1.4)]):
        made[f"ep{i}"] = make_episode(tmp_path, specs[name], f"ep{i}", duration=duration, seed=i)
    originals = {ep: load_episode(tmp_path / "episodes" / ep) for ep in made}
    assert finalize_dataset(tmp_path, specs) == 3
    assert not list((tmp_path / "episodes").iterdir())
    rows = pq.read_table(tmp_path / "index" / "part-000000.parquet").to_pylist()
    assert [r["episode"] for r in rows] == ["ep0", "ep1", "ep2"] and {r["shard"] for r in rows} == {"shards/000000"}
    shard = tmp_path / "shards" / "000000"
    with safe_open(str(shard / "streams.safetensors"), framework="numpy") as f:
        for r in rows:
            orig = originals[r["episode"]]
            q = f.get_tensor(f"{r['episode']}/{JOINT_POSITION}")
            assert q.dtype == np.float32 and f.get_tensor(f"{r['episode']}/{JOINT_STAMP}").dtype == np.int64
            np.testing.assert_allclose(q, orig.arrays[JOINT_POSITION], rtol=1e-6)
            np.testing.assert_array_equal(f.get_tensor(f"{r['episode']}/{JOINT_STAMP}"), orig.arrays[JOINT_STAMP])
            assert r["num_steps"] == len(orig.arrays["action.stamp_ns"]) and r["state_moments"]["count"] == len(q)
    for camera in ("scene", "wrist"):
        with av.open(str(shard / f"{camera}-0.mp4")) as video:
            frames = list(video.decode(video=0))
        at = 0
        for r in rows:
            (cam,) = [c for c in r["cameras"] if c["name"] == camera]
            assert cam["offset"] == at and frames[at].key_frame  # each episode starts on a keyframe
            for i in range(cam["frames"]):
                assert abs(float(frames[at + i].to_ndarray(format="rgb24").mean()) - frame_value(i)) < 3
            at += cam["frames"]
        assert at == len(frames)
    ds = open_dataset(tmp_path)
    assert ds.episodes == list(made.values())
    stats = json.loads((tmp_path / "stats" / "arm6.json").read_text())
    assert stats["count_state"] == sum(len(originals[e].arrays[JOINT_STAMP]) for e in ("ep0", "ep2"))


def test_appending_adds_an_index_file_and_merges_the_statistics(tmp_path, specs):
    arm6 = specs["arm6"]
    make_episode(tmp_path, arm6, "a", seed=1)
    finalize_dataset(tmp_path, {"arm6": arm6})
    first = (tmp_path / "index" / "part-000000.parquet").read_bytes()
    make_episode(tmp_path, arm6, "b", seed=2)
    make_episode(tmp_path, arm6, "c", seed=3)
    assert finalize_dataset(tmp_path, {"arm6": arm6}) == 2
    assert (tmp_path / "index" / "part-000000.parquet").read_bytes() == first
    assert len(pq.read_table(tmp_path / "index" / "part-000001.parquet")) == 2
    ds = open_dataset(tmp_path)
    assert [m.episode for m in ds.episodes] == ["a", "b", "c"]
    assert yaml.safe_load((tmp_path / "info.yaml").read_text())["episodes"] == 3
    whole = [read_episode(tmp_path, e) for e in "abc"]
    merged = whole[0].state_moments.merge(whole[1].state_moments).merge(whole[2].state_moments)
    s = Moments.of(np.concatenate([arm6.normalize(w.arrays[JOINT_POSITION].astype(np.float64)) for w in whole]))
    assert merged.count == s.count == ds.stats["arm6"].count_state
    np.testing.assert_allclose(ds.stats["arm6"].state_mean, s.mean_std()[0], atol=1e-6)
    assert finalize_dataset(tmp_path, {"arm6": arm6}) == 0  # nothing staged: nothing written
    assert len(list((tmp_path / "index").iterdir())) == 2
    # A run that stopped after writing its index file but before removing the staged copies: packed once.
    make_episode(tmp_path, arm6, "c", seed=3)
    assert finalize_dataset(tmp_path, {"arm6": arm6}) == 0 and not list((tmp_path / "episodes").iterdir())
    assert [m.episode for m in open_dataset(tmp_path).episodes] == ["a", "b", "c"]


def test_format_1_dataset_converts_in_place(tmp_path, specs, capsys):
    arm6 = specs["arm6"]
    metas = [make_episode(tmp_path, arm6, f"old{i}", seed=i) for i in range(2)]
    # A format-1 dataset as the earlier ingest wrote it: episode directories, manifest.jsonl, info.yaml.
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(m.to_dict()) + "\n" for m in metas))
    (tmp_path / "info.yaml").write_text(yaml.safe_dump({"format_version": 1, "embodiments": ["arm6"],
                                                        "episodes": 2, "duration_s": 4.0}))
    (tmp_path / "embodiments").mkdir()
    (tmp_path / "embodiments" / "arm6.yaml").write_text(yaml.safe_dump(arm6.to_dict(), sort_keys=False))
    before = load_episode(tmp_path / "episodes" / "old1")
    with pytest.raises(ValueError, match="gen-theta dataset convert"):
        open_dataset(tmp_path)
    assert main(["convert", str(tmp_path)]) == 0
    assert "2 episodes packed" in capsys.readouterr().out
    ds = open_dataset(tmp_path)
    assert [m.episode for m in ds.episodes] == ["old0", "old1"] and not (tmp_path / "manifest.jsonl").exists()
    after = read_episode(tmp_path, "old1")
    np.testing.assert_allclose(after.arrays[JOINT_POSITION], before.arrays[JOINT_POSITION], rtol=1e-6)
    assert main(["convert", str(tmp_path)]) == 2  # nothing left to convert
    assert "nothing to convert" in capsys.readouterr().err
