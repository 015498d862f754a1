"""Faults injected over real bags on disk: every one is a clear line, and nothing already written is lost.

Bad values (NaN, a flipped byte, a jump, a wild command), a damaged MCAP file
(detected by its CRCs, checked with the ``mcap`` library as an independent reader),
a full disk half-way, two bags with one name, unmarked and failed episodes, an
empty input directory, and the Ray engine's network exposure.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from bag_helpers import BAD_JOINT, BAD_MESSAGE, T0, read_rosbags, write_bag
from mcap.stream_reader import CRCValidationError, StreamReader

from gen_theta_model.data.bag import BagError, open_bag
from gen_theta_model.data.checks import ImplausibleValueError, check_joint_states, sensed_before_start
from gen_theta_model.data.ingest import IngestOptions, ingest, main
from gen_theta_model.data.manifest import open_dataset, read_episode
from gen_theta_model.data.recording import read_record
from gen_theta_model.embodiment import load_robot


@pytest.fixture(scope="module")
def arm6():
    return load_robot("arm6")


def flip_position(bag: Path, value: float, occurrence: int = BAD_MESSAGE) -> float:
    """Flip the sign/exponent byte of the ``occurrence``-th stored copy of ``value`` in the bag's MCAP file.

    Returns the value it now reads as (1.9252 becomes about -8.2e9).
    """
    f = bag / f"{bag.name}.mcap"
    data = bytearray(f.read_bytes())
    packed = struct.pack("<d", value)
    at = -1
    for _ in range(occurrence + 1):
        at = data.index(packed, at + 1)
    data[at + 7] = 0xC1
    f.write_bytes(bytes(data))
    return struct.unpack("<d", bytes(data[at:at + 8]))[0]


def test_implausible_values_reject_only_their_episode(tmp_path, arm6, capsys):
    bags = tmp_path / "bags"
    write_bag(bags / "good", arm6)
    for fault in ("nan", "jump", "wild_command"):
        write_bag(bags / f"bad_{fault}", arm6, fault=fault)
    flipped = write_bag(bags / "bad_flip", arm6)  # rosbags' writer: CRC 0, so only the values can tell
    home = arm6.home_positions[BAD_JOINT]
    assert flip_position(flipped, home) < -1e9
    out = tmp_path / "ds"
    rc = main([str(bags), "--out", str(out), "--jobs", "1"])
    captured = capsys.readouterr()
    assert rc == 1, captured
    errors = {line.split()[1].rstrip(":"): line for line in captured.err.splitlines() if line.startswith("FAILED")}
    assert sorted(Path(b).name for b in errors) == ["bad_flip", "bad_jump", "bad_nan", "bad_wild_command"]
    joint = arm6.joint_names[BAD_JOINT]
    by_name = {Path(b).name: line for b, line in errors.items()}
    stamp_ms = BAD_MESSAGE * 10 + (2 if BAD_MESSAGE % 3 else 0)  # its header stamp (bag_helpers.write_bag)
    at = f"t={stamp_ms / 1000:.3f} s (stamp {T0 + stamp_ms * 1_000_000} ns)"
    for name in ("bad_nan", "bad_jump", "bad_flip"):
        assert f"/arm6/joint_states: joint '{joint}'" in by_name[name] and at in by_name[name], by_name[name]
    assert "position is nan" in by_name["bad_nan"]
    assert "jumps by" in by_name["bad_jump"] and "velocity limit" in by_name["bad_jump"]
    assert "-8.2" in by_name["bad_flip"] and "outside the URDF limits" in by_name["bad_flip"]
    wild = by_name["bad_wild_command"]
    assert f"/arm6/joint_trajectory_controller/joint_trajectory: joint '{joint}' point 0" in wild
    assert "-8.9e+09" in wild and "t=0.200 s" in wild
    assert "1 added" in captured.out and "4 rejected" in captured.out

    ds = open_dataset(out)
    assert [m.episode for m in ds.episodes] == ["good"]
    assert not list((out / "episodes").iterdir())  # nothing of a rejected one, the good one packed
    stats = ds.stats["arm6"]
    assert np.isfinite(stats.state_std).all() and np.isfinite(stats.state_mean).all()
    assert stats.state_max.max() <= 1.0 + 1e-6  # canonical units: nothing of the bad bags in them


def test_a_joint_state_sensed_before_the_start_is_not_part_of_the_episode(tmp_path, arm6, capsys):
    """The previous pose delivered just after the start (a sim reset) used to read as a jump: rejected."""
    bag = write_bag(tmp_path / "bags" / "reset", arm6, fault="pre_start")
    assert main([str(bag), "--out", str(tmp_path / "ds"), "--jobs", "1"]) == 0, capsys.readouterr()
    ep = read_episode(tmp_path / "ds", "reset")
    np.testing.assert_array_equal(ep.arrays["joint_states.stamp_ns"][:2], [T0, T0 + 12_000_000])
    np.testing.assert_allclose(ep.arrays["joint_states.position"], np.tile(arm6.home_positions, (160, 1)), atol=1e-6)
    stale = read_rosbags(bag)["/arm6/joint_states"][0]  # the bag keeps what was received
    assert stale.header.stamp.nanosec == (T0 - 7_000_000) % 10**9


def test_trimming_before_the_start_does_not_depend_on_the_clock_offset():
    start = 10**18
    stamps = start + np.array([-7, 0, 10, 20, 30]) * 10**6  # sender's clock, 1 ms before receipt
    recv = start + np.array([500, 1000, 11000, 21000, 31000]) * 10**3
    for offset in (0, -5 * 10**9, 3 * 10**9):  # sender behind or ahead of the recorder
        assert sensed_before_start(stamps + offset, recv, start) == 1
    assert sensed_before_start(stamps, recv, 0) == 0  # no recorder start: nothing to trim
    assert sensed_before_start(stamps, recv, start + 10**9) == 0  # everything before: a mismatched clock, kept


def test_a_reported_velocity_spike_is_kept_a_wild_one_rejected(arm6):
    """A finger bouncing off its stop reads a few times its limit for a sample (CI: above 0.4 m/s
    against 0.2 m/s), and a finger's width may jump; that episode is good. A velocity no joint can
    reach is not, nor an arm joint that jumps.
    """
    finger = int(np.flatnonzero(arm6.gripper_mask)[0])
    stamps = T0 + np.arange(5, dtype=np.int64) * 10_000_000
    q = np.tile(arm6.home_positions, (5, 1))
    qd = np.zeros_like(q)
    qd[2, finger] = 3.0 * arm6.velocity_limits[finger]
    check_joint_states(arm6, "/arm6/joint_states", stamps, q, qd, T0)  # kept
    q[3:, finger] -= 0.19 * (arm6.upper[finger] - arm6.lower[finger])  # a finger pushed 19% of its range in 10 ms
    check_joint_states(arm6, "/arm6/joint_states", stamps, q, qd, T0)  # kept: a gripper's width may jump
    qd[2, finger] = 20.0 * arm6.velocity_limits[finger]
    with pytest.raises(ImplausibleValueError, match=rf"joint '{arm6.joint_names[finger]}' velocity .* exceeds 10 x "
                                                    r"the URDF velocity limit .* at t=0\.020 s"):
        check_joint_states(arm6, "/arm6/joint_states", stamps, q, qd, T0)
    qd[2, finger] = 0.0
    q[3:, 0] += 0.19 * (arm6.upper[0] - arm6.lower[0])  # an arm joint the same: rejected
    with pytest.raises(ImplausibleValueError, match=rf"joint '{arm6.joint_names[0]}' position jumps by"):
        check_joint_states(arm6, "/arm6/joint_states", stamps, q, qd, T0)


def test_flipped_byte_in_a_recorded_bag_is_reported_corrupt(tmp_path, arm6, capsys):
    bags = tmp_path / "bags"
    good = write_bag(bags / "good", arm6, writer="recorder")
    with (good / "good.mcap").open("rb") as f:  # the independent reader checks every CRC and finds them set
        records = list(StreamReader(f, validate_crcs=True, emit_chunks=True).records)
    chunks = [r for r in records if type(r).__name__ == "Chunk"]
    data_end = next(r for r in records if type(r).__name__ == "DataEnd")
    assert chunks and all(c.uncompressed_crc != 0 for c in chunks) and data_end.data_section_crc != 0

    bad = write_bag(bags / "bad", arm6, writer="recorder")
    flip_position(bad, arm6.home_positions[BAD_JOINT])
    with (bad / "bad.mcap").open("rb") as f, pytest.raises(CRCValidationError):
        list(StreamReader(f, validate_crcs=True).records)
    with pytest.raises(BagError, match="bad: corrupt or truncated bag: Chunk checksum mismatch"):
        list(open_bag(bad).messages())

    crashed = write_bag(bags / "crashed", arm6, writer="recorder")  # never closed: read in recovery mode
    (crashed / "metadata.yaml").unlink()
    mcap = crashed / "crashed.mcap"
    mcap.write_bytes(mcap.read_bytes()[:-50_000])  # the summary and the end of the last chunk
    flip_position(crashed, arm6.home_positions[BAD_JOINT], occurrence=3)
    with pytest.raises(BagError, match="crashed: corrupt bag: crashed.mcap: crc validation failed"):
        open_bag(crashed)

    rc = main([str(bags), "--out", str(tmp_path / "ds"), "--jobs", "1"])
    err = capsys.readouterr().err
    assert rc == 1 and "checksum mismatch" in err and "crc validation failed" in err
    assert [m.episode for m in open_dataset(tmp_path / "ds").episodes] == ["good"]


def test_disk_full_midway_leaves_a_loadable_dataset(tmp_path, arm6):
    bags = tmp_path / "bags"
    for i in range(12):
        write_bag(bags / f"ep{i:02d}", arm6)
    # A real full disk: a 640 kB tmpfs in a mount namespace of the ingest's own (unshare maps the
    # user to root there, so no privileges are needed); what it wrote is copied out before it goes.
    full, kept = tmp_path / "small", tmp_path / "kept"
    full.mkdir()
    ingest_cmd = [sys.executable, "-c", "import sys; from gen_theta_model.data.ingest import main; "
                  "sys.exit(main(sys.argv[1:]))", str(bags), "--out", str(full / "ds"), "--jobs", "1"]
    script = (f"mount -t tmpfs -o size=640k tmpfs {full} || exit 90; "
              f"\"$@\"; rc=$?; cp -a {full}/ds {kept}; exit $rc")
    run = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh", *ingest_cmd],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode != 90, f"no tmpfs in a user namespace here: {run.stderr}"
    assert run.returncode == 3, run
    lines = [ln for ln in run.stderr.splitlines() if ln.strip() and not ln.startswith("ingest:")]  # no bar
    assert len(lines) == 1 and "stopped early" in lines[0] and "No space left on device" in lines[0], lines
    ds = open_dataset(kept)
    packed = [m.episode for m in ds.episodes]
    staged = sorted(p.name for p in (kept / "episodes").iterdir())  # converted, not packed for want of room
    assert 0 < len(packed) and len(packed) + len(staged) < 12 and not set(packed) & set(staged)
    assert not [p for p in (kept / "shards").iterdir() if p.name.startswith(".")]  # no half shard
    assert ds.stats["arm6"].count_state == 160 * len(packed)
    for ep in packed:
        assert len(read_episode(kept, ep).arrays["joint_states.stamp_ns"]) == 160
    assert not (kept / ".reserve").exists()
    assert f"{len(packed) + len(staged)} added" in run.stdout
    # With room again, a re-run packs the staged episodes and adds the rest: nothing was lost.
    report = ingest(sorted(bags.iterdir()), kept, IngestOptions(), jobs=1, progress=False)
    assert len(report.added) == 12 - len(packed) - len(staged) and not report.failed
    assert sorted(m.episode for m in open_dataset(kept).episodes) == [f"ep{i:02d}" for i in range(12)]
    assert not list((kept / "episodes").iterdir()) and open_dataset(kept).stats["arm6"].count_state == 160 * 12


def test_same_bag_name_in_two_folders_gets_two_episodes(tmp_path, arm6, capsys):
    a = write_bag(tmp_path / "robot_a" / "rosbag2_2024_01_01-00_00_00", arm6, task="pick")
    b = write_bag(tmp_path / "robot_b" / "rosbag2_2024_01_01-00_00_00", arm6, task="stack")
    out = tmp_path / "ds"
    assert main([str(tmp_path / "robot_a"), str(tmp_path / "robot_b"), "--out", str(out), "--jobs", "2"]) == 0
    metas = {m.source: m for m in open_dataset(out).episodes}
    assert set(metas) == {str(a.resolve()), str(b.resolve())}
    assert metas[str(a.resolve())].episode == a.name and metas[str(a.resolve())].task == "pick"
    assert metas[str(b.resolve())].episode.startswith(f"{b.name}-") and metas[str(b.resolve())].task == "stack"
    capsys.readouterr()
    # A re-run recognises both by their paths: nothing added, nothing lost.
    assert main([str(tmp_path / "robot_b"), str(tmp_path / "robot_a"), "--out", str(out), "--jobs", "1"]) == 0
    assert "0 added" in capsys.readouterr().out and len(open_dataset(out).episodes) == 2


def test_only_successful_episodes_unless_asked(tmp_path, arm6, capsys):
    bags = tmp_path / "bags"
    write_bag(bags / "ok", arm6, success=True)
    write_bag(bags / "failed", arm6, success=False)
    write_bag(bags / "killed", arm6, success=None)  # a sim killed mid-episode: complete, never marked
    assert read_record(bags / "killed").status == "complete"
    out = tmp_path / "ds"
    assert main([str(bags), "--out", str(out), "--jobs", "1"]) == 0
    assert "2 left out (1 failed: --include-failed; 1 never marked: --include-unknown)" in capsys.readouterr().out
    assert [m.episode for m in open_dataset(out).episodes] == ["ok"]
    assert main([str(bags), "--out", str(out), "--jobs", "1", "--include-failed"]) == 0
    assert [m.episode for m in open_dataset(out).episodes] == ["ok", "failed"]  # index order: as appended
    report = ingest([bags / "killed"], out, IngestOptions(include_unknown=True), jobs=1, progress=False)
    assert report.added == ["killed"]
    assert {m.episode: m.success for m in open_dataset(out).episodes} == {"failed": False, "killed": None, "ok": True}


def test_empty_directory_is_an_error(tmp_path, capsys):
    (tmp_path / "nothing").mkdir()
    assert main([str(tmp_path / "nothing"), "--out", str(tmp_path / "ds")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no bags in" in err[0] and str(tmp_path / "nothing") in err[0]
    assert not (tmp_path / "ds").exists()


RAY_PROBE = """
import json, sys, psutil
from gen_theta_model.data.ingest import main
rc = main(sys.argv[1:])  # returns with the Ray cluster it started still up
me = psutil.Process()
pids = {p.pid for p in [me] + me.children(recursive=True)}
ips = {c.laddr.ip for c in psutil.net_connections("inet") if c.status == "LISTEN" and c.pid in pids}
print("LISTEN", json.dumps(sorted(ips)))
sys.exit(rc)
"""


def test_ray_engine_listens_on_localhost_only(tmp_path, arm6):
    write_bag(tmp_path / "bags" / "ep0", arm6)
    run = subprocess.run([sys.executable, "-c", RAY_PROBE, str(tmp_path / "bags"), "--out", str(tmp_path / "ds"),
                          "--engine", "ray", "--jobs", "1"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    (line,) = [ln for ln in run.stdout.splitlines() if ln.startswith("LISTEN")]
    addresses = json.loads(line[len("LISTEN "):])
    assert addresses and all(a in ("127.0.0.1", "::ffff:127.0.0.1", "::1") for a in addresses), addresses
    assert [m.episode for m in open_dataset(tmp_path / "ds").episodes] == ["ep0"]
