"""Task suites on the SimWorld: scene randomisation, instruction, success check, time limit.

One task per category at least (the categories of the GEN-θ ablations):

=================  ============== =======================================================
task               category       what
=================  ============== =======================================================
stack              dexterity      put the red cube on the blue cube
pick_place_bin     real_world     pick a cube and drop it into a bin
instruction_pick   generalization "put the <colour> cube in the bin" among distractors
conveyor_pack      real_world     pick a cube off a moving conveyor (7-10 cm/s), box it
=================  ============== =======================================================

Objects are placed in the robot's ``Workspace`` (its reachable table region), so every
task runs on every embodiment. ``info()`` is the task state the sim publishes (JSON):
what a scripted expert needs besides the object poses (which object to pick, where to
place it, the conveyor velocity) and what a recorder stores with the episode.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from gen_theta_model.sim import objects
from gen_theta_model.sim.kinematics import Workspace
from gen_theta_model.sim.objects import COLORS, CUBE_HALF, SceneObject
from gen_theta_model.sim.task_state import ObjectInfo, TaskInfo
from gen_theta_model.sim.world import SimWorld

CATEGORIES = ("dexterity", "real_world", "generalization")
BIN_INNER_HALF = 0.06  # 12 cm inside: an easy drop for a 4 cm cube
BIN_WALL_HEIGHT = 0.05
CUBE_SPACING = 0.085  # m between cube centres: room for an open finger (5.5 cm out) beside a cube
BIN_SPACING = BIN_INNER_HALF + 0.005 + 0.055  # m per axis between bin and cube centres
BELT_HEIGHT = 0.02
BELT_HALF_WIDTH = 0.04


def preroll_range(low: float, high: float) -> tuple[float, float]:
    """Return (low, high) s, the range a scene's pre-roll is drawn from (``SimRobot``); raises
    ValueError unless 0 <= low <= high.
    """
    if not 0.0 <= low <= high:
        raise ValueError(f"preroll_s must be a range 0 <= low <= high (s), got {(low, high)}")
    return float(low), float(high)


class Task(ABC):
    """Base class: subclasses build the scene in ``_build`` and judge it in ``success``."""

    name = ""
    category = ""
    time_limit = 20.0  # s of simulated time per episode

    def __init__(self) -> None:
        self.instruction = ""
        self.pick = ""
        self.place = ""
        self.seed = 0
        self.workspace: Workspace | None = None
        self.belt_velocity = np.zeros(3)
        self.preroll_s = 0.0

    def reset(self, world: SimWorld, workspace: Workspace, seed: int, preroll_s: float = 0.0) -> None:
        """Clear the world's objects, build a new randomised scene from ``seed``, let it settle.

        ``preroll_s``: s the scene then runs on, the robot holding home, before the episode's clock
        starts at 0: a belt carries its cube that much further in, a later start of the same scene.
        """
        if not preroll_s >= 0.0:
            raise ValueError(f"preroll_s must be >= 0, got {preroll_s}")
        self.seed = int(seed)
        self.workspace = workspace
        self.belt_velocity = np.zeros(3)
        self.preroll_s = float(preroll_s)
        world.reset_physics()  # an episode depends on its seed alone, not on the episode before it
        self._build(world, np.random.default_rng(self.seed))
        for _ in range(int(0.1 / world.dt) + round(self.preroll_s / world.dt)):  # cubes come to rest, belts run
            world.step()
        world.time = 0.0

    @abstractmethod
    def _build(self, world: SimWorld, rng: np.random.Generator) -> None:
        """Add the task's objects to ``world`` and set ``instruction``, ``pick`` and ``place``."""

    @abstractmethod
    def success(self, world: SimWorld) -> bool:
        """Tell whether the task is achieved (and the robot has let go)."""

    def info(self, world: SimWorld) -> TaskInfo:
        """Return the scene after the reset (part of the task state on sim/task)."""
        if self.workspace is None:
            raise RuntimeError(f"task {self.name}: info() before reset()")
        return TaskInfo(
            task=self.name,
            category=self.category,
            seed=self.seed,
            instruction=self.instruction,
            time_limit=self.time_limit,
            pick=self.pick,
            place=self.place,
            objects=tuple(ObjectInfo(o.name, o.kind, tuple(map(float, o.half_extents)))
                          for o in world.objects.values()),
            conveyor_velocity=tuple(map(float, self.belt_velocity)),
            preroll_s=self.preroll_s,
            workspace=self.workspace,
        )

    # -- helpers for subclasses -------------------------------------------------------------
    def _layout(self, rng: np.random.Generator, n_cubes: int, with_bin: bool) -> tuple[np.ndarray | None, list]:
        """Random bin centre (or None) and ``n_cubes`` cube centres (x, y) in the workspace.

        Cubes keep ``CUBE_SPACING`` apart and ``BIN_SPACING`` (per axis) from the bin so that an
        open gripper reaches each one without touching the others. Whole layouts are redrawn
        until one fits.
        """
        ws = self.workspace
        center, half = np.asarray(ws.center), np.asarray(ws.half)
        for _ in range(500):
            bin_xy = center + rng.uniform(-1, 1, 2) * half if with_bin else None
            cubes: list[np.ndarray] = []
            for _ in range(n_cubes):
                xy = center + rng.uniform(-1, 1, 2) * (half - 0.01)
                if bin_xy is not None and np.max(np.abs(xy - bin_xy)) < BIN_SPACING:
                    break
                if any(np.linalg.norm(xy - c) < CUBE_SPACING for c in cubes):
                    break
                cubes.append(xy)
            if len(cubes) == n_cubes:
                return bin_xy, cubes
        raise RuntimeError(f"task {self.name}: no layout of {n_cubes} cubes fits {ws} (seed {self.seed})")

    @staticmethod
    def _cube(world: SimWorld, color: str, xy: np.ndarray, yaw: float, z: float = CUBE_HALF) -> str:
        name = f"{color}_cube"
        body = objects.add_cube(world.client, np.array([xy[0], xy[1], z]), yaw, COLORS[color])
        world.add_object(SceneObject(name, body, "cube", (CUBE_HALF,) * 3, True))
        return name

    @staticmethod
    def _bin(world: SimWorld, name: str, xy: np.ndarray) -> str:
        body = objects.add_bin(world.client, xy, BIN_INNER_HALF, BIN_WALL_HEIGHT)
        half = BIN_INNER_HALF + 0.005
        world.add_object(SceneObject(name, body, "bin", (half, half, BIN_WALL_HEIGHT / 2), False))
        return name

    @staticmethod
    def _in_bin(world: SimWorld, obj: str, bin_name: str) -> bool:
        d = world.object_position(obj) - world.object_position(bin_name)
        return bool(
            np.all(np.abs(d[:2]) < BIN_INNER_HALF) and d[2] < BIN_WALL_HEIGHT and obj not in world.held_objects()
        )


