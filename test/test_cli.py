"""`gen-theta` as a user meets it, in real processes: help for every verb, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gen_theta_model.config import share_dir
from gen_theta_ros.cli import VERBS

EXE = Path(sys.executable).parent / "gen-theta"


def gen_theta(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(EXE), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def error_lines(run: subprocess.CompletedProcess[str]) -> list[str]:
    """Lines on stderr, less the banner pybullet's C library prints when it is imported."""
    return [line for line in run.stderr.strip().splitlines() if not line.startswith("pybullet build time")]


@pytest.mark.parametrize("verb", list(VERBS))
def test_every_verb_prints_help_and_exits_0(verb: str, tmp_path: Path) -> None:
    """`--help` describes the verb and starts nothing (no node, no ./episodes)."""
    run = gen_theta([verb, "--help"], tmp_path)
    assert run.returncode == 0, run.stderr
    assert len(run.stdout.strip().splitlines()) >= 3 and "Traceback" not in run.stderr, run.stdout + run.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def broken_robot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Write a robot YAML whose URDF is cut off in the middle of its XML."""
    d = tmp_path_factory.mktemp("broken_robot")
    (d / "broken.urdf").write_text((share_dir() / "urdf" / "arm6.urdf").read_text()[:3000])
    yaml_text = (share_dir() / "config" / "robots" / "arm6.yaml").read_text()
    (d / "robot.yaml").write_text(yaml_text.replace("urdf: urdf/arm6.urdf", "urdf: broken.urdf"))
    return d / "robot.yaml"


@pytest.mark.parametrize("verb", ["sim", "record", "expert"])
def test_node_verb_with_a_broken_urdf_fails_in_one_line(verb: str, broken_robot: Path, tmp_path: Path) -> None:
    run = gen_theta([verb, "--ros-args", "-p", f"robot:={broken_robot}"], tmp_path)
    assert run.returncode == 1
    (line,) = error_lines(run)
    assert line.startswith(f"gen-theta {verb}: error: ") and "broken.urdf: malformed XML" in line, line
    assert "Traceback" not in run.stdout


def test_serve_with_a_missing_checkpoint_fails_in_one_line(tmp_path: Path) -> None:
    run = gen_theta(["serve", str(tmp_path / "no_such_run")], tmp_path)
    assert run.returncode != 0
    (line,) = error_lines(run)
    assert line.startswith("gen-theta serve: error: ") and "no_such_run" in line, line


def test_debug_shows_the_traceback(broken_robot: Path, tmp_path: Path) -> None:
    run = gen_theta(["--debug", "record", "--ros-args", "-p", f"robot:={broken_robot}"], tmp_path)
    assert run.returncode == 1
    assert "Traceback" in run.stderr and "EmbodimentError" in run.stderr, run.stderr


def test_rollout_seeds_given_twice_run_every_seed(tmp_path: Path) -> None:
    """`--seeds 0 --seeds 1..2` runs seeds 0, 1 and 2 (plain argparse would keep only the last use)."""
    run = gen_theta(["rollout", "--in-process", "--expert", "--seeds", "0", "--seeds", "1..2", "--modes", "harmonic",
                     "--delays-ms", "0", "--max-seconds", "1", "--no-video", "--out", "out"], tmp_path)
    assert run.returncode == 0, run.stderr
    episodes = json.loads((tmp_path / "out" / "results.json").read_text())["episodes"]
    assert [e["seed"] for e in episodes] == [0, 1, 2]
