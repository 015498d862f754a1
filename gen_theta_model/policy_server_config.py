"""The policy_server node's parameters and robot checks, in pure code (the node in gen_theta_ros wraps it).

Every parameter and its default is stated once, in a dataclass: ``PolicyServerConfig``
(the node: checkpoint, robots, process and threads), ``ServerConfig`` (the engine) and
``SafetyConfig`` (its safety thresholds). ``parameter_defaults`` lists them for the node
to declare; ``configs_from_parameters`` builds the dataclasses back from the values the
node was given, with errors that name the parameter. ``served_robots`` checks the robots
against the checkpoint's embodiments and URDFs.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gen_theta_model.adapter import SafetyConfig
from gen_theta_model.config import ConfigError, from_mapping
from gen_theta_model.controllers import gripper_joint, per_robot
from gen_theta_model.embodiment import COMMAND_INTERFACES, GRIPPER_INTERFACES, EmbodimentSpec
from gen_theta_model.serving import ServerConfig

SOURCE = "policy_server parameters"
# ServerConfig fields that are not parameters: set from the checkpoint, or fixed.
NOT_PARAMETERS = ("latency_window", "max_delay_steps", "safety")
# Parameters that may change at run time (``HarmonicServer.reconfigure``).
RECONFIGURABLE = ("mode", "added_delay_ms", "execute_steps", "delay_percentile", "min_prefix_steps")


@dataclass(frozen=True)
class PolicyServerConfig:
    checkpoint: str = ""  # checkpoint directory or training run directory (required)
    robots: tuple[str, ...] = ("arm6",)  # robot namespaces served
    embodiments: tuple[str, ...] = ("",)  # embodiment per robot; [""]: each robot's namespace names it
    robot_descriptions: tuple[str, ...] = ("",)  # URDF text per robot, checked against the checkpoint; [""]: none
    enabled: bool = True  # start driving at once (else wait for policy_server/enable)
    device: str = "cpu"  # torch device of the policy
    torch_threads: int = 1  # intra-op threads: leave the other cores to callbacks and the robot
    diagnostics_period_s: float = 1.0
    realtime_priority: int = 0  # SCHED_FIFO priority of the server's threads; 0: normal (needs no rights)
    inference_process: bool = True  # the model in a child process: it never holds this process's GIL
    command_interfaces: tuple[str, ...] = ("topic",)  # per robot (or one for all): topic | action
    gripper_interfaces: tuple[str, ...] = ("trajectory",)  # trajectory | gripper_command | parallel_gripper_command
    compressed_cameras: tuple[str, ...] = ("",)  # "robot/camera" or "camera" (every robot): CompressedImage
    inference_host: str = ""  # HOST:PORT of a `gen-theta infer-server` running the model; "": on this machine
    inference_token_file: str = ""  # file holding that server's token; "": none (a loopback server only)
    inference_tls_ca: str = ""  # PEM file of the certificate (or CA) to trust: TLS to that server; "": no TLS
    inference_timeout_s: float = 2.0  # longest remote inference call; then the robots hold and it tries again

    def __post_init__(self) -> None:
        if not self.checkpoint:
            raise ValueError("'checkpoint' is empty (a checkpoint or run directory)")
        if not self.robots:
            raise ValueError("'robots' names no robot")
        if len(self.served_embodiments) != len(self.robots):
            raise ValueError(f"{len(self.robots)} robots {list(self.robots)} but {len(self.embodiments)} embodiments")
        if self.descriptions and len(self.descriptions) != len(self.robots):
            raise ValueError(f"{len(self.robots)} robots but {len(self.descriptions)} robot_descriptions")
        if self.torch_threads < 1:
            raise ValueError(f"torch_threads must be >= 1, got {self.torch_threads}")
        if not self.diagnostics_period_s > 0.0:
            raise ValueError(f"diagnostics_period_s must be > 0 s, got {self.diagnostics_period_s}")
        if not 0 <= self.realtime_priority <= 99:
            raise ValueError(f"realtime_priority must be in [0, 99], got {self.realtime_priority}")
        per_robot(self.command_interfaces, self.robots, "command_interfaces", COMMAND_INTERFACES)
        per_robot(self.gripper_interfaces, self.robots, "gripper_interfaces", GRIPPER_INTERFACES)
        host, _, port = self.inference_host.rpartition(":")
        if self.inference_host and not (host and port.isdigit()):
            raise ValueError(f"inference_host must be HOST:PORT, got '{self.inference_host}'")
        if not self.inference_timeout_s > 0.0:
            raise ValueError(f"inference_timeout_s must be > 0 s, got {self.inference_timeout_s}")

    def interfaces(self, robot: str) -> tuple[str, str]:
        """(command interface, gripper interface) of ``robot``."""
        i = self.robots.index(robot)
        return (per_robot(self.command_interfaces, self.robots, "command_interfaces", COMMAND_INTERFACES)[i],
                per_robot(self.gripper_interfaces, self.robots, "gripper_interfaces", GRIPPER_INTERFACES)[i])

    def compressed(self, robot: str, camera: str) -> bool:
        """Tell whether ``robot``'s camera ``camera`` is subscribed as CompressedImage."""
        return camera in self.compressed_cameras or f"{robot}/{camera}" in self.compressed_cameras

    @property
    def served_embodiments(self) -> list[str]:
        """Embodiment name of each robot."""
        return [e for e in self.embodiments if e] or list(self.robots)

    @property
    def descriptions(self) -> list[str]:
        """URDF text of each robot, or [] when none is given."""
        return [d for d in self.robot_descriptions if d]


