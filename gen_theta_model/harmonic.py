"""Harmonic reasoning: perceive and act at the same time, learned at training time.

Training half (used by the loader): each sample gets a delay d in control steps,
drawn from [0, max_delay_steps]. The first d steps of the target chunk are the
*committed prefix*: actions the robot is already executing while the model thinks.
The model sees them as input and the loss is on the remaining steps, so at run
time the server can pass what it has committed for the inference interval and the
new chunk continues exactly from there. With ``enabled=False`` d is always 0: the
no-harmonic baseline.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class HarmonicConfig:
    enabled: bool = True
    max_delay_steps: int = 15  # d_max: 300 ms at 50 Hz, the largest inference delay trained for
    zero_delay_prob: float = 0.15  # share of samples without a prefix (the first chunk of an episode)
    # Extra observation staleness, s: each sample sees the streams as they were up to this much
    # before its chunk starts (uniform), ages included, beyond the sensors' natural age. 0: off.
    max_staleness_s: float = 0.0

    def __post_init__(self) -> None:
        if self.max_delay_steps < 0:
            raise ValueError(f"max_delay_steps must be >= 0, got {self.max_delay_steps}")
        if not 0.0 <= self.zero_delay_prob <= 1.0:
            raise ValueError(f"zero_delay_prob must be in [0, 1], got {self.zero_delay_prob}")
        if not 0.0 <= self.max_staleness_s <= 10.0:
            raise ValueError(f"max_staleness_s must be in [0, 10] s, got {self.max_staleness_s}")


def sample_delay(cfg: HarmonicConfig, horizon: int, rng: np.random.Generator) -> int:
    """Committed-prefix length d for one training sample, 0 <= d <= min(d_max, horizon - 1).

    Uniform over [1, d_max] except for a ``zero_delay_prob`` share of zeros, so that
    every delay the server may meet is trained for and at least one step is always
    left to predict.
    """
    d_max = min(cfg.max_delay_steps, horizon - 1)
    if not cfg.enabled or d_max <= 0 or rng.random() < cfg.zero_delay_prob:
        return 0
    return int(rng.integers(1, d_max + 1))


def sample_staleness_ns(cfg: HarmonicConfig, rng: np.random.Generator) -> int:
    """Extra age (ns) of one training sample's observation, uniform in [0, max_staleness_s].

    Draws nothing when staleness is off, so the other draws of a sample (delay, augmentation)
    stay what they were without it.
    """
    if cfg.max_staleness_s <= 0.0:
        return 0
    return int(rng.uniform(0.0, cfg.max_staleness_s) * 1e9)


# -- run-time half: scheduling chunks on a robot that never stops ----------------------------
#
# Time is float seconds on one clock (the node clock; a fake clock in tests). A chunk is
# H canonical actions on a grid: action k is the target at ``t0 + k / rate``. The scheduler
# keeps the *executing timeline* (the current chunk, the grid index from which it took
# over and the index after which it holds) and answers three questions:
#
#   request(now, d)  -> the committed prefix for the next inference: the d actions the
#                       timeline commands from the next grid time t on, and t itself;
#   splice(...)      -> the new chunk takes over at t + d / rate, where that prefix ends;
#   window(now)      -> the points to send to a JointTrajectoryController now.
#
# The baselines are modes of the same scheduler:
#   sync         the chunk runs ``execute_steps`` steps, then the robot holds while the
#                next inference runs (no prefix); the new chunk starts when it arrives;
#   naive_async  inference runs while the robot moves (same trigger as harmonic), without
#                a prefix; the new chunk replaces the old one at arrival, aligned in time.

MODES = ("harmonic", "sync", "naive_async")
_EPS = 1e-6  # control periods: tolerance when placing a time on the control grid
MIN_LEAD = 0.1  # control periods: a window's first point is at least this far ahead (no ~0 s segment to it)


@dataclass(frozen=True)
class SchedulerConfig:
    mode: str = "harmonic"
    rate_hz: float = 50.0  # control rate: the action grid of the policy
    horizon: int = 32  # H: actions per chunk, the policy's
    execute_steps: int = 10  # s: each chunk runs >= this many steps (0.2 s at 50 Hz) before the next takes over
    window_steps: int = 25  # points per command: 0.5 s of look-ahead at 50 Hz for the controller
    max_delay_steps: int = 15  # the longest committed prefix the policy was trained with

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if not self.rate_hz > 0.0:
            raise ValueError(f"rate_hz must be > 0, got {self.rate_hz}")
        if self.horizon < 2:
            raise ValueError(f"horizon must be >= 2, got {self.horizon}")
        if not 1 <= self.execute_steps <= self.horizon:
            raise ValueError(f"execute_steps must be in [1, horizon={self.horizon}], got {self.execute_steps}")
        if self.window_steps < 1:
            raise ValueError(f"window_steps must be >= 1, got {self.window_steps}")
        if not 0 <= self.max_delay_steps < self.horizon:
            raise ValueError(f"max_delay_steps must be in [0, horizon), got {self.max_delay_steps}")

    @property
    def period(self) -> float:
        """Control period, s."""
        return 1.0 / self.rate_hz


class LatencyTracker:
    """Running percentiles over the last ``window`` measured latencies (s).

    Before the first measurement every percentile is ``initial``.
    """

    def __init__(self, window: int = 50, initial: float = 0.0) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self._values: deque[float] = deque(maxlen=window)
        self._initial = float(initial)

    def add(self, seconds: float) -> None:
        self._values.append(float(seconds))

    def percentile(self, q: float) -> float:
        """Return the q-th percentile (q in [0, 100]) of the recent latencies, s."""
        if not self._values:
            return self._initial
        return float(np.percentile(np.fromiter(self._values, dtype=np.float64), q))

    def __len__(self) -> int:
        return len(self._values)


def delay_steps(latency: float, period: float, max_steps: int) -> int:
    """Committed-prefix length d for an expected inference ``latency`` (s).

    The chunk must arrive one control tick before it takes over (the tick that sends
    its first action), hence ``ceil(latency / period) + 1``, capped at ``max_steps``.
    """
    return int(min(max_steps, math.ceil(latency / period - _EPS) + 1))


def finite_differences(
    positions: np.ndarray, period: float, before: np.ndarray | None, after: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Velocities and accelerations (N, n) of grid points ``positions`` (N, n) ``period`` s apart.

    ``before`` / ``after`` (n,) are the grid points just outside the window, if any. With
    ``after`` None the last point is where the motion stops (zero velocity and acceleration).
    Central differences inside, one-sided at an open start. Units: position units per s, per s².
    """
    q = np.asarray(positions, dtype=np.float64)
    if before is None:  # open start: extrapolate linearly, giving the forward difference
        before = 2.0 * q[0] - q[1] if len(q) > 1 else q[0]
    ext = np.vstack([before, q, q[-1] if after is None else after])
    vel = (ext[2:] - ext[:-2]) / (2.0 * period)
    acc = (ext[2:] - 2.0 * ext[1:-1] + ext[:-2]) / period**2
    if after is None:
        vel[-1] = 0.0
        acc[-1] = 0.0
    return vel, acc


