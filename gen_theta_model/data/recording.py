"""Writing one episode as a rosbag2 bag (MCAP storage) off the caller's thread.

``BagEpisodeWriter`` takes serialized messages (CDR bytes, as a raw ROS
subscription delivers them) from any thread through ``put``, which never blocks:
a writer thread drains a byte-bounded queue into rosbags' rosbag2 writer. When
the queue is full a message is dropped and counted per topic.

Nothing is lost:
- ``episode.yaml`` (EpisodeRecord) is written in the bag directory when the episode
  starts and replaced atomically when it ends; ``metadata.yaml`` carries the same
  fields in ``custom_data`` (keys ``gen_theta.*``).
- A write error (disk full) stops writing, closes the file and marks the episode
  ``status: error`` with the message; the chunks written before stay readable, and
  the record counts what is readable on disk (the rest as drops).
- A start that fails (disk full, no permission) removes what it had created.
- After a crash (kill -9) the MCAP file has no summary and no metadata.yaml, but
  every chunk written before the crash (the rosbags writer closes a chunk every
  ~1 MiB) is read back by gen_theta_model.data.bag (mcap's stream reader).
- An existing episode directory is never overwritten.
- Every chunk carries the CRC-32 of its data and the file the CRC of its whole data
  section (``BagWriter``), so a damaged file is detected by any MCAP reader.
- ``EpisodeLimits`` caps an episode's duration and size; the recorder ends an episode
  that reaches a cap cleanly, as ``status: truncated``.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import struct
import threading
from dataclasses import asdict, dataclass, field
from importlib.metadata import version as package_version
from pathlib import Path

import yaml
from mcap.exceptions import McapError
from mcap.records import Channel, Message
from mcap.stream_reader import StreamReader
from mcap.writer import CompressionType
from mcap.writer import Writer as McapWriter
from rosbags.interfaces import Connection, MessageDefinitionFormat
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.rosbag2.enums import CompressionMode
from rosbags.rosbag2.errors import WriterError
from rosbags.typesys import Stores, get_typestore

EPISODE_FILE = "episode.yaml"
RESERVE_FILE = ".reserve"
RESERVE_BYTES = 256 * 1024  # freed on disk full so that the final episode.yaml can still be written
CUSTOM_PREFIX = "gen_theta."


@dataclass
class EpisodeRecord:
    """Episode metadata as stored in episode.yaml and metadata.yaml custom_data."""

    robot: str
    embodiment: str
    urdf_sha256: str
    task: str = ""
    category: str = ""
    instruction: str = ""
    action_topic: str = ""  # teleop: the leader arm's JointState topic that carries the actions ('': commands)
    success: bool | None = None
    start_ns: int = 0
    end_ns: int = 0
    status: str = "recording"  # recording (also: crashed) | complete | truncated (a cap reached) | error
    error: str = ""  # status error: the error; truncated: the cap that ended the episode
    messages: dict[str, int] = field(default_factory=dict)
    drops: dict[str, int] = field(default_factory=dict)
    # camera topic -> frames lost on the way (gen_theta_model/data/camera_losses.py StampGaps.report)
    camera_losses: dict[str, dict] = field(default_factory=dict)

    def custom_data(self) -> dict[str, str]:
        """Flat string map for rosbag2's metadata.yaml custom_data."""
        out = {}
        for k, v in asdict(self).items():
            if isinstance(v, (dict, bool)) or v is None:
                v = json.dumps(v)  # null / true / false / {"topic": n}
            out[CUSTOM_PREFIX + k] = str(v)
        return out


def read_record(bag: str | Path) -> EpisodeRecord:
    """Read ``episode.yaml`` of a recorded bag directory."""
    p = Path(bag) / EPISODE_FILE
    try:
        return EpisodeRecord(**yaml.safe_load(p.read_text()))
    except (OSError, yaml.YAMLError, TypeError) as err:
        raise ValueError(f"{p}: cannot read the episode record: {err}") from err


def write_record(bag: str | Path, record: EpisodeRecord) -> None:
    """Atomically replace ``episode.yaml``."""
    p = Path(bag) / EPISODE_FILE
    tmp = p.with_name(EPISODE_FILE + ".tmp")
    tmp.write_text(yaml.safe_dump(asdict(record), sort_keys=False))
    tmp.replace(p)


