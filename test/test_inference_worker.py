"""WorkerPolicy: the policy in a child process gives what the in-process policy gives."""

import io

import numpy as np
import pytest
import torch
from server_helpers import tiny_checkpoint

from gen_theta_model import batch as K
from gen_theta_model.checkpoint import load_policy
from gen_theta_model.inference_worker import WorkerError, WorkerPolicy, read_message, write_message
from gen_theta_model.policy.example import example_batch


def test_wire_format_round_trip():
    buf = io.BytesIO()
    arrays = [
        ("a", np.arange(6, dtype=np.float32).reshape(2, 3)),
        ("b", np.array([True, False])),
        ("c", np.zeros((2, 0, 5))),
    ]
    write_message(buf, {"op": "x", "n": 3}, arrays)
    write_message(buf, {"op": "y"})
    buf.seek(0)
    header, out = read_message(buf)
    assert header["op"] == "x" and header["n"] == 3
    np.testing.assert_array_equal(out["a"], arrays[0][1])
    np.testing.assert_array_equal(out["b"], arrays[1][1])
    assert out["c"].shape == (2, 0, 5)  # an empty committed prefix (delay 0)
    assert read_message(buf)[0]["op"] == "y" and read_message(buf) is None


def test_worker_predicts_like_the_policy_and_reports_errors(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "run", {"arm6": 0.0, "humanoid16": 0.0})
    policy = load_policy(ckpt)
    worker = WorkerPolicy(str(ckpt))
    try:
        assert worker.config == policy.config and worker.observation_config == policy.observation_config
        assert worker.embodiment_index("humanoid16") == policy.embodiment_index("humanoid16")
        batch = example_batch(policy.embodiments, policy.config, 2, seed=3)
        obs = {k: batch[k] for k in (*K.OBSERVATION_KEYS, K.EMBODIMENT_INDEX)}
        prefix = batch[K.ACTION][:, :4]
        expected = policy.predict_chunk(obs, prefix, 4)
        got = worker.predict_chunk(obs, prefix, 4)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        with pytest.raises(WorkerError, match="delay must be in"):
            worker.predict_chunk(obs, batch[K.ACTION][:, :40], 40)  # longer than the trained prefix
        torch.testing.assert_close(worker.predict_chunk(obs, prefix, 4), expected, atol=1e-5, rtol=1e-5)
    finally:
        worker.close()
    assert worker._proc.returncode == 0
