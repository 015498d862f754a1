"""Expert-takeover episodes: a learned policy drives, then the scripted expert takes over and finishes.

A policy trained on demonstrations alone meets, in closed loop, states the demonstrations never
show (the tool a few cm beside the cube, the gripper closed in the air) and has no example of
the way back. DAgger (Ross et al., 2011) labels the states the *learner* visits with the expert's
action; HG-DAgger (Kelly et al., 2019) has the expert take control where the learner goes wrong
and records the recovery. This module does the latter in simulation, in one process, on
simulated time:

1. the checkpoint is served harmonic through ``SimClosedLoop`` (the same server engine as
   ``gen-theta rollout --in-process``) for a takeover time drawn per seed from
   ``TakeoverConfig.takeover_s`` (seconds after the server starts driving);
2. the server stops, and ``ScriptedExpert`` takes the robot from where the policy left it (its
   plans start from the measured joint positions; a closed gripper reopens on the approach; an
   object the policy holds is lifted and placed from where it is) at ``expert_rate_hz``, as the
   expert node does over ROS;
3. the episode is written from the expert's first command on (joint states, every camera's
   frames, the commanded positions on the control grid, exactly what ingest makes of a bag):
   every action in it is the expert's, every state the policy's making or the expert's
   recovery from it. Only the expert's successes are kept, and only if their joint states pass
   the checks ingest applies to a bag (gen_theta_model.data.checks).

An episode whose policy succeeded or timed out before the takeover is not written: the rows say
which. The episodes form an ordinary dataset (``finalize_dataset``, also when Ctrl-C or SIGTERM
stops the CLI, which then exits 130) to mix with the demonstrations (``gen-theta train ...
--set dataset=[...]``).

    python -m gen_theta_model.sim.takeover CKPT --robot arm6 --task stack --seeds 0..99 --out runs/dag/data
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gen_theta_model.cli_args import ExtendAction
from gen_theta_model.data.checks import check_joint_states
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
from gen_theta_model.sim.camera import render
from gen_theta_model.sim.experts import ScriptedExpert
from gen_theta_model.sim.policy_rollout import SimClosedLoop, SimLoopConfig


@dataclass(frozen=True)
class TakeoverConfig:
    takeover_s: tuple[float, float] = (1.0, 4.0)  # s the policy drives before the expert, uniform per seed
    expert_rate_hz: float = 20.0  # expert ticks per second, as the expert node (config/expert.yaml)
    after_success_s: float = 0.3  # s recorded after the task succeeds (the robot settles)
    mode: str = "harmonic"  # how the policy is served before the takeover
    added_delay_ms: float = 0.0

    def __post_init__(self) -> None:
        lo, hi = self.takeover_s
        if not 0.0 <= lo <= hi or self.expert_rate_hz <= 0.0 or self.after_success_s < 0.0:
            raise ValueError(f"need 0 <= takeover_s[0] <= takeover_s[1] and expert_rate_hz > 0, got {self}")

    def takeover_time(self, seed: int) -> float:
        """Seconds of policy driving for ``seed`` (a function of the seed: episodes replay exactly)."""
        return float(np.random.default_rng([seed, 0x7A4E]).uniform(*self.takeover_s))


@dataclass(frozen=True)
class TakeoverRow:
    """What became of one seed: ``outcome`` is written | already_present (in the dataset: not run
    again) | expert_failed | implausible (``episode`` says why) | policy_succeeded | policy_timed_out;
    ``takeover_s`` in simulated seconds since the server started driving; ``holding``: the policy held
    the task's object at the takeover (the expert starts with the lift).
    """

    seed: int
    task: str
    takeover_s: float
    outcome: str
    episode: str = ""
    expert_s: float = 0.0  # from the expert's first command to the end of the episode
    holding: bool = False


class TakeoverCollector:
    """Serve ``loop``'s policy, then hand the robot to a ScriptedExpert; write kept episodes under
    ``out`` (a dataset root: episodes are staged in ``out/episodes`` until ``finalize_dataset``).
    """

    def __init__(self, loop: SimClosedLoop, out: str | Path, source: str, cfg: TakeoverConfig | None = None,
                 video: VideoConfig | None = None) -> None:
        self.loop = loop
        self.spec = loop.spec
        self.out = Path(out)
        self.source = source
        self.cfg = cfg or TakeoverConfig()
        self.video = video or VideoConfig()
        self.expert = ScriptedExpert(self.spec)
        self._base_cfg = loop.cfg
        self._present, _ = existing_episodes(self.out)  # a collection resumed skips the seeds it has

    def episode(self, task: str, seed: int) -> TakeoverRow:
        """Play ``seed`` of ``task``: the policy for the seed's takeover time, then the expert."""
        loop, robot = self.loop, self.loop.robot
        takeover = self.cfg.takeover_time(seed)
        name = f"{self.spec.name}_{task}_takeover_{seed:06d}"
        if name in self._present:
            return TakeoverRow(seed, task, round(takeover, 3), "already_present", name)
        loop.cfg = dataclasses.replace(self._base_cfg, max_seconds=takeover)
        try:
            loop.run(task, seed, self.cfg.mode, self.cfg.added_delay_ms)
        finally:
            loop.cfg = self._base_cfg
        row = TakeoverRow(seed, task, round(takeover, 3), "")
        if robot.success_time is not None:
            return dataclasses.replace(row, outcome="policy_succeeded")
        if robot.done:
            return dataclasses.replace(row, outcome="policy_timed_out")
        row = dataclasses.replace(row, holding=robot.task.pick in robot.world.held_objects())
        writer = EpisodeWriter(self.out / EPISODES, name, self.spec, self.video)
        try:
            streams, commands, start = self._drive_expert(writer, row.holding)
            expert_s = round(loop.now - start, 3)
            if robot.success_time is None or not streams:  # (no streams: done before the expert's first command)
                writer.abort()
                return dataclasses.replace(row, outcome="expert_failed", expert_s=expert_s)
            try:  # what ingest rejects in a bag (joint speeds, positions beyond the limits) is rejected here
                check_joint_states(self.spec, "joint_states", streams[JOINT_STAMP], streams[JOINT_POSITION],
                                   streams[JOINT_VELOCITY], int(streams[JOINT_STAMP][0]))
            except ValueError as err:
                writer.abort()
                return dataclasses.replace(row, outcome="implausible", episode=str(err), expert_s=expert_s)
            writer.set_streams(streams)
            info = robot.task.info(robot.world)
            writer.finish(EpisodeMeta(
                episode=name, embodiment=self.spec.name, urdf_sha256=self.spec.urdf_sha256, task=task,
                category=info.category, instruction=info.instruction, success=True,
                start_ns=int(streams[JOINT_STAMP][0]), duration_s=loop.now - start, num_trajectories=commands,
                source=f"takeover:{self.source}:seed={seed}:after={takeover:.3f}s",
            ))
        except BaseException:
            writer.abort()
            raise
        self._present.add(name)
        return dataclasses.replace(row, outcome="written", episode=name, expert_s=expert_s)

    def _drive_expert(self, writer: EpisodeWriter, holding: bool) -> tuple[dict[str, np.ndarray], int, float]:
        """Step the sim with the expert in control until it is done or the task's time runs out;
        ``holding``: the gripper holds the task's object now.

        Returns the episode's numeric streams (from the expert's first command on), the number of
        expert commands and the sim time (s) of the first one.
        """
        loop, robot, spec = self.loop, self.loop.robot, self.spec
        world = robot.world
        self.expert.reset(robot.state(), holding=holding)
        act_every, js_every, grid_every = (1.0 / self.cfg.expert_rate_hz, 1.0 / loop.cfg.joint_state_rate_hz,
                                           1.0 / spec.control_rate_hz)
        frame_every = [1.0 / (loop.cfg.camera_rate_hz or cam.fps) for cam in spec.cameras]
        js: list[tuple[int, np.ndarray, np.ndarray]] = []
        grid: list[tuple[int, np.ndarray, np.ndarray]] = []
        command_ns: list[int] = []
        next_act = loop.now
        start = next_js = next_grid = -1.0  # set at the expert's first command
        next_frames = [-1.0] * len(spec.cameras)
        end = None
        while not robot.timed_out and (end is None or loop.now < end):
            if start >= 0.0:  # record before this step's command: a grid point sees what was commanded until now
                while next_grid <= loop.now + 1e-9:
                    q, qd = robot.commanded(next_grid)
                    grid.append((_ns(next_grid), q, qd))
                    next_grid += grid_every
                if loop.now >= next_js - 1e-9:
                    next_js += js_every
                    q, qd, _ = world.joint_state()
                    js.append((_ns(loop.now), spec.reorder_from(world.joint_names, q),
                               spec.reorder_from(world.joint_names, qd)))
                for i, cam in enumerate(spec.cameras):
                    if loop.now >= next_frames[i] - 1e-9:
                        next_frames[i] += frame_every[i]
                        writer.add_frame(cam.name, _ns(loop.now), render(world, cam))
            if loop.now >= next_act - 1e-9:
                next_act += act_every
                names, positions, quaternions = world.object_poses()
                traj = self.expert.act(loop.now, world.actuated_positions(), names, positions, quaternions)
                if traj is not None:
                    robot.command(traj, loop.now)
                    command_ns.append(_ns(loop.now))
                    if start < 0.0:
                        start = next_js = next_grid = loop.now
                        next_frames = [loop.now] * len(spec.cameras)
                        continue  # record this instant with the expert's command in place
            if end is None and (robot.success_time is not None or self.expert.done):
                end = loop.now + self.cfg.after_success_s
            loop.now += world.dt
            robot.step(loop.now)
        if start < 0.0 or not js:
            return {}, 0, loop.now
        streams = {
            JOINT_STAMP: np.array([j[0] for j in js], np.int64),
            JOINT_POSITION: np.stack([j[1] for j in js]), JOINT_VELOCITY: np.stack([j[2] for j in js]),
            ACTION_STAMP: np.array([g[0] for g in grid], np.int64),
            ACTION_POSITION: np.stack([g[1] for g in grid]), ACTION_VELOCITY: np.stack([g[2] for g in grid]),
            COMMAND_STAMP: np.array(command_ns, np.int64),
        }
        return streams, len(command_ns), start

    def close(self) -> None:
        """Release the expert's kinematics client (the loop is the caller's)."""
        self.expert.close()


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _ns(seconds: float) -> int:
    return int(round(seconds * 1e9))


