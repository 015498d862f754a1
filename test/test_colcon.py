"""The package builds and tests the ROS 2 way: colcon list/build/test/test-result."""

import re
from pathlib import Path

import pytest
from workspace import build_workspace, colcon

EXECUTABLES = {"gen-theta", "sim_robot", "expert", "recorder", "policy_server", "train", "collect", "ingest",
               "evaluate", "rollout"}


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ws = tmp_path_factory.mktemp("colcon_ws")
    build_workspace(ws)
    return ws


def test_colcon_sees_an_ament_python_package(ws: Path) -> None:
    out = colcon(ws, "list").stdout
    assert "gen_theta" in out and "(ros.ament_python)" in out


def test_build_installs_executables_and_share(ws: Path) -> None:
    install = ws / "install/gen_theta"
    assert EXECUTABLES <= {p.name for p in (install / "lib/gen_theta").iterdir()}
    share = install / "share/gen_theta"
    for rel in ("package.xml", "config/topics.yaml", "config/fastdds.xml",
                "config/backbones/google--siglip-base-patch16-224/config.json"):
        assert (share / rel).is_file(), rel
    assert (install / "share/ament_index/resource_index/packages/gen_theta").is_file()


def test_colcon_test_runs_pytest(ws: Path) -> None:
    colcon(ws, "test", "--return-code-on-test-failure", "--pytest-args", "test/test_config.py")
    result = colcon(ws, "test-result", "--test-result-base", str(ws / "build"), "--verbose").stdout
    summary = re.search(r"Summary: (\d+) tests, (\d+) errors, (\d+) failures", result)
    assert summary is not None, result
    assert int(summary[1]) > 0 and summary[2] == "0" and summary[3] == "0"


def test_colcon_test_fails_on_a_failing_test(ws: Path, tmp_path: Path) -> None:
    # colcon test exits 0 on test failures unless asked otherwise: CI must ask.
    failing = tmp_path / "test_failing.py"
    failing.write_text("def test_fails():\n    assert 1 == 2\n")
    res = colcon(ws, "test", "--return-code-on-test-failure", "--pytest-args", str(failing), check=False)
    assert res.returncode != 0
