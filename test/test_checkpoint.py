"""Checkpoints: an exact save/load round trip, a crash mid-write never hides the last good one, averaging."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gen_theta_model import batch as K
from gen_theta_model.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_embodiments,
    load_policy,
    read_checkpoint_config,
    resolve_checkpoint,
    save_checkpoint,
)
from gen_theta_model.embodiment import load_robot
from gen_theta_model.policy.example import example_batch, example_norm_stats
from gen_theta_model.policy.policy import build_policy
from gen_theta_model.sharded_checkpoint import average, main
from gen_theta_model.train_config import TrainConfig, policy_config


@pytest.fixture(scope="module")
def policy():
    torch.manual_seed(0)
    specs = [load_robot(n) for n in ("arm6", "humanoid16")]
    cfg = policy_config(TrainConfig(policy={"d_model": 64, "n_layer": 2, "n_head": 2}))
    return build_policy(cfg, specs, {s.name: example_norm_stats(s, 0.05, 0.2) for s in specs})


def save(policy, run, step):
    return save_checkpoint(run, step, policy, TrainConfig(), policy.model.state_dict(), {"step": step}, keep=2)


def test_round_trip_is_exact(tmp_path, policy):
    ckpt = save(policy, tmp_path, 5)
    loaded = load_policy(ckpt)
    for k, v in policy.model.state_dict().items():
        assert torch.equal(v, loaded.model.state_dict()[k]), k
    assert loaded.config == policy.config
    assert load_embodiments(ckpt) == policy.embodiments
    for name, stats in policy.normalizer.stats.items():
        np.testing.assert_array_equal(stats.action_std, loaded.normalizer.stats[name].action_std)
    batch = example_batch(policy.embodiments, policy.config, 4)
    obs = {k: batch[k] for k in (*K.OBSERVATION_KEYS, K.EMBODIMENT_INDEX)}
    prefix = batch[K.ACTION][:, :3]
    torch.testing.assert_close(loaded.predict_chunk(obs, prefix, 3), policy.predict_chunk(obs, prefix, 3),
                               rtol=0, atol=0)
    assert resolve_checkpoint(tmp_path) == ckpt  # a run directory resolves to its latest checkpoint


def test_crash_mid_write_keeps_the_last_good_checkpoint(tmp_path, policy):
    good = save(policy, tmp_path, 1)
    # What a crash during the next save leaves behind: a partial temporary directory.
    partial = tmp_path / "checkpoints" / ".tmp-step_00000002"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"\x00" * 10)
    assert latest_checkpoint(tmp_path) == good
    assert load_policy(tmp_path).config == policy.config
    save(policy, tmp_path, 2)
    save(policy, tmp_path, 3)
    assert not partial.exists()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000002", "step_00000003"]  # keep=2
    assert latest_checkpoint(tmp_path).name == "step_00000003"


def test_not_a_checkpoint_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_policy(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_policy(tmp_path)


def test_average_is_the_mean_of_the_weights_of_one_run(tmp_path, policy):
    """`gen-theta checkpoint average`: the weights' mean, the last checkpoint's config; another run is refused."""
    original = {k: v.clone() for k, v in policy.model.state_dict().items()}
    first = save(policy, tmp_path / "run", 1)
    with torch.no_grad():
        for p in policy.model.parameters():
            p.add_(0.5)
    second = save(policy, tmp_path / "run", 2)
    policy.model.load_state_dict(original)
    assert main(["average", str(first), str(second), "--out", str(tmp_path / "avg")]) == 0
    averaged = load_policy(tmp_path / "avg")
    for k, v in averaged.model.state_dict().items():
        if v.is_floating_point():
            want = original[k] + (0.25 if k in dict(policy.model.named_parameters()) else 0.0)
            torch.testing.assert_close(v, want, rtol=0, atol=1e-6, msg=k)
    assert read_checkpoint_config(tmp_path / "avg")[2]["step"] == 2
    other_specs = [load_robot("arm6")]
    other = build_policy(policy.config, other_specs, {"arm6": example_norm_stats(other_specs[0], 0.1, 0.3)})
    stranger = save_checkpoint(tmp_path / "other", 1, other, TrainConfig(), other.model.state_dict(), {}, keep=2)
    with pytest.raises(CheckpointError, match="not one run"):
        average([first, stranger], tmp_path / "bad")
    with pytest.raises(CheckpointError, match="at least 2"):
        average([first], tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
