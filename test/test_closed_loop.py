"""Closed-loop figures (gen_theta_model.closed_loop) on command streams made by the real
scheduler and adapter with a scripted chunk source, on a fake clock.
"""

import json
import math

import numpy as np
import pytest

from gen_theta_model.adapter import EmbodimentAdapter
from gen_theta_model.closed_loop import (
    aggregate,
    chunk_switches,
    command_timing,
    episode_figures,
    idle_fraction,
    is_hold,
    markdown_table,
    results_json,
    success_interval,
)
from gen_theta_model.embodiment import load_robot
from gen_theta_model.harmonic import ChunkScheduler, SchedulerConfig, delay_steps
from gen_theta_model.trajectory import Trajectory

DT = 0.02
H = 50


@pytest.fixture(scope="module")
def spec():
    return load_robot("arm6")


def stream(spec, mode: str, latency: float, seconds: float = 3.0):
    """Commands (time, Trajectory) of a robot following a slow sine, each chunk off by a random
    offset that a prefix-conditioned chunk blends out of and an unconditioned one does not.
    """
    rng = np.random.default_rng(1)
    x0 = spec.normalize(spec.home_positions)
    cfg = SchedulerConfig(mode=mode, rate_hz=50.0, horizon=H, execute_steps=10)
    sched = ChunkScheduler(cfg, x0, now=0.0)
    adapter = EmbodimentAdapter(spec)
    adapter.reset(spec.home_positions, 0.0)
    out, pending, now = [], None, 0.003
    while now < seconds:
        if pending is not None and pending[0] <= now:
            sched.splice(pending[1], pending[2], pending[0])
            pending = None
        d = delay_steps(latency, DT, H - 10)
        if pending is None and sched.due(now, d):
            req = sched.request(now, d)
            t = req.start_time + np.arange(H) * DT
            chunk = x0 + 0.05 * np.sin(t)[:, None] + rng.uniform(-0.005, 0.005, spec.dof)
            if req.delay:
                fade = np.clip(1 - (np.arange(H) - req.delay + 1) / 10, 0, 1)[:, None]
                chunk = chunk + (req.prefix[-1] - chunk[req.delay - 1]) * fade
            pending = (now + latency, req, chunk)
        out.append((now, adapter.command(sched.window(now)).trajectory))
        now += DT
    return out


def test_switches_jumps_and_idle_by_mode(spec):
    figures = {}
    for mode in ("harmonic", "naive_async", "sync"):
        cmds = stream(spec, mode, latency=0.3)
        known = dict(mode=mode, added_delay_ms=300.0, seed=0, task="t", success=False, time_to_success=None,
                     latency_p50_ms=300.0, latency_p99_ms=310.0, server_missed_deadlines=0.0)
        figures[mode] = episode_figures(spec, spec.home_positions, cmds, DT, **known)
    h, n, s = figures["harmonic"], figures["naive_async"], figures["sync"]
    assert h.switches >= 5 and n.switches >= 5 and s.switches >= 3
    assert h.max_jump < 0.5 * n.max_jump and h.mean_jump < 0.5 * n.mean_jump  # the prefix keeps switches smooth
    assert h.max_jerk < n.max_jerk and h.mean_jerk < n.mean_jerk
    assert h.idle_fraction == 0.0 and s.idle_fraction > 0.3  # harmonic never waits once it moves
    assert h.missed_deadlines == 0 and h.jitter_p99_ms < 1e-6  # fake clock: perfectly regular


def test_switch_found_where_plans_differ(spec):
    q = np.tile(spec.home_positions, (3, 1))
    a = Trajectory.from_arrays(spec.joint_names, np.array([0.02, 0.04, 0.06]), q, start_time=10.0)
    same = Trajectory.from_arrays(spec.joint_names, np.array([0.02, 0.04]), q[:2], start_time=10.02)
    moved = q.copy()
    moved[1:, 2] += 0.1
    b = Trajectory.from_arrays(spec.joint_names, np.array([0.02, 0.04, 0.06]), moved, start_time=10.02)
    assert chunk_switches([(10.0, a), (10.02, same)]) == []
    (switch,) = chunk_switches([(10.0, a), (10.02, b)])
    assert switch.time == pytest.approx(10.06) and switch.jump == pytest.approx(0.1)
    hold = Trajectory.from_arrays(spec.joint_names, np.array([0.02]), q[:1], np.zeros((1, spec.dof)), start_time=9.0)
    assert is_hold(hold) and not is_hold(a)
    assert len(chunk_switches([(9.0, hold), (10.02, b)])) == 1  # a hold plans to stay forever


