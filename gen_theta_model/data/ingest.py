"""`gen-theta ingest BAGS... --out DATASET`: rosbag2 episodes -> the training dataset.

Each bag is one episode, converted by ``ingest_episode`` in a worker (a local
process pool, or Ray with ``--engine ray``): camera messages are streamed into
videos, joint_states kept as recorded (their own stamps), the JointTrajectory
command stream replayed through the trajectory follower into commanded positions
at the control rate. Episodes already in the dataset are skipped (incremental);
a bad episode is reported with its error and skipped. Format: docs/dataset_format.md.
"""

from __future__ import annotations

import argparse
import struct
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from gen_theta_model.config import ConfigError, from_mapping, read_yaml
from gen_theta_model.data.bag import BagError, find_bags, open_bag
from gen_theta_model.data.episode import (
    ACTION_POSITION,
    ACTION_STAMP,
    ACTION_VELOCITY,
    COMMAND_STAMP,
    JOINT_POSITION,
    JOINT_STAMP,
    JOINT_VELOCITY,
    EpisodeMeta,
    EpisodeWriter,
)
from gen_theta_model.data.manifest import EPISODES, existing_episodes, finalize_dataset
from gen_theta_model.data.video import VideoConfig
from gen_theta_model.embodiment import EmbodimentError, EmbodimentSpec, load_robot
from gen_theta_model.topics import load_topics
from gen_theta_model.trajectory import TrajectoryError, resample_commands


class IngestError(ValueError):
    """One episode cannot be ingested; the message names the bag and the reason."""


@dataclass(frozen=True)
class TopicMap:
    """Which bag topic carries which stream; ``None`` fields come from config/topics.yaml."""

    cameras: dict[str, str] = field(default_factory=dict)  # camera name -> topic
    joint_states: str | None = None
    command: str | None = None
    instruction: str | None = None


@dataclass(frozen=True)
class IngestOptions:
    robot: str = ""  # for bags without the recorder's episode.yaml
    task: str = ""
    category: str = ""
    instruction: str = ""
    video: VideoConfig = field(default_factory=VideoConfig)
    topic_map: TopicMap = field(default_factory=TopicMap)


def resolve_topics(spec: EmbodimentSpec, robot: str, tmap: TopicMap, available: dict[str, str]) -> dict[str, str]:
    """Map stream keys ('camera.<name>', 'joint_states', 'command', 'instruction') -> topic."""
    names = load_topics()
    out = {}
    for cam in spec.cameras:
        if cam.name in tmap.cameras:
            out[f"camera.{cam.name}"] = tmap.cameras[cam.name]
        else:
            raw, compressed = names.camera_topic(robot, cam.name), names.camera_topic(robot, cam.name, True)
            out[f"camera.{cam.name}"] = compressed if compressed in available and raw not in available else raw
    out["joint_states"] = tmap.joint_states or names.resolve(robot, names.joint_states)
    out["command"] = tmap.command or names.resolve(robot, names.command)
    out["instruction"] = tmap.instruction or names.resolve(robot, names.instruction)
    return out


def _rgb(msg, msgtype: str) -> np.ndarray:
    # The message conversions are shared with the nodes; they are duck-typed (rosbags
    # messages have the ROS fields) and import no rclpy.
    from gen_theta_model.messages import compressed_to_numpy
    from gen_theta_model.messages import decode_image as image_to_numpy

    img = compressed_to_numpy(msg) if msgtype.endswith("CompressedImage") else image_to_numpy(msg)
    encoding = getattr(msg, "encoding", "rgb8")
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    elif encoding.startswith("bgr"):
        img = img[:, :, 2::-1]
    elif img.shape[2] == 4:
        img = img[:, :, :3]
    if img.dtype != np.uint8:
        raise IngestError(f"camera encoding '{encoding}' is not an 8-bit colour or grey image")
    return np.ascontiguousarray(img)


def _stamp_ns(msg, recv_ns: int) -> int:
    s = msg.header.stamp
    ns = int(s.sec) * 1_000_000_000 + int(s.nanosec)
    return ns if ns > 0 else recv_ns


