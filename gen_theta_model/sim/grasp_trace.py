"""Where the tool and the gripper were in a served episode: does the gripper close where the arm reaches?

`python -m gen_theta_model.sim.grasp_trace CHECKPOINT --robot arm6 --task stack --seeds 1000..1005`
plays each seed in-process (SimClosedLoop, harmonic, 0 ms added delay, 35 ms model latency; the
scripted expert with ``--expert``) and prints, per episode: how often the tool came down to the
pick object's height, how close it came to the object in xy while down, and when and where the
task gripper first closed, and how often it opened again after that. For a checkpoint it also
reads the policy's mixture for the gripper at every chunk: at the chunk started closest to the
object (tool down, gripper open), the total weight of the components that close the gripper
within the chunk, and at which step of the chunk the heaviest one closes (a close planned past
the steps executed before the next chunk replaces the plan is never executed); ``--chunks S``
prints the same, chunk by chunk, for each episode's first S seconds, and for a policy with a
keypose head (``keypose_weight``) how far from the object its predicted grasp pose puts the tool:
whether the policy still locates the object once the arm moves; for one with an object readout
(``object_weight``) how far the readout's nearest slot is from the pick object: whether the images
themselves place it in the policy's own states (summed up over the chunks of each approach, before
the first close, in one line). The same rows give the release:
the weight of the plans that open the gripper within the chunk, where the heaviest opens, and the
tool's distance from the place object (``--chunks-from S0`` starts the rows later: a policy that
carries the cube to the place and never lets go shows whether it plans the release and defers it,
or never plans it). Where the gripper last opens, against where the place object stood, gives per
episode the release's miss and over the episodes whether the release follows the place object at
all (``release_fit``). ``--hand-over PHASE`` lets the scripted expert drive each episode until it
enters PHASE and the checkpoint after it (``HandoverPolicy``): ``--hand-over transfer`` judges the
place alone, from a cube the expert grasped and lifted. A policy that reaches the
cube but closes elsewhere shows here; success rates alone do not tell it apart from one that
never finds the cube (docs/policy.md, "Why the static suites fail").
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from gen_theta_model.cli_args import ExtendAction
from gen_theta_model.embodiment import EmbodimentSpec
from gen_theta_model.policy.head import ChunkMixture
from gen_theta_model.policy.policy import Policy
from gen_theta_model.sim.experts import PHASES
from gen_theta_model.sim.kinematics import ArmKinematics
from gen_theta_model.sim.policy_rollout import SimClosedLoop

DOWN_M = 0.06  # the tool counts as down when it is less than this above the object's centre


def closed_rows(q: np.ndarray, spec: EmbodimentSpec, gripper: int) -> np.ndarray:
    """(N,) bool: rows of joint positions or commands ``q`` (N, dof), rad|m, with ``gripper`` closed."""
    return spec.closed_grippers(q)[:, gripper]


def gripper_plans(dist: ChunkMixture, gripper: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the task gripper's mixture components: weights (B, K) and, per step, closed (B, K, H) bool
    (the component's mean below the middle of the gripper's range, canonical < 0).
    """
    return torch.softmax(dist.logits[:, gripper].float(), dim=-1), dist.mean[:, gripper] < 0


@dataclass(frozen=True)
class ChunkStart:
    """Where the tool and gripper were when a chunk was requested, and that chunk's gripper plans."""

    time_s: float  # simulated s from the episode's reset
    xy_m: float  # tool-object distance in xy
    height_m: float  # tool height above the object's centre
    gripper_closed: bool
    closing_weight: float  # weight of the gripper plans that close within the chunk
    top_close_step: int  # where the heaviest plan closes, steps from the chunk's start (-1: it does not)
    keypose_xy_m: float | None = None  # predicted grasp pose's tool to the object in xy (None: no keypose head)
    place_xy_m: float = math.nan  # tool to the place object (where it stood at reset) in xy
    opening_weight: float = 0.0  # weight of the gripper plans that open within the chunk
    top_open_step: int = -1  # where the heaviest plan opens, steps from the chunk's start (-1: it does not)
    readout_m: float | None = None  # the object readout's nearest slot to the pick object (None: no readout)


