"""Topic, service and action names: one place, loaded from config/topics.yaml.

Names are relative to a robot namespace; ``TopicConfig.for_robot`` gives the
absolute names for ``/<robot>``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gen_theta_model.config import load_config, share_dir


@dataclass(frozen=True)
class ServiceNames:
    sim_reset: str = "sim/reset"
    recorder_start: str = "recorder/start"
    recorder_stop: str = "recorder/stop"
    recorder_mark_success: str = "recorder/mark_success"
    policy_enable: str = "policy_server/enable"


@dataclass(frozen=True)
class ActionNames:
    follow_joint_trajectory: str = "joint_trajectory_controller/follow_joint_trajectory"  # JTC's action
    gripper_command: str = "gripper_controller/gripper_cmd"  # (parallel_)gripper_action_controller's action


@dataclass(frozen=True)
class TopicConfig:
    camera: str = "camera/{name}/image_raw"
    camera_compressed: str = "camera/{name}/image_raw/compressed"
    joint_states: str = "joint_states"
    instruction: str = "instruction"
    command: str = "joint_trajectory_controller/joint_trajectory"
    object_poses: str = "sim/object_poses"
    task: str = "sim/task"
    estop: str = "estop"
    diagnostics: str = "/diagnostics"
    services: ServiceNames = field(default_factory=ServiceNames)
    actions: ActionNames = field(default_factory=ActionNames)

    def __post_init__(self) -> None:
        for key in ("camera", "camera_compressed"):
            if "{name}" not in getattr(self, key):
                raise ValueError(f"{key} must contain '{{name}}', got {getattr(self, key)!r}")

    def resolve(self, robot: str, relative: str) -> str:
        """Absolute name of a relative topic or service in the namespace ``/<robot>``."""
        if relative.startswith("/"):
            return relative
        return f"/{robot}/{relative}" if robot else f"/{relative}"

    def camera_topic(self, robot: str, camera: str, compressed: bool = False) -> str:
        template = self.camera_compressed if compressed else self.camera
        return self.resolve(robot, template.format(name=camera))


def load_topics(path: str | Path | None = None) -> TopicConfig:
    """Load topic names; defaults to the package's config/topics.yaml."""
    return load_config(TopicConfig, path or share_dir() / "config" / "topics.yaml")
