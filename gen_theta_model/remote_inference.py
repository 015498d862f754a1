"""Policy inference on another machine over gRPC: ``RemotePolicy`` has ``Policy``'s serving interface.

A robot's computer rarely has the GPU a large policy needs. `gen-theta infer-server`
(``main`` here) runs the checkpoint's policy on the GPU machine; the policy server reaches
it with ``inference_host:=HOST:PORT`` (docs/serving.md, "Two machines")::

    gen-theta infer-server CHECKPOINT [--host 127.0.0.1] [--port 50051] [--token-file FILE]
        [--tls-cert CERT --tls-key KEY] [--device cuda] [--threads 1]

The service ``gen_theta.Inference`` is defined with grpc's generic handlers (no generated
code). Its two unary methods carry raw bytes in the wire format of
gen_theta_model.inference_worker (a JSON header, then the arrays' raw buffers; no pickling):

- ``Describe``: reply ``{"op": "describe", "instance", **describe_checkpoint(...)}``: the
  protocol version, the policy and observation config, the embodiments and the longest
  trained prefix. The client compares it with its own copy of the checkpoint when it
  connects, after every failure and whenever ``instance`` (random, per server process)
  changes, and refuses a server that serves something else;
- ``Predict``: request ``{"op": "predict", "delay", "decode"}`` + the observation arrays
  and ``prefix``; reply ``{"op": "chunk", "instance"}`` + ``chunk`` (B, H, max_dof) float32.

Anything that reaches the server drives the robot: it binds to 127.0.0.1 unless told
another interface, and with a token (``--token-file``; required on any other interface)
it answers only calls whose ``authorization`` metadata is ``Bearer TOKEN`` (constant-time
compare), UNAUTHENTICATED otherwise. With ``--tls-cert``/``--tls-key`` the link is TLS
(the client trusts that certificate, or its CA: ``tls_ca``), so neither the token nor
the observations cross the network in the clear; without, keep the link on a robot
network or in a tunnel.
"""

from __future__ import annotations

import argparse
import hmac
import io
import ipaddress
import json
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import torch

from gen_theta_model.checkpoint import load_embodiments, load_policy, read_checkpoint_config, resolve_checkpoint
from gen_theta_model.config import to_mapping
from gen_theta_model.embodiment import EmbodimentSpec
from gen_theta_model.inference_worker import InferenceUnavailableError, WorkerError, read_message, write_message
from gen_theta_model.observation import ObservationConfig
from gen_theta_model.policy.config import PolicyConfig
from gen_theta_model.policy.policy import Policy, embodiment_index

PROTOCOL = 1  # bumped when the messages change
SERVICE = "gen_theta.Inference"
DEFAULT_PORT = 50051
CONNECT_TIMEOUT_S = 30.0  # how long a client waits for the server at start-up
_MAX_MESSAGE = 256 * 1024 * 1024  # observations of a batch of robots with several cameras
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", _MAX_MESSAGE),
    ("grpc.max_receive_message_length", _MAX_MESSAGE),
    ("grpc.keepalive_time_ms", 5000),  # a silent peer (cable pulled) is noticed within ~10 s
    ("grpc.keepalive_timeout_ms", 5000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.initial_reconnect_backoff_ms", 200),  # reconnect soon after the server is back
    ("grpc.max_reconnect_backoff_ms", 2000),
]
SERVER_OPTIONS = [
    ("grpc.max_send_message_length", _MAX_MESSAGE),
    ("grpc.max_receive_message_length", _MAX_MESSAGE),
    ("grpc.http2.min_ping_interval_without_data_ms", 4000),  # accept the clients' keepalive pings
    ("grpc.keepalive_permit_without_calls", 1),
]


def encode_message(header: dict, arrays: Sequence[tuple[str, np.ndarray]] = ()) -> bytes:
    """One message (JSON ``header`` + raw ``arrays``) as bytes, in inference_worker's wire format."""
    buf = io.BytesIO()
    write_message(buf, header, arrays)
    return buf.getvalue()


