"""`gen-theta embodiment URDF [--config YAML]`: print an EmbodimentSpec as YAML."""

from __future__ import annotations

import argparse
import sys

import yaml

from gen_theta_model.config import ConfigError
from gen_theta_model.embodiment import load_embodiment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gen-theta embodiment", description=__doc__)
    parser.add_argument("urdf", help="path to a URDF file")
    parser.add_argument("--config", help="robot YAML (actuated joints, grippers, cameras, control rate)")
    parser.add_argument("--max-dof", type=int, default=None, help="largest DoF allowed (default: 32)")
    args = parser.parse_args(argv)
    try:
        spec = load_embodiment(args.urdf, args.config, max_dof=args.max_dof)
    except (ConfigError, ValueError, OSError) as err:  # EmbodimentError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 1
    summary = {
        "name": spec.name,
        "urdf": spec.urdf_path,
        "urdf_sha256": spec.urdf_sha256,
        "dof": spec.dof,
        "control_rate_hz": spec.control_rate_hz,
        "grippers": [j.name for j in spec.joints if j.gripper],
        "joints": [
            {"name": j.name, "type": j.type, "lower": j.lower, "upper": j.upper, "velocity": j.velocity,
             "effort": j.effort, "axis": list(j.axis), "depth": j.depth, "gripper": j.gripper}
            for j in spec.joints
        ],
        "cameras": [c.name for c in spec.cameras],
    }
    yaml.safe_dump(summary, sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
