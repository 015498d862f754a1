"""The run-time half of gen_theta_model.harmonic, on a fake clock: no ROS, no threads."""

import dataclasses

import numpy as np
import pytest

from gen_theta_model.harmonic import (
    ChunkScheduler,
    CommandWindow,
    LatencyTracker,
    SchedulerConfig,
    delay_steps,
    finite_differences,
)

RATE = 50.0
DT = 1.0 / RATE
H = 32


def target(t: np.ndarray) -> np.ndarray:
    """Return a smooth 2-joint reference in canonical units, (..., 2)."""
    t = np.asarray(t, dtype=np.float64)[..., None]
    return np.concatenate([0.5 * np.sin(t), 0.3 * np.cos(2.0 * t)], axis=-1)


class FakePolicy:
    """Returns the reference from the request's start time plus a per-chunk offset (model
    variance). With a prefix it blends from the prefix's end into its own plan, as a policy
    trained with harmonic conditioning does; without one it ignores what is executing.
    """

    def __init__(self, seed: int = 0, offset: float = 0.2) -> None:
        self.rng = np.random.default_rng(seed)
        self.offset = offset

    def __call__(self, request) -> np.ndarray:
        times = request.start_time + np.arange(H) * DT
        chunk = target(times) + self.rng.uniform(-self.offset, self.offset, size=2)
        d = request.delay
        if d:
            gap = request.prefix[-1] - chunk[d - 1]
            fade = np.clip(1.0 - (np.arange(H) - (d - 1)) / 10.0, 0.0, 1.0)[:, None]
            chunk = chunk + gap * fade
            chunk[:d] = request.prefix
        return chunk


def run(mode: str, latency: float, seconds: float = 4.0, seed: int = 0, phase: float = 0.0037, max_delay: int = 15):
    """Drive the scheduler with a fake clock: control ticks at RATE, one inference at a time
    taking ``latency`` s. Returns per-tick (time, first commanded point, idle) and the splices.
    """
    cfg = SchedulerConfig(mode=mode, rate_hz=RATE, horizon=H, execute_steps=8, max_delay_steps=max_delay)
    sched = ChunkScheduler(cfg, target(0.0), now=0.0)
    policy = FakePolicy(seed)
    tracker = LatencyTracker(window=20, initial=latency)
    in_flight = None  # (arrival time, request, chunk)
    ticks, splices = [], []
    now = phase
    while now < seconds:
        if in_flight is not None and in_flight[0] <= now:
            splices.append(sched.splice(in_flight[1], in_flight[2], in_flight[0]))
            tracker.add(latency)
            in_flight = None
        d = delay_steps(tracker.percentile(95), DT, H - cfg.execute_steps)
        if in_flight is None and sched.due(now, d):
            req = sched.request(now, d)
            in_flight = (now + latency, req, policy(req))
        win = sched.window(now)
        ticks.append((now, win.stamp + win.times[0], win.positions[0].copy(), sched.idle(now)))
        now += DT
    return ticks, splices


def commanded_series(ticks):
    """Commanded grid positions in time order: (time of point, position) of each tick's first point."""
    return np.array([t[1] for t in ticks]), np.stack([t[2] for t in ticks])


def test_harmonic_prefix_is_what_was_already_commanded():
    cfg = SchedulerConfig(mode="harmonic", rate_hz=RATE, horizon=H, execute_steps=8)
    sched = ChunkScheduler(cfg, np.zeros(2), now=0.0)
    req = sched.request(0.001, delay=4)
    first = target(req.start_time + np.arange(H) * DT)
    sched.splice(req, first, now=0.05)
    now = 0.101
    planned = sched.window(now)
    req2 = sched.request(now, delay=5)
    # The prefix is the next 5 grid points of the executing plan, starting at the next grid time.
    assert req2.start_time == pytest.approx(planned.stamp + planned.times[0])
    np.testing.assert_array_equal(req2.prefix, planned.positions[:5])
    # The new chunk takes over where the prefix ends: its action d lands at start + d / rate.
    new = first + 1.0  # a very different plan
    result = sched.splice(req2, new, now=now + 0.06)
    assert not result.late and result.takeover_time == pytest.approx(req2.start_time + 5 * DT)
    after = sched.window(now + 0.06)
    t_points = after.stamp + after.times
    committed = t_points < result.takeover_time - 1e-9
    expected = req2.prefix[-int(committed.sum()) :]
    np.testing.assert_array_equal(after.positions[committed], expected)
    np.testing.assert_array_equal(after.positions[~committed][0], new[5])


