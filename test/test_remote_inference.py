"""RemotePolicy against a real `gen-theta infer-server` process over TCP on localhost."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from server_helpers import free_port, infer_server, tiny_checkpoint

from gen_theta_model import batch as K
from gen_theta_model.checkpoint import load_policy
from gen_theta_model.inference_worker import InferenceUnavailableError, WorkerError
from gen_theta_model.policy.example import example_batch
from gen_theta_model.remote_inference import RemotePolicy, describe_checkpoint, differences

TOKEN = "s3cret-token-of-the-test"


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    """Serve a two-embodiment checkpoint with a token: {ckpt, port, token_file, tmp}."""
    tmp = tmp_path_factory.mktemp("remote")
    ckpt = tiny_checkpoint(tmp / "run", {"arm6": 0.0, "humanoid16": 0.0})
    token_file = tmp / "token"
    token_file.write_text(TOKEN + "\n")
    port = free_port()
    with infer_server(ckpt, port, tmp / "infer.log", token_file):
        yield {"ckpt": ckpt, "port": port, "token_file": token_file, "tmp": tmp}


def request(policy, seed: int = 3):
    batch = example_batch(policy.embodiments, policy.config, 2, seed=seed)
    return {k: batch[k] for k in (*K.OBSERVATION_KEYS, K.EMBODIMENT_INDEX)}, batch[K.ACTION]


def test_remote_policy_predicts_like_the_local_policy(remote):
    policy = load_policy(remote["ckpt"])
    client = RemotePolicy(f"127.0.0.1:{remote['port']}", str(remote["ckpt"]), TOKEN)
    try:
        assert client.config == policy.config and client.observation_config == policy.observation_config
        assert client.embodiment_index("humanoid16") == policy.embodiment_index("humanoid16")
        obs, actions = request(policy)
        expected = policy.predict_chunk(obs, actions[:, :4], 4)
        torch.testing.assert_close(client.predict_chunk(obs, actions[:, :4], 4), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(client.predict_chunk(obs, actions[:, :0], 0), policy.predict_chunk(
            obs, actions[:, :0], 0), atol=1e-5, rtol=1e-5)
        with pytest.raises(WorkerError, match="delay must be in") as refused:
            client.predict_chunk(obs, actions[:, :40], 40)  # longer than the trained prefix: a bug, not an outage
        assert not isinstance(refused.value, InferenceUnavailableError)
        torch.testing.assert_close(client.predict_chunk(obs, actions[:, :4], 4), expected, atol=1e-5, rtol=1e-5)
        client.timeout_s = 1e-4  # no inference answers that fast
        with pytest.raises(InferenceUnavailableError, match="DEADLINE_EXCEEDED"):
            client.predict_chunk(obs, actions[:, :4], 4)
    finally:
        client.close()


@pytest.mark.parametrize("token", ["", "wrong-token"])
def test_a_call_without_the_token_is_refused(remote, token):
    with pytest.raises(WorkerError, match="UNAUTHENTICATED: missing or wrong token"):
        RemotePolicy(f"127.0.0.1:{remote['port']}", str(remote["ckpt"]), token)


def test_a_server_of_another_checkpoint_is_refused_at_connect(remote):
    other = tiny_checkpoint(remote["tmp"] / "other", {"arm6": 0.0})
    with pytest.raises(WorkerError, match=r"serves another checkpoint: embodiments: \['arm6'\] != "
                                          r"\['arm6', 'humanoid16'\]"):
        RemotePolicy(f"127.0.0.1:{remote['port']}", str(other), TOKEN)


def test_differences_name_the_fields():
    ours = {"protocol": 1, "policy": {"chunk_len": 32, "d_model": 64}, "embodiments": [{"name": "arm6", "x": 1}]}
    theirs = {"protocol": 2, "policy": {"chunk_len": 48, "d_model": 64}, "embodiments": [{"name": "arm6", "x": 2}]}
    assert differences(ours, theirs) == ["embodiment arm6: other joints, cameras or URDF", "policy.chunk_len: 32 != 48",
                                         "protocol: 1 != 2"]
    assert differences(ours, ours) == []


def test_no_server_is_a_clear_error(remote):
    port = free_port()
    with pytest.raises(WorkerError, match=f"inference server 127.0.0.1:{port}: not reachable within 1 s"):
        RemotePolicy(f"127.0.0.1:{port}", str(remote["ckpt"]), TOKEN, connect_timeout_s=1.0)


def test_a_killed_server_is_unavailable_and_the_client_reconnects(remote, tmp_path):
    ckpt, port = remote["ckpt"], free_port()
    policy = load_policy(ckpt)
    obs, actions = request(policy, seed=5)
    expected = policy.predict_chunk(obs, actions[:, :4], 4)
    with infer_server(ckpt, port, tmp_path / "first.log", remote["token_file"]) as proc:
        client = RemotePolicy(f"127.0.0.1:{port}", str(ckpt), TOKEN)
        torch.testing.assert_close(client.predict_chunk(obs, actions[:, :4], 4), expected, atol=1e-5, rtol=1e-5)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)
    try:
        with pytest.raises(InferenceUnavailableError, match=f"inference server 127.0.0.1:{port}: UNAVAILABLE"):
            client.predict_chunk(obs, actions[:, :4], 4)
        other = tiny_checkpoint(tmp_path / "other", {"arm6": 0.0})
        with infer_server(other, port, tmp_path / "other.log", remote["token_file"]):  # back with another model
            err = until(lambda: client.predict_chunk(obs, actions[:, :4], 4), "serves another checkpoint")
            assert "embodiments: ['arm6', 'humanoid16'] != ['arm6']" in str(err)
        with infer_server(ckpt, port, tmp_path / "second.log", remote["token_file"]):  # back with its model
            got = until(lambda: client.predict_chunk(obs, actions[:, :4], 4))
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    finally:
        client.close()


def until(call, error: str = ""):
    """Call ``call`` until it returns (``error`` ""), or raises InferenceUnavailableError saying ``error``
    (returned); the channel reconnects by itself, after a backoff of at most 2 s.
    """
    end = time.monotonic() + 30.0
    while True:
        try:
            result = call()
            if not error:
                return result
        except InferenceUnavailableError as err:
            if error and error in str(err):
                return err
        assert time.monotonic() < end, f"no reconnection within 30 s ({error or 'a chunk'})"


def self_signed(tmp: Path, name: str) -> tuple[Path, Path]:
    """Write a self-signed certificate for 127.0.0.1 with openssl; returns (cert, key)."""
    cert, key = tmp / f"{name}.pem", tmp / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", f"/CN={name}",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return cert, key


def test_tls_carries_the_calls_and_only_the_trusted_certificate_is_accepted(remote, tmp_path):
    ckpt, port = remote["ckpt"], free_port()
    cert, key = self_signed(tmp_path, "gpu-box")
    other, _ = self_signed(tmp_path, "impostor")
    policy = load_policy(ckpt)
    obs, actions = request(policy, seed=7)
    with infer_server(ckpt, port, tmp_path / "tls.log", remote["token_file"],
                      ["--tls-cert", str(cert), "--tls-key", str(key)]):
        client = RemotePolicy(f"127.0.0.1:{port}", str(ckpt), TOKEN, tls_ca=cert.read_bytes())
        try:
            torch.testing.assert_close(client.predict_chunk(obs, actions[:, :4], 4),
                                       policy.predict_chunk(obs, actions[:, :4], 4), atol=1e-5, rtol=1e-5)
        finally:
            client.close()
        for ca in (b"", other.read_bytes()):  # plain TCP to a TLS server; a certificate it does not have
            with pytest.raises(WorkerError, match=f"inference server 127.0.0.1:{port}: not reachable within 2 s"):
                RemotePolicy(f"127.0.0.1:{port}", str(ckpt), TOKEN, connect_timeout_s=2.0, tls_ca=ca)


def test_describe_is_plain_json_of_the_checkpoint(remote):
    doc = describe_checkpoint(remote["ckpt"])
    assert [e["name"] for e in doc["embodiments"]] == ["arm6", "humanoid16"]
    assert doc["policy"]["chunk_len"] == load_policy(remote["ckpt"]).config.chunk_len


def test_binding_beyond_loopback_needs_a_token(tmp_path: Path):
    exe = Path(sys.executable).parent / "gen-theta"
    run = subprocess.run([str(exe), "infer-server", str(tmp_path), "--host", "0.0.0.0"], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 1
    assert "--host 0.0.0.0 is reachable from other machines" in run.stderr and "--token-file" in run.stderr
