"""Policy inference in a child process: ``WorkerPolicy`` has ``Policy``'s serving interface.

Why a process: Python runs one thread at a time. In-process inference holds the
interpreter lock for a model's Python code, and on a loaded machine the command thread
of the server can then wait for it. In its own process (lower priority) the model never
delays the command stream; only arrays cross the boundary.

Wire format on the child's stdin/stdout (no pickling): each message is a little-endian
u32 header length, a JSON header, then the raw bytes of the arrays the header lists
(``{"key", "dtype", "shape"}`` each, C order, in that order). Requests: ``{"op":
"predict", "delay", "decode", "arrays"}``; replies: ``{"op": "chunk", "arrays"}``,
``{"op": "error", "message"}``; the child greets with ``{"op": "ready"}`` once loaded.

    python -m gen_theta_model.inference_worker CHECKPOINT [DEVICE] [THREADS] [NICE]
"""

from __future__ import annotations

import gc
import json
import os
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import BinaryIO

import numpy as np
import torch

from gen_theta_model.checkpoint import (
    load_embodiments,
    load_policy,
    observation_config,
    read_checkpoint_config,
    resolve_checkpoint,
)
from gen_theta_model.embodiment import EmbodimentSpec
from gen_theta_model.observation import ObservationConfig
from gen_theta_model.policy.config import PolicyConfig
from gen_theta_model.policy.policy import embodiment_index

_HEADER = struct.Struct("<I")


class WorkerError(RuntimeError):
    """The inference process failed or ended; the message says how."""


class InferenceUnavailableError(WorkerError):
    """Inference cannot be had for now but may come back (a lost connection, a timeout, an
    error of a remote inference server): the server holds its robots and tries again.
    """


def write_message(stream: BinaryIO, header: dict, arrays: Sequence[tuple[str, np.ndarray]] = ()) -> None:
    """Send ``header`` (JSON) and ``arrays`` (key, array) as one message."""
    arrays = [(k, np.ascontiguousarray(a)) for k, a in arrays]
    header = {**header, "arrays": [{"key": k, "dtype": a.dtype.str, "shape": list(a.shape)} for k, a in arrays]}
    head = json.dumps(header).encode()
    stream.write(_HEADER.pack(len(head)) + head)
    for _, a in arrays:
        stream.write(a.tobytes())
    stream.flush()


def read_message(stream: BinaryIO) -> tuple[dict, dict[str, np.ndarray]] | None:
    """Read one message: (header, {key: array}); None at end of stream."""
    raw = stream.read(_HEADER.size)
    if len(raw) < _HEADER.size:
        return None
    header = json.loads(_read_exactly(stream, _HEADER.unpack(raw)[0]))
    arrays = {}
    for spec in header.get("arrays", []):
        dtype = np.dtype(spec["dtype"])
        n = int(np.prod(spec["shape"], dtype=np.int64)) * dtype.itemsize
        arrays[spec["key"]] = np.frombuffer(_read_exactly(stream, n), dtype=dtype).reshape(spec["shape"])
    return header, arrays


def _read_exactly(stream: BinaryIO, n: int) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise WorkerError(f"inference stream ended after {len(data)} of {n} bytes")
    return data


class WorkerPolicy:
    """A checkpoint's policy running in a child process, with the interface the server uses:
    ``config``, ``embodiments``, ``observation_config``, ``embodiment_index``, ``predict_chunk``.

    The child starts at normal scheduling priority, niced by ``nice``, even when the parent
    runs with real-time priority. Calls are serialised (one request at a time).
    """

    def __init__(self, checkpoint: str, device: str = "cpu", threads: int = 1, nice: int = 5) -> None:
        ckpt = resolve_checkpoint(checkpoint)
        _, policy_cfg, _ = read_checkpoint_config(ckpt)
        self.config: PolicyConfig = policy_cfg
        self.observation_config: ObservationConfig = observation_config(ckpt)
        self.embodiments: list[EmbodimentSpec] = load_embodiments(ckpt)
        self._lock = threading.Lock()
        cmd = [sys.executable, "-m", "gen_theta_model.inference_worker", str(ckpt), device, str(threads), str(nice)]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        first = read_message(self._proc.stdout)
        if first is None or first[0].get("op") != "ready":
            code = self._proc.wait()
            raise WorkerError(f"the inference process for {ckpt} ended (status {code}) before it was ready")

    def embodiment_index(self, name: str) -> int:
        """As ``Policy.embodiment_index``."""
        return embodiment_index(self.embodiments, name)

    def predict_chunk(
        self, observation: dict[str, torch.Tensor], committed_prefix: torch.Tensor, delay: int, *, decode: str = "mean"
    ) -> torch.Tensor:
        """As ``Policy.predict_chunk``: (B, H, D) canonical, the first ``delay`` rows the prefix."""
        arrays = [(k, v.numpy()) for k, v in observation.items()] + [("prefix", committed_prefix.numpy())]
        with self._lock:
            try:
                write_message(self._proc.stdin, {"op": "predict", "delay": int(delay), "decode": str(decode)}, arrays)
            except BrokenPipeError as err:
                raise WorkerError(f"the inference process ended (status {self._proc.poll()})") from err
            reply = read_message(self._proc.stdout)
        if reply is None:
            raise WorkerError(f"the inference process ended (status {self._proc.wait()})")
        header, out = reply
        if header["op"] == "error":
            raise WorkerError(f"inference failed: {header['message']}")
        return torch.from_numpy(out["chunk"].copy())

    def close(self) -> None:
        """End the child (closing its stdin ends its loop) and wait for it."""
        if self._proc.poll() is None:
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=10.0)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


def serve(inp: BinaryIO, out: BinaryIO, checkpoint: str, device: str) -> int:
    """Run the child's loop: load the policy, greet, answer requests until stdin closes."""
    policy = load_policy(checkpoint, device=device)
    gc.freeze()  # torch and the model stay loaded: full collections need not walk them (runtime.run_node)
    write_message(out, {"op": "ready"})
    while (msg := read_message(inp)) is not None:
        header, arrays = msg
        prefix = torch.from_numpy(arrays.pop("prefix").copy())
        obs = {k: torch.from_numpy(v.copy()) for k, v in arrays.items()}
        try:
            chunk = policy.predict_chunk(obs, prefix, header["delay"], decode=header["decode"])
        except (ValueError, KeyError) as err:  # a malformed request: tell the server, keep serving
            write_message(out, {"op": "error", "message": str(err)})
            continue
        write_message(out, {"op": "chunk"}, [("chunk", chunk.cpu().numpy())])
    return 0


def main(argv: list[str] | None = None) -> int:
    # Ctrl-C reaches the whole process group; the server ends this child by closing its
    # stdin, so the child ignores SIGINT instead of dying mid-reply with a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    args = sys.argv[1:] if argv is None else list(argv)
    checkpoint, device = args[0], args[1] if len(args) > 1 else "cpu"
    threads, nice = int(args[2]) if len(args) > 2 else 1, int(args[3]) if len(args) > 3 else 0
    if os.sched_getscheduler(0) != os.SCHED_OTHER:  # never inherit the server's real-time priority
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    os.nice(nice)
    torch.set_num_threads(threads)
    channel = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed (Python or C) goes to the log, never into the channel
    sys.stdout = sys.stderr
    return serve(sys.stdin.buffer, channel, checkpoint, device)


if __name__ == "__main__":
    sys.exit(main())
