"""Ingest and a scaling sweep on an existing Ray cluster: a `ray start --head` on this machine (one CPU)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from bag_helpers import write_bag
from ros_helpers import kill_leftovers, process_tree, wait_for
from test_scaling_sweep import source, write_config  # noqa: F401 (source: the sweep's dataset fixture)

from gen_theta_model.data.manifest import open_dataset
from gen_theta_model.distributed import free_local_port
from gen_theta_model.embodiment import load_robot
from gen_theta_model.ray_cluster import python_path
from gen_theta_model.scaling.results import load_results

RAY = Path(sys.executable).with_name("ray")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> str:
    """Run a one-node Ray cluster of one CPU with its own ports and temp dir; yields its address.

    Token authentication off (Ray turns it on where ~/.ray/auth_token exists, and a driver joining by
    address then needs RAY_AUTH_MODE=token: docs/cluster.md). Stopped by signalling its `ray start
    --block` (which stops what it started), then killing whatever of its process tree is left, by
    pid: `ray stop` would stop every Ray on the machine.
    """
    port = free_local_port()
    temp = Path(f"/tmp/rayc{os.getpid()}")  # short: Ray's unix sockets live under it
    log = tmp_path_factory.mktemp("ray") / "head.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(python_path()), "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen([str(RAY), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
                             "--port", str(port), "--num-cpus", "1", "--include-dashboard", "false",
                             "--ray-client-server-port", str(free_local_port()),
                             "--dashboard-agent-listen-port", str(free_local_port()), "--temp-dir", str(temp),
                             "--disable-usage-stats"], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        wait_for(lambda: "block forever" in log.read_text() or proc.poll() is not None, 120, "ray start --head")
        assert proc.poll() is None, log.read_text()
        yield f"127.0.0.1:{port}"
    finally:
        pids = process_tree(proc.pid)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        kill_leftovers(proc, pids)
        shutil.rmtree(temp, ignore_errors=True)


DRIVER = """
import sys
import ray
from gen_theta_model.data.ingest import main as ingest
from gen_theta_model.scaling.cli import main as scaling
rc = (ingest if sys.argv[1] == "ingest" else scaling)(sys.argv[2:])
if ray.is_initialized():  # ingest stays connected: which cluster, how many CPUs
    print("JOINED", ray.get_runtime_context().gcs_address, ray.cluster_resources()["CPU"])
sys.exit(rc)
"""


def driver(cluster: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ingest or a sweep in a fresh process (one that never started a Ray of its own), as a user does."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(python_path()), "RAY_AUTH_MODE": "disabled"}
    return subprocess.run([sys.executable, "-c", DRIVER, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def test_ingest_joins_the_cluster(cluster, tmp_path):
    arm6 = load_robot("arm6")
    write_bag(tmp_path / "bags" / "ep0", arm6)
    write_bag(tmp_path / "bags" / "ep1", arm6)
    write_bag(tmp_path / "bags" / "bad", arm6, fault="wrong_joints")
    # relative paths: a worker runs in another directory, ingest sends it absolute ones
    run = driver(cluster, "ingest", "bags", "--out", "ds", "--engine", "ray", "--ray-address", cluster, cwd=tmp_path)
    port = cluster.removeprefix("127.0.0.1")  # Ray names the node by its IP, not 127.0.0.1
    joined = [ln.split() for ln in run.stdout.splitlines() if ln.startswith("JOINED")]
    assert joined and joined[0][1].endswith(port) and float(joined[0][2]) == 1, run.stdout + run.stderr[-3000:]
    assert run.returncode == 1 and f"Ray cluster at {joined[0][1]}" in run.stdout and "ingest: 2 added" in run.stdout
    assert "FAILED" in run.stderr and "bad" in run.stderr
    assert [m.episode for m in open_dataset(tmp_path / "ds").episodes] == ["ep0", "ep1"]


def test_sweep_joins_the_cluster(cluster, source, tmp_path):  # noqa: F811 (the imported fixture)
    out = tmp_path / "sweep"
    config = write_config(tmp_path / "sweep.yaml", source, out, engine="ray", workers=1, cpus_per_trial=1)
    run = driver(cluster, "sweep", "sweep", str(config), "--no-fit", "--ray-address", cluster, cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    assert f"{cluster.removeprefix('127.0.0.1')}\n" in run.stdout  # "Ray cluster at <node IP>:<port>"
    assert "JOINED" not in run.stdout  # the sweep leaves the cluster as it found it
    assert sorted(t.trial_id for t in load_results([out])) == ["nano-D3-s0", "nano-D6-s0"]
