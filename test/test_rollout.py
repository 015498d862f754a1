"""`gen-theta rollout` end to end: sim_robot + policy_server over DDS, a real tiny checkpoint."""

import json

import av
from server_helpers import tiny_checkpoint

from gen_theta_ros.rollout import main


def test_rollout_writes_table_json_png_and_mp4(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "run", {"arm6": 0.0})
    out = tmp_path / "rollout"
    code = main([str(ckpt), "--robot", "arm6", "--task", "pick_place_bin", "--seeds", "0", "--delays-ms", "0", "100",
                 "--max-seconds", "2.5", "--out", str(out)])
    assert code == 0
    doc = json.loads((out / "results.json").read_text())
    assert {(r["robot"], r["task"]) for r in doc["rows"]} == {("arm6", "pick_place_bin")}
    assert [(r["added_delay_ms"], r["mode"]) for r in doc["rows"]] == [
        (0.0, "harmonic"), (0.0, "naive_async"), (0.0, "sync"),
        (100.0, "harmonic"), (100.0, "naive_async"), (100.0, "sync"),
    ]
    for e in doc["episodes"]:
        assert 0.0 <= e["idle_fraction"] <= 1.0 and e["switches"] >= 1
        assert e["latency_p50_ms"] >= (100.0 if e["added_delay_ms"] == 100.0 else 0.0)
    table = (out / "results.md").read_text()
    assert table.startswith("| robot | task | added delay ms | mode | success (95% CI)")
    assert len(table.splitlines()) == 8
    assert (out / "switches.png").stat().st_size > 10_000
    with av.open(str(out / "rollout.mp4")) as video:
        frames = sum(1 for _ in video.decode(video=0))
    assert frames >= 15  # >= 1 s of the three modes side by side at 15 fps