@dataclass(frozen=True)
class GraspTrace:
    """One episode. Distances in m, times in s from the start of serving."""

    seed: int
    success: bool
    descents: int  # times the tool came down to the object's height
    closest_down_xy_m: float  # closest tool-object distance in xy while down (nan: never down)
    first_close_s: float | None  # when the task gripper first closed (None: never)
    first_close_xy_m: float | None  # tool-object distance in xy then
    first_close_height_m: float | None  # tool height above the object's centre then
    reopens: int = 0  # times the gripper opened again after its first close
    closing_weight: float | None = None  # at the closest open approach: weight of the plans that close (None: no
    top_close_step: int | None = None  # mixture read, or never down with the gripper open); where the heaviest
    # plan closes, in steps from the chunk's start (-1: it does not close)
    chunks: tuple[ChunkStart, ...] = ()  # every chunk, when the mixture was read
    place_xy_m: tuple[float, float] = (math.nan, math.nan)  # the place object's centre at reset, world xy
    release_xy_m: tuple[float, float] | None = None  # the tool when the gripper last opened after a close (None: never)


class ChunkRecord(NamedTuple):
    """The task gripper's mixture when one chunk was planned."""

    time_s: float  # simulated s (nan during the serving loop's warm-up)
    weights: np.ndarray  # (K,) component weights
    close_step: np.ndarray  # (K,) int: first step with the component's mean closed (canonical < 0), -1: never
    open_step: np.ndarray  # (K,) int: first step with the component's mean open (canonical >= 0), -1: never
    keypose: np.ndarray | None  # (D,) canonical, padded: the predicted pose at the next gripper event
    objects: np.ndarray | None = None  # (S, 3) m: where the object readout places the scene's objects


class GripperModes:
    """A Policy as SimClosedLoop serves it, recording the task gripper's mixture at every chunk.

    ``records``: a ``ChunkRecord`` per chunk (closed: below the middle of the gripper's range;
    keypose None without a keypose head).
    ``clock``: the serving loop's simulated time, set once the loop exists (its warm-up reads nan).
    """

    def __init__(self, policy: Policy, gripper: int) -> None:
        self.policy, self.gripper = policy, gripper
        self.clock: Callable[[], float] = lambda: math.nan
        self.config = policy.config
        self.observation_config = policy.observation_config
        self.embodiments = policy.embodiments
        self.records: list[ChunkRecord] = []

    def embodiment_index(self, name: str) -> int:
        return self.policy.embodiment_index(name)

    def predict_chunk(self, observation: dict[str, torch.Tensor], committed_prefix: torch.Tensor, delay: int, *,
                      decode: str = "mean") -> torch.Tensor:
        t = self.clock()
        chunk, dist = self.policy.infer(observation, committed_prefix, delay, decode=decode)
        weights, below = (x[0].numpy() for x in gripper_plans(dist, self.gripper))  # (K,), (K, H)
        close_step = np.where(below.any(-1), below.argmax(-1), -1)  # (K,)
        open_step = np.where((~below).any(-1), (~below).argmax(-1), -1)  # (K,)
        keypose = None if dist.keypose is None else dist.keypose[0].float().numpy()  # (D,), padded
        objects = None if dist.objects is None else dist.objects[0].float().numpy()  # (S, 3)
        self.records.append(ChunkRecord(t, weights, close_step, open_step, keypose, objects))
        return chunk


