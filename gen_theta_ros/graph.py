"""The bring-up graph, defined once: which nodes run, with which parameters, in which namespaces.

``bringup_graph(args)`` returns the nodes as plain data. launch/bringup.launch.py turns
them into launch_ros Nodes; ``gen-theta bringup`` (``main`` here) starts the very same
nodes as subprocesses, for users without launch_ros, and stops them cleanly on Ctrl-C.
The knobs are ``ARGUMENTS`` (names, defaults, descriptions), shared by both::

    ros2 launch gen_theta bringup.launch.py robot:=arm6 checkpoint:=runs/demo
    gen-theta bringup robot:=arm6 checkpoint:=runs/demo

Nodes: one ``sim_robot`` per robot in the robot's namespace (``sim:=true``; with
``sim:=false`` real drivers provide the same topics), parameters from config/sim_robot.yaml
plus the robot's URDF as ``robot_description``; one ``policy_server`` for all robots (if a checkpoint is given),
parameters from ``params_file`` plus ``checkpoint``, ``robots``, the robots' URDFs
(``robot_descriptions``, which the server checks against the checkpoint), how it commands
each robot (``command_interfaces``, ``gripper_interfaces``: the arguments, else each
robot's YAML), which cameras arrive compressed (``camera_transport``), and
``inference_host`` / ``inference_token_file`` when given (the model on another machine).
The policy server is a managed (lifecycle) node: with ``lifecycle:=auto`` it configures and
activates itself (``autostart``), with ``lifecycle:=manual`` it waits unconfigured for a
lifecycle manager (docs/bringup.md, "Managed nodes").
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gen_theta_model.checkpoint import CheckpointError, resolve_checkpoint
from gen_theta_model.config import ConfigError, resolve_path, share_dir
from gen_theta_model.embodiment import COMMAND_INTERFACES, GRIPPER_INTERFACES, RobotConfig, load_robot_config
from gen_theta_ros.processes import die_with_parent

# name -> (default, description): the launch arguments, and the `gen-theta bringup` arguments.
ARGUMENTS: dict[str, tuple[str, str]] = {
    "robot": ("arm6", "robot name(s), comma-separated: namespace and config/robots/<robot>.yaml of each"),
    "checkpoint": ("", "policy checkpoint or training run directory; empty: no policy server"),
    "sim": ("true", "start a simulated robot (sim_robot) per robot; false: real drivers provide the topics"),
    "params_file": ("", "policy_server parameters (ROS 2 YAML); empty: the package's config/policy_server.yaml"),
    "command_interface": ("", "topic or action (control_msgs FollowJointTrajectory goals); empty: each robot's "
                              "YAML (command_interface, default topic)"),
    "gripper_interface": ("", "trajectory, gripper_command or parallel_gripper_command (a gripper action); "
                              "empty: each robot's YAML (gripper_interface, default trajectory)"),
    "camera_transport": ("raw", "raw or compressed: cameras as sensor_msgs/Image or CompressedImage (JPEG)"),
    "inference_host": ("", "HOST:PORT of a `gen-theta infer-server` that runs the model; empty: this machine"),
    "inference_token_file": ("", "file holding that infer-server's token"),
    "lifecycle": ("auto", "auto: the managed nodes (policy_server) configure and activate themselves; manual: they "
                          "wait unconfigured for a lifecycle manager (ros2 lifecycle set, nav2 lifecycle_manager)"),
}
CAMERA_TRANSPORTS = ("raw", "compressed")
LIFECYCLE_MODES = ("auto", "manual")


@dataclass(frozen=True)
class BringupArgs:
    robots: tuple[str, ...] = ("arm6",)
    checkpoint: str = ""
    sim: bool = True
    params_file: str = ""
    command_interface: str = ""  # "": each robot's YAML
    gripper_interface: str = ""  # "": each robot's YAML
    camera_transport: str = "raw"
    inference_host: str = ""
    inference_token_file: str = ""
    lifecycle: str = "auto"  # or manual: managed nodes wait, unconfigured, for a lifecycle manager

    @classmethod
    def from_strings(cls, values: dict[str, str]) -> BringupArgs:
        """Build from launch-argument strings (missing names take their defaults)."""
        unknown = sorted(set(values) - set(ARGUMENTS))
        if unknown:
            raise ConfigError(f"bringup: unknown argument '{unknown[0]}' (known: {', '.join(ARGUMENTS)})")
        v = {name: values.get(name, default) for name, (default, _) in ARGUMENTS.items()}
        robots = tuple(r.strip() for r in v["robot"].split(",") if r.strip())
        if not robots:
            raise ConfigError("bringup: argument 'robot' names no robot")
        if v["sim"].lower() not in ("true", "false"):
            raise ConfigError(f"bringup: argument 'sim' must be true or false, got '{v['sim']}'")
        for name, allowed in (("command_interface", COMMAND_INTERFACES), ("gripper_interface", GRIPPER_INTERFACES),
                              ("camera_transport", CAMERA_TRANSPORTS), ("lifecycle", LIFECYCLE_MODES)):
            if v[name] and v[name] not in allowed:
                raise ConfigError(f"bringup: argument '{name}' must be one of {list(allowed)}, got '{v[name]}'")
        return cls(robots, v["checkpoint"], v["sim"].lower() == "true", v["params_file"], v["command_interface"],
                   v["gripper_interface"], v["camera_transport"], v["inference_host"], v["inference_token_file"],
                   v["lifecycle"])


@dataclass(frozen=True)
class NodeSpec:
    """One node: console script ``executable`` (lib/gen_theta), node ``name`` in ``namespace``
    ("" = root), ``params_files`` (ROS 2 YAML) then ``parameters`` (they win). A ``managed`` node is
    a lifecycle node (gen_theta_ros/lifecycle.py; its ``autostart`` parameter is in ``parameters``).
    """

    executable: str
    name: str
    namespace: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    params_files: tuple[str, ...] = ()
    managed: bool = False

    @property
    def full_name(self) -> str:
        return f"/{self.namespace}/{self.name}" if self.namespace else f"/{self.name}"


def default_params_file(node: str = "policy_server") -> Path:
    """Return the package's parameters file of ``node`` (config/<node>.yaml)."""
    return share_dir() / "config" / f"{node}.yaml"