def ingest_episode(bag: str | Path, out: str | Path, opts: IngestOptions) -> EpisodeMeta:
    """Convert one bag into ``out/episodes/<bag name>``; raises IngestError for a bad episode."""
    from gen_theta_model.messages import joint_state_to_arrays, trajectory_from_msg

    bag = Path(bag)
    try:
        source = open_bag(bag)
    except BagError as err:
        raise IngestError(str(err)) from err
    rec = source.record
    robot = (rec.robot if rec else "") or opts.robot
    if not robot:
        raise IngestError(f"{bag}: no episode.yaml from the recorder; give the robot with --robot")
    spec = load_robot(robot)
    if rec and rec.urdf_sha256 and rec.urdf_sha256 != spec.urdf_sha256:
        raise IngestError(f"{bag}: recorded with URDF sha256 {rec.urdf_sha256[:12]}, '{robot}' now has "
                          f"{spec.urdf_sha256[:12]}: the joint limits may differ")
    topics = resolve_topics(spec, robot, opts.topic_map, source.topics)
    for key in [k for k in topics if k != "instruction"]:
        if topics[key] not in source.topics:
            raise IngestError(f"{bag}: missing topic '{topics[key]}' ({key}); the bag has {sorted(source.topics)}")
    by_topic = {t: k for k, t in topics.items()}
    writer = EpisodeWriter(Path(out) / EPISODES, bag.name, spec, opts.video)
    js_t, js_q, js_v, commands, cmd_ns = [], [], [], [], []
    instruction = (rec.instruction if rec else "") or opts.instruction
    last_ns = 0
    try:
        for m in source.messages(set(by_topic)):
            key = by_topic[m.topic]
            if key.startswith("camera."):
                stamp = _stamp_ns(m.msg, m.recv_ns)
                writer.add_frame(key[len("camera."):], stamp, _rgb(m.msg, m.msgtype))
            elif key == "joint_states":
                stamp = _stamp_ns(m.msg, m.recv_ns)
                if js_t and stamp <= js_t[-1]:
                    raise IngestError(f"{bag}: {m.topic}: stamp {stamp} ns does not increase (previous {js_t[-1]})")
                names, q, v, _ = joint_state_to_arrays(m.msg)
                js_t.append(stamp)
                js_q.append(spec.reorder_from(names, q))
                js_v.append(spec.reorder_from(names, v))
            elif key == "command":
                traj = trajectory_from_msg(m.msg)
                commands.append((m.recv_ns * 1e-9, traj))
                cmd_ns.append(m.recv_ns)
                stamp = m.recv_ns
            else:
                instruction = instruction or m.msg.data
                continue
            last_ns = max(last_ns, stamp)
        if not js_t:
            raise IngestError(f"{bag}: no joint_states on '{topics['joint_states']}'")
        rate = spec.control_rate_hz
        grid = np.arange(js_t[0], last_ns + 1, int(round(1e9 / rate)), dtype=np.int64)
        q, qd = resample_commands(spec, js_q[0], commands, grid * 1e-9)
        writer.set_streams({
            JOINT_STAMP: np.asarray(js_t, np.int64), JOINT_POSITION: np.asarray(js_q), JOINT_VELOCITY: np.asarray(js_v),
            ACTION_STAMP: grid, ACTION_POSITION: q, ACTION_VELOCITY: qd, COMMAND_STAMP: np.asarray(cmd_ns, np.int64),
        })
        meta = EpisodeMeta(
            episode=bag.name, embodiment=spec.name, urdf_sha256=spec.urdf_sha256,
            task=(rec.task if rec else "") or opts.task, category=(rec.category if rec else "") or opts.category,
            instruction=instruction, success=rec.success if rec else None, start_ns=int(js_t[0]),
            duration_s=float(last_ns - js_t[0]) * 1e-9, num_trajectories=len(commands),
            complete=not source.recovered, source=str(bag.resolve()),
        )
        writer.finish(meta)
        return meta
    # IngestError, BagError, EmbodimentError, TrajectoryError, ConversionError are ValueErrors;
    # struct.error and IndexError come from deserializing a corrupt message.
    except (ValueError, EmbodimentError, TrajectoryError, struct.error, IndexError) as err:
        writer.abort()
        msg = str(err)
        raise IngestError(msg if msg.startswith(str(bag)) else f"{bag}: {msg}") from err
    except BaseException:
        writer.abort()
        raise


