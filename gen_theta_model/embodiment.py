"""Embodiments: URDF (+ a small robot YAML) -> ``EmbodimentSpec``.

The model never sees joint names or units. It sees a *canonical action space*:
each actuated joint's position normalised to [-1, 1] by its URDF limits, and a
per-joint descriptor vector (type, limits, axis, chain depth, gripper flag, index)
from which the policy builds one token per joint. Batches of different robots are
padded to ``max_dof`` with a mask. A new robot therefore needs a URDF and a YAML,
never new code.

Units: revolute/continuous positions in rad, velocities in rad/s; prismatic in m
and m/s. Continuous joints (no limits) are normalised over one turn [-pi, pi).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yourdfpy

from gen_theta_model.config import ConfigError, from_mapping, read_yaml, resolve_path, share_dir, to_mapping
from gen_theta_model.urdf import EmbodimentError, parse_urdf

JOINT_TYPES = ("revolute", "prismatic", "continuous")
MOVABLE_UNSUPPORTED = ("floating", "planar")
GRIPPER_CLOSED = 0.5  # a gripper counts as closed below this fraction of its opening range
# Descriptor layout: type one-hot (3), lower, upper, velocity, axis (3), depth, gripper, index.
JOINT_DESCRIPTOR_DIM = 12
GRIPPER_DESCRIPTOR = len(JOINT_TYPES) + 7  # the descriptor's gripper flag (1.0 on gripper joints), by that layout
DEFAULT_MAX_DOF = 32
# How the policy server commands a robot (gen_theta_model/controllers.py): the arm, and a gripper joint.
COMMAND_INTERFACES = ("topic", "action")
GRIPPER_INTERFACES = ("trajectory", "gripper_command", "parallel_gripper_command")


@dataclass(frozen=True)
class CameraConfig:
    """A camera rigidly attached to a link (``link == ""``: fixed in the world).

    ``position`` and ``target`` (look-at point) are in the link's frame, metres.
    """

    name: str
    link: str = ""
    position: tuple[float, float, float] = (1.0, 0.0, 0.7)
    target: tuple[float, float, float] = (0.4, 0.0, 0.0)
    width: int = 96
    height: int = 96
    fps: float = 15.0
    fov_deg: float = 60.0

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"camera '{self.name}': size must be positive, got {self.width}x{self.height}")
        if not 0.0 < self.fps <= 120.0:
            raise ValueError(f"camera '{self.name}': fps must be in (0, 120], got {self.fps}")


@dataclass(frozen=True)
class RobotConfig:
    """The robot YAML in config/robots/: what the URDF alone does not say."""

    name: str
    urdf: str
    actuated_joints: tuple[str, ...] = ()  # empty: every non-fixed, non-mimic joint in URDF order
    grippers: tuple[str, ...] = ()
    control_rate_hz: float = 50.0
    base_link: str = ""
    ee_link: str = ""
    home: tuple[float, ...] = ()  # one per actuated joint; empty: the middle of each range
    cameras: tuple[CameraConfig, ...] = ()
    max_dof: int = DEFAULT_MAX_DOF
    command_interface: str = "topic"  # topic | action: how the policy server sends commands (not in the spec)
    gripper_interface: str = "trajectory"  # trajectory | gripper_command | parallel_gripper_command

    def __post_init__(self) -> None:
        if self.command_interface not in COMMAND_INTERFACES:
            raise ValueError(f"command_interface must be one of {list(COMMAND_INTERFACES)}, got "
                             f"'{self.command_interface}'")
        if self.gripper_interface not in GRIPPER_INTERFACES:
            raise ValueError(f"gripper_interface must be one of {list(GRIPPER_INTERFACES)}, got "
                             f"'{self.gripper_interface}'")
        if not 1.0 <= self.control_rate_hz <= 2000.0:
            raise ValueError(f"control_rate_hz must be in [1, 2000] Hz, got {self.control_rate_hz}")
        if self.max_dof < 1:
            raise ValueError(f"max_dof must be >= 1, got {self.max_dof}")


@dataclass(frozen=True)
class JointSpec:
    """One actuated joint. Limits in rad (revolute, continuous) or m (prismatic)."""

    name: str
    type: str
    lower: float
    upper: float
    velocity: float
    effort: float
    axis: tuple[float, float, float]
    depth: int  # number of movable joints from the root down to and including this one
    gripper: bool = False


@dataclass(frozen=True)
class EmbodimentSpec:
    """An actuated robot as the model and the adapters see it."""

    name: str
    urdf_path: str
    urdf_sha256: str
    joints: tuple[JointSpec, ...]
    cameras: tuple[CameraConfig, ...] = ()
    control_rate_hz: float = 50.0
    base_link: str = ""
    ee_link: str = ""
    home: tuple[float, ...] = ()
    max_dof: int = DEFAULT_MAX_DOF
    _lower: np.ndarray = field(init=False, repr=False, compare=False)
    _upper: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        lo = np.array([j.lower for j in self.joints], dtype=np.float64)
        hi = np.array([j.upper for j in self.joints], dtype=np.float64)
        object.__setattr__(self, "_lower", lo)
        object.__setattr__(self, "_upper", hi)

    # -- basic facts -------------------------------------------------------------
    @property
    def dof(self) -> int:
        return len(self.joints)

    @property
    def joint_names(self) -> list[str]:
        return [j.name for j in self.joints]

    @property
    def lower(self) -> np.ndarray:
        """(dof,) lower position limits."""
        return self._lower.copy()

    @property
    def upper(self) -> np.ndarray:
        """(dof,) upper position limits."""
        return self._upper.copy()

    @property
    def velocity_limits(self) -> np.ndarray:
        """(dof,) absolute velocity limits, rad/s or m/s."""
        return np.array([j.velocity for j in self.joints], dtype=np.float64)

    @property
    def gripper_mask(self) -> np.ndarray:
        """(dof,) True where the joint is a gripper."""
        return np.array([j.gripper for j in self.joints], dtype=bool)

    def closed_grippers(self, q: np.ndarray) -> np.ndarray:
        """(N, dof) bool: where a gripper joint of rows ``q`` (N, dof), rad|m, is closed: below
        ``GRIPPER_CLOSED`` of its opening range. Other joints are never closed.
        """
        q = np.asarray(q, dtype=np.float64)
        self._check_last_dim(q)
        return self.gripper_mask & (q < self._lower + GRIPPER_CLOSED * (self._upper - self._lower))

    def next_gripper_event(self, q: np.ndarray) -> np.ndarray:
        """(N,) int: for each row of ``q`` (N, dof), rad|m, the next later row at which a gripper opens
        or closes; the last row where none follows (and for a robot without grippers).
        """
        closed = self.closed_grippers(q)  # (N, dof)
        events = np.flatnonzero((closed[1:] != closed[:-1]).any(axis=1)) + 1  # rows that change
        events = np.append(events, len(q) - 1)
        return events[np.searchsorted(events, np.arange(len(q)), side="right").clip(max=len(events) - 1)]

    @property
    def continuous_mask(self) -> np.ndarray:
        return np.array([j.type == "continuous" for j in self.joints], dtype=bool)

    @property
    def home_positions(self) -> np.ndarray:
        """(dof,) the ready pose: ``home`` from the YAML, else the middle of each range."""
        if self.home:
            return np.array(self.home, dtype=np.float64)
        return (self._lower + self._upper) / 2.0

    # -- canonical action space ----------------------------------------------------
    def normalize(self, q: np.ndarray) -> np.ndarray:
        """Joint positions (..., dof) in rad/m -> canonical values (..., dof) in [-1, 1].

        Continuous joints are wrapped to [-pi, pi) first.
        """
        q = np.asarray(q, dtype=np.float64)
        self._check_last_dim(q)
        cont = self.continuous_mask
        if cont.any():
            q = q.copy()
            q[..., cont] = (q[..., cont] + math.pi) % (2 * math.pi) - math.pi
        return 2.0 * (q - self._lower) / (self._upper - self._lower) - 1.0

    def denormalize(self, x: np.ndarray) -> np.ndarray:
        """Canonical values (..., dof) -> joint positions (..., dof) in rad/m (no clamping)."""
        x = np.asarray(x, dtype=np.float64)
        self._check_last_dim(x)
        return self._lower + (x + 1.0) * 0.5 * (self._upper - self._lower)

    def normalize_velocity(self, qd: np.ndarray) -> np.ndarray:
        """Velocities (..., dof) in rad/s or m/s -> canonical units per second."""
        qd = np.asarray(qd, dtype=np.float64)
        self._check_last_dim(qd)
        return 2.0 * qd / (self._upper - self._lower)

    def denormalize_velocity(self, xd: np.ndarray) -> np.ndarray:
        """Canonical units per second (..., dof) -> rad/s or m/s."""
        xd = np.asarray(xd, dtype=np.float64)
        self._check_last_dim(xd)
        return 0.5 * xd * (self._upper - self._lower)

    def clamp_positions(self, q: np.ndarray) -> np.ndarray:
        """Clip positions (..., dof) to the URDF limits (continuous joints untouched)."""
        q = np.asarray(q, dtype=np.float64)
        self._check_last_dim(q)
        out = np.clip(q, self._lower, self._upper)
        cont = self.continuous_mask
        out[..., cont] = q[..., cont]
        return out

    def clamp_velocities(self, qd: np.ndarray) -> np.ndarray:
        """Clip velocities (..., dof) to +-the URDF velocity limits."""
        lim = self.velocity_limits
        return np.clip(np.asarray(qd, dtype=np.float64), -lim, lim)

    def descriptors(self) -> np.ndarray:
        """(dof, JOINT_DESCRIPTOR_DIM) float32 per-joint descriptors for joint tokens.

        Limits are scaled to O(1): angles divided by pi, lengths by 0.1 m; velocity
        limits by 2*pi rad/s or 1 m/s; depth by 10; index by max_dof.
        """
        rows = []
        for i, j in enumerate(self.joints):
            onehot = [float(j.type == t) for t in JOINT_TYPES]
            scale = 0.1 if j.type == "prismatic" else math.pi
            vscale = 1.0 if j.type == "prismatic" else 2 * math.pi
            rows.append(
                onehot
                + [j.lower / scale, j.upper / scale, j.velocity / vscale]
                + list(j.axis)
                + [j.depth / 10.0, float(j.gripper), i / self.max_dof]
            )
        return np.asarray(rows, dtype=np.float32).reshape(self.dof, JOINT_DESCRIPTOR_DIM)

    def pad(self, x: np.ndarray, max_dof: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Pad the last axis (..., dof) with zeros to (..., max_dof); returns (padded, mask (max_dof,))."""
        n = max_dof or self.max_dof
        x = np.asarray(x)
        self._check_last_dim(x)
        if self.dof > n:
            raise EmbodimentError(f"{self.name}: {self.dof} actuated joints exceed max_dof={n}")
        out = np.zeros(x.shape[:-1] + (n,), dtype=x.dtype)
        out[..., : self.dof] = x
        mask = np.zeros(n, dtype=bool)
        mask[: self.dof] = True
        return out, mask

    def unpad(self, x: np.ndarray) -> np.ndarray:
        """(..., max_dof) -> (..., dof)."""
        return np.asarray(x)[..., : self.dof]

    def reorder_from(self, names: list[str], values: np.ndarray) -> np.ndarray:
        """Values (..., len(names)) keyed by joint ``names`` -> (..., dof) in spec order.

        Extra names (e.g. mimic joints in a JointState) are ignored; a missing
        actuated joint raises EmbodimentError naming it.
        """
        index = {n: i for i, n in enumerate(names)}
        missing = [n for n in self.joint_names if n not in index]
        if missing:
            raise EmbodimentError(f"{self.name}: joint '{missing[0]}' missing from {list(names)}")
        return np.asarray(values)[..., [index[n] for n in self.joint_names]]

    def _check_last_dim(self, x: np.ndarray) -> None:
        if x.shape[-1:] != (self.dof,):
            raise EmbodimentError(f"{self.name}: expected last dimension {self.dof}, got shape {x.shape}")

    def urdf_file(self) -> Path:
        """Return the URDF to load: ``urdf_path`` where it exists, else the shipped URDF of that file name if its
        sha256 is this spec's (a dataset or checkpoint stores the absolute path of the checkout it was made
        in, which another machine or a moved checkout lacks). Raises EmbodimentError naming both paths.
        """
        stored = Path(self.urdf_path)
        if stored.is_file():
            return stored
        try:
            shipped = share_dir() / "urdf" / stored.name
        except ConfigError:
            shipped = None
        if shipped is not None and shipped.is_file():
            if hashlib.sha256(shipped.read_bytes()).hexdigest() == self.urdf_sha256:
                return shipped
        raise EmbodimentError(
            f"{self.name}: its URDF {stored} does not exist (made in another checkout or machine?) and there is "
            f"no shipped URDF {shipped} with its sha256 {self.urdf_sha256[:12]}: copy that URDF to {stored}"
        )

    # -- serialisation (checkpoints, dataset manifests) -----------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain-YAML form; ``EmbodimentSpec.from_dict`` rebuilds it exactly."""
        return {
            "name": self.name,
            "urdf_path": self.urdf_path,
            "urdf_sha256": self.urdf_sha256,
            "control_rate_hz": self.control_rate_hz,
            "base_link": self.base_link,
            "ee_link": self.ee_link,
            "home": list(self.home),
            "max_dof": self.max_dof,
            "cameras": [to_mapping(c) for c in self.cameras],
            "joints": [to_mapping(j) for j in self.joints],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EmbodimentSpec:
        joints = tuple(from_mapping(JointSpec, j, source=f"embodiment {d.get('name')}") for j in d["joints"])
        cams = tuple(from_mapping(CameraConfig, c, source=f"embodiment {d.get('name')}") for c in d.get("cameras", []))
        return cls(
            name=d["name"],
            urdf_path=d["urdf_path"],
            urdf_sha256=d["urdf_sha256"],
            joints=joints,
            cameras=cams,
            control_rate_hz=float(d["control_rate_hz"]),
            base_link=d.get("base_link", ""),
            ee_link=d.get("ee_link", ""),
            home=tuple(float(v) for v in d.get("home", [])),
            max_dof=int(d.get("max_dof", DEFAULT_MAX_DOF)),
        )


# -- loading ---------------------------------------------------------------------------
def load_robot_config(path: str | Path) -> RobotConfig:
    """Read a robot YAML (config/robots/<name>.yaml)."""
    return from_mapping(RobotConfig, read_yaml(path), source=str(path))


def load_embodiment(
    urdf: str | Path,
    config: RobotConfig | str | Path | None = None,
    max_dof: int | None = None,
) -> EmbodimentSpec:
    """Build an ``EmbodimentSpec`` from a URDF and an optional robot YAML.

    Without a YAML every non-fixed, non-mimic joint is actuated, grippers are
    guessed from names containing "finger" or "gripper", and there are no cameras.
    """
    urdf_path = Path(urdf)
    if isinstance(config, (str, Path)):
        config = load_robot_config(config)
    robot = parse_urdf(urdf_path)
    cfg = config or RobotConfig(name=robot.robot.name or urdf_path.stem, urdf=str(urdf_path))
    limit_dof = max_dof or cfg.max_dof
    joints = _actuated_joints(robot, urdf_path, cfg)
    if len(joints) > limit_dof:
        raise EmbodimentError(
            f"{urdf_path}: {len(joints)} actuated joints exceed max_dof={limit_dof} "
            f"(first joint over the limit: '{joints[limit_dof].name}')"
        )
    if cfg.home and len(cfg.home) != len(joints):
        raise EmbodimentError(f"{urdf_path}: home has {len(cfg.home)} values for {len(joints)} actuated joints")
    for j, h in zip(joints, cfg.home):
        if j.type != "continuous" and not j.lower - 1e-9 <= h <= j.upper + 1e-9:
            raise EmbodimentError(f"{urdf_path}: home value {h} of joint '{j.name}' is outside [{j.lower}, {j.upper}]")
    links = set(robot.link_map)
    for link_key in ("base_link", "ee_link"):
        link = getattr(cfg, link_key)
        if link and link not in links:
            raise EmbodimentError(f"{urdf_path}: {link_key} '{link}' is not a link of the URDF")
    for cam in cfg.cameras:
        if cam.link and cam.link not in links:
            raise EmbodimentError(f"{urdf_path}: camera '{cam.name}' is on unknown link '{cam.link}'")
    return EmbodimentSpec(
        name=cfg.name,
        urdf_path=str(urdf_path.resolve()),
        urdf_sha256=hashlib.sha256(urdf_path.read_bytes()).hexdigest(),
        joints=tuple(joints),
        cameras=cfg.cameras,
        control_rate_hz=cfg.control_rate_hz,
        base_link=cfg.base_link or robot.base_link,
        ee_link=cfg.ee_link,
        home=cfg.home,
        max_dof=limit_dof,
    )


def load_robot(name_or_yaml: str | Path, max_dof: int | None = None) -> EmbodimentSpec:
    """Load a shipped robot by name (``arm6``) or any robot YAML path."""
    p = Path(name_or_yaml)
    if p.suffix in (".yaml", ".yml"):
        yaml_path = resolve_path(p)
    else:
        yaml_path = resolve_path(Path("config/robots") / f"{name_or_yaml}.yaml")
    if not yaml_path.exists():
        raise ConfigError(f"unknown robot '{name_or_yaml}': no file {yaml_path}")
    cfg = load_robot_config(yaml_path)
    return load_embodiment(resolve_path(cfg.urdf, base=yaml_path.parent), cfg, max_dof)


def _actuated_joints(robot: yourdfpy.URDF, path: Path, cfg: RobotConfig) -> list[JointSpec]:
    joint_map = robot.joint_map
    parent_joint = {j.child: j for j in robot.robot.joints}

    def depth(joint: yourdfpy.Joint) -> int:
        d, link = 0, joint.child
        while link in parent_joint:
            j = parent_joint[link]
            if j.type != "fixed":
                d += 1
            link = j.parent
        return d

    if cfg.actuated_joints:
        names = list(cfg.actuated_joints)
        for n in names:
            if n not in joint_map:
                raise EmbodimentError(f"{path}: actuated joint '{n}' is not in the URDF")
    else:
        names = [j.name for j in robot.robot.joints if j.type != "fixed" and j.mimic is None]
    if not names:
        raise EmbodimentError(f"{path}: no actuated joints (every joint is fixed or mimic)")
    for g in cfg.grippers:
        if g not in names:
            raise EmbodimentError(f"{path}: gripper '{g}' is not an actuated joint")
    grippers = set(cfg.grippers) if cfg.grippers else {n for n in names if "finger" in n or "gripper" in n}
    specs = []
    for n in names:
        j = joint_map[n]
        if j.type in MOVABLE_UNSUPPORTED or j.type not in JOINT_TYPES:
            raise EmbodimentError(f"{path}: joint '{n}' has unsupported type '{j.type}'")
        if j.mimic is not None:
            raise EmbodimentError(f"{path}: joint '{n}' is a mimic joint and cannot be actuated")
        lim = j.limit
        if j.type == "continuous":
            lower, upper = -math.pi, math.pi
        else:
            if lim is None or lim.lower is None or lim.upper is None:
                raise EmbodimentError(f"{path}: joint '{n}' ({j.type}) has no position limits")
            lower, upper = float(lim.lower), float(lim.upper)
            if lower > upper:
                raise EmbodimentError(f"{path}: joint '{n}' has lower limit {lower} above upper limit {upper}")
            if lower == upper:
                raise EmbodimentError(f"{path}: joint '{n}' has an empty range [{lower}, {upper}]")
        velocity = float(lim.velocity) if lim is not None and lim.velocity else 0.0
        if velocity <= 0.0:
            raise EmbodimentError(f"{path}: joint '{n}' has no positive velocity limit")
        effort = float(lim.effort) if lim is not None and lim.effort is not None else 0.0
        axis = np.asarray(j.axis if j.axis is not None else (1.0, 0.0, 0.0), dtype=np.float64)
        norm = float(np.linalg.norm(axis))
        if norm == 0.0:
            raise EmbodimentError(f"{path}: joint '{n}' has a zero axis")
        axis = axis / norm
        specs.append(
            JointSpec(
                name=n,
                type=j.type,
                lower=lower,
                upper=upper,
                velocity=velocity,
                effort=effort,
                axis=(float(axis[0]), float(axis[1]), float(axis[2])),
                depth=depth(j),
                gripper=n in grippers,
            )
        )
    return specs
