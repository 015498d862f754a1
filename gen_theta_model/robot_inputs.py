"""A robot's latest inputs as the policy server sees them (pure code, no ROS).

``JointStateMerger`` builds the robot's joint state from JointStates that may each carry
only some of its joints (a separate gripper driver, say): the state is the latest value
of every joint, each with its own stamp; joints the robot does not have are ignored, and
a message with a non-finite position for one of the robot's joints is rejected whole.
``RobotInputs`` keeps the merged joint history, the latest camera frames and the
instruction, written by callbacks and read by the inference thread.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence

import numpy as np

from gen_theta_model.embodiment import EmbodimentSpec
from gen_theta_model.messages import ConversionError
from gen_theta_model.observation import ObservationConfig, build_observation


class JointStateMerger:
    """Latest position (rad|m), header stamp and receive time (s) of each of ``joint_names``."""

    def __init__(self, joint_names: Sequence[str]) -> None:
        self.joint_names = tuple(joint_names)
        self._index = {name: i for i, name in enumerate(self.joint_names)}
        n = len(self.joint_names)
        self.positions = np.full(n, np.nan)  # (dof,), spec order
        self.stamps = np.full(n, np.nan)  # (dof,) header stamps, s
        self.received = np.full(n, np.nan)  # (dof,) receive times, s

    def update(self, names: Sequence[str], positions: np.ndarray, stamp: float, now: float) -> int:
        """Merge one JointState: ``names`` (n), ``positions`` (n,) rad|m, stamped ``stamp`` s, received ``now`` s.

        Returns how many of the robot's joints it set (0: none of them, nothing changes).
        Raises ConversionError, changing nothing, when a position of one of the robot's
        joints is not finite or a name repeats.
        """
        q = np.asarray(positions, dtype=np.float64).reshape(-1)
        if len(set(names)) != len(names):
            raise ConversionError(f"JointState names repeat: {list(names)}")
        pairs = [(self._index[n], i) for i, n in enumerate(names) if n in self._index]
        bad = [names[i] for _, i in pairs if not np.isfinite(q[i])]
        if bad:
            raise ConversionError(f"non-finite position of joint(s) {bad}")
        for j, i in pairs:
            self.positions[j], self.stamps[j], self.received[j] = q[i], stamp, now
        return len(pairs)

    def missing(self) -> list[str]:
        """Return the robot's joints that no JointState has given a value for yet."""
        return [n for n, r in zip(self.joint_names, self.received) if np.isnan(r)]

    def oldest_received(self) -> float | None:
        """Receive time (s) of the joint heard from longest ago; None until every joint has a value."""
        return None if self.missing() else float(self.received.min())

    def state(self) -> tuple[float, np.ndarray] | None:
        """(stamp s, positions (dof,)) of the merged state, stamped as its oldest joint; None until complete."""
        return None if self.missing() else (float(self.stamps.min()), self.positions.copy())


class RobotInputs:
    """Latest inputs of one robot, written by callbacks and read by the inference thread.

    Stamps are the messages' header stamps (s); ages are measured against them, as in
    training. Joint positions are kept in spec order, rad|m: one row of history per
    JointState that leaves the merged state complete.
    """

    def __init__(self, spec: EmbodimentSpec, history: int) -> None:
        self._lock = threading.Lock()
        self.spec = spec
        self.merger = JointStateMerger(spec.joint_names)
        self.frames: dict[str, tuple[float, np.ndarray]] = {}
        self.joints: deque[tuple[float, np.ndarray]] = deque(maxlen=history)
        self.instruction = ""

    def joint_state(self, names: Sequence[str], positions: np.ndarray, stamp: float, now: float) -> float | None:
        """Merge a JointState (see ``JointStateMerger.update``; ConversionError on a bad one).

        Returns the receive time (s) of the stalest joint, None while some joint has no value.
        """
        with self._lock:
            if not self.merger.update(names, positions, stamp, now):
                return None
            state = self.merger.state()
            if state is not None:
                self.joints.append(state)
            return self.merger.oldest_received()

    def missing_joints(self) -> list[str]:
        with self._lock:
            return self.merger.missing()

    def image(self, camera: str, stamp: float, frame: np.ndarray) -> None:
        with self._lock:
            self.frames[camera] = (stamp, frame)

    def set_instruction(self, text: str) -> None:
        with self._lock:
            self.instruction = text

    def latest_positions(self) -> np.ndarray | None:
        with self._lock:
            return self.joints[-1][1] if self.joints else None

    def observation(self, chunk_start: float, cfg: ObservationConfig) -> dict[str, np.ndarray]:
        """Build the observation (batch layout, no batch axis) for a chunk starting at ``chunk_start`` s."""
        with self._lock:
            frames = dict(self.frames)
            joints = list(self.joints)
            instruction = self.instruction
        ages = {name: max(chunk_start - stamp, 0.0) for name, (stamp, _) in frames.items()}
        positions = np.stack([q for _, q in joints]) if joints else np.zeros((0, self.spec.dof))
        joint_ages = np.array([max(chunk_start - s, 0.0) for s, _ in joints])
        images = {name: frame for name, (_, frame) in frames.items()}
        return build_observation(self.spec, images, ages, positions, joint_ages, instruction, cfg)
