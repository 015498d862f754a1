"""Ingest and loader throughput on episodes recorded from the pybullet sim.

1. Runs scripted-expert episodes in the sim (real TinyRenderer frames, 2 cameras
   96x96 @ 15 fps, joint_states @ 100 Hz, the expert's JointTrajectory commands)
   and writes each as a rosbag2 MCAP bag as the recorder would.
2. Ingests them with 1 and 2 worker processes: episodes/min/core, compression
   against raw frames, bytes per experience-hour.
3. Loads samples with 0, 1 and 2 DataLoader workers, and a naive baseline that
   decodes every frame sequentially from the start of its video, in the same run:
   samples/s and experience-seconds per wall-second (a sample is one control step,
   so experience-s = samples / control rate).
Run: `.venv/bin/python bench/ingest_loader.py [episodes]`.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from gen_theta_model.data.dataset import EpisodeDataset
from gen_theta_model.data.ingest import IngestOptions, ingest
from gen_theta_model.data.loader import DataConfig, make_dataloaders
from gen_theta_model.data.recording import EpisodeRecord, write_record
from gen_theta_model.embodiment import load_robot
from gen_theta_model.sim.camera import render
from gen_theta_model.sim.episode import SimSession
from gen_theta_model.topics import load_topics

STORE = get_typestore(Stores.ROS2_KILTED)
T = STORE.types
T0 = 1_700_000_000_000_000_000
ROBOT, TASK = "arm6", "pick_place_bin"


def _stamp(t: float):
    ns = T0 + int(round(t * 1e9))
    return T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=ns // 10**9, nanosec=ns % 10**9),
                                    frame_id="")


def _traj_msg(traj) -> object:
    dur = T["builtin_interfaces/msg/Duration"]
    pts = [T["trajectory_msgs/msg/JointTrajectoryPoint"](
        positions=np.ascontiguousarray(p.positions),
        velocities=np.ascontiguousarray(p.velocities) if p.velocities is not None else np.zeros(0),
        accelerations=np.zeros(0), effort=np.zeros(0),
        time_from_start=dur(sec=int(p.time_from_start), nanosec=int(p.time_from_start % 1 * 1e9)))
        for p in traj.points]
    return T["trajectory_msgs/msg/JointTrajectory"](header=_stamp(0.0) if traj.start_time == 0 else
                                                    _stamp(traj.start_time), joint_names=list(traj.joint_names),
                                                    points=pts)


def sim_bag(session: SimSession, path: Path, seed: int) -> tuple[float, int]:
    """Record one expert episode into a bag; returns (seconds of experience, raw frame bytes)."""
    spec, robot, names = session.spec, session.robot, load_topics()
    world = robot.world
    task = robot.reset(TASK, seed, now=0.0)
    session.expert.reset(task.info(world))
    w = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP)
    w.open()
    topics = {names.resolve(ROBOT, names.joint_states): "sensor_msgs/msg/JointState",
              names.resolve(ROBOT, names.command): "trajectory_msgs/msg/JointTrajectory"}
    topics |= {names.camera_topic(ROBOT, c.name): "sensor_msgs/msg/Image" for c in spec.cameras}
    conns = {t: w.add_connection(t, ty, typestore=STORE) for t, ty in topics.items()}

    def put(topic: str, t: float, msg) -> None:
        w.write(conns[topic], T0 + int(round(t * 1e9)), STORE.serialize_cdr(msg, topics[topic]))

    step, raw = 0, 0
    every_js, every_expert = round(0.01 / world.dt), round(0.05 / world.dt)
    every_cam = round(1 / spec.cameras[0].fps / world.dt)
    while not robot.done:
        t = world.time
        if step % every_expert == 0:
            traj = session.expert.act(t, world.actuated_positions(), *world.object_poses())
            if traj is not None:
                robot.command(traj, t)
                put(names.resolve(ROBOT, names.command), t, _traj_msg(traj))
        if step % every_js == 0:
            put(names.resolve(ROBOT, names.joint_states), t, T["sensor_msgs/msg/JointState"](
                header=_stamp(t), name=spec.joint_names, position=np.ascontiguousarray(world.actuated_positions()),
                velocity=np.zeros(spec.dof), effort=np.zeros(0)))
        if step % every_cam == 0:
            for cam in spec.cameras:
                img = render(world, cam)
                raw += img.nbytes
                put(names.camera_topic(ROBOT, cam.name), t, T["sensor_msgs/msg/Image"](
                    header=_stamp(t), height=img.shape[0], width=img.shape[1], encoding="rgb8", is_bigendian=0,
                    step=img.shape[1] * 3, data=np.ascontiguousarray(img).reshape(-1)))
        robot.step(t)
        step += 1
    w.close()
    write_record(path, EpisodeRecord(robot=ROBOT, embodiment=spec.name, urdf_sha256=spec.urdf_sha256, task=TASK,
                                     category=task.category, success=robot.success_time is not None,
                                     start_ns=T0, end_ns=T0 + int(world.time * 1e9), status="complete"))
    return world.time, raw


class NaiveDataset(EpisodeDataset):
    """Baseline: every frame decoded sequentially from the start of its episode, no decoder reuse."""

    def frame(self, ep, camera, index, slot=0):
        rgb = VideoReformatter()  # the same colour conversion as VideoReader
        with av.open(str(self.episodes[ep].path / camera.file)) as c:
            stream = c.streams.video[0]
            c.seek(int(round(camera.offset / float(stream.average_rate) / float(stream.time_base))), stream=stream)
            for i, f in enumerate(c.decode(stream)):  # the episode starts on a keyframe
                if i == index:
                    return rgb.reformat(f, format="rgb24").to_ndarray()
        raise IndexError(index)


def loader_rate(ds_dir: Path, workers: int, batches: int, naive: bool = False) -> float:
    cfg = DataConfig(batch_size=16, num_workers=workers, val_fraction=0.0, samples_per_epoch=16 * (batches + 2),
                     streaming=False)  # random access: this bench's figures predate streaming (loader_vs_lerobot.py)
    train, _, _ = make_dataloaders(ds_dir, cfg)
    if naive:
        train.dataset.__class__ = NaiveDataset
    it = iter(train)
    next(it)  # workers started, first batch out
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return 16 * batches / (time.perf_counter() - t0)


def main(n: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="ingest_bench_"))
    spec = load_robot(ROBOT)
    session = SimSession(spec)
    t0 = time.perf_counter()
    seconds, raw = 0.0, 0
    for i in range(n):
        s, r = sim_bag(session, tmp / "bags" / f"ep{i:03d}", seed=i)
        seconds, raw = seconds + s, raw + r
    session.close()
    bag_bytes = sum(p.stat().st_size for p in (tmp / "bags").rglob("*") if p.is_file())
    print(f"sim: {n} {TASK} episodes on {ROBOT}, {seconds:.0f} s of experience, recorded in "
          f"{time.perf_counter() - t0:.0f} s; bags {bag_bytes / 1e6:.1f} MB")
    bags = sorted((tmp / "bags").iterdir())
    for jobs in (1, 2):
        out = tmp / f"ds{jobs}"
        report = ingest(bags, out, IngestOptions(include_failed=True), jobs=jobs, progress=False)
        assert not report.failed, report.failed
        rate = len(report.added) / report.seconds * 60
        print(f"ingest, {jobs} worker(s): {report.seconds:.1f} s, {rate:.1f} episodes/min "
              f"({rate / jobs:.1f} per core), {seconds / report.seconds:.1f} experience-s per wall-s")
    ds = tmp / "ds1"
    video = sum(p.stat().st_size for p in ds.rglob("*.mp4"))
    total = sum(p.stat().st_size for p in ds.rglob("*") if p.is_file())
    print(f"dataset: {total / 1e6:.2f} MB ({video / 1e6:.2f} MB video); raw frames {raw / 1e6:.1f} MB -> "
          f"compression {raw / video:.0f}x; {total / seconds * 3600 / 1e6:.1f} MB per experience-hour "
          f"(bags: {bag_bytes / seconds * 3600 / 1e6:.0f} MB/h)")
    rate_hz = spec.control_rate_hz
    print(f"loader (batch 16, {ROBOT}: 2 cameras 96x96 -> 96x96, history 4, H=50), samples/s and experience-s/s:")
    base = loader_rate(ds, 0, 10, naive=True)
    print(f"  naive baseline (decode from start), 0 workers: {base:7.1f} samples/s  {base / rate_hz:6.2f} exp-s/s")
    best = 0.0
    for workers in (0, 1, 2):
        r = loader_rate(ds, workers, 40)
        best = max(best, r / max(workers, 1))
        print(f"  seek + decoder reuse, {workers} workers:      {r:7.1f} samples/s  {r / rate_hz:6.2f} exp-s/s")
    need = 2500 * rate_hz / best
    print(f"seed figure ~2,500 experience-s/s = {2500 * rate_hz:.0f} samples/s at {rate_hz:.0f} Hz: about "
          f"{need:.0f} cores of this kind at {best:.0f} samples/s per core")
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 6)
