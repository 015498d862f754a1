"""Recorder failure cases: kill -9, SIGHUP, disk full, size cap, drops, never overwriting an episode."""

from __future__ import annotations

import contextlib
import resource
import signal
import struct
import subprocess
from pathlib import Path

import pytest
from bag_helpers import assert_counts_on_disk
from mcap.exceptions import McapError
from mcap.records import Message
from mcap.stream_reader import StreamReader
from ros_helpers import Feeder, call, ros_node, start_episode, start_exe, stop_or_kill, wait_for
from std_srvs.srv import Trigger

from gen_theta_model.data.bag import open_bag
from gen_theta_model.data.recording import (
    BagEpisodeWriter,
    EpisodeLimits,
    EpisodeRecord,
    TopicSpec,
    read_record,
    readable_counts,
)
from gen_theta_model.embodiment import load_robot
from gen_theta_model.topics import load_topics

ROBOT = "arm6"


@pytest.fixture(scope="module")
def ros():
    with ros_node("recorder_failure_test") as node:
        yield node


def stream_count(bag: Path) -> tuple[int, str]:
    """Messages the mcap stream reader returns before the file ends, and how it ended."""
    (path,) = bag.glob("*.mcap")
    n, end = 0, "complete"
    with path.open("rb") as f:
        try:
            for rec in StreamReader(f, emit_chunks=False).records:
                n += isinstance(rec, Message)
        except (McapError, struct.error) as err:  # EndOfFile, or a record cut inside its header
            end = repr(err)
    return n, end


def record_until(ros, out: Path, done, log: Path, params: tuple[str, ...] = (), **popen
                 ) -> tuple[subprocess.Popen, Path, Feeder]:
    """Start a recorder (extra ``params``: 'name:=value') and an episode, feed it until ``done(bag)`` (at most 30 s)."""
    args = ["record", "--ros-args", "-p", f"robot:={ROBOT}", "-p", f"output_dir:={out}"]
    proc = start_exe(args + [w for p in params for w in ("-p", p)], log, **popen)
    try:
        bag = start_episode(ros, ROBOT)
        assert bag.parent == out, bag
    except BaseException:  # never leave a recorder running: it would answer the next test's calls
        stop_or_kill(proc, signal.SIGINT, 10)
        raise AssertionError(f"the recorder did not start an episode; its log:\n{log.read_text()}") from None
    feeder = Feeder(ros, ROBOT, load_robot(ROBOT), width=320, height=240)  # 230 kB frames fill chunks fast
    feeder.start()
    try:
        wait_for(lambda: done(bag), 30, "the recording's condition")
    except BaseException:
        feeder.stop()
        stop_or_kill(proc, signal.SIGINT, 20)
        raise
    return proc, bag, feeder


def mcap_size(bag: Path) -> int:
    return sum(p.stat().st_size for p in bag.glob("*.mcap"))