def trace_episode(loop: SimClosedLoop, kin: ArmKinematics, task: str, seed: int,
                  modes: GripperModes | None = None) -> GraspTrace:
    """Play ``seed`` of ``task`` harmonic at 0 ms added delay; the object is where the task placed it.

    ``modes``: the policy ``loop`` serves, wrapped, to read the gripper's mixture as well.
    """
    state = loop.robot.reset(task, seed, 0.0)
    obj = loop.robot.world.object_position(state.pick).copy()  # (3,) m, before the episode moves it
    place = loop.robot.world.object_position(state.place).copy()  # (3,) m
    if modes is not None:
        modes.records.clear()
    figures, trace = loop.run(task, seed, "harmonic", 0.0)
    q = trace.joint_q  # (T, dof), every joint state the server got (100 Hz)
    tool = np.array([kin.fk(qi)[0] for qi in q])  # (T, 3)
    xy = np.linalg.norm(tool[:, :2] - obj[:2], axis=1)  # (T,)
    down = tool[:, 2] < obj[2] + DOWN_M
    is_closed = closed_rows(q, loop.spec, kin.gripper)  # (T,)
    closed = np.flatnonzero(is_closed)
    first = int(closed[0]) if len(closed) else None
    chunks: list[ChunkStart] = []
    for r in modes.records if modes is not None else []:
        i = max(int(np.searchsorted(trace.joint_times, r.time_s, side="right")) - 1, 0)  # the state received by then
        aim = None if r.keypose is None else float(
            np.linalg.norm(kin.fk(loop.spec.denormalize(r.keypose[: loop.spec.dof]))[0][:2] - obj[:2]))
        readout = None if r.objects is None else float(np.linalg.norm(r.objects - obj, axis=1).min())
        top = int(np.argmax(r.weights))
        chunks.append(ChunkStart(r.time_s, float(xy[i]), float(tool[i, 2] - obj[2]), bool(is_closed[i]),
                                 float(r.weights[r.close_step >= 0].sum()), int(r.close_step[top]), aim,
                                 float(np.linalg.norm(tool[i, :2] - place[:2])),
                                 float(r.weights[r.open_step >= 0].sum()), int(r.open_step[top]), readout))
    opens = np.flatnonzero(np.diff(is_closed.astype(int)) == -1) + 1  # rows where the gripper is open again
    release = tuple(float(v) for v in tool[opens[-1], :2]) if len(opens) else None
    open_down = [c for c in chunks if not c.gripper_closed and c.height_m < DOWN_M]
    nearest = min(open_down, key=lambda c: c.xy_m) if open_down else None
    return GraspTrace(
        seed, bool(figures.success), int(np.count_nonzero(np.diff(down.astype(int), prepend=0) == 1)),
        float(xy[down].min()) if down.any() else float("nan"),
        float(trace.joint_times[first] - trace.joint_times[0]) if first is not None else None,
        float(xy[first]) if first is not None else None,
        float(tool[first, 2] - obj[2]) if first is not None else None,
        len(opens),  # every opening follows the first close: the reopens
        nearest.closing_weight if nearest else None, nearest.top_close_step if nearest else None, tuple(chunks),
        (float(place[0]), float(place[1])), release,
    )


class AxisFit(NamedTuple):
    """An actual coordinate (the release) against a target one (the place) along one world axis, over episodes."""

    slope: float  # least-squares slope (the expert: 1; one drop point for every seed: 0)
    r: float  # correlation (nan when every release is at one point)
    target_sd_m: float  # spread of the target coordinate (the place object's)
    actual_sd_m: float  # spread of the actual one (the release's)


@dataclass(frozen=True)
class ReleaseFit:
    """Whether the release follows the place object, over the episodes that released."""

    releases: int
    median_miss_m: float  # median release-to-place distance in xy
    axes: dict[str, AxisFit]  # "x" / "y": the world axes along which the place object varies (sd over 5 mm)

    def __str__(self) -> str:
        parts = [f"release vs place over {self.releases} releases: median distance {100 * self.median_miss_m:.1f} cm"]
        parts += [f"{name}: slope {a.slope:.2f}, r {a.r:.2f} (place sd {100 * a.target_sd_m:.1f} cm, "
                  f"release sd {100 * a.actual_sd_m:.1f} cm)" for name, a in self.axes.items()]
        return "; ".join(parts)


