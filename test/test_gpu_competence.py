"""bench/gpu_competence.py: the parts that travel to a device and the checkpoint that comes back."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_competence", ROOT / "bench" / "gpu_competence.py")
gc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gc)


def test_parts_hold_every_file_once_under_the_limit_wheels_first() -> None:
    sizes = {"data/a/shards/0/scene.mp4": 30, "data/a/info.yaml": 1, "whl/av.whl": 36,
             "data/b/shards/0/streams.safetensors": 16, "data/b/index/x.parquet": 10, "whl/trimesh.whl": 1}
    parts = gc.pack_parts(sizes, limit=52)
    assert sorted(f for p in parts for f in p) == sorted(sizes)
    assert all(sum(sizes[f] for f in p) <= 52 for p in parts)
    assert {"whl/av.whl", "whl/trimesh.whl"} <= set(parts[0])
    with pytest.raises(ValueError, match="more than a part holds"):
        gc.pack_parts({"data/a/huge.mp4": 60}, limit=52)


def test_verify_names_the_missing_part_and_merge_builds_the_config_paths(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(gc, "STAGE", tmp_path)
    files = {"whl/av.whl": b"wheel", "data/multi/info.yaml": b"episodes: 1\n", "data/multi/shards/v.mp4": b"vid"}
    placement = {"whl/av.whl": 1, "data/multi/info.yaml": 1, "data/multi/shards/v.mp4": 2}
    manifest = {"parts": 2, "files": {rel: [len(b), placement[rel]] for rel, b in files.items()}}
    for k in (1, 2):
        (tmp_path / f"part-{k}").mkdir()
        (tmp_path / f"part-{k}" / gc.MANIFEST).write_text(json.dumps(manifest))
    for rel, body in files.items():
        if placement[rel] == 1:  # part 2 has not arrived
            (tmp_path / "part-1" / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "part-1" / rel).write_bytes(body)
    _, missing = gc.verify()
    assert missing == ["part-2: data/multi/shards/v.mp4"]
    assert gc.verify(present_only=True)[1] == []

    (tmp_path / "part-2" / "data/multi/shards").mkdir(parents=True)
    (tmp_path / "part-2" / "data/multi/shards/v.mp4").write_bytes(b"vi")  # truncated in transit
    assert gc.verify()[1] == ["part-2: data/multi/shards/v.mp4 is 2 bytes, the manifest says 3"]
    (tmp_path / "part-2" / "data/multi/shards/v.mp4").write_bytes(b"vid")
    got, missing = gc.verify()
    assert missing == []
    gc.merge(got)
    assert {rel: (tmp_path / rel).read_bytes() for rel in files} == files


def test_checkpoint_pieces_come_back_whole(tmp_path: Path, monkeypatch) -> None:
    ckpt = tmp_path / "run" / "step_00000500"
    (ckpt / "norm_stats").mkdir(parents=True)
    body = {"config.yaml": b"preset: tiny\n", "embodiments.yaml": b"arm6: {}\n",
            "model.safetensors": bytes(range(256)) * 40, "norm_stats/arm6.json": b"{}"}
    for rel, data in body.items():
        (ckpt / rel).write_bytes(data)
    (ckpt / "training_state.pt").write_bytes(b"optimizer")  # not for serving: left behind
    monkeypatch.setattr(gc, "PIECE_BYTES", 4096)
    out = tmp_path / "out"
    out.mkdir()
    gc.pack_checkpoint(ckpt, out)
    pieces = sorted(out.glob("checkpoint.tar.*"))
    assert len(pieces) > 1 and all(p.stat().st_size <= 4096 for p in pieces)
    got = gc.unpack(out, tmp_path / "back")
    assert got == tmp_path / "back" / "step_00000500"
    assert {rel: (got / rel).read_bytes() for rel in body} == body
    assert not (got / "training_state.pt").exists()