class StackTask(Task):
    name = "stack"
    category = "dexterity"

    def _build(self, world: SimWorld, rng: np.random.Generator) -> None:
        _, (base_xy, top_xy) = self._layout(rng, 2, with_bin=False)
        self.place = self._cube(world, "blue", base_xy, rng.uniform(-np.pi, np.pi))
        self.pick = self._cube(world, "red", top_xy, rng.uniform(-np.pi, np.pi))
        self.instruction = str(
            rng.choice(
                ["stack the red cube on the blue cube", "put the red block on top of the blue one", "place red on blue"]
            )
        )

    def success(self, world: SimWorld) -> bool:
        d = world.object_position(self.pick) - world.object_position(self.place)
        on_top = np.linalg.norm(d[:2]) < CUBE_HALF and abs(d[2] - 2 * CUBE_HALF) < 0.01
        return bool(on_top and self.pick not in world.held_objects())


class BinTask(Task):
    name = "pick_place_bin"
    category = "real_world"

    def _build(self, world: SimWorld, rng: np.random.Generator) -> None:
        bin_xy, (cube_xy,) = self._layout(rng, 1, with_bin=True)
        self.place = self._bin(world, "bin", bin_xy)
        self.pick = self._cube(world, str(rng.choice(list(COLORS))), cube_xy, rng.uniform(-np.pi, np.pi))
        color = self.pick.split("_")[0]
        self.instruction = str(
            rng.choice(
                [
                    f"put the {color} cube in the bin",
                    "pick up the cube and drop it in the bin",
                    f"bin the {color} block",
                ]
            )
        )

    def success(self, world: SimWorld) -> bool:
        return self._in_bin(world, self.pick, self.place)


