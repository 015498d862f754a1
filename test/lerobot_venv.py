"""The LeRobot venv the interop and serving tests drive (docs/lerobot.md): where it is, why it is
missing, and how a side script runs in it (offline, without the project's packages on its path).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

LEROBOT_PYTHON = Path(os.environ.get("LEROBOT_PYTHON", Path.home() / "lrb/V/bin/python"))
NO_VENV = (f"no LeRobot venv at {LEROBOT_PYTHON} "
           "(LRB=$HOME/lrb bash ../shared/lerobot/setup.sh, or set LEROBOT_PYTHON)")


def lerobot_env(hf_home: Path | None = None) -> dict[str, str]:
    """Return the environment of a process in the LeRobot venv: offline, its Hugging Face cache at `hf_home`
    (where given), without the project's packages on its path.
    """
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if hf_home is not None:
        env["HF_HOME"] = str(hf_home)
    env.pop("PYTHONPATH", None)  # the project's packages stay out of LeRobot's interpreter
    return env


def run_side(script: Path, *args: str | Path, hf_home: Path) -> None:
    """Run `script` with the LeRobot venv's interpreter (`lerobot_env`); fails the test on a non-zero exit."""
    run = subprocess.run([str(LEROBOT_PYTHON), str(script), *map(str, args)], env=lerobot_env(hf_home),
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
