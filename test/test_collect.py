"""The data-collection path end to end: sim + expert + recorder over DDS -> bag -> ingest -> loader batch.

And what a user does to a running `gen-theta collect`: kill -9 it (or the OOM killer
does), press Ctrl-C, or a supervisor sends SIGINT to it alone. Its children must not
outlive it, and the open episode must end closed and counted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import rclpy
import torch
from bag_helpers import assert_counts_on_disk
from ros_helpers import alive, kill_leftovers, process_tree, ros_node, start_exe, stop_or_kill, wait_for

from gen_theta_model import batch
from gen_theta_model.data.ingest import IngestOptions, ingest
from gen_theta_model.data.loader import DataConfig, make_dataloaders
from gen_theta_model.data.recording import read_record
from gen_theta_ros.episode_client import EpisodeClient, spinning


def test_collect_ingest_load(tmp_path):
    bags = tmp_path / "bags"
    exe = Path(sys.executable).parent / "gen-theta"
    run = subprocess.run([str(exe), "collect", "--robot", "arm6", "--task", "pick_place_bin", "--episodes", "1",
                          "--miss-prob", "1", "--dart-std", "0.08", "--dart-fade", "0.02", "0.06",
                          "--preroll-s", "0.1", "0.3", "--out", str(bags),
                          "--log-dir", str(tmp_path / "logs")], capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "collect: 1 episodes" in run.stdout
    sim_log = (tmp_path / "logs" / "arm6" / "sim.log").read_text()
    assert "executed targets disturbed, std 0.08 rad, fading within (0.02, 0.06) m of the grasp (DART)" in sim_log
    assert "each scene runs 0.1-0.3 s (seeded) before its episode starts" in sim_log
    (bag,) = bags.iterdir()
    record = read_record(bag)
    assert record.status == "complete" and record.task == "pick_place_bin" and record.category == "real_world"
    assert record.success is not None and record.instruction
    assert all(n > 0 for t, n in record.messages.items() if not t.endswith("instruction")), record.messages
    assert (bag / "metadata.yaml").is_file()

    # The expert may fail this seed: the episode enters the dataset either way.
    report = ingest([bag], tmp_path / "ds", IngestOptions(include_failed=True), jobs=1, progress=False)
    assert report.added == [bag.name], "\n".join(report.failed.values())  # whole: pytest cuts a dict
    train, _, info = make_dataloaders(tmp_path / "ds", DataConfig(batch_size=4, num_workers=0, val_fraction=0.0,
                                                                  samples_per_epoch=8))
    b = next(iter(train))
    assert info.episodes[0].num_trajectories > 0 and info.episodes[0].success == record.success
    assert b[batch.IMAGE_MASK][:, :2].all() and b[batch.ACTION_MASK].any()
    assert torch.isfinite(b[batch.ACTION]).all() and b[batch.IMAGES].float().std() > 1  # real rendered frames
    # the sim's object poses (the bin and the cube) at each sample's time, on the table in front of the arm
    assert b[batch.OBJECTS_MASK][:, :2].all() and not b[batch.OBJECTS_MASK][:, 2:].any()
    xy = b[batch.OBJECTS][:, :2, :2]
    assert ((xy[..., 0] > 0.2) & (xy[..., 0] < 0.8) & (xy[..., 1].abs() < 0.4)).all(), xy


def test_collect_refuses_a_robot_that_another_sim_drives(tmp_path):
    """A second collect in the same ROS domain would reset the first one's episodes and record both sims."""
    first = start_exe(["sim", "--ros-args", "-r", "__ns:=/arm6", "-p", "robot:=arm6"], tmp_path / "first.log")
    bags, logs = tmp_path / "bags", tmp_path / "logs"
    try:
        with ros_node("probe") as node:
            wait_for(lambda: node.count_publishers("/arm6/joint_states") > 0, 60, "the first sim publishing")
        exe = Path(sys.executable).parent / "gen-theta"
        run = subprocess.run([str(exe), "collect", "--robot", "arm6", "--task", "stack", "--episodes", "1",
                              "--out", str(bags), "--log-dir", str(logs)], capture_output=True, text=True, timeout=120)
        assert run.returncode != 0
        assert "/arm6/joint_states already has a publisher" in run.stderr, run.stderr[-2000:]
        assert f"ROS_DOMAIN_ID={os.environ['ROS_DOMAIN_ID']}: another sim or robot drives /arm6" in run.stderr
        assert not any(bags.iterdir())  # nothing recorded: it stopped before its first reset
        assert first.poll() is None  # the sim that was there runs on

        # What collect's second look rests on, had its first look missed the other sim: the other
        # sim's services do not make our client ready (it waits for its own sim node by name), and
        # the other sim is named as such however many publishers the client has seen.
        rclpy.init()
        try:
            with spinning(EpisodeClient("arm6", sim_node="sim_robot_ours")) as client:
                client.wait_for(client.reset_client.service_is_ready, 60, "the other sim's reset service")
                assert client.in_use(60, own_sim_up=True) == "/arm6/joint_states already has a publisher " \
                                                              "(/arm6/sim_robot)"
                assert client.sim_publishers(ours=True) == []
                with pytest.raises(TimeoutError, match=r"the sim \(sim_robot_ours\)"):
                    client.wait_ready(1.0, expert=False)
        finally:
            rclpy.try_shutdown()
    finally:
        stop_or_kill(first, signal.SIGINT, 30)