def decode_message(data: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    """Return the (header, {key: array}) of one ``encode_message``d message."""
    msg = read_message(io.BytesIO(data))
    if msg is None:
        raise WorkerError("empty message")
    return msg


def describe_checkpoint(checkpoint: str | Path) -> dict[str, Any]:
    """Return what client and server must agree on, as plain JSON types: the protocol version,
    ``policy`` (PolicyConfig), ``observation`` (ObservationConfig), ``embodiments``
    (EmbodimentSpec.to_dict, URDF hashes included) and ``max_delay_steps``.
    """
    train_cfg, policy_cfg, _ = read_checkpoint_config(checkpoint)
    doc = {
        "protocol": PROTOCOL,
        "policy": to_mapping(policy_cfg),
        "observation": to_mapping(train_cfg.data.observation),
        "embodiments": [s.to_dict() for s in load_embodiments(checkpoint)],
        "max_delay_steps": train_cfg.data.harmonic.max_delay_steps,
    }
    return json.loads(json.dumps(doc))  # tuples -> lists, as they come off the wire


def differences(ours: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    """Name what differs between two ``describe_checkpoint`` docs (``key: ours != theirs``)."""
    out = []
    for key in sorted(set(ours) | set(theirs)):
        a, b = ours.get(key), theirs.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += [f"{key}.{d}" for d in differences(a, b)]
        elif key == "embodiments" and a != b:
            names_a, names_b = [e["name"] for e in a or []], [e["name"] for e in b or []]
            if names_a != names_b:
                out.append(f"embodiments: {names_a} != {names_b}")
            else:
                out += [f"embodiment {x['name']}: other joints, cameras or URDF" for x, y in zip(a, b) if x != y]
        elif a != b:
            out.append(f"{key}: {a!r} != {b!r}")
    return out


def read_token(path: str | Path) -> str:
    """Return the shared token in file ``path`` (surrounding whitespace removed); ValueError if empty."""
    token = Path(path).expanduser().read_text().strip()
    if not token:
        raise ValueError(f"token file {path} is empty")
    return token


class RemotePolicy:
    """A policy served by `gen-theta infer-server` at ``address`` (``HOST:PORT``), with the
    interface the server uses: ``config``, ``embodiments``, ``observation_config``,
    ``embodiment_index``, ``predict_chunk``.

    ``checkpoint`` is this machine's copy of the served checkpoint: its config (not its
    weights) is read here and must match what the server describes (WorkerError at
    connect time; after a failure, ``predict_chunk`` checks again). A lost connection, a
    call that takes longer than ``timeout_s`` or a server error raise InferenceUnavailableError
    (the channel reconnects by itself); a request the policy refuses raises WorkerError.
    ``added_latency`` (test hook, e.g. bench/remote_inference.py): a function giving extra
    seconds of network round trip per call, half slept before sending, half after the reply.
    ``tls_ca``: PEM certificate(s) to trust (the server's own, or its CA): the link is then
    TLS and the server's name (HOST) must match its certificate.
    """

    def __init__(
        self,
        address: str,
        checkpoint: str,
        token: str = "",
        timeout_s: float = 2.0,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        added_latency: Callable[[], float] | None = None,
        tls_ca: bytes = b"",
    ) -> None:
        ckpt = resolve_checkpoint(checkpoint)
        train_cfg, policy_cfg, _ = read_checkpoint_config(ckpt)
        self.config: PolicyConfig = policy_cfg
        self.observation_config: ObservationConfig = train_cfg.data.observation
        self.embodiments: list[EmbodimentSpec] = load_embodiments(ckpt)
        self.address = address
        self.timeout_s = timeout_s
        self._expected = describe_checkpoint(ckpt)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._added_latency = added_latency
        self._lock = threading.Lock()
        self._instance = ""  # the server process last checked
        self._channel = (grpc.secure_channel(address, grpc.ssl_channel_credentials(tls_ca), options=CHANNEL_OPTIONS)
                         if tls_ca else grpc.insecure_channel(address, options=CHANNEL_OPTIONS))
        self._describe = self._channel.unary_unary(f"/{SERVICE}/Describe")
        self._predict = self._channel.unary_unary(f"/{SERVICE}/Predict")
        try:
            grpc.channel_ready_future(self._channel).result(timeout=connect_timeout_s)
            mismatch = self._check()
        except (grpc.FutureTimeoutError, grpc.RpcError) as err:
            self._channel.close()
            why = f"not reachable within {connect_timeout_s:g} s" if isinstance(err, grpc.FutureTimeoutError) \
                else _rpc_error(err)
            raise WorkerError(f"inference server {address}: {why}") from err
        if mismatch:
            self._channel.close()
            raise WorkerError(mismatch)
        self._checked = True

    def _check(self) -> str:
        """Ask the server what it serves; returns "" if it matches the local checkpoint, else why not."""
        header, _ = decode_message(self._describe(encode_message({"op": "describe"}), timeout=self.timeout_s,
                                          metadata=self._metadata))
        for key in ("op", "arrays"):  # the envelope, not the description
            header.pop(key, None)
        self._instance = header.pop("instance", "")
        diff = differences(self._expected, header)
        return f"inference server {self.address} serves another checkpoint: {'; '.join(diff)}" if diff else ""

    def embodiment_index(self, name: str) -> int:
        """As ``Policy.embodiment_index``."""
        return embodiment_index(self.embodiments, name)

    def predict_chunk(
        self, observation: dict[str, torch.Tensor], committed_prefix: torch.Tensor, delay: int, *, decode: str = "mean"
    ) -> torch.Tensor:
        """As ``Policy.predict_chunk``: (B, H, D) canonical, the first ``delay`` rows the prefix."""
        arrays = [(k, v.numpy()) for k, v in observation.items()] + [("prefix", committed_prefix.numpy())]
        request = encode_message({"op": "predict", "delay": int(delay), "decode": str(decode)}, arrays)
        extra = self._added_latency() if self._added_latency else 0.0
        with self._lock:
            time.sleep(extra / 2)
            try:
                mismatch = "" if self._checked else self._check()
                if mismatch:
                    raise InferenceUnavailableError(mismatch)
                self._checked = True
                header, out = decode_message(self._predict(request, timeout=self.timeout_s, metadata=self._metadata))
                if header.get("instance") != self._instance:  # restarted between two calls: check it again
                    self._checked = False
                    mismatch = self._check()
                    if mismatch:
                        raise InferenceUnavailableError(mismatch)
                    self._checked = True
            except grpc.RpcError as err:
                self._checked = False  # the server may have been restarted with another checkpoint
                if err.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    raise WorkerError(f"inference failed: {err.details()}") from err
                raise InferenceUnavailableError(f"inference server {self.address}: {_rpc_error(err)}") from err
            time.sleep(extra / 2)
        return torch.from_numpy(out["chunk"].copy())

    def close(self) -> None:
        """Close the connection."""
        self._channel.close()


def _rpc_error(err: grpc.RpcError) -> str:
    return f"{err.code().name}: {err.details()}"


class InferenceService:
    """The server side: ``policy`` answers Describe (``description``) and Predict, one call at a
    time; with a ``token``, only calls that carry it.
    """

    def __init__(self, policy: Policy, description: dict[str, Any], token: str = "") -> None:
        self.policy = policy
        self.description = description
        self.instance = uuid.uuid4().hex  # tells clients when the server process changed
        self._expected = f"Bearer {token}".encode() if token else b""
        self._lock = threading.Lock()

    def handler(self) -> grpc.GenericRpcHandler:
        """Return the generic handler of ``SERVICE`` (bytes in, bytes out)."""
        return grpc.method_handlers_generic_handler(SERVICE, {
            "Describe": grpc.unary_unary_rpc_method_handler(self.describe),
            "Predict": grpc.unary_unary_rpc_method_handler(self.predict),
        })

    def _authorize(self, context: grpc.ServicerContext) -> None:
        if not self._expected:
            return
        given = dict(context.invocation_metadata()).get("authorization", "")
        if not hmac.compare_digest(given.encode(), self._expected):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong token (the client's token file "
                          "must hold the infer-server's token)")

    def describe(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._authorize(context)
        return encode_message({"op": "describe", "instance": self.instance, **self.description})

    def predict(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._authorize(context)
        try:
            header, arrays = decode_message(request)
            prefix = torch.from_numpy(arrays.pop("prefix").copy())
            obs = {k: torch.from_numpy(v.copy()) for k, v in arrays.items()}
            with self._lock:
                chunk = self.policy.predict_chunk(obs, prefix, header["delay"], decode=header["decode"])
        except (ValueError, KeyError, WorkerError) as err:  # a malformed request: say so, keep serving
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        return encode_message({"op": "chunk", "instance": self.instance}, [("chunk", chunk.cpu().numpy())])


def start_server(
    service: InferenceService, host: str, port: int, credentials: grpc.ServerCredentials | None = None
) -> tuple[grpc.Server, int]:
    """Serve ``service`` on ``host:port`` (port 0: any free one), over TLS with ``credentials``;
    returns (server, bound port).
    """
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers((service.handler(),))
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    bound = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if not bound:
        raise OSError(f"cannot bind {host}:{port}")
    server.start()
    return server, bound


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gen-theta infer-server", description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", help="checkpoint or training run directory")
    ap.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    ap.add_argument("--port", type=int, default=DEFAULT_PORT)
    ap.add_argument("--token-file", default="", help="file holding the shared token (required off loopback)")
    ap.add_argument("--tls-cert", default="", help="PEM certificate of this server: TLS (with --tls-key)")
    ap.add_argument("--tls-key", default="", help="PEM private key of --tls-cert")
    ap.add_argument("--device", default="cpu", help="torch device of the policy, e.g. cuda")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    if not args.token_file and not is_loopback(args.host):
        raise ValueError(f"--host {args.host} is reachable from other machines, and whatever reaches the server "
                         "drives the robot: give --token-file (docs/serving.md, 'Two machines')")
    token = read_token(args.token_file) if args.token_file else ""
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    credentials = grpc.ssl_server_credentials([(Path(args.tls_key).read_bytes(), Path(args.tls_cert).read_bytes())]) \
        if args.tls_cert else None
    torch.set_num_threads(args.threads)
    ckpt = resolve_checkpoint(args.checkpoint)
    service = InferenceService(load_policy(ckpt, device=args.device), describe_checkpoint(ckpt), token)
    server, port = start_server(service, args.host, args.port, credentials)
    signal.signal(signal.SIGTERM, lambda *_: server.stop(1.0))
    print(f"gen-theta infer-server: serving {ckpt} on {args.host}:{port} ({args.device}; "
          f"{'token required' if token else 'no token: loopback only'}; {'TLS' if credentials else 'no TLS'})",
          flush=True)
    try:
        server.wait_for_termination()
    finally:
        server.stop(1.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