@dataclass(frozen=True)
class CommandWindow:
    """Points for a JointTrajectory: the header ``stamp`` (s) and, per point i, ``times[i]`` s
    after it; ``positions``, ``velocities``, ``accelerations`` (N, n) in the window's units.
    """

    stamp: float
    times: np.ndarray
    positions: np.ndarray
    velocities: np.ndarray
    accelerations: np.ndarray


@dataclass(frozen=True)
class InferenceRequest:
    """What the next inference must produce: a chunk whose action 0 is at ``start_time`` (s),
    given the committed ``prefix`` (d, n) canonical for ``start_time + k / rate``, k < d.
    """

    start_time: float
    delay: int
    prefix: np.ndarray
    issued_at: float
    generation: int
    at_arrival: bool = False  # the chunk starts at the first grid point after it arrives (no prefix)


@dataclass(frozen=True)
class SpliceResult:
    """``takeover_time``: when the new chunk's own actions begin (s); ``late``: the chunk came
    after its takeover tick, so some of its actions were skipped; ``dropped``: a reset
    happened since the request, the chunk was ignored.
    """

    takeover_time: float
    late: bool
    dropped: bool = False


class ChunkScheduler:
    """The executing timeline of one robot, in canonical units (n = the robot's dof)."""

    def __init__(self, cfg: SchedulerConfig, position: np.ndarray, now: float) -> None:
        self.cfg = cfg
        self.generation = 0
        self.plan = 0  # counts the timelines (every reset and splice): which one a window was taken from
        self.pending: InferenceRequest | None = None
        self.reset(position, now)

    # -- state ------------------------------------------------------------------------
    def reset(self, position: np.ndarray, now: float) -> None:
        """Hold canonical ``position`` (n,) from ``now`` on, forgetting any chunk and request."""
        self._chunk = np.asarray(position, dtype=np.float64).reshape(1, -1).copy()
        self._t0 = float(now)
        self._takeover = 0  # grid index from which this chunk is executed
        self._end = 0  # grid index after which the timeline holds
        self._started = False  # False until the first chunk is spliced in
        self.generation += 1
        self.plan += 1
        self.pending = None

    def _next_index(self, t: float) -> int:
        """Grid index of the first grid point strictly after ``t``."""
        return int(math.floor((t - self._t0) / self.cfg.period + _EPS)) + 1

    def _time(self, k: int) -> float:
        return self._t0 + k * self.cfg.period

    def _position(self, k: int) -> np.ndarray:
        return self._chunk[min(max(k, 0), self._end)]

    def idle(self, now: float) -> bool:
        """Whether the robot is told to stand still for lack of a plan (before the first chunk, after the end)."""
        return not self._started or self._next_index(now) > self._end

    def planned_until(self) -> float:
        """Time (s) of the timeline's last planned grid point: the robot holds after it. How far
        it lies past now is the plan's coverage margin, the slack left for the next chunk.
        """
        return self._time(self._end)

    def commanded(self, now: float) -> np.ndarray:
        """Canonical target (n,) of the next grid point after ``now``."""
        return self._position(self._next_index(now)).copy()

    # -- inference ----------------------------------------------------------------------
    def due(self, now: float, delay: int) -> bool:
        """Whether a new inference should start now, given the expected delay (steps)."""
        if self.pending is not None:
            return False
        if not self._started:
            return True
        k = self._next_index(now)
        if self.cfg.mode == "sync":
            return k >= self._takeover + self.cfg.execute_steps or k > self._end
        return k + delay >= self._takeover + self.cfg.execute_steps

    def request(self, now: float, delay: int) -> InferenceRequest:
        """Start an inference at ``now``, expected to take ``delay`` steps (harmonic mode only).

        Harmonic: the new chunk will take over ``delay`` grid points after the next one, k;
        the prefix is the committed actions up to there (held past the timeline's end).
        When ``delay`` exceeds ``max_delay_steps``, the longest prefix the policy was
        trained with, the chunk starts ``delay - max_delay_steps`` points later instead, so
        that its prefix still ends exactly where it takes over (its observations are then
        that much older). A robot standing still (``idle``) commits nothing and its chunk starts
        on arrival. Sync: the timeline is cut at k, where the robot waits.
        """
        if self.pending is not None:
            raise RuntimeError("an inference is already pending for this robot")
        k = self._next_index(now)
        # A harmonic robot standing still for lack of a plan (the first chunk, after a hold) has
        # nothing to commit: it waits for the chunk as sync does, which then starts on arrival.
        # A prefix of standing still for the whole latency is what no demonstration shows (there
        # the robot moves within 0.2 s); conditioned on one, the policy went on standing.
        at_arrival = self.cfg.mode == "sync" or (self.cfg.mode == "harmonic" and self.idle(now))
        delay = 0 if at_arrival or self.cfg.mode != "harmonic" else delay
        d = min(delay, self.cfg.max_delay_steps)
        start = k + delay - d
        if self.cfg.mode == "sync":
            self._end = min(self._end, max(k, 0))
        prefix = np.stack([self._position(start + i) for i in range(d)]) if d else self._chunk[:0].copy()
        self.pending = InferenceRequest(self._time(start), d, prefix, float(now), self.generation, at_arrival)
        return self.pending

    def splice(self, request: InferenceRequest, chunk: np.ndarray, now: float) -> SpliceResult:
        """Install ``chunk`` (H, n) canonical, inferred for ``request``, arriving at ``now``."""
        if request.generation != self.generation or request is not self.pending:
            return SpliceResult(now, late=False, dropped=True)
        chunk = np.array(chunk, dtype=np.float64)
        if chunk.ndim != 2 or chunk.shape[1] != self._chunk.shape[1] or chunk.shape[0] <= request.delay:
            raise ValueError(f"chunk must be (H > {request.delay}, {self._chunk.shape[1]}), got {chunk.shape}")
        self.pending = None
        if request.at_arrival:
            # The robot waited: the chunk starts at the first grid time after arrival.
            self._t0 = self._time(self._next_index(now))
            takeover = 0
        else:
            chunk[: request.delay] = request.prefix  # exactly what is being executed
            takeover = request.delay
            # A chunk may start after the grid point now being approached (its start moved
            # later for a long delay): keep the plan from the last grid point up to its start.
            first_old = max(self._next_index(now) - 1, 0)
            start_old = int(round((request.start_time - self._t0) / self.cfg.period))
            kept = [self._position(j) for j in range(first_old, start_old)]
            if kept:
                chunk = np.vstack([np.stack(kept), chunk])
                takeover += len(kept)
            self._t0 = request.start_time - len(kept) * self.cfg.period
        first = self._next_index(now)  # first grid point after arrival
        late = self.cfg.mode == "harmonic" and first > takeover
        self._chunk = chunk
        self.plan += 1
        self._takeover = max(takeover, first) if self.cfg.mode == "naive_async" else takeover
        self._end = chunk.shape[0] - 1
        self._started = True
        return SpliceResult(self._time(max(takeover, first)), late=late)

    # -- commands -----------------------------------------------------------------------
    def amend(self, window: CommandWindow, plan: int) -> None:
        """Make the positions actually sent (canonical, e.g. clamped or rate-limited by the
        adapter) the plan at their grid points, so that later prefixes commit what the
        robot really executes. ``window`` comes from ``window()`` while ``self.plan`` was ``plan``.

        A window of an earlier plan amends nothing: a chunk was spliced in (or the timeline reset)
        between ``window()`` and this call, as the inference thread may do while the command thread
        clamps, and the robot executes the new plan from the next window on. (Amending it with the old
        window crashed the server's command loop under load: an arrival plan starts after the old
        window's first point.)
        """
        if plan != self.plan:
            return
        first = int(round((window.stamp + window.times[0] - self._t0) / self.cfg.period))
        if first > self._end:  # a stop point past the end: nothing planned to amend
            return
        last = min(first + len(window.times), self._end + 1)
        self._chunk[first:last] = window.positions[: last - first]

    def window(self, now: float) -> CommandWindow:
        """Canonical command window at ``now``: the grid points more than MIN_LEAD periods after
        ``now``, at most ``window_steps``, with finite-difference velocities and accelerations;
        past the timeline's end a single stop point one period ahead.
        """
        period = self.cfg.period
        # max(0): a ``now`` taken before a plan that starts on arrival was spliced in lies before the
        # plan's first point; the window then starts there (a negative index would slice nothing).
        k = max(self._next_index(now + MIN_LEAD * period), 0)
        if k > self._end:
            q = self._position(self._end)[None]
            zero = np.zeros_like(q)
            return CommandWindow(now, np.array([period]), q, zero, zero.copy())
        last = min(self._end, k + self.cfg.window_steps - 1)
        q = self._chunk[k : last + 1]
        before = self._chunk[k - 1] if k >= 1 else None
        after = self._chunk[last + 1] if last < self._end else None
        vel, acc = finite_differences(q, period, before, after)
        times = self._t0 + np.arange(k, last + 1) * period - now
        return CommandWindow(now, times, q.copy(), vel, acc)