def _task(bag: str, out: str, opts: dict) -> dict:
    """Worker entry (plain data in and out): {'meta': {...}} or {'error': '...'}."""
    options = from_mapping(IngestOptions, opts, source="ingest options")
    try:
        return {"meta": ingest_episode(bag, out, options).to_dict()}
    except IngestError as err:
        return {"error": str(err)}


@dataclass
class IngestReport:
    added: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already in the dataset
    failed: dict[str, str] = field(default_factory=dict)  # bag -> error
    recovered: list[str] = field(default_factory=list)  # never-closed bags read up to the last chunk
    seconds: float = 0.0


def ingest(bags: list[Path], out: Path, opts: IngestOptions, engine: str = "process", jobs: int = 0,
           progress: bool = True) -> IngestReport:
    """Ingest ``bags`` into ``out`` (incremental), then rebuild manifest and statistics."""
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    have = existing_episodes(out)
    report = IngestReport(skipped=[b.name for b in bags if b.name in have])
    todo = [b for b in bags if b.name not in have]
    plain = asdict(opts)
    results = []
    bar = tqdm(total=len(todo), desc="ingest", unit="episode", disable=not progress)
    if engine == "ray":
        import ray

        remote = ray.remote(_task)
        pending = {remote.remote(str(b), str(out), plain): b for b in todo}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            results.append((pending.pop(done[0]), ray.get(done[0])))
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=jobs or None) as pool:
            futures = {pool.submit(_task, str(b), str(out), plain): b for b in todo}
            for f in as_completed(futures):
                results.append((futures[f], f.result()))
                bar.update()
    bar.close()
    robots = set()
    for bag, res in sorted(results, key=lambda r: r[0].name):
        if "error" in res:
            report.failed[str(bag)] = res["error"]
        else:
            report.added.append(res["meta"]["episode"])
            robots.add(res["meta"]["embodiment"])
            if not res["meta"]["complete"]:
                report.recovered.append(res["meta"]["episode"])
    finalize_dataset(out, {r: load_robot(r) for r in robots})
    report.seconds = time.perf_counter() - t0
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gen-theta ingest", description=__doc__.split("\n")[0])
    ap.add_argument("bags", nargs="+", help="bag directories, or directories holding bags")
    ap.add_argument("--out", required=True, help="dataset directory (created; existing episodes are kept)")
    ap.add_argument("--engine", choices=("process", "ray"), default="process")
    ap.add_argument("--jobs", type=int, default=0, help="worker processes (process engine; 0: one per core)")
    ap.add_argument("--robot", default="", help="robot for bags without the recorder's episode.yaml")
    ap.add_argument("--task", default="")
    ap.add_argument("--category", default="")
    ap.add_argument("--instruction", default="")
    ap.add_argument("--topic-map", help="YAML: cameras {name: topic}, joint_states, command, instruction")
    ap.add_argument("--codec", default=VideoConfig.codec)
    ap.add_argument("--crf", type=int, default=VideoConfig.crf)
    ap.add_argument("--gop", type=int, default=VideoConfig.gop)
    a = ap.parse_args(argv)
    try:
        tmap = from_mapping(TopicMap, read_yaml(a.topic_map), a.topic_map) if a.topic_map else TopicMap()
        opts = IngestOptions(a.robot, a.task, a.category, a.instruction,
                             VideoConfig(codec=a.codec, crf=a.crf, gop=a.gop), tmap)
        bags = find_bags(a.bags)
    except (ConfigError, ValueError) as err:
        print(f"gen-theta ingest: {err}", file=sys.stderr)
        return 2
    if a.engine == "ray":
        import ray

        ray.init(num_cpus=a.jobs or None, include_dashboard=False, ignore_reinit_error=True)
    report = ingest(bags, Path(a.out), opts, a.engine, a.jobs)
    for err in report.failed.values():
        print(f"FAILED {err}", file=sys.stderr)
    print(f"ingest: {len(report.added)} added ({len(report.recovered)} recovered from unfinished bags), "
          f"{len(report.skipped)} already present, {len(report.failed)} failed, in {report.seconds:.1f} s -> {a.out}")
    return 1 if report.failed else 0