def _fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.name not in NOT_PARAMETERS]


def parameter_defaults() -> dict[str, Any]:
    """Every policy_server parameter -> its default (bool, int, float, str, or a list of str)."""
    out: dict[str, Any] = {}
    for cls in (PolicyServerConfig, ServerConfig, SafetyConfig):
        for f in _fields(cls):
            out[f.name] = list(f.default) if isinstance(f.default, tuple) else f.default
    return out


def _pick(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    return {f.name: values[f.name] for f in _fields(cls) if f.name in values}


def configs_from_parameters(values: Mapping[str, Any]) -> tuple[PolicyServerConfig, ServerConfig]:
    """Build the node's and the engine's config from parameter ``values`` (name -> value).

    ConfigError naming the parameter on a bad value; ``max_delay_steps`` is left to the checkpoint.
    """
    return from_mapping(PolicyServerConfig, _pick(PolicyServerConfig, values), SOURCE), server_config(values)


def server_config(values: Mapping[str, Any], max_delay_steps: int = 0) -> ServerConfig:
    """Build the engine's config from policy_server parameters (e.g. a params file's ``ros__parameters``).

    Keys of ServerConfig and SafetyConfig fields are used, others ignored (checkpoint, robots,
    device, ...); missing keys keep the defaults; ``max_delay_steps`` comes from the checkpoint.
    ConfigError naming the parameter on a bad value.
    """
    cfg = from_mapping(ServerConfig, {**_pick(ServerConfig, values), "safety": _pick(SafetyConfig, values)}, SOURCE)
    return dataclasses.replace(cfg, max_delay_steps=max_delay_steps)


def served_robots(cfg: PolicyServerConfig, known: Sequence[EmbodimentSpec]) -> list[tuple[str, EmbodimentSpec]]:
    """Pair each robot of ``cfg`` with the checkpoint's embodiment ``known`` it is served as.

    ConfigError when the checkpoint does not know a robot's embodiment, or when a robot's
    URDF text (``robot_descriptions``) differs from the URDF the checkpoint was trained on, or when a
    gripper action is asked for a robot without exactly one gripper joint.
    """
    specs = {s.name: s for s in known}
    served = []
    for i, (robot, emb) in enumerate(zip(cfg.robots, cfg.served_embodiments)):
        if emb not in specs:
            raise ConfigError(f"policy_server: robot '{robot}': checkpoint {cfg.checkpoint} knows {list(specs)}, "
                              f"not '{emb}'")
        spec = specs[emb]
        if cfg.descriptions and hashlib.sha256(cfg.descriptions[i].encode()).hexdigest() != spec.urdf_sha256:
            raise ConfigError(
                f"policy_server: robot '{robot}': its robot_description differs from the URDF the checkpoint "
                f"was trained on ({spec.urdf_path}, sha256 {spec.urdf_sha256[:12]})"
            )
        try:
            gripper_joint(spec, cfg.interfaces(robot)[1])
        except ValueError as err:
            raise ConfigError(f"policy_server: robot '{robot}': {err}") from err
        served.append((robot, spec))
    return served
