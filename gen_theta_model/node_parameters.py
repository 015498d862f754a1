"""The recorder's, sim_robot's and expert's parameters, each with its default, stated once (a dataclass).

The nodes declare their parameters from these dataclasses, and config/recorder.yaml,
config/sim_robot.yaml and config/expert.yaml list them with their defaults and help: ``params_file_text`` writes
those files (``python -m gen_theta_model.node_parameters`` rewrites them), and a test checks
that they say what the dataclasses say. The policy server's parameters are in
gen_theta_model/policy_server_config.py. ``AUTOSTART`` is the default of every managed
(lifecycle) node's ``autostart`` parameter (gen_theta_ros/lifecycle.py).
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from typing import Any

import yaml

from gen_theta_model.config import share_dir
from gen_theta_model.data.recording import EpisodeLimits

AUTOSTART = True  # a managed node configures and activates itself; false: it waits for a lifecycle manager
AUTOSTART_HELP = "configure and activate at start; false: wait unconfigured for a lifecycle manager"


def _p(default: Any, text: str) -> Any:
    """Declare a parameter: its ``default`` and one line of help ``text`` (above it in config/<node>.yaml)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class RecorderParameters:
    """The recorder node (gen_theta_ros/recorder.py); a managed node, with ``autostart`` besides."""

    robot: str = _p("arm6", "robot name: config/robots/<robot>.yaml and the topics' namespace")
    output_dir: str = _p("episodes", "directory of the episode bags")
    compressed: bool = _p(False, "record the cameras as sensor_msgs/CompressedImage (.../compressed)")
    topics: list[str] = _p([""], "topics to record: ['']: every configured topic; else names or 'topic=pkg/msg/Type'")
    task: str = _p("", "task name stored with each episode (else the sim's task announcement)")
    category: str = _p("", "task category stored with each episode")
    action_topic: str = _p("", "teleop: a leader arm's sensor_msgs/JointState topic, recorded as the actions")
    queue_mb: int = _p(512, "MiB of messages waiting for the disk; beyond this they are dropped (and counted)")
    camera_fps: float = _p(0.0, "the rate the camera drivers publish at (lost frames count against it); "
                                "0: each camera's fps in the robot YAML")
    max_episode_s: float = _p(EpisodeLimits.max_seconds, "an episode this long is closed as truncated")
    max_episode_mb: float = _p(EpisodeLimits.max_mb, "an episode this large (MiB of MCAP) is closed as truncated")


@dataclass(frozen=True)
class SimRobotParameters:
    """The sim_robot node (gen_theta_ros/sim_robot.py)."""

    robot: str = _p("arm6", "a shipped robot name or a robot YAML path (read-only)")
    task: str = _p("pick_place_bin", "task of the episodes (sim/reset starts one with the current task and seed)")
    seed: int = _p(0, "seed of the episodes")
    realtime_factor: float = _p(1.0, "simulated seconds per wall-clock second, in [0.01, 100]")
    cameras: bool = _p(True, "publish the cameras")
    camera_rate_hz: float = _p(0.0, "camera rate; 0: each camera's fps from the robot YAML")
    joint_state_rate_hz: float = _p(100.0, "joint_states rate")
    object_pose_rate_hz: float = _p(30.0, "sim/object_poses rate")
    task_state_rate_hz: float = _p(2.0, "sim/task rate")
    camera_transport: str = _p("raw", "raw | compressed | both (as image_transport publishes)")
    camera_format: str = _p("jpeg", "compressed images: jpeg | png")
    gripper_interface: str = _p("trajectory", "trajectory | gripper_command | parallel_gripper_command")
    dart_std: float = _p(0.0, "rad: std of a smooth, seeded offset added to the executed targets of the non-gripper "
                              "joints until the grasp (DART demonstrations, sim/disturbance.py); 0: off")
    dart_fade_m: list[float] = _p([0.03, 0.10], "m from the grasp point: no DART offset within the first, the full "
                                                "offset beyond the second")
    preroll_s: list[float] = _p([0.0, 0.0], "s, a range: each reset runs the scene a seeded time drawn in it before "
                                            "the episode starts (a conveyor's cube enters further along)")


@dataclass(frozen=True)
class ExpertParameters:
    """The expert node (gen_theta_ros/expert.py): a scripted expert that drives the sim."""

    robot: str = _p("arm6", "a shipped robot name or a robot YAML path")
    rate_hz: float = _p(20.0, "how often the expert looks and may re-plan")
    episodes: int = _p(0, "exit after this many finished episodes; 0: run until stopped")
    miss_prob: float = _p(0.0, "share of episodes whose first approach hovers 3-7 cm off the object, then "
                               "realigns above it (corrective demonstrations, ExpertConfig.miss_prob)")


NODES: dict[str, type] = {"recorder": RecorderParameters, "sim_robot": SimRobotParameters, "expert": ExpertParameters}
MANAGED = ("recorder",)  # lifecycle nodes: they have ``autostart`` too


def parameter_defaults(cls: type) -> dict[str, Any]:
    """Every parameter of ``cls`` (a dataclass of this module) -> its default."""
    return {f.name: f.default_factory() if f.default is dataclasses.MISSING else f.default
            for f in dataclasses.fields(cls)}


def params_file_text(node: str) -> str:
    """Return the text of config/<node>.yaml: every parameter of ``node`` with its default and help,
    for any namespace (``/**/<node>``), as a ROS 2 parameters file.
    """
    cls = NODES[node]
    helps = {f.name: f.metadata["help"] for f in dataclasses.fields(cls)}
    values = parameter_defaults(cls)
    if node in MANAGED:
        helps, values = {"autostart": AUTOSTART_HELP, **helps}, {"autostart": AUTOSTART, **values}
    lines = [f"# {node} parameters and their defaults, written by `python -m gen_theta_model.node_parameters`",
             f"# from gen_theta_model/node_parameters.py ({cls.__name__}), where they are stated: edit them there.",
             "# To change some, pass a copy with --params-file"
             + (" (record.launch.py: params_file:=)." if node == "recorder" else "."),
             f"/**/{node}:", "  ros__parameters:"]
    for name, value in values.items():
        lines += [f"    # {helps[name]}", f"    {yaml.safe_dump({name: value}, default_flow_style=True).strip()[1:-1]}"]
    return "\n".join(lines) + "\n"


def main() -> int:
    """Rewrite config/<node>.yaml of every node here."""
    for node in NODES:
        path = share_dir() / "config" / f"{node}.yaml"
        path.write_text(params_file_text(node))
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
