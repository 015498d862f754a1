"""Rendered layouts: many task scenes, each seen with the arm in random poses, and where the objects are.

A demonstration shows one scene from about a hundred nearly equal frames, so 200 demonstrations
teach an image encoder 200 places of a cube. A layout costs a sim reset and a few renders, no
demonstration: thousands of them teach where a cube is (Levine et al. 2016 pretrained their
spatial-softmax encoder on object positions the same way). ``gen-theta pretrain-vision`` trains
the image encoder on these files (gen_theta_model/vision_pretrain.py).

Each layout is one task scene from its seed (a conveyor's cube at a random point of its run: a
pre-roll drawn from ``conveyor_preroll_s``); in each of ``poses_per_layout`` frames the arm's tool
is put by IK over one of the scene's objects (``approach_prob``: where an approach passes) or
anywhere over the workspace, with the gripper at a random opening. The arm's pose is then no clue
to where the objects are, which in a demonstration it is. Frames are resized as the loader
resizes them (``observation.resize_image``); objects are in the sim's world frame, in the order
the sim publishes them on ``sim/object_poses``.

Command (one core renders about 77 frames of both arm6 cameras a second at 64 px)::

    gen-theta layouts --robot arm6 --task stack pick_place_bin instruction_pick conveyor_pack
        --seeds 100000..100999 --out runs/layouts/arm6.safetensors

File (safetensors)::

    images        (N, C, 3, S, S) uint8   cameras in the robot's order, padded to max_cameras (at most the
                                          policy's ObservationConfig.max_cameras)
    image_mask    (N, C) bool
    objects       (N, M, 3) float32       m, world frame, padded to batch.MAX_OBJECTS
    objects_mask  (N, M) bool
    layout        (N,) int64              the layout (scene) each frame shows
    task          (N,) int64              its task suite, an index into sim.tasks.TASKS (in its order)

and metadata ``robot``, ``tasks`` (comma-separated), ``image_size``, ``layouts``, ``format``.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file
from tqdm import tqdm

from gen_theta_model import batch
from gen_theta_model.embodiment import EmbodimentSpec
from gen_theta_model.observation import resize_image
from gen_theta_model.sim.camera import render
from gen_theta_model.sim.kinematics import ArmKinematics
from gen_theta_model.sim.robot import SimRobot
from gen_theta_model.sim.tasks import TASKS

FORMAT = "gen_theta.layouts.v1"
KEYS = ("images", "image_mask", "objects", "objects_mask", "layout", "task")


@dataclass(frozen=True)
class LayoutConfig:
    poses_per_layout: int = 4  # frames per scene, each with its own arm pose
    image_size: int = 64  # the policy's ObservationConfig.image_size
    max_cameras: int = 3  # camera slots per frame: the robot's cameras, padded; at most the policy's
    approach_prob: float = 0.6  # share of tool poses over an object (as in an approach), the rest anywhere
    tool_height_m: tuple[float, float] = (0.03, 0.28)  # tool height above the table
    approach_spread_m: float = 0.04  # std of the tool's sideways offset from the object it is over
    conveyor_preroll_s: tuple[float, float] = (0.0, 4.0)  # a conveyor's cube enters the belt this much earlier

    def __post_init__(self) -> None:
        if self.poses_per_layout < 1 or self.image_size < 8 or self.max_cameras < 1:
            raise ValueError(f"need poses_per_layout >= 1, image_size >= 8, max_cameras >= 1, got {self}")
        if not 0.0 <= self.approach_prob <= 1.0:
            raise ValueError(f"approach_prob must lie in [0, 1], got {self.approach_prob}")
        low, high = self.tool_height_m
        if not 0.0 < low <= high:
            raise ValueError(f"tool_height_m must be 0 < low <= high (m), got {self.tool_height_m}")


def _tool_target(rng: np.random.Generator, objects: np.ndarray, centre: np.ndarray, half: np.ndarray,
                 cfg: LayoutConfig) -> np.ndarray:
    """(3,) m: over a random object (sideways spread) or uniform over the workspace, at a random height."""
    if len(objects) and rng.random() < cfg.approach_prob:
        xy = objects[rng.integers(len(objects)), :2] + rng.normal(0.0, cfg.approach_spread_m, 2)
    else:
        xy = centre + rng.uniform(-1.0, 1.0, 2) * half
    return np.array([xy[0], xy[1], rng.uniform(*cfg.tool_height_m)])


def render_layouts(spec: EmbodimentSpec, tasks: Iterable[str], seeds: Iterable[int], cfg: LayoutConfig,
                   progress: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """Render ``poses_per_layout`` frames of every (task, seed) scene: the arrays of the file format.

    ``progress(n)`` is called after each layout with the number done. Raises ValueError when the
    robot has more cameras than ``cfg.max_cameras`` or a scene more objects than batch.MAX_OBJECTS.
    """
    if len(spec.cameras) > cfg.max_cameras:
        raise ValueError(f"{spec.name}: {len(spec.cameras)} cameras exceed max_cameras={cfg.max_cameras}")
    pairs = [(t, int(s)) for t in tasks for s in seeds]
    unknown = sorted({t for t, _ in pairs} - set(TASKS))
    if unknown:
        raise ValueError(f"unknown task {unknown[0]!r}; known tasks: {', '.join(TASKS)}")
    n = len(pairs) * cfg.poses_per_layout
    s, c, m = cfg.image_size, cfg.max_cameras, batch.MAX_OBJECTS
    out = {"images": np.zeros((n, c, 3, s, s), np.uint8), "image_mask": np.zeros((n, c), bool),
           "objects": np.zeros((n, m, 3), np.float32), "objects_mask": np.zeros((n, m), bool),
           "layout": np.zeros(n, np.int64), "task": np.zeros(n, np.int64)}
    out["image_mask"][:, : len(spec.cameras)] = True
    kin = ArmKinematics(spec)
    robot = SimRobot(spec, kin)
    grippers = [i for i, j in enumerate(spec.joints) if j.gripper]
    lo = np.array([spec.joints[i].lower for i in grippers])
    hi = np.array([spec.joints[i].upper for i in grippers])
    centre, half = np.asarray(robot.workspace.center), np.asarray(robot.workspace.half)
    try:
        row = 0
        for k, (task, seed) in enumerate(pairs):
            rng = np.random.default_rng([seed, 0x1A70, k])
            task_index = list(TASKS).index(task)
            preroll = rng.uniform(*cfg.conveyor_preroll_s) if task == "conveyor_pack" else 0.0
            robot.reset(task, seed, now=0.0)
            if preroll:  # the scene run on, as Task.reset's pre-roll does: the cube further along its belt
                for _ in range(round(preroll / robot.world.dt)):
                    robot.world.step()
            _, positions, _ = robot.world.object_poses()
            if len(positions) > m:
                raise ValueError(f"{task} seed {seed}: {len(positions)} objects exceed {m} slots")
            for _ in range(cfg.poses_per_layout):
                q, _ = kin.ik(spec.home_positions, _tool_target(rng, positions, centre, half, cfg),
                              yaw=rng.uniform(-math.pi, math.pi), iters=60)
                q[grippers] = rng.uniform(lo, hi)
                robot.world.reset_robot(q)
                for i, cam in enumerate(spec.cameras):
                    out["images"][row, i] = resize_image(render(robot.world, cam), s)
                out["objects"][row, : len(positions)] = positions
                out["objects_mask"][row, : len(positions)] = True
                out["layout"][row], out["task"][row] = k, task_index
                row += 1
            if progress is not None:
                progress(k + 1)
    finally:
        robot.close()
        kin.close()
    return out


def save_layouts(path: str | Path, arrays: dict[str, np.ndarray], robot: str, tasks: list[str],
                 image_size: int) -> None:
    """Write the layout file (module docstring) to ``path``."""
    meta = {"format": FORMAT, "robot": robot, "tasks": ",".join(tasks), "image_size": str(image_size),
            "layouts": str(int(arrays["layout"].max()) + 1 if len(arrays["layout"]) else 0)}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(arrays[k]) for k in KEYS}, str(path), metadata=meta)


def load_layouts(path: str | Path) -> dict[str, np.ndarray]:
    """Read a layout file; raises ValueError when a key is missing or shapes disagree."""
    arrays = load_file(str(path))
    missing = [k for k in KEYS if k not in arrays]
    if missing:
        raise ValueError(f"{path}: not a layout file, missing {missing}")
    n = len(arrays["layout"])
    if any(len(arrays[k]) != n for k in KEYS):
        raise ValueError(f"{path}: arrays of different lengths {[arrays[k].shape for k in KEYS]}")
    return arrays


def main(argv: list[str] | None = None) -> int:
    """CLI: see the module docstring."""
    from gen_theta_model.closed_loop import parse_seeds
    from gen_theta_model.embodiment import load_robot

    defaults = LayoutConfig()
    parser = argparse.ArgumentParser(prog="gen-theta layouts", description=__doc__.split("\n")[0])
    parser.add_argument("--robot", default="arm6", help="robot name or robot YAML")
    parser.add_argument("--task", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--seeds", nargs="+", required=True,
                        help="integers and inclusive ranges A..B; keep them apart from the demonstrations' and "
                             "the rollouts' seeds")
    parser.add_argument("--poses", type=int, default=defaults.poses_per_layout, help="frames per layout")
    parser.add_argument("--image-size", type=int, default=defaults.image_size)
    parser.add_argument("--max-cameras", type=int, default=defaults.max_cameras)
    parser.add_argument("--out", required=True, help="the layout file to write (.safetensors)")
    a = parser.parse_args(argv)
    try:
        cfg = LayoutConfig(poses_per_layout=a.poses, image_size=a.image_size, max_cameras=a.max_cameras)
        spec = load_robot(a.robot)
        seeds = parse_seeds(a.seeds)
        total = len(seeds) * len(a.task)
        bar = tqdm(total=total, disable=not sys.stderr.isatty(), unit="layout")
        arrays = render_layouts(spec, a.task, seeds, cfg, progress=lambda n: bar.update(n - bar.n))
        bar.close()
        save_layouts(a.out, arrays, spec.name, a.task, cfg.image_size)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{a.out}: {total} layouts, {len(arrays['layout'])} frames")
    return 0
