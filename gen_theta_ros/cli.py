"""The `gen-theta <verb>` command: every tool of the package without a ROS 2 install.

Each verb is a ``main(argv) -> int`` function, imported only when the verb runs,
so `gen-theta --help` and the model-only verbs work without rclpy.

Errors a user can fix (a bad value, a missing file, a tool that failed: ValueError,
OSError, RuntimeError) end in one line on stderr, ``gen-theta <verb>: error: ...``,
and exit status 1; Ctrl-C ends in ``gen-theta <verb>: interrupted`` and status 130.
Any other exception is a bug and shows its traceback. ``--debug`` (anywhere before
``--ros-args``) or GEN_THETA_DEBUG=1 shows the traceback of every error.
"""

from __future__ import annotations

import importlib
import os
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
    "dataset": ("gen_theta_model.data.manifest:main", "convert a format-1 dataset to shards and an index"),
    "lerobot": ("gen_theta_model.data.lerobot:main", "export to / import from the LeRobotDataset v3 layout"),
    "layouts": ("gen_theta_model.sim.layouts:main", "render sim scenes and their object positions (pretrain-vision)"),
    "pretrain-vision": ("gen_theta_model.vision_pretrain:main", "teach a policy's image encoder where objects are"),
    "train": ("gen_theta_model.train:main", "pretrain or fine-tune a policy"),
    "evaluate": ("gen_theta_model.evaluate:main", "validation MSE, reverse KL and the SFT/RL call"),
    "model-card": ("gen_theta_model.policy.model_card:main", "parameters, memory and FLOPs of a preset"),
    "checkpoint": ("gen_theta_model.sharded_checkpoint:main",
                   "consolidate a sharded (FSDP) checkpoint, or average checkpoints, for serving"),
    "serve": ("gen_theta_ros.policy_server:main", "run the harmonic policy server node"),
    "infer-server": ("gen_theta_model.remote_inference:main", "serve a policy's inference to other machines (gRPC)"),
    "bringup": ("gen_theta_ros.graph:main", "start the bring-up graph (sim, policy server) without launch_ros"),
    "rollout": ("gen_theta_ros.rollout:main", "closed-loop evaluation: synchronous, naive async, harmonic"),
    "scaling": ("gen_theta_model.scaling.cli:main", "data scaling sweeps and L(D) fits"),
    "ablate": ("gen_theta_model.scaling.ablate:main", "pretraining data-mixture ablations"),
}


# What a user can act on; anything else (TypeError, KeyError, ...) is a bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError, RuntimeError)
EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


def usage() -> str:
    width = max(len(v) for v in VERBS)
    lines = ["usage: gen-theta <verb> [args...]", "", "verbs:"]
    lines += [f"  {verb:<{width}}  {help_}" for verb, (_, help_) in VERBS.items()]
    lines += ["", "`gen-theta <verb> --help` describes a verb; --debug shows tracebacks of errors."]
    return "\n".join(lines)


def split_debug(args: list[str]) -> tuple[list[str], bool]:
    """Remove ``--debug`` from the words before ``--ros-args``; returns (args, debug)."""
    end = args.index("--ros-args") if "--ros-args" in args else len(args)
    own = [a for a in args[:end] if a != "--debug"]
    debug = len(own) < end or os.environ.get("GEN_THETA_DEBUG", "") not in ("", "0")
    return own + args[end:], debug


def run_verb(verb: str, args: list[str], debug: bool = False) -> int:
    """Run ``verb``'s main with ``args``; user errors and Ctrl-C end in one line on stderr."""
    module, _, func = VERBS[verb][0].partition(":")
    try:
        result = getattr(importlib.import_module(module), func)(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"gen-theta {verb}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except USER_ERRORS as err:
        if debug:
            raise
        print(f"gen-theta {verb}: error: {one_line(err)} (--debug shows the traceback)", file=sys.stderr)
        return EXIT_ERROR
    return int(result or 0)


def one_line(err: BaseException) -> str:
    """Return the error's message on one line (an OSError also names its class)."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if isinstance(err, (ValueError, RuntimeError)) else f"{type(err).__name__}: {text}"


def main(argv: list[str] | None = None) -> int:
    args, debug = split_debug(sys.argv[1:] if argv is None else list(argv))
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    verb, rest = args[0], args[1:]
    if verb not in VERBS:
        print(f"gen-theta: unknown verb '{verb}'\n\n{usage()}", file=sys.stderr)
        return EXIT_USAGE
    return run_verb(verb, rest, debug)


if __name__ == "__main__":
    sys.exit(main())