def update_custom_data(bag: str | Path, record: EpisodeRecord) -> None:
    """Rewrite metadata.yaml's custom_data of a closed bag (e.g. success marked after stop)."""
    p = Path(bag) / "metadata.yaml"
    doc = yaml.safe_load(p.read_text())
    doc["rosbag2_bagfile_information"]["custom_data"] = record.custom_data()
    tmp = p.with_name("metadata.yaml.tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    tmp.replace(p)


class CrcMcapStorage:
    """The MCAP file of a rosbag2 bag, written by the mcap library with chunk and data-section CRCs.

    rosbags' own MCAP storage (0.11) writes every CRC as 0, so no reader can tell a
    damaged file from a good one. This class is the same storage interface
    (rosbags' ``StorageWriter``) over ``mcap.writer.Writer``: the same layout
    otherwise (~1 MiB uncompressed chunks holding schemas, channels and messages,
    channel metadata ``offered_qos_profiles``, the ``rosbag2`` metadata record).
    """

    def __init__(self, path: Path, compression: CompressionMode) -> None:
        self.path = path / f"{path.name}.mcap"
        self._file = self.path.open("xb")
        zstd = compression == CompressionMode.STORAGE
        self._mcap = McapWriter(self._file, compression=CompressionType.ZSTD if zstd else CompressionType.NONE,
                                enable_crcs=True, enable_data_crcs=True)
        self._mcap.start(profile="ros2", library=f"gen_theta (mcap {package_version('mcap')})")
        self._schemas: dict[str, int] = {}  # msgtype -> schema id
        self._channels: dict[int, int] = {}  # rosbags connection id -> channel id

    def add_msgtype(self, connection: Connection) -> None:
        """Register the schema (message definition) of ``connection.msgtype``."""
        encoding = "ros2msg" if connection.msgdef.format == MessageDefinitionFormat.MSG else "ros2idl"
        self._schemas[connection.msgtype] = self._mcap.register_schema(
            connection.msgtype, encoding, connection.msgdef.data.encode())

    def add_connection(self, connection: Connection, offered_qos_profiles: str) -> None:
        """Register a channel (topic) whose messages are ``connection.ext.serialization_format`` bytes."""
        self._channels[connection.id] = self._mcap.register_channel(
            connection.topic, connection.ext.serialization_format, self._schemas[connection.msgtype],
            {"offered_qos_profiles": offered_qos_profiles})

    def write(self, connection: Connection, timestamp: int, data: bytes | memoryview) -> None:
        """Append one serialized message received at ``timestamp`` (ns since the epoch)."""
        self._mcap.add_message(self._channels[connection.id], log_time=timestamp, data=bytes(data),
                               publish_time=timestamp)

    def close(self, version: int, metadata: str) -> None:
        """Write the last chunk, the rosbag2 metadata record, the summary and the footer."""
        self._mcap.add_metadata("rosbag2", {"serialized_metadata": metadata})
        self._mcap.finish()
        self._file.close()

    def abort(self) -> None:
        """Close without the summary (as after a crash: the complete chunks stay readable)."""
        self._file.close()


class BagWriter(Writer):
    """rosbags' rosbag2 writer (metadata.yaml, connections, custom data) with ``CrcMcapStorage``."""

    STORAGE_PLUGINS = {**Writer.STORAGE_PLUGINS, StoragePlugin.MCAP: CrcMcapStorage}


@dataclass(frozen=True)
class EpisodeLimits:
    """Caps on one episode; the recorder ends an episode that reaches one as ``truncated``.

    They bound what a recorder left running (its controller killed) can write.
    """

    max_seconds: float = 900.0  # 15 min: longer than any demonstration; the sim's 0.84 MB/s make 0.75 GB
    max_mb: float = 4096.0  # MiB of MCAP file

    def __post_init__(self) -> None:
        for name in ("max_seconds", "max_mb"):
            if not getattr(self, name) > 0:
                raise ValueError(f"EpisodeLimits.{name} must be > 0, got {getattr(self, name)}")

    def reached(self, seconds: float, size_bytes: int) -> str:
        """Return which cap an episode of ``seconds`` (s) and ``size_bytes`` (B) has reached; '' if none."""
        if seconds >= self.max_seconds:
            return f"max_episode_s reached ({seconds:.0f} s >= {self.max_seconds:g} s)"
        if size_bytes >= self.max_mb * 2**20:
            return f"max_episode_mb reached ({size_bytes / 2**20:.0f} MiB >= {self.max_mb:g} MiB)"
        return ""


def readable_counts(mcap: Path) -> dict[str, int]:
    """Messages per topic that mcap's stream reader reads back from ``mcap`` (up to a cut-off record)."""
    topics: dict[int, str] = {}
    counts: dict[str, int] = {}
    with mcap.open("rb") as f:
        with contextlib.suppress(McapError, EOFError, struct.error):  # the file ends inside a record
            for rec in StreamReader(f, emit_chunks=False).records:
                if isinstance(rec, Channel):
                    topics[rec.id] = rec.topic
                elif isinstance(rec, Message):
                    counts[topics[rec.channel_id]] = counts.get(topics[rec.channel_id], 0) + 1
    return counts


@dataclass(frozen=True)
class TopicSpec:
    topic: str  # absolute name
    msgtype: str  # e.g. sensor_msgs/msg/Image


class BagEpisodeWriter:
    """One episode bag at ``path`` (must not exist) with ``topics``; see the module docstring."""

    def __init__(self, path: str | Path, topics: list[TopicSpec], record: EpisodeRecord,
                 max_queue_bytes: int = 512 * 1024 * 1024) -> None:
        self.path = Path(path)
        if self.path.exists():
            raise FileExistsError(f"{self.path}: episode exists already, not overwriting")
        self.record = record
        self._writer = BagWriter(self.path, version=9, storage_plugin=StoragePlugin.MCAP)
        try:
            self._writer.open()  # creates the directory
        except WriterError as err:  # it appeared meanwhile: not ours to remove
            raise FileExistsError(f"{self.path}: episode exists already, not overwriting") from err
        except BaseException:  # e.g. no space for the MCAP header: nothing may stay behind
            shutil.rmtree(self.path, ignore_errors=True)
            raise
        try:
            with open(self.path / RESERVE_FILE, "wb") as f:
                os.posix_fallocate(f.fileno(), 0, RESERVE_BYTES)
            store = get_typestore(Stores.ROS2_KILTED)
            self._connections = {t.topic: self._writer.add_connection(t.topic, t.msgtype, typestore=store)
                                 for t in topics}
            record.messages = {t.topic: 0 for t in topics}
            record.drops = {t.topic: 0 for t in topics}
            write_record(self.path, record)
        except BaseException:  # a failed start (disk full) leaves nothing behind
            with contextlib.suppress(OSError):
                self._writer.abort()
            shutil.rmtree(self.path, ignore_errors=True)
            raise
        self._max_bytes = max_queue_bytes
        self._pending = 0
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._failed = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"bag-writer {self.path.name}", daemon=True)
        self._thread.start()

    @property
    def failed(self) -> bool:
        """True once a write error ended the episode (see ``record.error``)."""
        return self._failed.is_set()

    @property
    def bytes_on_disk(self) -> int:
        """Size of the episode's MCAP file so far, in bytes."""
        return sum(p.stat().st_size for p in self.path.glob("*.mcap"))

    def put(self, topic: str, stamp_ns: int, data: bytes) -> bool:
        """Queue one serialized message; never blocks. False if dropped (queue full or writer failed)."""
        if topic not in self._connections:
            raise KeyError(f"{self.path.name}: topic '{topic}' is not recorded")
        with self._lock:
            if self._failed.is_set() or self._pending + len(data) > self._max_bytes:
                self.record.drops[topic] += 1
                return False
            self._pending += len(data)
        self._queue.put((topic, stamp_ns, data))
        return True

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            topic, stamp, data = item
            with self._lock:
                self._pending -= len(data)
            if self._failed.is_set():
                self.record.drops[topic] += 1
                continue
            try:
                self._writer.write(self._connections[topic], stamp, data)
                self.record.messages[topic] += 1
            except OSError as err:  # disk full, file-size limit, I/O error: keep what is written
                self.record.status, self.record.error = "error", f"writing {self.path}: {err}"
                self.record.drops[topic] += 1
                self._failed.set()

    def close(self, end_ns: int, truncated: str = "") -> EpisodeRecord:
        """Drain the queue, close the bag (metadata.yaml with custom_data) and finish episode.yaml.

        ``truncated``: why the episode was cut short (a cap); it ends as ``status: truncated``.
        """
        self._queue.put(None)
        self._thread.join()
        self.record.end_ns = end_ns
        (self.path / RESERVE_FILE).unlink(missing_ok=True)
        if not self._failed.is_set():
            self.record.status, self.record.error = ("truncated", truncated) if truncated else ("complete", "")
            for k, v in self.record.custom_data().items():
                self._writer.set_custom_data(k, v)
            try:
                self._writer.close()
            except (OSError, WriterError) as err:
                self.record.status, self.record.error = "error", f"closing {self.path}: {err}"
        if self.record.status == "error":
            try:
                self._writer.abort()  # flushing the file buffer may fail again on a full disk
            except OSError as err:
                self.record.error += f"; closing: {err}"
            self._count_what_is_on_disk()
        write_record(self.path, self.record)
        return self.record

    def _count_what_is_on_disk(self) -> None:
        """After a write error: messages = what reads back from the file; the rest were dropped."""
        (mcap,) = self.path.glob("*.mcap")
        on_disk = readable_counts(mcap)
        for topic, written in self.record.messages.items():
            kept = on_disk.get(topic, 0)
            self.record.drops[topic] += max(0, written - kept)
            self.record.messages[topic] = kept
