"""Recorder failure cases: kill -9, disk full, drops, never overwriting an episode."""

from __future__ import annotations

import resource
import signal
import struct
import subprocess
import time
from pathlib import Path

import pytest
from mcap.exceptions import McapError
from mcap.records import Message
from mcap.stream_reader import StreamReader
from ros_helpers import Feeder, call, ros_node, start_episode, start_exe, stop_or_kill
from std_srvs.srv import Trigger

from gen_theta_model.data.bag import open_bag
from gen_theta_model.data.recording import BagEpisodeWriter, EpisodeRecord, TopicSpec, read_record
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


def record_until(ros, out: Path, done, log: Path, **popen) -> tuple[subprocess.Popen, Path, Feeder]:
    """Start a recorder and an episode, feed it until ``done(bag)`` (at most 30 s)."""
    proc = start_exe(["record", "--ros-args", "-p", f"robot:={ROBOT}", "-p", f"output_dir:={out}"], log, **popen)
    try:
        bag = start_episode(ros, ROBOT)
        assert bag.parent == out, bag
    except BaseException:  # never leave a recorder running: it would answer the next test's calls
        stop_or_kill(proc, signal.SIGINT, 10)
        raise AssertionError(f"the recorder did not start an episode; its log:\n{log.read_text()}") from None
    feeder = Feeder(ros, ROBOT, load_robot(ROBOT), width=320, height=240)  # 230 kB frames fill chunks fast
    feeder.start()
    deadline = time.monotonic() + 30
    while not done(bag) and time.monotonic() < deadline:
        time.sleep(0.1)
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
    assert n_stream > 0 and n_stream < sent, (n_stream, sent, end)
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
