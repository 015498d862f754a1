"""The `gen-theta <verb>` command: every tool of the package without a ROS 2 install.

Each verb is a ``main(argv) -> int`` function, imported only when the verb runs,
so `gen-theta --help` and the model-only verbs work without rclpy.
"""

from __future__ import annotations

import importlib
import sys

# verb -> (module:function, one-line help). Keep in step with setup.py's executables.
VERBS: dict[str, tuple[str, str]] = {
    "demo": ("gen_theta_ros.demo:main", "run the embedded demo on the simulated robot"),
    "embodiment": ("gen_theta_model.embodiment_cli:main", "print the EmbodimentSpec of a URDF as YAML"),
    "sim": ("gen_theta_ros.sim_robot:main", "run the pybullet robot node (ROS topics)"),
    "expert": ("gen_theta_ros.expert:main", "run a scripted expert that drives a robot over ROS topics"),
    "record": ("gen_theta_ros.recorder:main", "run the episode recorder node (rosbag2 MCAP)"),
    "collect": ("gen_theta_ros.collect:main", "record N expert episodes per task and robot in the sim"),
    "ingest": ("gen_theta_model.data.ingest:main", "turn rosbag2 episodes into a training dataset"),
    "lerobot": ("gen_theta_model.data.lerobot:main", "export to / import from the LeRobotDataset v3 layout"),
    "train": ("gen_theta_model.train:main", "pretrain or fine-tune a policy"),
    "evaluate": ("gen_theta_model.evaluate:main", "validation MSE, reverse KL and the SFT/RL call"),
    "model-card": ("gen_theta_model.policy.model_card:main", "parameters, memory and FLOPs of a preset"),
    "serve": ("gen_theta_ros.policy_server:main", "run the harmonic policy server node"),
    "bringup": ("gen_theta_ros.graph:main", "start the bring-up graph (sim, policy server) without launch_ros"),
    "rollout": ("gen_theta_ros.rollout:main", "closed-loop evaluation: synchronous, naive async, harmonic"),
    "scaling": ("gen_theta_model.scaling.cli:main", "data scaling sweeps and L(D) fits"),
    "ablate": ("gen_theta_model.scaling.ablate:main", "pretraining data-mixture ablations"),
}


def usage() -> str:
    width = max(len(v) for v in VERBS)
    lines = ["usage: gen-theta <verb> [args...]", "", "verbs:"]
    lines += [f"  {verb:<{width}}  {help_}" for verb, (_, help_) in VERBS.items()]
    lines += ["", "`gen-theta <verb> --help` describes a verb."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    verb, rest = args[0], args[1:]
    if verb not in VERBS:
        print(f"gen-theta: unknown verb '{verb}'\n\n{usage()}", file=sys.stderr)
        return 2
    module, _, func = VERBS[verb][0].partition(":")
    result = getattr(importlib.import_module(module), func)(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
