"""The harmonic policy server's engine: pure Python, no ROS (the node in gen_theta_ros wraps it).

One ``HarmonicServer`` serves one or several robots (any mix of embodiments) with one
policy. Three kinds of callers, each on its own thread:

- input callbacks hand in joint states, camera frames and instructions (``on_*``);
- the control timer calls ``tick(robot, now)`` at the command rate and gets the command
  window to publish; it never waits for inference (it takes a short per-robot lock);
- the inference thread (``start``) loops: collect the robots due for a new chunk, build
  their observations, run **one** ``Policy.predict_chunk`` over the batch, splice each
  chunk into its robot's timeline (gen_theta_model.harmonic.ChunkScheduler).

The committed prefix and the delay d come from the scheduler; d follows a running
percentile of the measured latency (observation snapshot to chunk ready, including the
``added_delay_ms`` that stands in for a larger model). Robots whose delay differs (other
control rates) are batched by equal d. Safety (gen_theta_model.adapter): stale input,
refused input (``reject``: a non-finite joint state, an undecodable image), disable and
e-stop hold the robot where it is commanded to be, and so does a server that is not
``active`` (a deactivated managed node: one hold, then no command); when it resumes, the timeline
restarts from there. A controller fault or a controller that cannot be reached
(``controller``) stops the commands (the controller holds) until it is cleared; driving
then restarts from the measured position. Inference that is unavailable for now
(``InferenceUnavailableError``: a remote inference server lost, timed out or failing)
holds every robot, the hold reason says why, and the inference thread tries again every
``inference_retry_s`` with a neutral observation until a chunk comes back. JointStates may
carry some of the joints (gen_theta_model.robot_inputs).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from gen_theta_model import batch as K
from gen_theta_model.adapter import (
    CONTROLLER_FAULT,
    CONTROLLER_MISSING,
    HANDED_OVER,
    INACTIVE,
    INFERENCE_UNAVAILABLE,
    JOINT_STATES,
    Command,
    EmbodimentAdapter,
    SafetyConfig,
    SafetyMonitor,
    ServerCounters,
    TickClock,
    hands_over,
)
from gen_theta_model.embodiment import EmbodimentSpec
from gen_theta_model.harmonic import (
    MODES,
    ChunkScheduler,
    InferenceRequest,
    LatencyTracker,
    SchedulerConfig,
    delay_steps,
)
from gen_theta_model.inference_worker import InferenceUnavailableError
from gen_theta_model.messages import ConversionError
from gen_theta_model.observation import ObservationConfig
from gen_theta_model.policy.config import PolicyConfig
from gen_theta_model.policy.head import DECODE
from gen_theta_model.robot_inputs import RobotInputs


class ChunkPolicy(Protocol):
    """What the server needs of a policy: ``gen_theta_model.policy.policy.Policy`` in this
    process, ``gen_theta_model.inference_worker.WorkerPolicy`` in a child process, or
    ``gen_theta_model.remote_inference.RemotePolicy`` on another machine. ``predict_chunk``
    raises ``InferenceUnavailableError`` for a failure that may pass (the robots then hold).
    """

    config: PolicyConfig
    observation_config: ObservationConfig
    embodiments: list[EmbodimentSpec]

    def embodiment_index(self, name: str) -> int: ...

    def predict_chunk(
        self, observation: dict[str, torch.Tensor], committed_prefix: torch.Tensor, delay: int, *, decode: str = "mean"
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class ServerConfig:
    mode: str = SchedulerConfig.mode  # harmonic | sync | naive_async (gen_theta_model.harmonic)
    command_rate_hz: float = 50.0  # how often a command window is published (the action grid is the robot's)
    execute_steps: int = SchedulerConfig.execute_steps
    window_steps: int = SchedulerConfig.window_steps
    delay_percentile: float = 95.0  # the delay covers 95% of recent latencies; the rest arrive late
    min_prefix_steps: int = 15  # harmonic: commit at least this many steps per chunk, however fast inference is
    latency_window: int = 50  # inferences in the running percentile
    added_delay_ms: float = 0.0  # extra inference time, standing in for a larger model
    decode: str = "top"  # the chunk executed: the mixture's mean, heaviest component ("top") or a draw ("sample")
    max_delay_steps: int = 0  # longest prefix to pass; 0: the policy's max_prefix_steps
    inference_retry_s: float = 0.5  # while inference is unavailable, try again this often
    safety: SafetyConfig = field(default_factory=SafetyConfig)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if not 1.0 <= self.command_rate_hz <= 1000.0:
            raise ValueError(f"command_rate_hz must be in [1, 1000], got {self.command_rate_hz}")
        if not 0.0 <= self.delay_percentile <= 100.0:
            raise ValueError(f"delay_percentile must be in [0, 100], got {self.delay_percentile}")
        if self.decode not in DECODE:
            raise ValueError(f"decode must be one of {DECODE}, got {self.decode!r}")
        if self.added_delay_ms < 0.0:
            raise ValueError(f"added_delay_ms must be >= 0, got {self.added_delay_ms}")
        if self.max_delay_steps < 0:
            raise ValueError(f"max_delay_steps must be >= 0, got {self.max_delay_steps}")
        if self.min_prefix_steps < 0:
            raise ValueError(f"min_prefix_steps must be >= 0, got {self.min_prefix_steps}")
        if not self.inference_retry_s > 0.0:
            raise ValueError(f"inference_retry_s must be > 0 s, got {self.inference_retry_s}")


@dataclass
class RobotSession:
    """Everything the server keeps for one robot (``name`` = its ROS namespace)."""

    name: str
    spec: EmbodimentSpec
    embodiment_index: int
    adapter: EmbodimentAdapter
    safety: SafetyMonitor
    inputs: RobotInputs
    scheduler: ChunkScheduler | None = None
    counters: ServerCounters = field(default_factory=ServerCounters)
    clock: TickClock | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    holding: bool = True  # True until the first drive, and while safety holds
    resync: bool = False  # the robot may have been moved by others: restart from its measured position
    sent_disabled_hold: bool = False


class HarmonicServer:
    """One policy, several robots: see the module docstring. ``clock()`` gives seconds on the
    same clock as the message stamps (the node clock). Observations are built with the
    policy's ObservationConfig unless ``obs_cfg`` is given.
    """

    def __init__(
        self,
        policy: ChunkPolicy,
        robots: Sequence[tuple[str, EmbodimentSpec]],
        cfg: ServerConfig,
        clock: Callable[[], float] = time.time,
        enabled: bool = True,
        obs_cfg: ObservationConfig | None = None,
        active: bool = True,
    ) -> None:
        if not robots:
            raise ValueError("the server needs at least one robot")
        self.policy = policy
        self.obs_cfg = obs_cfg or policy.observation_config  # as in training
        self.cfg = cfg
        self.clock = clock
        pcfg = policy.config
        self.max_delay = min(cfg.max_delay_steps or pcfg.max_prefix_steps, pcfg.chunk_len - 1)
        self.latency = LatencyTracker(window=cfg.latency_window)
        self.inference_fault = ""  # non-empty while inference is unavailable: every robot holds, for this reason
        self.active = active  # False: every robot holds (INACTIVE), as when disabled
        self.sessions: dict[str, RobotSession] = {}
        for name, spec in robots:
            if name in self.sessions:
                raise ValueError(f"robot '{name}' is listed twice")
            self.sessions[name] = RobotSession(
                name=name,
                spec=spec,
                embodiment_index=policy.embodiment_index(spec.name),
                adapter=EmbodimentAdapter(spec, cfg.safety),
                safety=SafetyMonitor(cfg.safety, tuple(c.name for c in spec.cameras), enabled),
                inputs=RobotInputs(spec, self.obs_cfg.history),
                clock=TickClock(1.0 / cfg.command_rate_hz),
            )
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_error: Callable[[BaseException], None] | None = None

    # -- configuration at run time ----------------------------------------------------------
    def reconfigure(self, **changes: object) -> None:
        """Replace ServerConfig fields (mode, added_delay_ms, ...); timelines restart from where
        each robot is commanded to be, and the counters start again.
        """
        self.cfg = dataclasses.replace(self.cfg, **changes)
        for s in self.sessions.values():
            with s.lock:
                s.scheduler = None
                s.holding = True
                s.counters = ServerCounters()
                s.clock = TickClock(1.0 / self.cfg.command_rate_hz)
        self.latency = LatencyTracker(window=self.cfg.latency_window, initial=self.latency.percentile(50))

    def _scheduler_config(self, spec: EmbodimentSpec) -> SchedulerConfig:
        return SchedulerConfig(
            mode=self.cfg.mode,
            rate_hz=spec.control_rate_hz,
            horizon=self.policy.config.chunk_len,
            execute_steps=self.cfg.execute_steps,
            window_steps=self.cfg.window_steps,
            max_delay_steps=self.max_delay,
        )

    # -- inputs (any thread) -----------------------------------------------------------------
    def session(self, robot: str) -> RobotSession:
        if robot not in self.sessions:
            raise KeyError(f"unknown robot '{robot}' (serving {list(self.sessions)})")
        return self.sessions[robot]

    def on_joint_state(self, robot: str, names: list[str], positions: np.ndarray, stamp: float, now: float) -> None:
        """Take a JointState of ``robot``: names (n), positions (n,) rad|m, stamped ``stamp`` s, received ``now`` s.

        It may carry only some of the robot's joints (merged by name, others ignored); one
        with a non-finite position of the robot's joints is refused (``reject``).
        """
        s = self.session(robot)
        try:
            oldest = s.inputs.joint_state(names, positions, stamp, now)
        except ConversionError as err:
            self.reject(robot, JOINT_STATES, str(err))
            return
        s.safety.joint_state(oldest)

    def on_image(self, robot: str, camera: str, frame: np.ndarray, stamp: float, now: float) -> None:
        """Take a camera frame (H, W, 3) uint8 rgb of ``robot``."""
        s = self.session(robot)
        s.inputs.image(camera, stamp, frame)
        s.safety.camera(camera, now)

    def reject(self, robot: str, source: str, reason: str) -> None:
        """Refuse a message of ``robot``'s input ``source`` (``JOINT_STATES`` or ``camera_input(name)``)
        for ``reason``: count it, and hold the robot until that input's next good message.
        """
        s = self.session(robot)
        if source == JOINT_STATES:
            s.counters.rejected_joint_states += 1
        else:
            s.counters.rejected_images += 1
        s.counters.last_rejected = f"{source}: {reason}"
        s.safety.reject(source, reason)

    def on_instruction(self, robot: str, text: str) -> None:
        self.session(robot).inputs.set_instruction(text)

    def set_enabled(self, robot: str, on: bool) -> tuple[bool, str]:
        """Enable or disable driving ``robot``; (success, message)."""
        return self.session(robot).safety.set_enabled(on)

    def set_estop(self, robot: str, active: bool) -> None:
        """E-stop signal of ``robot``: True latches a hold until released and enabled again."""
        self.session(robot).safety.set_estop(active)

    def controller(self, robot: str, fault: str = "", missing: str = "") -> None:
        """Report ``robot``'s controller: a ``fault`` (rejected or aborted goal) is counted and holds
        until enabled again; ``missing`` (cannot be reached; "" once it can) holds while it lasts.
        No command is sent while either holds; driving resumes from the measured position.
        """
        s = self.session(robot)
        if fault:
            s.counters.controller_faults += 1
            s.counters.last_controller_fault = fault
        s.safety.controller(fault, missing)

    # -- control timer -------------------------------------------------------------------
    def tick(self, robot: str, now: float) -> Command | None:
        """Return the command window to publish for ``robot`` at ``now`` (None: publish nothing)."""
        s = self.session(robot)
        c = s.counters
        if not s.adapter.started:
            measured = s.inputs.latest_positions()
            if measured is None:
                c.hold_reason = s.safety.check(now) or "no joint_states yet"
                missing = s.inputs.missing_joints()
                if c.hold_reason == "no joint_states yet" and len(missing) < s.spec.dof:
                    c.hold_reason = f"no joint_states yet of joint(s) {missing}"
                return None
            s.adapter.reset(measured, now)
        reason = ("" if self.active else INACTIVE) or s.safety.check(now) or self.inference_fault
        period = 1.0 / s.spec.control_rate_hz
        if s.resync and not hands_over(reason):
            s.adapter.reset(s.inputs.latest_positions(), now)  # before any command: hold where it is now
            s.resync = False
        if reason:
            c.hold_reason = reason
            with s.lock:
                s.holding = True
            s.resync = s.resync or hands_over(reason)
            if reason in HANDED_OVER and s.sent_disabled_hold:  # hand the robot over: one hold, then silence
                return None
            c.holds += 1
            if reason.startswith((CONTROLLER_FAULT, CONTROLLER_MISSING)):  # nothing to send to: it holds itself
                s.clock.pause()
                return None
            s.clock.tick(now)
            if reason in HANDED_OVER:
                s.sent_disabled_hold = True
                s.clock.pause()
            return s.adapter.hold(now, period, reason)
        s.sent_disabled_hold = False
        with s.lock:
            if s.holding or s.scheduler is None:
                start = s.spec.normalize(s.adapter.commanded(now))
                s.scheduler = ChunkScheduler(self._scheduler_config(s.spec), start, now)
                s.holding = False
                self._wake.set()
            scheduler, plan = s.scheduler, s.scheduler.plan
            window = scheduler.window(now)
            idle = scheduler.idle(now)
        cmd = s.adapter.command(window)  # outside the lock: a chunk may be spliced in meanwhile
        if cmd.clamped and not cmd.hold_reason:  # commit what is really sent, not what was planned
            sent = dataclasses.replace(window, positions=s.spec.normalize(cmd.window.positions))
            with s.lock:
                scheduler.amend(sent, plan)
        c.ticks += 1
        c.idle_ticks += int(idle)
        c.clamped_ticks += int(cmd.clamped)
        if cmd.hold_reason:
            c.holds += 1
        c.hold_reason = cmd.hold_reason or ("waiting for the first chunk" if idle and not c.chunks else "")
        s.clock.tick(now)
        return cmd

    # -- inference ------------------------------------------------------------------------
    def delay(self, spec: EmbodimentSpec) -> int:
        """Return the committed-prefix length in ``spec``'s control steps: the expected inference
        delay (the running percentile), and in harmonic mode at least ``min_prefix_steps``
        (or the longest prefix the policy was trained with, if shorter). A robot standing still
        for lack of a plan commits nothing whatever this says (``ChunkScheduler.request``).
        """
        horizon = self.policy.config.chunk_len
        latency = self.latency.percentile(self.cfg.delay_percentile)
        longest = horizon - self.cfg.execute_steps
        d = delay_steps(latency, 1.0 / spec.control_rate_hz, longest)
        if self.cfg.mode == "harmonic":  # commit more than the latency needs: consecutive chunks agree
            d = max(d, min(self.cfg.min_prefix_steps, longest, self.max_delay))
        return d

    def infer_step(self) -> int:
        """One inference round over every robot that is due; returns how many chunks were made.

        While inference is unavailable (``inference_fault``) it only tries a neutral inference
        (``warm_up``), and clears the fault when that succeeds.
        """
        try:
            if self.inference_fault:
                self.warm_up()
                self.inference_fault = ""
                return 0
            return self._infer_due()
        except InferenceUnavailableError as err:
            self.inference_fault = f"{INFERENCE_UNAVAILABLE}: {err}"
            return 0

    def _infer_due(self) -> int:
        now = self.clock()
        due: list[tuple[RobotSession, InferenceRequest]] = []
        for s in self.sessions.values():
            d = self.delay(s.spec)
            s.counters.delay_steps = d
            with s.lock:
                if s.holding or s.scheduler is None or s.safety.check(now) or not s.scheduler.due(now, d):
                    continue
                due.append((s, s.scheduler.request(now, d)))
        groups: dict[int, list[tuple[RobotSession, InferenceRequest]]] = {}
        for item in due:
            groups.setdefault(item[1].delay, []).append(item)
        for d, items in groups.items():
            self._infer(d, items, now)
        return len(due)

    def _predict(self, d: int, items: list[tuple[RobotSession, InferenceRequest]]) -> np.ndarray:
        """One ``predict_chunk`` for ``items`` with prefix length ``d``: chunks (B, H, max_dof) canonical."""
        obs = [s.inputs.observation(req.start_time, self.obs_cfg) for s, req in items]
        batch = {key: torch.from_numpy(np.stack([o[key] for o in obs])) for key in K.OBSERVATION_KEYS}
        batch[K.EMBODIMENT_INDEX] = torch.tensor([s.embodiment_index for s, _ in items], dtype=torch.int64)
        prefix = np.zeros((len(items), d, self.obs_cfg.max_dof), dtype=np.float32)
        for i, (s, req) in enumerate(items):
            prefix[i, :, : s.spec.dof] = req.prefix
        chunks = self.policy.predict_chunk(batch, torch.from_numpy(prefix), d, decode=self.cfg.decode).numpy()
        if self.cfg.added_delay_ms > 0.0:
            time.sleep(self.cfg.added_delay_ms * 1e-3)
        return chunks

    def _infer(self, d: int, items: list[tuple[RobotSession, InferenceRequest]], issued: float) -> None:
        chunks = self._predict(d, items)
        arrival = self.clock()
        self.latency.add(arrival - issued)
        for i, (s, req) in enumerate(items):
            chunk = chunks[i, :, : s.spec.dof].astype(np.float64)
            s.counters.latency.add(arrival - issued)
            with s.lock:
                if s.scheduler is None:
                    continue
                if not np.all(np.isfinite(chunk)):
                    s.counters.nonfinite_chunks += 1
                    s.holding = True  # restart from the commanded position at the next tick
                    continue
                result = s.scheduler.splice(req, chunk, self.clock())
            if not result.dropped:
                s.counters.chunks += 1
                s.counters.late_chunks += int(result.late)

    def warm_up(self) -> float:
        """Run one inference on a neutral observation of each robot (the chunks are not used);
        returns and records its latency (s).
        """
        items = []
        for s in self.sessions.values():
            scheduler = ChunkScheduler(self._scheduler_config(s.spec), s.spec.normalize(s.spec.home_positions), 0.0)
            items.append((s, scheduler.request(0.0, 0)))
        start = self.clock()
        self._predict(0, items)
        latency = self.clock() - start
        self.latency.add(latency)
        return latency

    def start(self, on_error: Callable[[BaseException], None] | None = None) -> None:
        """Run ``infer_step`` on a daemon thread until ``stop``.

        An exception there ends the thread (the robots then hold at the end of their plans):
        it is handed to ``on_error(exception)``, e.g. to shut the node down, or raised when
        there is no ``on_error``.
        """
        if self._thread is not None:
            raise RuntimeError("the inference thread is already running")
        self._stop.clear()
        self._on_error = on_error
        self._thread = threading.Thread(target=self._loop, name="harmonic-inference", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    def _loop(self) -> None:
        poll = 0.25 / self.cfg.command_rate_hz
        try:
            while not self._stop.is_set():
                if not self.infer_step():
                    self._wake.wait(timeout=self.cfg.inference_retry_s if self.inference_fault else poll)
                    self._wake.clear()
        except Exception as err:
            if self._on_error is None:
                raise
            self._on_error(err)