def test_a_standing_robot_commits_nothing_and_its_chunk_starts_on_arrival():
    """Before the first chunk (and after the plan ran out) a harmonic robot stands still: a prefix of
    standing still for the whole latency is what no demonstration shows, so it waits as sync does.
    """
    cfg = SchedulerConfig(mode="harmonic", rate_hz=RATE, horizon=H, execute_steps=8)
    sched = ChunkScheduler(cfg, np.zeros(2), now=0.0)
    req = sched.request(0.001, delay=15)
    assert req.delay == 0 and req.at_arrival and len(req.prefix) == 0
    chunk = target(np.arange(H) * DT) + 1.0
    result = sched.splice(req, chunk, now=0.305)
    assert not result.late and result.takeover_time == pytest.approx(0.32)  # the first grid point after arrival
    np.testing.assert_array_equal(sched.window(0.305).positions[0], chunk[0])  # from the chunk's first action
    req2 = sched.request(0.4, delay=15)  # moving now: the plan is committed
    assert req2.delay == 15 and not req2.at_arrival
    np.testing.assert_array_equal(req2.prefix[0], chunk[5])  # grid point 0.42 s of the plan that began at 0.32 s
    sched.splice(req2, chunk, now=0.45)
    assert sched.request(3.0, delay=15).at_arrival  # long after that plan's end: standing again


@pytest.mark.parametrize(("latency", "max_delay"), [(0.01, 15), (0.12, 15), (0.3, 15), (0.38, 8)])
def test_harmonic_never_idles_and_never_jumps(latency, max_delay):
    ticks, splices = run("harmonic", latency, max_delay=max_delay)
    times, q = commanded_series(ticks)
    started = times > latency + 16 * DT  # the first chunk needs one inference
    idle = np.array([t[3] for t in ticks])
    assert not idle[started].any()
    assert not any(s.late or s.dropped for s in splices)
    assert len(splices) > 5
    # The grid points commanded tick after tick change no more than the reference itself
    # plus the fading blend: no jump at any chunk boundary.
    steps = np.abs(np.diff(q[started], axis=0)).max()
    assert steps < 0.06


def test_naive_async_jumps_at_arrival_and_sync_idles():
    _, harmonic_q = commanded_series(run("harmonic", 0.3)[0])
    ticks_naive, splices_naive = run("naive_async", 0.3)
    _, naive_q = commanded_series(ticks_naive)
    assert np.abs(np.diff(naive_q[40:], axis=0)).max() > 2 * np.abs(np.diff(harmonic_q[40:], axis=0)).max()
    assert not any(s.late for s in splices_naive)
    ticks_sync, _ = run("sync", 0.3)
    idle = np.array([t[3] for t in ticks_sync])
    # Sync: 8 steps of motion (0.16 s) then ~0.3 s of waiting, every cycle.
    assert 0.5 < idle.mean() < 0.8


def test_delay_beyond_trained_prefix_moves_the_chunk_start():
    cfg = SchedulerConfig(mode="harmonic", rate_hz=RATE, horizon=H, max_delay_steps=4)
    sched = ChunkScheduler(cfg, np.zeros(1), now=0.0)
    sched.splice(sched.request(0.0, 1), np.arange(H, dtype=float)[:, None], now=0.001)  # action j at (j+1) DT
    req = sched.request(0.005, delay=10)
    # The next grid point is j=0 at DT; the chunk takes over 10 points later, at j=10.
    assert req.delay == 4 and req.start_time == pytest.approx(7 * DT)
    np.testing.assert_array_equal(req.prefix[:, 0], [6.0, 7.0, 8.0, 9.0])
    assert sched.splice(req, np.zeros((H, 1)), now=0.15).takeover_time == pytest.approx(11 * DT)


