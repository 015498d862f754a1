"""The sim's task state, typed: what the sim/task topic carries as JSON.

``TaskInfo`` is a task's scene as a scripted expert needs it (``Task.info``);
``TaskState`` adds the progress of the episode (``SimRobot.state``). ``to_json`` and
``from_json`` are the wire format of sim/task (its keys are listed in docs/sim.md),
so the sim, the expert node, collect, the demo and rollout read fields, not strings.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

from gen_theta_model.sim.kinematics import Workspace


@dataclass(frozen=True)
class ObjectInfo:
    """One object of the scene: ``half_extents`` (3,) m of its bounding box."""

    name: str
    kind: str  # "cube", "bin", "conveyor"
    half_extents: tuple[float, float, float]


@dataclass(frozen=True)
class TaskInfo:
    """A task's scene after a reset: what to pick, where to put it, the objects and the region."""

    task: str
    category: str
    seed: int
    instruction: str
    time_limit: float  # s of simulated time
    pick: str  # object name
    place: str  # object name
    objects: tuple[ObjectInfo, ...]
    conveyor_velocity: tuple[float, float, float]  # m/s
    preroll_s: float  # s the scene ran before the episode's clock started (Task.reset)
    workspace: Workspace  # the table region where the task places objects


@dataclass(frozen=True)
class TaskState(TaskInfo):
    """``TaskInfo`` plus the episode's progress, as published on sim/task."""

    robot: str
    episode: int  # counts resets: 1 is the first episode
    episode_start: float  # node-clock s at the reset
    success: bool
    success_time: float | None  # simulated s since the reset, or None
    elapsed: float  # simulated s since the reset
    done: bool  # success, or the time limit passed
    sim_time: float  # simulated s since the sim started

    @classmethod
    def of(cls, info: TaskInfo, **progress: object) -> TaskState:
        """Return ``info`` with the progress fields ``progress`` (robot, episode, ...)."""
        return cls(**{f.name: getattr(info, f.name) for f in fields(TaskInfo)}, **progress)

    def to_json(self) -> str:
        """Return the sim/task JSON text."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> TaskState:
        """Parse sim/task JSON text; raises ValueError naming what is missing or wrong."""
        try:
            doc = json.loads(text)
            missing = [f.name for f in fields(cls) if f.name not in doc]
            if missing:
                raise KeyError(", ".join(missing))
            doc["objects"] = tuple(ObjectInfo(o["name"], o["kind"], tuple(o["half_extents"])) for o in doc["objects"])
            doc["conveyor_velocity"] = tuple(doc["conveyor_velocity"])
            doc["workspace"] = Workspace(tuple(doc["workspace"]["center"]), tuple(doc["workspace"]["half"]))
            return cls(**doc)
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            what = f"missing {err.args[0]}" if isinstance(err, KeyError) else f"{type(err).__name__}: {err}"
            raise ValueError(f"not a sim/task state ({what}): {text[:80]!r}") from err