def bringup_graph(args: BringupArgs) -> list[NodeSpec]:
    """List the nodes of the bring-up for ``args``, in start order.

    ConfigError for an unknown robot, a missing params file or a checkpoint that is not
    there, before anything starts.
    """
    nodes = []
    configs = {robot: robot_config(robot) for robot in args.robots}
    urdfs = {robot: resolve_path(cfg.urdf, base=robot_yaml(robot).parent).read_text() for robot, cfg in configs.items()}
    commands = [args.command_interface or configs[r].command_interface for r in args.robots]
    grippers = [args.gripper_interface or configs[r].gripper_interface for r in args.robots]
    if args.sim:
        for robot, gripper in zip(args.robots, grippers):
            params = {"robot": robot, "robot_description": urdfs[robot], "gripper_interface": gripper,
                      "camera_transport": args.camera_transport}
            nodes.append(NodeSpec("sim_robot", "sim_robot", robot, params, (str(default_params_file("sim_robot")),)))
    if args.checkpoint:
        params_file = args.params_file or str(default_params_file())
        if not Path(params_file).is_file():
            raise ConfigError(f"bringup: params_file {params_file} does not exist")
        try:
            resolve_checkpoint(Path(args.checkpoint).expanduser())
        except CheckpointError as err:
            raise ConfigError(f"bringup: checkpoint: {err}") from err
        params = {
            "checkpoint": str(Path(args.checkpoint).expanduser().resolve()),
            "robots": list(args.robots),
            "robot_descriptions": [urdfs[r] for r in args.robots],  # checked against the checkpoint
            "command_interfaces": commands,
            "gripper_interfaces": grippers,
            "autostart": args.lifecycle == "auto",
        }
        if args.camera_transport == "compressed":
            params["compressed_cameras"] = [f"{r}/{c.name}" for r in args.robots for c in configs[r].cameras]
        if args.inference_host:  # else the params file's (by default: the model runs on this machine)
            params["inference_host"] = args.inference_host
        if args.inference_token_file:
            params["inference_token_file"] = str(Path(args.inference_token_file).expanduser().resolve())
        nodes.append(NodeSpec("policy_server", "policy_server", "", params, (params_file,), managed=True))
    return nodes


def robot_yaml(robot: str) -> Path:
    """Return the robot YAML of a shipped robot (config/robots/<robot>.yaml); ConfigError if there is none."""
    yaml_path = resolve_path(Path("config/robots") / f"{robot}.yaml")
    if not yaml_path.is_file():
        raise ConfigError(f"bringup: unknown robot '{robot}': no file {yaml_path}")
    return yaml_path


def robot_config(robot: str) -> RobotConfig:
    """Read the robot YAML of a shipped robot."""
    return load_robot_config(robot_yaml(robot))