def test_chunk_arriving_before_its_moved_start_keeps_the_plan_up_to_it():
    cfg = SchedulerConfig(mode="harmonic", rate_hz=RATE, horizon=H, max_delay_steps=4)
    sched = ChunkScheduler(cfg, np.zeros(1), now=0.0)
    sched.splice(sched.request(0.0, 1), np.arange(H, dtype=float)[:, None], now=0.001)  # action j at (j+1) DT
    req = sched.request(0.005, delay=10)  # chunk start moved to 7 DT, takeover at 11 DT
    result = sched.splice(req, np.full((H, 1), 100.0), now=0.03)  # arrives after one step
    assert not result.late and result.takeover_time == pytest.approx(11 * DT)
    win = sched.window(0.03)
    np.testing.assert_allclose(win.stamp + win.times, (np.arange(25) + 2) * DT)
    # Old plan for 2 DT .. 10 DT (actions 1..9), then the new chunk's own actions.
    np.testing.assert_array_equal(win.positions[:9, 0], np.arange(1.0, 10.0))
    np.testing.assert_array_equal(win.positions[9:, 0], 100.0)


def test_late_chunk_is_flagged_and_reset_drops_pending():
    cfg = SchedulerConfig(mode="harmonic", rate_hz=RATE, horizon=H)
    sched = ChunkScheduler(cfg, np.zeros(2), now=0.0)
    sched.splice(sched.request(0.0, delay=2), np.zeros((H, 2)), now=0.01)  # from standing: starts on arrival
    req = sched.request(0.1, delay=2)
    result = sched.splice(req, np.ones((H, 2)), now=0.3)  # 10 steps after the request
    assert result.late
    req = sched.request(0.5, delay=3)
    sched.reset(np.zeros(2), now=0.55)
    assert sched.splice(req, np.ones((H, 2)), now=0.56).dropped
    assert sched.idle(0.6)
    with pytest.raises(ValueError, match="chunk must be"):
        sched.splice(sched.request(0.6, 3), np.ones((H, 3)), now=0.61)


def test_window_derivatives_and_stop_point():
    cfg = SchedulerConfig(mode="naive_async", rate_hz=RATE, horizon=H, window_steps=10)
    sched = ChunkScheduler(cfg, np.zeros(1), now=0.0)
    chunk = (0.1 * np.arange(H) ** 2)[:, None]  # q = 0.1 k^2: v = 0.2 k / dt, a = 0.2 / dt^2
    req = sched.request(0.0, 0)
    assert req.start_time == pytest.approx(DT)  # the first grid point after the request
    sched.splice(req, chunk, now=0.001)
    win = sched.window(0.101)
    k = np.arange(5, 15)
    np.testing.assert_allclose(win.times, DT + k * DT - 0.101)
    np.testing.assert_allclose(win.positions[:, 0], 0.1 * k**2)
    np.testing.assert_allclose(win.velocities[:, 0], 0.2 * k / DT)
    np.testing.assert_allclose(win.accelerations[:, 0], 0.2 / DT**2)
    end = sched.window(H * DT + 0.001)  # past the last action: one stop point
    assert end.positions.shape == (1, 1) and end.positions[0, 0] == pytest.approx(0.1 * (H - 1) ** 2)
    assert end.velocities[0, 0] == 0.0 and sched.idle(H * DT + 0.001)


def test_finite_differences_edges():
    q = np.array([[0.0], [1.0], [4.0]])
    v, a = finite_differences(q, 1.0, before=None, after=None)
    np.testing.assert_allclose(v[:, 0], [1.0, 2.0, 0.0])  # forward difference, central, stop
    np.testing.assert_allclose(a[:, 0], [0.0, 2.0, 0.0])


def test_latency_tracker_and_delay():
    tracker = LatencyTracker(window=4, initial=0.05)
    assert tracker.percentile(99) == 0.05
    for x in (0.1, 0.2, 0.3, 0.4, 0.5):  # the oldest falls out of the window
        tracker.add(x)
    assert len(tracker) == 4
    assert tracker.percentile(50) == pytest.approx(0.35)
    assert delay_steps(0.0, DT, 15) == 1
    assert delay_steps(0.02, DT, 15) == 2  # exactly one period: arrives in time for the next tick
    assert delay_steps(0.021, DT, 15) == 3
    assert delay_steps(1.0, DT, 15) == 15


def test_config_validation():
    with pytest.raises(ValueError, match="mode"):
        SchedulerConfig(mode="fast")
    with pytest.raises(ValueError, match="max_delay_steps"):
        SchedulerConfig(horizon=8, execute_steps=4, max_delay_steps=8)