def recording_bag(bags: Path) -> Path | None:
    """Return the bag directory whose episode is being recorded and has a chunk on disk (1 MiB), if any."""
    for bag in bags.glob("*"):
        if (bag / "episode.yaml").is_file() and read_record(bag).status == "recording":
            if sum(f.stat().st_size for f in bag.glob("*.mcap")) > 1 << 20:
                return bag
    return None


@pytest.mark.parametrize("how", ["kill -9", "Ctrl-C", "SIGINT to collect alone"])
def test_collect_children_die_with_it_and_the_open_episode_is_closed(how: str, tmp_path: Path) -> None:
    bags, logs = tmp_path / "bags", tmp_path / "logs"
    exe = Path(sys.executable).parent / "gen-theta"
    err = (tmp_path / "collect.err").open("w")
    proc = subprocess.Popen([str(exe), "collect", "--robot", "arm6", "--task", "pick_place_bin", "--episodes", "5",
                             "--out", str(bags), "--log-dir", str(logs)],
                            stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)  # as in a terminal
    children: list[int] = []
    try:
        wait_for(lambda: recording_bag(bags) is not None, 180, "collect recording an episode's first chunk")
        bag = recording_bag(bags)
        children = process_tree(proc.pid)[1:]
        assert len(children) == 3, children  # sim, expert, recorder
        if how == "kill -9":
            proc.kill()
        elif how == "Ctrl-C":  # the terminal sends SIGINT to the whole foreground process group
            os.killpg(proc.pid, signal.SIGINT)
        else:  # a supervisor signals the main process only; it must stop its children itself
            os.kill(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=60)
        wait_for(lambda: not any(map(alive, children)), 60, f"children {children} ending after {how} of collect")
    finally:
        kill_leftovers(proc, children)
        err.close()
    record = read_record(bag)
    recorder_log = (logs / "arm6" / "recorder.log").read_text()[-3000:]
    assert record.status == "complete", f"{how}: {record}\nrecorder.log:\n{recorder_log}"  # closed on SIGTERM/SIGINT
    assert_counts_on_disk(bag)
    stderr = (tmp_path / "collect.err").read_text()
    if how != "kill -9":
        assert code == 130 and "Traceback" not in stderr, stderr
        assert stderr.strip().splitlines()[-1] == "gen-theta collect: interrupted", stderr
