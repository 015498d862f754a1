"""Teleoperation: a leader arm's sensor_msgs/JointState, mapped to the robot's joint order.

Ingest takes the actions from such a topic instead of the JointTrajectory commands
(``--action-topic``; docs/dataset_format.md). A wrong mapping is a ValueError naming the joint,
which ingest reports as the episode's error.
"""

from __future__ import annotations

import numpy as np

from gen_theta_model.embodiment import EmbodimentSpec


class LeaderJoints:
    """Leader arm JointState -> the robot's joint order: ``mapping`` leader name -> robot joint ('' drops it)."""

    def __init__(self, spec: EmbodimentSpec, topic: str, mapping: dict[str, str]) -> None:
        self.spec, self.topic, self.mapping = spec, topic, mapping
        self._columns: dict[tuple[str, ...], np.ndarray] = {}  # a message's names -> its columns in joint order

    def positions(self, names: list[str], q: np.ndarray) -> np.ndarray:
        """(dof,) positions in the robot's joint order from one message's ``names`` and ``q`` (rad, m)."""
        key = tuple(names)
        if key not in self._columns:
            self._columns[key] = self._order(key)
        return np.asarray(q, np.float64)[self._columns[key]]

    def _order(self, names: tuple[str, ...]) -> np.ndarray:
        targets = [self.mapping.get(n, n) for n in names]  # '': dropped
        unknown = [n for n, t in zip(names, targets, strict=True) if t and t not in self.spec.joint_names]
        mapped = {t: c for c, t in enumerate(targets) if t}
        if unknown:
            raise ValueError(f"{self.topic}: leader joint '{unknown[0]}' is not a joint of '{self.spec.name}' "
                             f"{self.spec.joint_names}; map it (topic map action_joints: {{{unknown[0]}: <joint>}}"
                             ", or '' to drop it)")
        missing = [j for j in self.spec.joint_names if j not in mapped]
        if missing:
            raise ValueError(f"{self.topic}: no leader joint for '{missing[0]}' among {list(names)} "
                             "(topic map action_joints: leader name -> robot joint)")
        return np.array([mapped[j] for j in self.spec.joint_names])