def test_idle_fraction_leaves_out_the_wait_for_the_first_chunk(spec):
    q = spec.home_positions[None]
    hold = Trajectory.from_arrays(spec.joint_names, np.array([0.02]), q, np.zeros_like(q), start_time=1.0)
    move = Trajectory.from_arrays(spec.joint_names, np.array([0.02, 0.04]), np.vstack([q, q + 0.01]), start_time=1.0)
    assert idle_fraction([hold, hold, move, hold, move, move]) == pytest.approx(0.25)
    assert idle_fraction([hold, hold]) == 1.0 and idle_fraction([]) == 0.0


def test_command_timing_counts_missing_slots():
    times = [0.0, 0.02, 0.04, 0.1, 0.12]  # 0.06 and 0.08 missing
    timing = command_timing(times, 0.02)
    assert timing["missed_deadlines"] == 2 and timing["jitter_p50_ms"] == pytest.approx(0.0, abs=1e-9)


def test_aggregate_table_and_json(spec):
    cmds = stream(spec, "harmonic", latency=0.05, seconds=1.0)
    eps = []
    for seed, ok in ((0, True), (1, False)):
        known = dict(mode="harmonic", added_delay_ms=100.0, seed=seed, task="t", success=ok,
                     time_to_success=4.0 if ok else None, latency_p50_ms=120.0 + seed, latency_p99_ms=150.0,
                     server_missed_deadlines=0.0, robot="arm6")
        eps.append(episode_figures(spec, spec.home_positions, cmds, DT, **known))
    (row,) = aggregate(eps)
    assert row["success_rate"] == 0.5 and row["time_to_success"] == 4.0 and row["episodes"] == 2
    assert row["latency_p50_ms"] == pytest.approx(120.5)
    assert row["successes"] == 1 and row["success_ci_low"] < 0.5 < row["success_ci_high"]
    table = markdown_table([row])
    assert table.splitlines()[2].startswith("| arm6 | t | 100 | harmonic | 1/2 = 0.50 [0.09, 0.91] | - | - | 4.0 |")
    assert row["mean_jump"] == pytest.approx(eps[0].mean_jump)  # same stream twice
    doc = json.loads(results_json([row], eps, {"robot": "arm6"}))
    assert doc["episodes"][1]["seed"] == 1 and doc["meta"]["robot"] == "arm6"


@pytest.mark.parametrize("k,n", [(0, 20), (7, 20), (16, 20), (20, 20), (1, 1)])
def test_success_interval_is_the_wilson_score_interval(k, n):
    z = 1.959963984540054  # the normal 97.5% quantile
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low, high = success_interval(k, n)
    assert low == pytest.approx(max(centre - half, 0.0), abs=1e-9)
    assert high == pytest.approx(min(centre + half, 1.0), abs=1e-9)
    with pytest.raises(ValueError):
        success_interval(0, 0)


def test_aggregate_keeps_robots_and_tasks_apart(spec):
    cmds = stream(spec, "harmonic", latency=0.05, seconds=0.5)
    eps = []
    for robot, task, ok in (("arm6", "a", True), ("arm7", "a", False), ("arm6", "b", False), ("arm6", "a", True)):
        known = dict(mode="harmonic", added_delay_ms=0.0, seed=len(eps), task=task, success=ok, time_to_success=None,
                     latency_p50_ms=1.0, latency_p99_ms=1.0, server_missed_deadlines=0.0, robot=robot)
        eps.append(episode_figures(spec, spec.home_positions, cmds, DT, **known))
    rows = aggregate(eps)
    assert [(r["robot"], r["task"], r["successes"], r["episodes"]) for r in rows] == [
        ("arm6", "a", 2, 2), ("arm6", "b", 0, 1), ("arm7", "a", 0, 1)
    ]