def main(argv: list[str] | None = None) -> None:
    """CLI: see the module docstring."""
    import torch

    from gen_theta_model.closed_loop import parse_seeds
    from gen_theta_model.policy_server_config import server_config
    from gen_theta_model.sim.policy_rollout import served_policy

    parser = argparse.ArgumentParser(prog="python -m gen_theta_model.sim.takeover", description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="checkpoint directory the policy is served from")
    parser.add_argument("--robot", default="arm6")
    parser.add_argument("--task", nargs="+", action=ExtendAction, default=["stack"], help="tasks; every seed runs each")
    parser.add_argument("--seeds", nargs="+", action=ExtendAction, default=["0..9"],
                        help="integers and inclusive ranges A..B")
    parser.add_argument("--out", required=True, help="dataset root to write (or add) the episodes to")
    parser.add_argument("--takeover-s", type=float, nargs=2, default=list(TakeoverConfig.takeover_s),
                        metavar=("MIN", "MAX"), help="seconds the policy drives before the expert takes over")
    parser.add_argument("--inference-ms", type=float, default=35.0, help="simulated model latency per chunk")
    a = parser.parse_args(argv)
    torch.set_num_threads(1)
    seeds = parse_seeds(a.seeds)
    cfg = TakeoverConfig(takeover_s=tuple(a.takeover_s))
    policy, spec, longest = served_policy(a.checkpoint, a.robot)
    loop = SimClosedLoop(policy, spec, server_config({}, longest), SimLoopConfig(inference_ms=a.inference_ms))
    collector = TakeoverCollector(loop, a.out, a.checkpoint, cfg)
    rows: list[TakeoverRow] = []
    begin = time.monotonic()
    # SIGTERM (`kill`, a supervisor stopping the job) ends the collection as Ctrl-C does: the seed in
    # progress is dropped, the episodes written are finalised.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        for task in a.task:
            for seed in seeds:
                rows.append(collector.episode(task, seed))
                print(json.dumps(dataclasses.asdict(rows[-1])), flush=True)
    except KeyboardInterrupt:
        print("takeover: interrupted; finalising the episodes written", flush=True)
        raise SystemExit(130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        collector.close()
        loop.close()
        written = sum(r.outcome == "written" for r in rows)
        if written:
            finalize_dataset(a.out, {spec.name: spec})
        counts = {o: sum(r.outcome == o for r in rows) for o in sorted({r.outcome for r in rows})}
        print(f"takeover: {written} episodes written to {a.out} of {len(rows)} ({counts}) "
              f"in {time.monotonic() - begin:.0f} s")


if __name__ == "__main__":
    main()