def release_fit(rows: list[GraspTrace]) -> ReleaseFit | None:
    """Fit where the gripper last opened on where the place object stood, over the ``rows`` that
    released (None: fewer than three).
    """
    done = [r for r in rows if r.release_xy_m is not None]
    if len(done) < 3:
        return None
    place = np.array([r.place_xy_m for r in done])  # (N, 2) m
    release = np.array([r.release_xy_m for r in done])  # (N, 2) m
    return ReleaseFit(len(done), float(np.median(np.linalg.norm(release - place, axis=1))), axis_fits(place, release))


def axis_fits(target: np.ndarray, actual: np.ndarray, min_sd_m: float = 0.005) -> dict[str, AxisFit]:
    """Fit ``actual`` (N, 2) m on ``target`` (N, 2) m along "x" and "y", the axes along which
    ``target`` spreads by more than ``min_sd_m``.
    """
    axes = {}
    for axis, name in enumerate("xy"):
        p, q = target[:, axis], actual[:, axis]
        if p.std() > min_sd_m:
            r = float(np.corrcoef(p, q)[0, 1]) if q.std() > 0 else math.nan
            axes[name] = AxisFit(float(np.polyfit(p, q, 1)[0]), r, float(p.std()), float(q.std()))
    return axes


def table(rows: list[GraspTrace]) -> str:
    """Markdown table of ``rows``, distances in cm."""
    lines = ["| seed | success | descents | closest xy while down cm | gripper first closes s | tool then: xy cm / "
             "height cm | reopens | closest open approach: weight of closing plans; heaviest closes at step | "
             "last release to place xy cm |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        then = ("never", "-") if r.first_close_s is None else (
            f"{r.first_close_s:.1f}", f"{100 * r.first_close_xy_m:.1f} / {100 * r.first_close_height_m:.1f}")
        modes = "-" if r.closing_weight is None else f"{r.closing_weight:.2f}; " + (
            "never" if r.top_close_step < 0 else str(r.top_close_step))
        release = "never" if r.release_xy_m is None else (
            f"{100 * math.dist(r.release_xy_m, r.place_xy_m):.1f}")
        lines.append(f"| {r.seed} | {r.success} | {r.descents} | {100 * r.closest_down_xy_m:.1f} | {then[0]} | "
                     f"{then[1]} | {r.reopens} | {modes} | {release} |")
    return "\n".join(lines)


def readout_summary(rows: list[GraspTrace]) -> str | None:
    """Where the object readout placed the pick object over the chunks planned before each episode's
    first close (the approach): quartiles in cm. None without a readout. Against where the object
    stood at reset: exact for the static suites, not for a cube riding the conveyor.
    """
    errors = []
    for row in rows:
        for c in row.chunks:
            if c.gripper_closed:  # the first close: the object may move from here on
                break
            if c.readout_m is not None:
                errors.append(c.readout_m)
    if not errors:
        return None
    q1, q2, q3 = np.percentile(100 * np.asarray(errors), [25, 50, 75])
    return (f"the images place the pick object, {len(errors)} chunks before the first close: "
            f"median {q2:.1f} cm (quartiles {q1:.1f}, {q3:.1f})")


