"""`ros2 run` and `ros2 pkg` find the package's executables in a built colcon workspace.

Collected only where ros2cli and launch_ros are installed (see conftest.py).
"""

import subprocess
from pathlib import Path

import pybullet_data
import pytest
import yaml
from workspace import build_workspace, workspace_env


@pytest.fixture(scope="module")
def install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_workspace(tmp_path_factory.mktemp("ros2_ws"))


def test_ros2_pkg_lists_the_executables(install: Path) -> None:
    out = subprocess.run(["ros2", "pkg", "executables", "gen_theta"], env=workspace_env(install),
                         capture_output=True, text=True, check=True, timeout=60).stdout
    assert "gen_theta sim_robot" in out and "gen_theta train" in out and "gen_theta gen-theta" in out


def test_ros2_run_runs_a_tool_from_the_install(install: Path) -> None:
    urdf = Path(pybullet_data.getDataPath()) / "kuka_iiwa/model.urdf"
    out = subprocess.run(["ros2", "run", "gen_theta", "gen-theta", "embodiment", str(urdf)],
                         env=workspace_env(install), capture_output=True, text=True, check=True, timeout=60)
    assert yaml.safe_load(out.stdout)["dof"] == 7
