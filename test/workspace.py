"""Helpers to build the package in a throw-away colcon workspace and run commands in it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def has_ros2_cli() -> bool:
    """Tell whether `ros2` with the run/launch verbs is installed (a ROS 2 install or the dev wheels)."""
    try:
        import launch_ros  # noqa: F401
        import ros2run  # noqa: F401
    except ImportError:
        return False
    return shutil.which("ros2", path=str(VENV_BIN) + os.pathsep + os.environ.get("PATH", "")) is not None


def workspace_env(install: Path | None = None) -> dict[str, str]:
    """Environment of a shell that sourced the workspace: venv first, ament prefix set."""
    env = dict(os.environ)
    env["PATH"] = str(VENV_BIN) + os.pathsep + env.get("PATH", "")
    prefixes = [str(VENV_BIN.parent)]
    if install is not None:
        prefixes.insert(0, str(install / "gen_theta"))
        env["PYTHONPATH"] = os.pathsep.join(
            [str(install / "gen_theta/lib/python3.11/site-packages")] + env.get("PYTHONPATH", "").split(os.pathsep)
        ).rstrip(os.pathsep)
        env["PATH"] = str(install / "gen_theta/bin") + os.pathsep + env["PATH"]
    env["AMENT_PREFIX_PATH"] = os.pathsep.join(prefixes)
    return env


def colcon(ws: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run colcon in workspace ``ws`` over the repository as its only source."""
    cmd = [str(VENV_BIN / "colcon"), "--log-base", str(ws / "log"), *args]
    if args[0] in ("list", "build", "test"):
        cmd += ["--base-paths", str(REPO)]
    if args[0] in ("build", "test"):
        cmd += ["--build-base", str(ws / "build"), "--install-base", str(ws / "install")]
    return subprocess.run(cmd, cwd=ws, env=workspace_env(), capture_output=True, text=True, check=check,
                          timeout=600)


def build_workspace(ws: Path) -> Path:
    """Build the package with colcon into ``ws``; returns the install directory."""
    colcon(ws, "build")
    return ws / "install"