# -- `gen-theta bringup`: the graph as subprocesses -----------------------------------------
def find_executable(name: str) -> str:
    """Path of console script ``name``: beside this interpreter or script (venv bin/, colcon
    lib/gen_theta/), else on PATH.
    """
    dirs = [Path(sys.argv[0]).resolve().parent, Path(sys.executable).parent]
    found = shutil.which(name, path=os.pathsep.join([*map(str, dirs), os.environ.get("PATH", "")]))
    if found is None:
        raise ConfigError(f"bringup: executable '{name}' not found beside {sys.executable} or on PATH")
    return found


def node_command(spec: NodeSpec, param_dir: Path) -> list[str]:
    """Build the command line of ``spec`` as launch_ros does: remaps and parameter files."""
    params = param_dir / f"{spec.full_name.strip('/').replace('/', '__')}.yaml"
    params.write_text(yaml.safe_dump({spec.full_name: {"ros__parameters": spec.parameters}}))
    cmd = [find_executable(spec.executable), "--ros-args", "-r", f"__node:={spec.name}"]
    if spec.namespace:
        cmd += ["-r", f"__ns:=/{spec.namespace}"]
    for f in (*spec.params_files, str(params)):
        cmd += ["--params-file", f]
    return cmd


class GraphProcesses:
    """Runs a graph's nodes as child processes; ``stop`` ends them (SIGINT, then SIGTERM, SIGKILL)."""

    def __init__(self, nodes: list[NodeSpec], log_dir: Path | None = None) -> None:
        self.nodes = nodes
        self.log_dir = log_dir
        self._tmp = tempfile.TemporaryDirectory(prefix="gen_theta_bringup_")
        self.procs: list[tuple[NodeSpec, subprocess.Popen]] = []

    def start(self) -> None:
        for spec in self.nodes:
            out = None
            if self.log_dir is not None:
                self.log_dir.mkdir(parents=True, exist_ok=True)
                out = (self.log_dir / f"{spec.full_name.strip('/').replace('/', '__')}.log").open("w")
            cmd = node_command(spec, Path(self._tmp.name))
            # Own process group: Ctrl-C in a terminal reaches us once, and we stop the nodes in order.
            # They die with us all the same (kill -9 of the bring-up, an out-of-memory kill).
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT if out else None, start_new_session=True,
                                    preexec_fn=die_with_parent())
            self.procs.append((spec, proc))

    def exited(self) -> list[tuple[NodeSpec, int]]:
        """Nodes that have ended, with their exit codes."""
        return [(spec, p.returncode) for spec, p in self.procs if p.poll() is not None]

    def stop(self, timeout: float = 10.0) -> dict[str, int]:
        """End every node (reverse start order); returns node name -> exit code."""
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            alive = [p for _, p in reversed(self.procs) if p.poll() is None]
            for p in alive:
                os.killpg(p.pid, sig)
            end = time.monotonic() + timeout
            while alive and time.monotonic() < end:
                alive = [p for p in alive if p.poll() is None]
                time.sleep(0.05)
            if not alive:
                break
        self._tmp.cleanup()
        return {spec.full_name: p.wait() for spec, p in self.procs}

    def __enter__(self) -> GraphProcesses:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


USAGE = """usage: gen-theta bringup [name:=value ...]

Starts the bring-up graph (the same nodes as `ros2 launch gen_theta bringup.launch.py`)
and stops it on Ctrl-C. Arguments:
""" + "\n".join(f"  {name}:=  {desc} (default: '{default}')" for name, (default, desc) in ARGUMENTS.items())


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        return 0
    bad = [a for a in argv if ":=" not in a]
    if bad:
        print(f"gen-theta bringup: expected name:=value, got '{bad[0]}'\n\n{USAGE}", file=sys.stderr)
        return 2
    try:
        args = BringupArgs.from_strings(dict(a.split(":=", 1) for a in argv))
        nodes = bringup_graph(args)
    except ConfigError as err:
        print(f"gen-theta bringup: {err}", file=sys.stderr)
        return 2
    if not nodes:
        print("gen-theta bringup: nothing to start (sim:=false and no checkpoint)", file=sys.stderr)
        return 2
    graph = GraphProcesses(nodes)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # `kill` stops the graph as Ctrl-C does
    graph.start()
    print(f"gen-theta bringup: started {', '.join(n.full_name for n in nodes)}; Ctrl-C stops them")
    code = 0
    try:
        while True:
            ended = graph.exited()
            if ended:  # as launch with on_exit=Shutdown: one node ending ends the bring-up
                spec, code = ended[0]
                print(f"gen-theta bringup: {spec.full_name} exited with {code}; stopping", file=sys.stderr)
                break
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    codes = graph.stop()
    failed = {n: c for n, c in codes.items() if c not in (0, -signal.SIGINT)}
    return code or (1 if failed else 0)
