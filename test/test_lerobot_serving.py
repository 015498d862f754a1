"""A LeRobot policy served by gen_theta's server (gen_theta_model.lerobot_serving): the chunk the server
gets is the one LeRobot itself computes for the same observation, and `gen-theta rollout --in-process`
drives the simulated robot with it.

The policy is a tiny random ACT built, saved and run by the real `lerobot` (0.4.4) in its own venv
(test/lerobot_policy_side.py); skipped, with the reason, where that venv is absent or cannot
import LeRobot's policies (docs/lerobot.md, "Serving a LeRobot policy").
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from lerobot_venv import LEROBOT_PYTHON, NO_VENV, lerobot_env, run_side

from gen_theta_model.config import share_dir
from gen_theta_model.data.loader import collate
from gen_theta_model.embodiment import load_robot
from gen_theta_model.lerobot_serving import LeRobotChunkPolicy, is_lerobot_checkpoint
from gen_theta_model.observation import build_observation
from gen_theta_ros.demo_loop import SHIPPED
from gen_theta_ros.rollout import RolloutConfig, main, run_rollout

SIDE = Path(__file__).with_name("lerobot_policy_side.py")
POLICY_DEPS = ('$LRB/V/bin/pip install -c $LRB/constraints.txt "diffusers<0.36" "huggingface-hub<0.36" '
               "pyserial gymnasium")



def missing_lerobot_policies() -> str:
    """'' where the LeRobot venv exists and imports LeRobot's policies, else why the tests cannot run."""
    if not LEROBOT_PYTHON.is_file():
        return NO_VENV
    run = subprocess.run([str(LEROBOT_PYTHON), "-c", "import lerobot.policies.act.modeling_act"], env=lerobot_env(),
                         capture_output=True, text=True)
    if run.returncode:
        return f"the LeRobot venv lacks its policies' imports ({run.stderr.strip().splitlines()[-1]}): {POLICY_DEPS}"
    return ""


MISSING = missing_lerobot_policies()
pytestmark = pytest.mark.skipif(bool(MISSING), reason=MISSING)


@pytest.fixture(scope="module")
def act(tmp_path_factory):
    """(model dir, robot spec, state (7,) rad, frames {camera: (96, 96, 3) uint8}, task, LeRobot's chunk (10, 7))."""
    root = tmp_path_factory.mktemp("act")
    spec = load_robot("arm6")
    rng = np.random.default_rng(0)
    lower, upper = spec.lower, spec.upper
    state = (lower + rng.uniform(0.2, 0.8, spec.dof) * (upper - lower)).astype(np.float32)
    frames = {c.name: rng.integers(0, 256, (96, 96, 3), dtype=np.uint8) for c in spec.cameras}
    task = "pick up the red cube and place it in the bin"
    np.savez(root / "obs.npz", **{"observation.state": state, "task": np.array(task)},
             **{f"observation.images.{c}": f for c, f in frames.items()})
    run_side(SIDE, "act", root / "model", root / "obs.npz", root / "out.npz", hf_home=root / "hf")
    return root / "model", spec, state, frames, task, np.load(root / "out.npz")["actions"]


def test_the_served_chunk_is_the_one_lerobot_computes(act):
    model, spec, state, frames, task, want = act
    ours = share_dir() / SHIPPED  # a gen_theta checkpoint, not a LeRobot one
    assert is_lerobot_checkpoint(model) and ours.is_dir() and not is_lerobot_checkpoint(ours)
    policy = LeRobotChunkPolicy(model, spec, LEROBOT_PYTHON)
    try:
        assert policy.config.chunk_len == 10 and policy.observation_config.image_size == 96
        assert policy.cameras == ["scene", "wrist"] and policy.embodiment_index("arm6") == 0
        obs = collate([build_observation(spec, frames, dict.fromkeys(frames, 0.02), state[None].astype(np.float64),
                                         np.zeros(1), task, policy.observation_config)])
        chunk = policy.predict_chunk(obs, torch.zeros(1, 0, spec.dof), 0)
        assert chunk.shape == (1, 10, spec.dof) and chunk.dtype == torch.float32
        np.testing.assert_allclose(spec.denormalize(chunk[0].numpy()), want, atol=1e-4)
        twice = policy.predict_chunk({k: torch.cat([v, v]) for k, v in obs.items()}, torch.zeros(2, 0, spec.dof), 0)
        np.testing.assert_allclose(twice[1].numpy(), chunk[0].numpy(), atol=1e-6)
        with pytest.raises(ValueError, match="no committed prefix"):
            policy.predict_chunk(obs, torch.zeros(1, 3, spec.dof), 3)
        with pytest.raises(KeyError, match="serves arm6"):
            policy.embodiment_index("arm7")
    finally:
        policy.close()
    assert policy._proc.returncode == 0


def test_a_policy_for_another_robot_is_refused(act):
    model = act[0]
    with pytest.raises(ValueError, match="humanoid16 has 16 joints"):
        LeRobotChunkPolicy(model, load_robot("humanoid16"), LEROBOT_PYTHON)


def test_rollout_drives_the_robot_with_it_in_sync_and_naive_async(act, tmp_path):
    model = act[0]
    rows = run_rollout(RolloutConfig(
        checkpoint=str(model), robots=("arm6",), tasks=("conveyor_pack",), seeds=(1000,),
        modes=("sync", "naive_async"), delays_ms=(0.0,), max_seconds=1.5, out=str(tmp_path / "out"),
        video=False, in_process=True, inference_ms=35.0, lerobot_python=str(LEROBOT_PYTHON)))
    assert sorted(r["mode"] for r in rows) == ["naive_async", "sync"]
    for row in rows:
        assert row["episodes"] == 1 and row["max_jump"] > 0.0  # chunks were executed and switched
    assert (tmp_path / "out/results.json").is_file()
    with pytest.raises(SystemExit):  # no prefix to condition on: harmonic is refused up front
        main([str(model), "--in-process", "--modes", "harmonic", "--lerobot-python", str(LEROBOT_PYTHON)])