class InstructionTask(Task):
    name = "instruction_pick"
    category = "generalization"
    TEMPLATES = (
        "put the {c} cube in the bin",
        "pick the {c} block and drop it into the bin",
        "place the {c} one in the container",
        "find the {c} cube and put it away in the bin",
        "move the {c} cube into the box",
    )

    def _build(self, world: SimWorld, rng: np.random.Generator) -> None:
        colors = [str(c) for c in rng.choice(list(COLORS), size=3, replace=False)]
        bin_xy, cube_xys = self._layout(rng, 3, with_bin=True)
        names = [self._cube(world, c, xy, rng.uniform(-np.pi, np.pi)) for c, xy in zip(colors, cube_xys)]
        self.place = self._bin(world, "bin", bin_xy)
        target = int(rng.integers(3))
        self.pick = names[target]
        self.instruction = str(rng.choice(self.TEMPLATES)).format(c=colors[target])

    def success(self, world: SimWorld) -> bool:
        cubes = [n for n, o in world.objects.items() if o.kind == "cube"]
        return self._in_bin(world, self.pick, self.place) and not any(
            self._in_bin(world, n, self.place) for n in cubes if n != self.pick
        )


class ConveyorTask(Task):
    """A cube rides a conveyor across the workspace; the robot must pick it on the move and box it.

    The belt runs along y through the workspace, 6 cm beyond its centre line; the cube
    enters at one end at 7-10 cm/s and crosses the reachable region in 3-4.5 s.
    Stopping to think costs centimetres: at 8.5 cm/s a 300 ms pause moves the cube 2.5 cm, more
    than the 2 cm of slack on each side of a 4 cm cube in the open gripper.
    """

    name = "conveyor_pack"
    category = "real_world"
    time_limit = 15.0

    def _build(self, world: SimWorld, rng: np.random.Generator) -> None:
        ws = self.workspace
        cx, cy = ws.center
        belt_x = cx + 0.05 + rng.uniform(-0.01, 0.01)
        half_len = ws.half[1] + 0.15
        belt = objects.add_conveyor(world.client, np.array([belt_x, cy]), half_len, BELT_HALF_WIDTH, BELT_HEIGHT)
        direction = float(rng.choice([-1.0, 1.0]))
        speed = rng.uniform(0.07, 0.10)
        self.belt_velocity = np.array([0.0, direction * speed, 0.0])
        world.add_object(
            SceneObject("conveyor", belt, "conveyor", (BELT_HALF_WIDTH, half_len, BELT_HEIGHT / 2), False),
            self.belt_velocity,
        )
        box_xy = np.array([cx - 0.06, cy + rng.uniform(-0.5, 0.5) * (ws.half[1] - BIN_INNER_HALF)])
        self.place = self._bin(world, "box", box_xy)
        start = np.array([belt_x, cy - direction * (ws.half[1] + 0.05)])
        color = str(rng.choice(list(COLORS)))
        self.pick = self._cube(world, color, start, rng.uniform(-0.3, 0.3), z=BELT_HEIGHT + CUBE_HALF)
        self.instruction = str(
            rng.choice(
                [
                    f"pack the {color} cube from the conveyor into the box",
                    "grab the moving cube and put it in the box",
                    f"catch the {color} block on the belt and box it",
                ]
            )
        )

    def success(self, world: SimWorld) -> bool:
        return self._in_bin(world, self.pick, self.place)


TASKS: dict[str, type[Task]] = {t.name: t for t in (StackTask, BinTask, InstructionTask, ConveyorTask)}


def make_task(name: str) -> Task:
    """Make a task by name (``TASKS``); an unknown name raises ValueError listing the known ones."""
    if name not in TASKS:
        raise ValueError(f"unknown task '{name}'; known tasks: {', '.join(TASKS)}")
    return TASKS[name]()
