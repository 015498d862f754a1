"""Reading rosbag2 bags: the recorder's episodes, `ros2 bag record` output, MCAP or sqlite3.

``open_bag(path)`` gives a ``BagSource``: topics with types, the recorder's episode
record if present, and the messages (deserialized with rosbags) in receive order.

A bag that was never closed (recorder killed, machine crashed) has no
metadata.yaml and its MCAP file has no summary. It is read in recovery mode: mcap's
stream reader returns every complete chunk up to the first truncated record, and
``BagSource.recovered`` says so. A bag that claims to be complete (metadata.yaml)
but whose file is damaged is an error (``BagError``) naming the file. Chunk CRCs
(written by gen_theta's recorder and by ``ros2 bag record``) are checked in both
modes: a chunk whose bytes changed after writing is reported as corrupt, never read.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from mcap.exceptions import McapError
from mcap.records import Channel, Message, Schema
from mcap.stream_reader import CRCValidationError, StreamReader
from rosbags.highlevel import AnyReader, AnyReaderError
from rosbags.rosbag2 import ReaderError
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

from gen_theta_model.data.recording import EPISODE_FILE, EpisodeRecord, read_record


class BagError(ValueError):
    """A bag cannot be read; the message names the bag and the problem."""


@dataclass(frozen=True)
class BagMessage:
    topic: str
    msgtype: str
    recv_ns: int  # the bag's timestamp: receive time at the recorder
    msg: Any  # rosbags message object (same fields as the ROS message)


@dataclass
class BagSource:
    path: Path
    topics: dict[str, str]  # topic -> msgtype
    record: EpisodeRecord | None  # the recorder's episode.yaml, if any
    custom_data: dict[str, str] = field(default_factory=dict)
    recovered: bool = False  # read in recovery mode (never closed)
    recovery_note: str = ""  # where and why recovery stopped

    def messages(self, topics: set[str] | None = None) -> Iterator[BagMessage]:
        """Messages of ``topics`` (all if None) in the order they were written."""
        if self.recovered:
            yield from _recover_messages(self, topics)
            return
        try:
            with AnyReader([self.path], default_typestore=get_typestore(Stores.ROS2_KILTED)) as reader:
                conns = [c for c in reader.connections if topics is None or c.topic in topics]
                for conn, stamp, raw in reader.messages(connections=conns):
                    yield BagMessage(conn.topic, conn.msgtype, stamp, reader.deserialize(raw, conn.msgtype))
        except (AnyReaderError, ReaderError, struct.error, McapError, EOFError) as err:
            raise BagError(f"{self.path}: corrupt or truncated bag: {err}") from err


def is_bag(path: Path) -> bool:
    """Tell whether ``path`` is a bag directory: metadata.yaml, or (never closed) an .mcap file."""
    return path.is_dir() and ((path / "metadata.yaml").is_file() or any(path.glob("*.mcap")))


def find_bags(paths: list[str | Path]) -> list[Path]:
    """Bag directories among ``paths`` and their sub-directories (one level), sorted by name."""
    out: list[Path] = []
    for p in map(Path, paths):
        if is_bag(p):
            out.append(p)
        elif p.is_dir():
            out.extend(sorted(c for c in p.iterdir() if is_bag(c)))
        else:
            raise BagError(f"{p}: not a rosbag2 bag directory (no metadata.yaml or .mcap)")
    return sorted(set(out), key=lambda b: (b.name, str(b)))


def open_bag(path: str | Path) -> BagSource:
    """Open a bag directory (see module docstring)."""
    path = Path(path)
    if not is_bag(path):
        raise BagError(f"{path}: not a rosbag2 bag directory (no metadata.yaml or .mcap)")
    record = read_record(path) if (path / EPISODE_FILE).is_file() else None
    meta_file = path / "metadata.yaml"
    if not meta_file.is_file():
        source = BagSource(path, {}, record, recovered=True)
        for _ in _recover_messages(source, set(), scan=True):
            pass
        return source
    try:
        info = yaml.safe_load(meta_file.read_text())["rosbag2_bagfile_information"]
        topics = {t["topic_metadata"]["name"]: t["topic_metadata"]["type"] for t in info["topics_with_message_count"]}
    except (yaml.YAMLError, KeyError, TypeError) as err:
        raise BagError(f"{meta_file}: not a rosbag2 metadata file: {err}") from err
    return BagSource(path, topics, record, custom_data=dict(info.get("custom_data") or {}))


def _recover_messages(source: BagSource, topics: set[str] | None, scan: bool = False) -> Iterator[BagMessage]:
    """Stream the MCAP file up to the first incomplete record (recovery mode)."""
    files = sorted(source.path.glob("*.mcap"))
    if len(files) != 1:
        raise BagError(f"{source.path}: expected one .mcap file to recover, found {len(files)}")
    store = get_typestore(Stores.ROS2_KILTED)
    channels: dict[int, Channel] = {}
    schemas: dict[int, Schema] = {}
    count = 0
    with files[0].open("rb") as f:
        records = StreamReader(f, skip_magic=False, emit_chunks=False, validate_crcs=True).records
        try:
            for rec in records:
                if isinstance(rec, Schema):
                    schemas[rec.id] = rec
                    _register(store, rec)
                elif isinstance(rec, Channel):
                    channels[rec.id] = rec
                    source.topics[rec.topic] = schemas[rec.schema_id].name
                elif isinstance(rec, Message) and not scan:
                    ch = channels[rec.channel_id]
                    if topics is None or ch.topic in topics:
                        msgtype = schemas[ch.schema_id].name
                        count += 1
                        yield BagMessage(ch.topic, msgtype, rec.log_time, store.deserialize_cdr(rec.data, msgtype))
        except CRCValidationError as err:  # damaged, not cut short: nothing of it can be trusted
            raise BagError(f"{source.path}: corrupt bag: {files[0].name}: {err}") from err
        except (EOFError, struct.error, McapError) as err:
            where = f"after {count} messages" if not scan else "at the end"
            source.recovery_note = f"{files[0].name}: recovered up to the last complete chunk ({where}; {err!r})"


def _register(store: Typestore, schema: Schema) -> None:
    if schema.name in store.types or schema.encoding != "ros2msg":
        return
    store.register(get_types_from_msg(schema.data.decode(), schema.name))

