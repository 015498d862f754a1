"""Lint as ROS 2 packages do: ruff with the ament_flake8 / ament_pep257 equivalent rules (ruff.toml)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_ruff_is_clean() -> None:
    res = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(REPO)], capture_output=True,
                         text=True, cwd=REPO)
    assert res.returncode == 0, res.stdout + res.stderr
