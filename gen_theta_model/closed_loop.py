"""Closed-loop evaluation figures from what a robot received: pure functions, no ROS.

``gen-theta rollout`` records, per episode, every command (receive time, Trajectory),
the sim's outcome and the server's latency; these functions turn that into the
figures of the results table:

- chunk switches: consecutive command windows that disagree on a time both cover mark
  the moment a new plan takes over; the *jump* is the largest joint difference there
  (rad or m) between the new plan and the one it replaced (largest and mean over switches);
- jerk at switches: the command stream is replayed through the JointTrajectoryController
  semantics (gen_theta_model.trajectory.resample_commands) at 500 Hz, and the largest
  |d³q/dt³| within 0.1 s of each switch is taken (rad/s³ or m/s³; largest and mean);
- idle fraction: the share of commands that tell the robot to stand still for lack of a
  plan (a single point with zero velocity: the server's hold), after the first chunk;
- command timing: missed deadlines (control slots without a command) and |gap - period|
  jitter percentiles, from receive times (gen_theta_model.adapter.TickClock); the server
  counts its own missed deadlines at publish time the same way (``server_missed_deadlines``).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import binomtest

from gen_theta_model.adapter import TickClock
from gen_theta_model.embodiment import EmbodimentSpec
from gen_theta_model.trajectory import Trajectory, resample_commands

STAGES = ("none", "grasped", "lifted", "success")  # how far a pick-and-place episode got, in order
JERK_RATE_HZ = 500.0
JERK_WINDOW_S = 0.1


@dataclass(frozen=True)
class Switch:
    time: float  # s, the first time where the new plan departs from the old one
    jump: float  # largest |q_new - q_old| over the joints at that time, rad|m


def is_hold(traj: Trajectory) -> bool:
    """Whether ``traj`` is a stand-still command: one point, no or zero velocity."""
    if len(traj.points) != 1:
        return False
    v = traj.points[0].velocities
    return v is None or not np.any(v)


def _absolute(traj: Trajectory, stamp: float) -> tuple[np.ndarray, np.ndarray]:
    """Return (times (N,) absolute s, positions (N, n)) of a trajectory received at ``stamp`` s."""
    start = traj.start_time or stamp
    times = np.array([start + p.time_from_start for p in traj.points])
    return times, np.stack([p.positions for p in traj.points])


def chunk_switches(
    commands: Sequence[tuple[float, Trajectory]], tol: float = 1e-4, time_tol: float = 1e-4
) -> list[Switch]:
    """Plan changes in a command stream of (receive time s, trajectory), in order.

    A window is compared with the one before on the times both cover (a hold covers all
    later times); the first time they differ by more than ``tol`` is a switch.
    """
    out = []
    for (s0, prev), (s1, new) in zip(commands, commands[1:]):
        t_old, q_old = _absolute(prev, s0)
        t_new, q_new = _absolute(new, s1)
        holds = is_hold(prev)
        for t, q in zip(t_new, q_new):
            if t > t_old[-1] + time_tol and not holds:
                break  # beyond the old window: nothing planned to compare with
            if holds or t >= t_old[-1]:
                ref = q_old[-1]
            else:
                ref = np.array([np.interp(t, t_old, q_old[:, j]) for j in range(q_old.shape[1])])
            diff = float(np.max(np.abs(q - ref)))
            if diff > tol:
                out.append(Switch(float(t), diff))
                break
    return out


def idle_fraction(trajectories: Sequence[Trajectory]) -> float:
    """Share of commands that are holds, from the first command that moves the robot on.

    The wait for the very first chunk (the same in every mode) is left out; a stream that
    never moves is idle throughout (1.0), an empty one 0.0.
    """
    holds = [is_hold(t) for t in trajectories]
    if not holds:
        return 0.0
    first = holds.index(False) if False in holds else len(holds) - 1
    return float(np.mean(holds[first:]))


def command_timing(receive_times: Sequence[float], period: float) -> dict[str, float]:
    """Missed deadlines and inter-command jitter percentiles (ms) of one command stream."""
    clock = TickClock(period, window=max(len(receive_times), 1))
    for t in receive_times:
        clock.tick(t)
    return {
        "missed_deadlines": float(clock.missed),
        "jitter_p50_ms": clock.jitter.percentile(50) * 1e3,
        "jitter_p99_ms": clock.jitter.percentile(99) * 1e3,
    }


def replay(
    spec: EmbodimentSpec, initial: np.ndarray, commands: Sequence[tuple[float, Trajectory]], rate_hz: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Replay the stream as a JointTrajectoryController would: (times (T,), q, qd (T, dof))."""
    t0, t1 = commands[0][0], commands[-1][0] + 0.5
    times = np.arange(t0, t1, 1.0 / rate_hz)
    q, qd = resample_commands(spec, initial, list(commands), times)
    return times, q, qd


