"""Expert-takeover episodes (gen_theta_model.sim.takeover): a real (tiny, untrained) checkpoint drives
the real sim through the real server, the scripted expert takes over and stacks the cube, and the
episode is written as a dataset that PyAV, safetensors and the training loader read back.
"""

import json
import signal
import subprocess
import sys
import threading

import av
import numpy as np
import pytest
from safetensors.numpy import load_file
from server_helpers import tiny_checkpoint

from gen_theta_model import batch as K
from gen_theta_model.checkpoint import load_policy
from gen_theta_model.data.episode import ACTION_POSITION, ACTION_STAMP, JOINT_POSITION, JOINT_STAMP
from gen_theta_model.data.loader import DataConfig, make_dataloaders
from gen_theta_model.data.manifest import EPISODES, existing_episodes, finalize_dataset, staged_episodes
from gen_theta_model.embodiment import load_robot
from gen_theta_model.observation import ObservationConfig
from gen_theta_model.policy_server_config import server_config
from gen_theta_model.sim.policy_rollout import SimClosedLoop, SimLoopConfig
from gen_theta_model.sim.takeover import TakeoverCollector, TakeoverConfig, main

TAKEOVER_S = 0.6


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    # Untrained, its actions spread 0.05 around the home pose: it drives the arm off home but not into
    # the other elbow branch, from where the scripted expert's IK does not find the grasp.
    spec = load_robot("arm6")
    return tiny_checkpoint(tmp_path_factory.mktemp("run"), {"arm6": spec.normalize(spec.home_positions)})


def collect(tiny, out, seed: int = 3):
    policy = load_policy(tiny)
    loop = SimClosedLoop(policy, policy.embodiments[0], server_config({}, 15), SimLoopConfig(inference_ms=25.0))
    collector = TakeoverCollector(loop, out, str(tiny), TakeoverConfig(takeover_s=(TAKEOVER_S, TAKEOVER_S)))
    try:
        row = collector.episode("stack", seed)
        final_q = loop.robot.world.actuated_positions().copy()
    finally:
        collector.close()
        loop.close()
    return row, policy.embodiments[0], final_q


def test_the_expert_finishes_what_the_policy_started_and_the_episode_loads(tiny, tmp_path):
    row, spec, _ = collect(tiny, tmp_path / "ds")
    assert row.outcome == "written", row
    staged = tmp_path / "ds" / EPISODES / row.episode
    streams = load_file(staged / "streams.safetensors")
    settle = SimLoopConfig().settle_s
    # The episode starts at the expert's first command, after the policy drove for the takeover time.
    assert streams[JOINT_STAMP][0] * 1e-9 >= settle + TAKEOVER_S
    assert streams[ACTION_STAMP][0] == streams[JOINT_STAMP][0]
    assert np.all(np.diff(streams[ACTION_STAMP]) == round(1e9 / spec.control_rate_hz))
    q, a = streams[JOINT_POSITION], streams[ACTION_POSITION]
    assert np.all(a >= spec.lower - 1e-9) and np.all(a <= spec.upper + 1e-9)
    # The expert plans from where the policy left the arm: no jump between measured and commanded.
    np.testing.assert_allclose(a[0], q[0], atol=0.05)
    # It picked (closed the gripper) and stacked (opened it again); the sim said success.
    grip = spec.joint_names.index("arm6_finger_joint")
    assert a[:, grip].min() < spec.lower[grip] + 0.1 * (spec.upper[grip] - spec.lower[grip]) < a[-1, grip]
    assert finalize_dataset(tmp_path / "ds", {spec.name: spec}) == 1
    frames = {}
    for video in sorted((tmp_path / "ds" / "shards").glob("*/*.mp4")):
        with av.open(str(video)) as container:  # an independent reader of the videos
            frames[video.name] = sum(1 for _ in container.decode(video=0))
    duration = (streams[JOINT_STAMP][-1] - streams[JOINT_STAMP][0]) * 1e-9
    for cam in spec.cameras:
        assert abs(frames[f"{cam.name}-0.mp4"] - duration * cam.fps) <= 2
    train, _, _ = make_dataloaders(tmp_path / "ds", DataConfig(
        batch_size=1, num_workers=0, val_fraction=0.0, horizon=20,
        observation=ObservationConfig(image_size=32, history=2, max_dof=16)))
    sample = train.dataset[(0, train.dataset.episodes[0].first_step + 10, 0)]
    assert sample[K.IMAGE_MASK][: len(spec.cameras)].all() and np.isfinite(sample[K.ACTION]).all()


def test_the_same_seed_gives_the_same_episode(tiny, tmp_path):
    first, _, final_a = collect(tiny, tmp_path / "a")
    second, _, final_b = collect(tiny, tmp_path / "b")
    assert first == second
    np.testing.assert_array_equal(final_a, final_b)
    a = load_file(tmp_path / "a" / EPISODES / first.episode / "streams.safetensors")
    b = load_file(tmp_path / "b" / EPISODES / second.episode / "streams.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_takeover_times_and_the_cli(tiny, tmp_path, capsys):
    cfg = TakeoverConfig(takeover_s=(1.0, 2.0))
    times = [cfg.takeover_time(s) for s in range(50)]
    assert all(1.0 <= t <= 2.0 for t in times) and len(set(times)) == 50
    assert times == [cfg.takeover_time(s) for s in range(50)]
    with pytest.raises(ValueError, match="takeover_s"):
        TakeoverConfig(takeover_s=(2.0, 1.0))
    main([str(tiny), "--task", "stack", "--seeds", "3", "--takeover-s", str(TAKEOVER_S), str(TAKEOVER_S),
          "--inference-ms", "25", "--out", str(tmp_path / "cli")])
    out = capsys.readouterr().out
    assert "1 episodes written" in out and '"outcome": "written"' in out
    # Run again (a collection resumed): the seed in the dataset is skipped, a new one is added.
    main([str(tiny), "--task", "stack", "--seeds", "3..4", "--takeover-s", str(TAKEOVER_S), str(TAKEOVER_S),
          "--inference-ms", "25", "--out", str(tmp_path / "cli")])
    out = capsys.readouterr().out
    assert '"outcome": "already_present"' in out and "1 episodes written" in out
    assert sorted(existing_episodes(tmp_path / "cli")[0]) == [f"arm6_stack_takeover_00000{s}" for s in (3, 4)]


def test_sigterm_stops_a_collection_and_finalises_the_episodes_written(tiny, tmp_path):
    out = tmp_path / "stopped"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gen_theta_model.sim.takeover", str(tiny), "--task", "stack", "--seeds", "3..40",
         "--takeover-s", str(TAKEOVER_S), str(TAKEOVER_S), "--inference-ms", "25", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    watchdog = threading.Timer(300.0, proc.kill)  # a hung collection fails the test instead of hanging it
    watchdog.start()
    try:
        lines = []
        for line in proc.stdout:  # stop once the first episode is written
            lines.append(line.rstrip("\n"))
            if '"outcome": "written"' in line:
                proc.send_signal(signal.SIGTERM)
                break
        lines += proc.communicate()[0].splitlines()
    finally:
        watchdog.cancel()
    text = "\n".join(lines)
    assert proc.returncode == 130, text
    assert "takeover: interrupted; finalising the episodes written" in text and "episodes written to" in text
    written = [json.loads(line)["episode"] for line in lines if line.startswith("{") and '"written"' in line]
    assert written and sorted(existing_episodes(out)[0]) == sorted(written)
    assert not staged_episodes(out)  # packed into the dataset, none left staged
