"""`gen-theta ingest BAGS... --out DATASET`: rosbag2 episodes -> the training dataset.

Each bag is one episode, converted by ``ingest_episode`` in a worker (a local
process pool, or Ray with ``--engine ray``): camera messages are streamed into
videos, joint_states kept as recorded (their own stamps), and the actions put on
a grid at the control rate: the JointTrajectory command stream replayed through
the trajectory follower into commanded positions, or for teleoperation
(``--action-topic``) a leader arm's JointState positions, mapped to the robot's
joints and interpolated. Episodes already in the dataset are skipped (incremental);
a bad episode (unreadable, corrupt, or with an implausible joint value: checks.py)
is reported with its error and skipped, and the rest goes on. Only successful
episodes are taken unless ``--include-failed`` / ``--include-unknown`` say otherwise.
A full disk stops the run with the dataset holding every episode finished before.
Format and exit codes: docs/dataset_format.md.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import os
import struct
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from gen_theta_model.config import ConfigError, from_mapping, read_yaml
from gen_theta_model.data.bag import BagError, find_bags, open_bag
from gen_theta_model.data.checks import check_command, check_joint_states, sensed_before_start
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
from gen_theta_model.data.leader_joints import LeaderJoints
from gen_theta_model.data.manifest import (
    EPISODES,
    OUTPUT_FULL,
    existing_episodes,
    finalize_dataset,
)
from gen_theta_model.data.object_poses import object_streams, pose_array_positions
from gen_theta_model.data.recording import EPISODE_FILE, read_record
from gen_theta_model.data.video import VideoConfig
from gen_theta_model.embodiment import EmbodimentError, EmbodimentSpec, load_robot
from gen_theta_model.ray_cluster import RayClusterError, init_ray
from gen_theta_model.topics import load_topics
from gen_theta_model.trajectory import TrajectoryError, resample_commands, resample_positions

RESERVE_FILE = ".reserve"  # freed when the run ends, so that manifest and statistics fit on a full disk
RESERVE_BYTES = 256 * 1024  # info, embodiments, statistics and their temporary copies
RESERVE_PER_EPISODE = 2 * 1024  # a manifest line (~0.5 kB) and its temporary copy, with room to spare


class IngestError(ValueError):
    """One episode cannot be ingested; the message names the bag and the reason."""


@dataclass(frozen=True)
class TopicMap:
    """Which bag topic carries which stream; ``None`` fields come from config/topics.yaml."""

    cameras: dict[str, str] = field(default_factory=dict)  # camera name -> topic
    joint_states: str | None = None
    command: str | None = None
    instruction: str | None = None
    objects: str | None = None  # geometry_msgs/PoseArray of the task objects (optional: the sim's object_poses)
    # Teleop: a leader arm's sensor_msgs/JointState topic whose positions are the actions (instead of
    # the command topic; default: the recorder's episode.yaml action_topic), and leader joint name ->
    # the robot's joint name ('' drops a leader joint); unmapped names must be the robot's own.
    action: str | None = None
    action_joints: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class IngestOptions:
    robot: str = ""  # for bags without the recorder's episode.yaml
    task: str = ""
    category: str = ""
    instruction: str = ""
    video: VideoConfig = field(default_factory=VideoConfig)
    topic_map: TopicMap = field(default_factory=TopicMap)
    include_failed: bool = False  # take episodes marked success: false
    include_unknown: bool = False  # take episodes never marked (success: null, or no episode.yaml)


def resolve_topics(spec: EmbodimentSpec, robot: str, tmap: TopicMap, available: dict[str, str],
                   action: str = "") -> dict[str, str]:
    """Map stream keys ('camera.<name>', 'joint_states', 'command' or 'action', 'instruction', 'objects') -> topic.

    ``action``: the leader's JointState topic (teleop); then there is no 'command'.
    """
    names = load_topics()
    out = {}
    for cam in spec.cameras:
        if cam.name in tmap.cameras:
            out[f"camera.{cam.name}"] = tmap.cameras[cam.name]
        else:
            raw, compressed = names.camera_topic(robot, cam.name), names.camera_topic(robot, cam.name, True)
            out[f"camera.{cam.name}"] = compressed if compressed in available and raw not in available else raw
    out["joint_states"] = tmap.joint_states or names.resolve(robot, names.joint_states)
    if action:
        out["action"] = names.resolve(robot, action)
    else:
        out["command"] = tmap.command or names.resolve(robot, names.command)
    out["instruction"] = tmap.instruction or names.resolve(robot, names.instruction)
    out["objects"] = tmap.objects or names.resolve(robot, names.object_poses)
    return out


OPTIONAL_STREAMS = ("instruction", "objects")


def _rgb(msg) -> np.ndarray:
    """Decode a recorded Image or CompressedImage (rosbags message: the ROS fields) to (H, W, 3) uint8 RGB,
    with the same ``to_rgb8`` the policy server uses, so that training sees what serving sees.
    """
    from gen_theta_model.messages import ConversionError, to_rgb8

    try:
        return to_rgb8(msg)
    except ConversionError as err:
        raise IngestError(f"camera image: {err}") from err


def _stamp_ns(msg, recv_ns: int) -> int:
    s = msg.header.stamp
    ns = int(s.sec) * 1_000_000_000 + int(s.nanosec)
    return ns if ns > 0 else recv_ns


def _increasing_stamp(bag: Path, m, previous: list[int]) -> int:
    """Return the header stamp (ns) of JointState message ``m``; an error unless it follows ``previous``."""
    stamp = _stamp_ns(m.msg, m.recv_ns)
    if previous and stamp <= previous[-1]:
        raise IngestError(f"{bag}: {m.topic}: stamp {stamp} ns does not increase (previous {previous[-1]})")
    return stamp


def ingest_episode(bag: str | Path, out: str | Path, opts: IngestOptions, episode: str = "") -> EpisodeMeta:
    """Convert one bag into ``out/episodes/<episode>`` (default: the bag's name).

    Raises IngestError for a bad episode (nothing of it is written); OSError when the
    dataset cannot be written.
    """
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
    action = opts.topic_map.action or (rec.action_topic if rec else "")
    topics = resolve_topics(spec, robot, opts.topic_map, source.topics, action)
    for key in [k for k in topics if k not in OPTIONAL_STREAMS]:
        if topics[key] not in source.topics:
            raise IngestError(f"{bag}: missing topic '{topics[key]}' ({key}); the bag has {sorted(source.topics)}")
    by_topic = {t: k for k, t in topics.items() if k not in OPTIONAL_STREAMS or t in source.topics}
    episode = episode or bag.name
    writer = EpisodeWriter(Path(out) / EPISODES, episode, spec, opts.video)
    js_t, js_q, js_v, js_recv, commands, cmd_ns = [], [], [], [], [], []
    obj_t, obj_recv, obj_p = [], [], []  # object poses: stamps (ns), receive times (ns), (M, 3) positions
    lead_t, lead_q, lead_recv = [], [], []  # teleop: leader stamps (ns), positions in the robot's joint order
    leader = LeaderJoints(spec, topics.get("action", ""), opts.topic_map.action_joints)
    instruction = (rec.instruction if rec else "") or opts.instruction
    first_ns, last_ns = 0, 0
    try:
        for m in source.messages(set(by_topic)):
            first_ns = first_ns or m.recv_ns
            key = by_topic[m.topic]
            if key.startswith("camera."):
                stamp = _stamp_ns(m.msg, m.recv_ns)
                writer.add_frame(key[len("camera."):], stamp, _rgb(m.msg))
            elif key == "joint_states":
                stamp = _increasing_stamp(bag, m, js_t)
                js_t.append(stamp)
                js_recv.append(m.recv_ns)
                names, q, v, _ = joint_state_to_arrays(m.msg)
                js_q.append(spec.reorder_from(names, q))
                js_v.append(spec.reorder_from(names, v))
            elif key == "action":
                stamp = _increasing_stamp(bag, m, lead_t)
                lead_t.append(stamp)
                lead_recv.append(m.recv_ns)
                names, q, _, _ = joint_state_to_arrays(m.msg)
                lead_q.append(leader.positions(names, q))
            elif key == "objects":
                stamp = _stamp_ns(m.msg, m.recv_ns)
                obj_t.append(stamp)
                obj_recv.append(m.recv_ns)
                obj_p.append(pose_array_positions(m.msg))
            elif key == "command":
                traj = trajectory_from_msg(m.msg)
                check_command(spec, m.topic, m.recv_ns, traj, first_ns)
                commands.append((m.recv_ns * 1e-9, traj))
                cmd_ns.append(m.recv_ns)
                stamp = m.recv_ns
            else:
                instruction = instruction or m.msg.data
                continue
            last_ns = max(last_ns, stamp)
        # Messages in flight at the start describe the time before it (after a sim reset, the old pose).
        start_ns = rec.start_ns if rec else 0
        n = sensed_before_start(np.asarray(js_t), np.asarray(js_recv), start_ns)
        del js_t[:n], js_q[:n], js_v[:n]
        n = sensed_before_start(np.asarray(lead_t), np.asarray(lead_recv), start_ns)
        del lead_t[:n], lead_q[:n]
        if not js_t:
            raise IngestError(f"{bag}: no joint_states on '{topics['joint_states']}'")
        stamps, positions, velocities = np.asarray(js_t, np.int64), np.asarray(js_q), np.asarray(js_v)
        check_joint_states(spec, topics["joint_states"], stamps, positions, velocities, first_ns)
        rate = spec.control_rate_hz
        grid = np.arange(js_t[0], last_ns + 1, int(round(1e9 / rate)), dtype=np.int64)
        if action:
            if not lead_t:
                raise IngestError(f"{bag}: no leader joint states on '{topics['action']}' (the action topic)")
            cmd_ns, lead = lead_t, np.asarray(lead_q)
            check_joint_states(spec, topics["action"], np.asarray(lead_t), lead, np.full_like(lead, np.nan), first_ns)
            q, qd = resample_positions(np.asarray(lead_t), lead, grid, spec.continuous_mask)
        else:
            q, qd = resample_commands(spec, js_q[0], commands, grid * 1e-9)
        writer.set_streams({
            JOINT_STAMP: stamps, JOINT_POSITION: positions, JOINT_VELOCITY: velocities,
            ACTION_STAMP: grid, ACTION_POSITION: q, ACTION_VELOCITY: qd, COMMAND_STAMP: np.asarray(cmd_ns, np.int64),
            **object_streams(obj_t, obj_recv, obj_p, start_ns),
        })
        meta = EpisodeMeta(
            episode=episode, embodiment=spec.name, urdf_sha256=spec.urdf_sha256,
            task=(rec.task if rec else "") or opts.task, category=(rec.category if rec else "") or opts.category,
            instruction=instruction, success=rec.success if rec else None, start_ns=int(js_t[0]),
            duration_s=float(last_ns - js_t[0]) * 1e-9, num_trajectories=len(commands),
            complete=not source.recovered, source=str(bag.resolve()),
        )
        writer.finish(meta)
        return meta
    # IngestError, BagError, EmbodimentError, TrajectoryError, ConversionError, ImplausibleValueError
    # are ValueErrors; struct.error and IndexError come from deserializing a corrupt message.
    except (ValueError, EmbodimentError, TrajectoryError, struct.error, IndexError) as err:
        writer.abort()
        msg = str(err)
        raise IngestError(msg if msg.startswith(str(bag)) else f"{bag}: {msg}") from err
    except BaseException:
        writer.abort()
        raise


def _task(bag: str, episode: str, out: str, opts: dict) -> dict:
    """Worker entry (plain data in and out): {'meta': {...}}, {'error': '...'} or {'stop': '...'}."""
    options = from_mapping(IngestOptions, opts, source="ingest options")
    try:
        return {"meta": ingest_episode(bag, out, options, episode).to_dict()}
    except IngestError as err:
        return {"error": str(err)}
    except OSError as err:
        if err.errno in OUTPUT_FULL:
            return {"stop": f"writing the episode of {bag}: {err}"}
        return {"error": f"{bag}: {err}"}


@dataclass
class IngestReport:
    added: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already in the dataset
    failed: dict[str, str] = field(default_factory=dict)  # bag -> error (rejected episodes)
    excluded: dict[str, bool | None] = field(default_factory=dict)  # bag -> its success mark (False / None)
    recovered: list[str] = field(default_factory=list)  # never-closed bags read up to the last chunk
    stopped: str = ""  # why the run stopped early (disk full); the dataset holds what finished
    seconds: float = 0.0


def plan_ingest(bags: list[Path], out: Path, opts: IngestOptions) -> tuple[list[tuple[Path, str]], IngestReport]:
    """Decide per bag: (bag, episode id) to convert, or skipped (already present) or excluded (success).

    A bag is present when an episode's ``source`` is its path. A new bag's id is its
    directory name, or, when that id is taken (same name in another folder), the
    name plus 8 hex digits of the hash of its path.
    """
    taken, sources = existing_episodes(out)
    report = IngestReport()
    todo = []
    for bag in bags:
        path = str(bag.resolve())
        if path in sources:
            report.skipped.append(sources[path])
            continue
        success = _recorded_success(bag)
        if (success is False and not opts.include_failed) or (success is None and not opts.include_unknown):
            report.excluded[str(bag)] = success
            continue
        episode = bag.name if bag.name not in taken else f"{bag.name}-{hashlib.sha256(path.encode()).hexdigest()[:8]}"
        taken.add(episode)
        todo.append((bag, episode))
    return todo, report


def _recorded_success(bag: Path) -> bool | None:
    """Read the success mark of the bag's episode.yaml: None if never marked or no episode.yaml.

    An unreadable episode.yaml counts as True: the bag goes to a worker, which reports it.
    """
    try:
        return read_record(bag).success if (bag / EPISODE_FILE).is_file() else None
    except ValueError:
        return True


def ingest(bags: list[Path], out: Path, opts: IngestOptions, engine: str = "process", jobs: int = 0,
           progress: bool = True) -> IngestReport:
    """Ingest ``bags`` into ``out`` (incremental), then pack them into shards, append to the index and statistics.

    Bad episodes are reported in ``failed``; a full disk ends the run early (``stopped``)
    and the index then lists every episode finished before that fitted (the rest stays staged).
    """
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    todo, report = plan_ingest(bags, out, opts)
    results: list[tuple[Path, dict]] = []
    reserve = out / RESERVE_FILE
    try:
        with open(reserve, "wb") as f:
            os.posix_fallocate(f.fileno(), 0, RESERVE_BYTES + RESERVE_PER_EPISODE * (len(todo) + len(report.skipped)))
    except OSError as err:
        reserve.unlink(missing_ok=True)
        report.stopped = f"{out}: {err}"
        todo = []
    bar = tqdm(total=len(todo), desc="ingest", unit="episode", disable=not progress)

    def collect(bag: Path, res: dict) -> bool:
        results.append((bag, res))
        bar.update()
        report.stopped = report.stopped or res.get("stop", "")
        return not report.stopped

    run = _run_ray if engine == "ray" else _run_local
    try:
        # absolute paths: a Ray worker on another machine has another working directory
        run([(str(b.absolute()), e, str(out.absolute()), asdict(opts)) for b, e in todo], jobs, collect)
    finally:
        bar.close()
        reserve.unlink(missing_ok=True)
    robots = set()
    for bag, res in sorted(results, key=lambda r: str(r[0])):
        if "error" in res:
            report.failed[str(bag)] = res["error"]
        elif "meta" in res:
            report.added.append(res["meta"]["episode"])
            robots.add(res["meta"]["embodiment"])
            if not res["meta"]["complete"]:
                report.recovered.append(res["meta"]["episode"])
    try:
        finalize_dataset(out, {r: load_robot(r) for r in robots})
    except OSError as err:  # the previous index stays (atomic writes); what did not fit stays staged
        report.stopped = report.stopped or f"{out}: packing episodes into shards: {err}"
    report.seconds = time.perf_counter() - t0
    return report


def _run_local(tasks: list[tuple], jobs: int, collect: Callable[[Path, dict], bool]) -> None:
    """Run ``_task`` over ``tasks`` in a process pool; ``collect`` returning False cancels the rest.

    Workers are spawned, not forked: a fork copies the caller's locks as they are, and a caller
    with threads (a trainer's TensorBoard writer, torch's pools, a test runner) left a worker
    waiting for ever on a lock nobody would release (seen in the test suite).
    """
    with ProcessPoolExecutor(max_workers=jobs or None, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_task, *t): Path(t[0]) for t in tasks}
        for f in as_completed(futures):
            if not f.cancelled() and not collect(futures[f], f.result()):
                for other in futures:
                    other.cancel()


def _run_ray(tasks: list[tuple], jobs: int, collect: Callable[[Path, dict], bool]) -> None:
    """Run ``_task`` over ``tasks`` as Ray tasks (``ray.init`` done by the caller); as ``_run_local``."""
    import ray

    remote = ray.remote(_task)
    pending = {remote.remote(*t): Path(t[0]) for t in tasks}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        bag = pending.pop(done[0])
        if not collect(bag, ray.get(done[0])):
            for ref in pending:
                ray.cancel(ref)
            pending = {}


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done, 1 some episodes rejected, 2 bad arguments or no bags, 3 stopped early (disk full)."""
    ap = argparse.ArgumentParser(prog="gen-theta ingest", description=__doc__.split("\n")[0])
    ap.add_argument("bags", nargs="+", help="bag directories, or directories holding bags")
    ap.add_argument("--out", required=True, help="dataset directory (created; existing episodes are kept)")
    ap.add_argument("--engine", choices=("process", "ray"), default="process")
    ap.add_argument("--jobs", type=int, default=0, help="worker processes (process engine; 0: one per core)")
    ap.add_argument("--ray-address", "--address", default="", help="Ray cluster to join (ray engine): HOST:PORT of "
                    "its head, 'auto' or ray://HOST:10001; bags and --out on storage every node sees at the same "
                    "path (docs/cluster.md); default: a local Ray on 127.0.0.1 only")
    ap.add_argument("--robot", default="", help="robot for bags without the recorder's episode.yaml")
    ap.add_argument("--task", default="")
    ap.add_argument("--category", default="")
    ap.add_argument("--instruction", default="")
    ap.add_argument("--include-failed", action="store_true", help="also take episodes marked success: false")
    ap.add_argument("--include-unknown", action="store_true",
                    help="also take episodes never marked (success: null; bags without episode.yaml)")
    ap.add_argument("--topic-map", help="YAML: cameras {name: topic}, joint_states, command, instruction, objects, "
                    "action, action_joints {leader joint: robot joint}")
    ap.add_argument("--action-topic", default="", help="teleop: take the actions from this sensor_msgs/JointState "
                    "topic (a leader arm's), not from JointTrajectory commands (default: the recorder's "
                    "episode.yaml action_topic)")
    ap.add_argument("--codec", default=VideoConfig.codec)
    ap.add_argument("--crf", type=int, default=VideoConfig.crf)
    ap.add_argument("--gop", type=int, default=VideoConfig.gop)
    a = ap.parse_args(argv)
    try:
        tmap = from_mapping(TopicMap, read_yaml(a.topic_map), a.topic_map) if a.topic_map else TopicMap()
        if a.action_topic:
            tmap = replace(tmap, action=a.action_topic)
        opts = IngestOptions(a.robot, a.task, a.category, a.instruction,
                             VideoConfig(codec=a.codec, crf=a.crf, gop=a.gop), tmap,
                             include_failed=a.include_failed, include_unknown=a.include_unknown)
        bags = find_bags(a.bags)
    except (ConfigError, ValueError) as err:
        print(f"gen-theta ingest: {err}", file=sys.stderr)
        return 2
    if not bags:
        print(f"gen-theta ingest: no bags in {' '.join(a.bags)} (a bag is a directory with metadata.yaml or an "
              ".mcap file)", file=sys.stderr)
        return 2
    if a.engine == "ray":
        try:
            gcs = init_ray(a.ray_address, a.jobs or None)
        except RayClusterError as err:
            print(f"gen-theta ingest: {err}", file=sys.stderr)
            return 2
        if not a.ray_address and gcs.rsplit(":", 1)[0] not in ("127.0.0.1", "::1", "[::1]"):
            import ray

            ray.shutdown()
            print(f"gen-theta ingest: the Ray cluster at {gcs} listens beyond this machine; give --ray-address "
                  f"{gcs} to use it anyway", file=sys.stderr)
            return 2
        print(f"ingest: Ray cluster at {gcs}")
    report = ingest(bags, Path(a.out), opts, a.engine, a.jobs)
    for err in report.failed.values():
        print(f"FAILED {err}", file=sys.stderr)
    failed = sum(success is False for success in report.excluded.values())
    print(f"ingest: {len(report.added)} added ({len(report.recovered)} recovered from unfinished bags), "
          f"{len(report.skipped)} already present, {len(report.failed)} rejected, {len(report.excluded)} left out "
          f"({failed} failed: --include-failed; {len(report.excluded) - failed} never marked: --include-unknown), "
          f"in {report.seconds:.1f} s -> {a.out}")
    if report.stopped:
        print(f"gen-theta ingest: stopped early: {report.stopped}; {a.out} holds the episodes finished before "
              "(free space and run again to add the rest)", file=sys.stderr)
        return 3
    return 1 if report.failed else 0