def jerk_at_switches(times: np.ndarray, qd: np.ndarray, switches: Sequence[Switch]) -> np.ndarray:
    """Per switch, the largest |jerk| (units/s³) of the replayed motion within JERK_WINDOW_S of it."""
    if not switches or len(times) < 4:
        return np.zeros(0)
    dt = float(times[1] - times[0])
    jerk = np.abs(np.diff(qd, n=2, axis=0)) / dt**2  # (T-2, dof), centred on times[1:-1]
    centres = times[1:-1]
    out = []
    for s in switches:
        near = np.abs(centres - s.time) <= JERK_WINDOW_S
        out.append(float(jerk[near].max()) if near.any() else 0.0)
    return np.array(out)


@dataclass
class EpisodeFigures:
    mode: str
    added_delay_ms: float
    seed: int
    task: str
    success: bool
    time_to_success: float | None  # s of the episode
    idle_fraction: float
    switches: int
    max_jump: float  # rad|m
    mean_jump: float
    max_jerk: float  # rad/s³|m/s³
    mean_jerk: float
    missed_deadlines: float
    jitter_p50_ms: float
    jitter_p99_ms: float
    latency_p50_ms: float
    latency_p99_ms: float
    server_missed_deadlines: float
    robot: str = ""
    progress: str = ""  # furthest of STAGES reached, where the rollout can see it (in-process)
    closest_m: float | None = None  # closest the fingers came to the task's object, m (in-process)


def episode_figures(
    spec: EmbodimentSpec,
    initial: np.ndarray,
    commands: Sequence[tuple[float, Trajectory]],
    period: float,
    **known: object,
) -> EpisodeFigures:
    """Figures of one episode's command stream; ``known`` gives the fields measured elsewhere
    (mode, delay, seed, task, success, time, latencies, the server's missed deadlines).
    """
    switches = chunk_switches(commands)
    jumps = np.array([s.jump for s in switches])
    jerks = np.zeros(0)
    if commands:
        times, _, qd = replay(spec, initial, commands, JERK_RATE_HZ)
        jerks = jerk_at_switches(times, qd, switches)
    return EpisodeFigures(
        idle_fraction=idle_fraction([c for _, c in commands]),
        switches=len(switches),
        max_jump=float(jumps.max(initial=0.0)),
        mean_jump=float(jumps.mean()) if len(jumps) else 0.0,
        max_jerk=float(jerks.max(initial=0.0)),
        mean_jerk=float(jerks.mean()) if len(jerks) else 0.0,
        **command_timing([t for t, _ in commands], period),
        **known,
    )


CONFIDENCE = 0.95  # of the success-rate intervals


def parse_seeds(items: Sequence[str]) -> tuple[int, ...]:
    """Seeds from ``['1000..1019', '7']``: ``A..B`` is the inclusive range, plain integers are seeds."""
    seeds: list[int] = []
    for item in items:
        first, sep, last = item.partition("..")
        try:
            seeds.extend(range(int(first), int(last) + 1) if sep else [int(item)])
        except ValueError:
            raise ValueError(f"--seeds: '{item}' is neither an integer nor a range A..B") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds: need distinct seeds, got {items}")
    return tuple(seeds)