def chunk_table(row: GraspTrace, until_s: float, since_s: float = 0.0) -> str:
    """Markdown table of ``row``'s chunk starts from ``since_s`` to ``until_s`` s, distances in cm.

    Tool xy and height are relative to the pick object where it stood at reset (it moves on a
    conveyor and once grasped); place xy to the place object.
    """
    lines = [f"seed {row.seed}:", "| t s | tool xy cm | tool height cm | gripper | weight of closing plans | "
             "heaviest closes at step | predicted grasp pose xy cm | place xy cm | weight of opening plans | "
             "heaviest opens at step | images place the pick object cm |", "|---" * 11 + "|"]
    for c in row.chunks:
        if since_s <= c.time_s <= until_s:
            step = "never" if c.top_close_step < 0 else str(c.top_close_step)
            opens = "never" if c.top_open_step < 0 else str(c.top_open_step)
            aim = "-" if c.keypose_xy_m is None else f"{100 * c.keypose_xy_m:.1f}"
            readout = "-" if c.readout_m is None else f"{100 * c.readout_m:.1f}"
            lines.append(f"| {c.time_s:.2f} | {100 * c.xy_m:.1f} | {100 * c.height_m:.1f} | "
                         f"{'closed' if c.gripper_closed else 'open'} | {c.closing_weight:.2f} | {step} | {aim} | "
                         f"{100 * c.place_xy_m:.1f} | {c.opening_weight:.2f} | {opens} | {readout} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """CLI: see the module docstring."""
    from gen_theta_model.closed_loop import parse_seeds
    from gen_theta_model.policy_server_config import server_config
    from gen_theta_model.sim.policy_rollout import SimLoopConfig, served_policy

    parser = argparse.ArgumentParser(prog="python -m gen_theta_model.sim.grasp_trace",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", nargs="?", default="", help="checkpoint directory (omit with --expert)")
    parser.add_argument("--expert", action="store_true", help="serve the scripted expert instead")
    parser.add_argument("--robot", default="arm6")
    parser.add_argument("--task", default="stack")
    parser.add_argument("--seeds", nargs="+", action=ExtendAction, default=["1000..1005"],
                        help="integers and inclusive ranges A..B")
    parser.add_argument("--chunks", type=float, default=0.0, metavar="S",
                        help="also print each chunk start of an episode's first S seconds (a checkpoint only)")
    parser.add_argument("--chunks-from", type=float, default=0.0, metavar="S0",
                        help="start those rows at S0 seconds (the release: after the grasp)")
    parser.add_argument("--hand-over", default="", metavar="PHASE", choices=PHASES[:-1],
                        help="the scripted expert drives each episode until it enters PHASE (transfer: it has "
                             "grasped and lifted the object), the checkpoint from then on")
    a = parser.parse_args(argv)
    if bool(a.checkpoint) == a.expert:
        parser.error("give either a checkpoint directory or --expert (exactly one)")
    if a.hand_over and a.expert:
        parser.error("--hand-over hands the expert's episode to a checkpoint: give one, not --expert")
    seeds = parse_seeds(a.seeds)
    torch.set_num_threads(1)
    policy, spec, longest = served_policy(None if a.expert else a.checkpoint, a.robot)
    kin = ArmKinematics(spec)
    modes = None if policy is None else GripperModes(policy, kin.gripper)
    loop = SimClosedLoop(modes, spec, server_config({}, longest),
                         SimLoopConfig(inference_ms=35.0, hand_over_at=a.hand_over))
    if modes is not None:
        modes.clock = lambda: loop.now
    try:
        rows, handed = [], []
        for s in seeds:
            rows.append(trace_episode(loop, kin, a.task, s, modes))
            handed.append(loop.handover.handed_over_s if loop.handover is not None else None)
        print(table(rows))
        if a.hand_over:
            times = [t for t in handed if t is not None]
            print(f"handed over at '{a.hand_over}' in {len(times)} of {len(rows)} episodes" + (
                f", {min(times):.2f}-{max(times):.2f} s after the reset" if times else ""))
        readout = readout_summary(rows)
        if readout is not None:
            print(readout)
        fit = release_fit(rows)
        print(fit if fit is not None else "release vs place: fewer than 3 releases, nothing to fit")
        for row in rows if a.chunks > 0 else []:
            print("\n" + chunk_table(row, a.chunks, a.chunks_from))
    finally:
        kin.close()
        loop.close()


if __name__ == "__main__":
    main()