def test_kill_9_keeps_every_complete_chunk(ros, tmp_path):
    proc, bag, feeder = record_until(ros, tmp_path, lambda b: mcap_size(b) > 4 << 20, tmp_path / "rec.log")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    feeder.stop()
    assert not (bag / "metadata.yaml").exists()
    assert read_record(bag).status == "recording"  # the record written at start survives
    n_stream, end = stream_count(bag)
    sent = sum(feeder.sent.values())  # what the feeder published in all
    # The file ends without its footer, cut after its last complete chunk. Everything sent may be
    # in complete chunks already (a loaded machine can starve the feeder), so n_stream == sent is
    # allowed; what is asserted is that the recovered bag returns every message of those chunks.
    assert end != "complete", end
    assert 0 < n_stream <= sent, (n_stream, sent, end)
    source = open_bag(bag)
    assert source.recovered and "last complete chunk" in source.recovery_note
    msgs = list(source.messages())
    assert len(msgs) == n_stream
    images = [m.msg for m in msgs if m.msgtype == "sensor_msgs/msg/Image"]
    assert images and all((im.height, im.width) == (240, 320) for im in images)


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_disk_full_ends_episode_with_error_and_keeps_data(ros, tmp_path):
    out = tmp_path / "small"
    mounted = _mount_tmpfs(out, "3m")  # a real full disk as root; else a real 3 MB file-size limit
    limit = {} if mounted else {"preexec_fn": lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (3 << 20, 3 << 20))}
    try:
        proc, bag, feeder = record_until(
            ros, out, lambda b: read_record(b).status != "recording", tmp_path / "rec.log", **limit
        )
        feeder.stop()
        record = read_record(bag)
        assert record.status == "error", (tmp_path / "rec.log").read_text()
        assert "No space left" in record.error or "File too large" in record.error
        assert sum(record.drops.values()) > 0
        resp = call(ros, Trigger, load_topics().resolve(ROBOT, "recorder/stop"), Trigger.Request())
        assert not resp.success and "not recording" in resp.message  # episode already ended, node alive
        n_stream, _ = stream_count(bag)
        assert n_stream > 0
        assert len(list(open_bag(bag).messages())) == n_stream
        (mcap,) = bag.glob("*.mcap")
        assert record.messages == {t: readable_counts(mcap).get(t, 0) for t in record.messages}  # what is on disk
        assert sum(record.messages.values()) == n_stream
        if mounted:  # fill the disk to the last byte: the next start fails and leaves nothing behind
            with contextlib.suppress(OSError), (out / "filler").open("wb") as f:
                while True:
                    f.write(b"\0" * 4096)
            resp = call(ros, Trigger, load_topics().resolve(ROBOT, "recorder/start"), Trigger.Request())
            assert not resp.success and "No space left" in resp.message, resp.message
            assert sorted(out.iterdir()) == sorted([bag, out / "filler"])
            assert sorted(p.name for p in bag.iterdir()) == sorted(["episode.yaml", bag.name + ".mcap"])
        assert stop_or_kill(proc, signal.SIGINT, 20) == 0
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(out)], check=False)


def test_drops_are_counted_and_episodes_never_overwritten(tmp_path):
    spec = load_robot(ROBOT)
    topics = [TopicSpec("/arm6/joint_states", "sensor_msgs/msg/JointState")]
    record = EpisodeRecord(robot=ROBOT, embodiment=spec.name, urdf_sha256=spec.urdf_sha256)
    w = BagEpisodeWriter(tmp_path / "ep", topics, record, max_queue_bytes=0)
    assert not w.put("/arm6/joint_states", 1, b"\x00\x01\x00\x00")
    rec = w.close(2)
    assert rec.drops == {"/arm6/joint_states": 1} and rec.status == "complete"
    with pytest.raises(FileExistsError, match="not overwriting"):
        BagEpisodeWriter(tmp_path / "ep", topics, EpisodeRecord(robot=ROBOT, embodiment="x", urdf_sha256=""))
    assert read_record(tmp_path / "ep").drops == {"/arm6/joint_states": 1}


def test_sighup_closes_the_bag_as_sigterm_does(ros, tmp_path):
    """Closing the recorder's terminal (SIGHUP) ends it with the episode closed, every message counted."""
    log = tmp_path / "rec.log"
    proc, bag, feeder = record_until(ros, tmp_path, lambda b: mcap_size(b) > 2 << 20, log)
    try:
        assert stop_or_kill(proc, signal.SIGHUP, 30) == 0, log.read_text()
    finally:
        feeder.stop()
    record = read_record(bag)
    assert record.status == "complete" and (bag / "metadata.yaml").is_file(), log.read_text()
    assert_counts_on_disk(bag)


def test_episode_size_cap_ends_the_episode_as_truncated(ros, tmp_path):
    """A recorder whose controller is gone stops growing its episode at max_episode_mb."""
    log = tmp_path / "rec.log"
    proc, bag, feeder = record_until(ros, tmp_path, lambda b: read_record(b).status != "recording", log,
                                     params=("max_episode_mb:=2",))
    try:
        record = read_record(bag)
        assert record.status == "truncated" and "max_episode_mb" in record.error, log.read_text()
        assert_counts_on_disk(bag)
        assert "max_episode_mb reached" in log.read_text()
        assert start_episode(ros, ROBOT) != bag  # the node goes on: the next start makes a new episode
    finally:
        feeder.stop()
        assert stop_or_kill(proc, signal.SIGINT, 20) == 0, log.read_text()


def test_episode_limits():
    limits = EpisodeLimits(max_seconds=10, max_mb=1)
    assert limits.reached(9.9, 2**20 - 1) == ""
    assert "max_episode_s" in limits.reached(10.0, 0)
    assert "max_episode_mb" in limits.reached(0.0, 2**20)
    with pytest.raises(ValueError, match="max_mb must be > 0, got 0"):
        EpisodeLimits(max_mb=0)