def success_interval(successes: int, episodes: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of a success rate (``successes`` of ``episodes``), as (low, high) in [0, 1].

    Wilson rather than the normal approximation: it stays inside [0, 1] and keeps its coverage
    at 0 or n successes and at the 10-50 episodes a closed-loop cell has.
    """
    if episodes < 1:
        raise ValueError(f"a success interval needs at least one episode, got {episodes}")
    ci = binomtest(successes, episodes).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


COLUMNS = (
    ("success (95% CI)", "success", "{}"),
    ("grasped / lifted", "progress", "{}"),
    ("closest cm (median)", "closest_cm_median", "{:.1f}"),
    ("time to success s", "time_to_success", "{:.1f}"),
    ("idle %", "idle_pct", "{:.1f}"),
    ("jump at switch max/mean", "jump", "{}"),
    ("jerk at switch max/mean", "jerk", "{}"),
    ("missed deadlines sent/received", "missed", "{}"),
    ("received jitter p50/p99 ms", "jitter", "{}"),
    ("latency p50/p99 ms", "latency", "{}"),
)


def aggregate(episodes: Sequence[EpisodeFigures]) -> list[dict[str, object]]:
    """One row per (robot, task, added delay, mode): success with its Wilson interval, means over
    seeds, worst cases for jumps, jerk and deadlines; latency p50 as the median of episode p50s,
    p99 as their maximum.
    """
    rows = []
    keys = sorted({(e.robot, e.task, e.added_delay_ms, e.mode) for e in episodes})
    for robot, task, delay, mode in keys:
        eps = [e for e in episodes if (e.robot, e.task, e.added_delay_ms, e.mode) == (robot, task, delay, mode)]
        times = [e.time_to_success for e in eps if e.success and e.time_to_success is not None]
        successes = sum(e.success for e in eps)
        low, high = success_interval(successes, len(eps))
        rows.append({
            "robot": robot,
            "task": task,
            "mode": mode,
            "added_delay_ms": delay,
            "episodes": len(eps),
            "successes": successes,
            "success_rate": successes / len(eps),
            "success_ci_low": low,
            "success_ci_high": high,
            "time_to_success": float(np.mean(times)) if times else None,
            "idle_pct": 100.0 * float(np.mean([e.idle_fraction for e in eps])),
            "max_jump": max(e.max_jump for e in eps),
            "mean_jump": _weighted([e.mean_jump for e in eps], [e.switches for e in eps]),
            "max_jerk": max(e.max_jerk for e in eps),
            "mean_jerk": _weighted([e.mean_jerk for e in eps], [e.switches for e in eps]),
            "missed_deadlines": sum(e.missed_deadlines for e in eps),
            "server_missed_deadlines": sum(e.server_missed_deadlines for e in eps),
            "jitter_p50_ms": float(np.median([e.jitter_p50_ms for e in eps])),
            "jitter_p99_ms": max(e.jitter_p99_ms for e in eps),
            "latency_p50_ms": float(np.median([e.latency_p50_ms for e in eps])),
            "latency_p99_ms": max(e.latency_p99_ms for e in eps),
            "progress": dict(Counter(e.progress for e in eps if e.progress)),
            "closest_cm_median": _median_cm([e.closest_m for e in eps]),
        })
    return rows


def _median_cm(closest_m: Sequence[float | None]) -> float | None:
    """Median closest approach in cm over the episodes that measured one, else None."""
    known = [m for m in closest_m if m is not None]
    return 100.0 * float(np.median(known)) if known else None


def _weighted(values: Sequence[float], weights: Sequence[int]) -> float:
    """Mean of per-episode means, weighted by their number of switches."""
    total = sum(weights)
    return float(np.dot(values, weights) / total) if total else 0.0


def markdown_table(rows: Sequence[dict[str, object]]) -> str:
    """Format the results table in Markdown, one line per (robot, task, added delay, mode).

    Rows that carry a ``policy`` label (the demo: trained there or shipped) get it as the first column.
    """
    labelled = any("policy" in r for r in rows)
    head = [*(["policy"] if labelled else []), "robot", "task", "added delay ms", "mode", *[c[0] for c in COLUMNS]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [*([str(r.get("policy", ""))] if labelled else []),
                 str(r["robot"]), str(r["task"]), f"{r['added_delay_ms']:.0f}", str(r["mode"])]
        for _, key, fmt in COLUMNS:
            if key == "success":
                cells.append(f"{r['successes']}/{r['episodes']} = {r['success_rate']:.2f} "
                             f"[{r['success_ci_low']:.2f}, {r['success_ci_high']:.2f}]")
            elif key == "progress":
                cells.append(_reached(r["progress"]))
            elif key == "jump":
                cells.append(f"{r['max_jump']:.3f} / {r['mean_jump']:.3f}")
            elif key == "jerk":
                cells.append(f"{r['max_jerk']:.0f} / {r['mean_jerk']:.0f}")
            elif key == "missed":
                cells.append(f"{r['server_missed_deadlines']:.0f} / {r['missed_deadlines']:.0f}")
            elif key == "jitter":
                cells.append(f"{r['jitter_p50_ms']:.1f} / {r['jitter_p99_ms']:.1f}")
            elif key == "latency":
                cells.append(f"{r['latency_p50_ms']:.0f} / {r['latency_p99_ms']:.0f}")
            elif r[key] is None:
                cells.append("-")
            else:
                cells.append(fmt.format(r[key]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _reached(progress: dict[str, int]) -> str:
    """'grasped / lifted' counts (episodes that got at least that far), or '-' where unknown."""
    if not progress:
        return "-"
    at_least = [sum(n for stage, n in progress.items() if STAGES.index(stage) >= k) for k in (1, 2)]
    return f"{at_least[0]} / {at_least[1]}"


def results_json(rows: Sequence[dict[str, object]], episodes: Sequence[EpisodeFigures], meta: dict) -> str:
    """Everything as JSON: run metadata, the aggregated rows and every episode."""
    return json.dumps({"meta": meta, "rows": list(rows), "episodes": [asdict(e) for e in episodes]}, indent=1)