def test_window_never_starts_with_a_point_at_now():
    cfg = SchedulerConfig(mode="naive_async", rate_hz=RATE, horizon=H)
    sched = ChunkScheduler(cfg, np.zeros(1), now=0.0)
    sched.splice(sched.request(0.0, 0), np.arange(H, dtype=float)[:, None], now=0.001)  # action j at (j+1) DT
    for now in (0.1 - 1e-9, 0.1 - 2e-8, 0.1, 0.1 + 1e-9, 0.1 - 0.1 * DT):
        win = sched.window(now)
        assert win.times[0] >= 0.1 * DT - 1e-12  # a controller never gets a ~0 s segment to its first point
        assert win.times[0] <= 1.1 * DT + 1e-12


def test_amended_positions_become_the_committed_prefix():
    cfg = SchedulerConfig(mode="harmonic", rate_hz=RATE, horizon=H)
    sched = ChunkScheduler(cfg, np.zeros(1), now=0.0)
    sched.splice(sched.request(0.0, 1), np.arange(H, dtype=float)[:, None], now=0.001)  # action j at (j+1) DT
    plan = sched.plan
    win = sched.window(0.005)
    limited = np.minimum(win.positions, 3.0)  # what an adapter let through
    sched.amend(CommandWindow(win.stamp, win.times, limited, win.velocities, win.accelerations), plan)
    req = sched.request(0.005, delay=6)
    np.testing.assert_array_equal(req.prefix[:, 0], [0.0, 1.0, 2.0, 3.0, 3.0, 3.0])


def test_a_window_of_the_plan_before_a_splice_amends_nothing():
    """The command thread takes its window, clamps it outside the lock and amends the plan with what it
    sent. Preempted long enough (a loaded machine), the inference thread may request and splice in a
    chunk meanwhile, one that takes over after that window's first point. The old window must leave
    the new plan alone (it crashed the server's command loop under load: "could not broadcast input
    array from shape (25,8) into shape (0,8)").
    """
    cfg = SchedulerConfig(mode="harmonic", rate_hz=RATE, horizon=H, execute_steps=8)
    sched = ChunkScheduler(cfg, np.zeros(2), now=0.0)
    sched.splice(sched.request(0.001, delay=15), np.ones((H, 2)), now=0.305)  # moving from 0.32 s
    plan = sched.plan
    window = sched.window(0.40)  # 25 points from 0.42 s
    request = sched.request(0.47, delay=1)  # three periods later: its chunk starts at 0.48 s
    chunk = np.full((H, 2), 2.0)
    sched.splice(request, chunk, now=0.49)
    assert sched.plan != plan
    sched.amend(dataclasses.replace(window, positions=np.zeros_like(window.positions)), plan)
    np.testing.assert_array_equal(sched.window(0.49).positions, chunk[2 : 2 + cfg.window_steps])


def test_planned_until_is_where_the_plan_ends():
    cfg = SchedulerConfig(mode="harmonic", rate_hz=RATE, horizon=H, execute_steps=8, max_delay_steps=15)
    sched = ChunkScheduler(cfg, target(0.0), now=1.0)
    assert sched.planned_until() == 1.0  # holding: nothing planned past now
    request = sched.request(1.0, 5)
    result = sched.splice(request, FakePolicy()(request), 1.05)  # from standing: it starts on arrival
    assert sched.planned_until() == pytest.approx(result.takeover_time + (H - 1) * DT)
    assert not sched.idle(sched.planned_until() - DT) and sched.idle(sched.planned_until() + 1e-6)


def test_a_window_for_a_time_before_the_plan_starts_begins_at_its_first_point():
    """The command thread may take ``now``, be preempted, and ask for its window after a chunk that
    starts on arrival was spliced in: that plan starts after ``now``. The window must begin at the
    plan's first point (it crashed the server's command loop with an empty window under load).
    """
    cfg = SchedulerConfig(mode="harmonic", rate_hz=RATE, horizon=H, execute_steps=8)
    sched = ChunkScheduler(cfg, np.zeros(2), now=0.0)
    req = sched.request(0.001, delay=15)
    chunk = target(np.arange(H) * DT) + 1.0
    sched.splice(req, chunk, now=0.305)  # starts at 0.32 s
    for now in (0.28, 0.25, 0.1):  # one, three and eleven periods before its start
        window = sched.window(now)
        np.testing.assert_array_equal(window.positions[0], chunk[0])
        assert window.times[0] == pytest.approx(0.32 - now) and np.all(np.diff(window.times) > 0)
        assert np.isfinite(window.velocities).all() and len(window.positions) == cfg.window_steps
