"""The command stream at 50 Hz with the model on an inference server behind a slow, jittery network.

A `gen-theta infer-server` process serves the policy on localhost; the harmonic engine of
the policy server (gen_theta_model.serving.HarmonicServer) reaches it through
RemotePolicy, whose test hook adds each call's network round trip: ``nominal`` ms times a
uniform factor in [1 - jitter, 1 + jitter], and with probability ``--spike-prob`` a spike
of ``--spike-ms`` on top (a burst of retransmissions). A command thread ticks at 50 Hz on absolute deadlines (inputs
fed on each tick, as a robot at rest would send them) for ``--seconds`` per round trip and
prints: commands, missed deadlines (slots without a command), late chunks, ticks the plan
had run out (idle, after the first chunk), measured latency p50/p99 (observation to chunk,
transport and the added round trip included), the committed prefix d, and the coverage
margin of the command stream (how far the plan reaches past each tick: min and p5, ms).
As in the policy server with its model out of process, every thread of this process runs
SCHED_FIFO (``--realtime-priority``, as the bring-up's 10; normal priority, with a
warning, without the rights) and the GIL switch interval is 1 ms.

    .venv/bin/python bench/remote_inference.py [--checkpoint RUN] [--robot arm6] [--seconds 20]
        [--rtts-ms 0 50 150 300] [--jitter 0.25] [--spike-prob 0.02] [--spike-ms 100]

Without --checkpoint a tiny policy with untrained weights is saved to a temp dir (timing
does not depend on the weights).
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from serve_deadlines import untrained_checkpoint

from gen_theta_model.checkpoint import read_checkpoint_config
from gen_theta_model.distributed import free_local_port
from gen_theta_model.remote_inference import RemotePolicy
from gen_theta_model.serving import HarmonicServer, ServerConfig

RATE = 50.0


class Network:
    """Round trips (s) of a link of ``nominal`` s with uniform ``jitter`` (a fraction) and, with
    probability ``spike_prob``, ``spike`` s more.
    """

    def __init__(self, nominal: float, jitter: float, spike_prob: float, spike: float, seed: int = 0) -> None:
        self.nominal, self.jitter, self.spike_prob, self.spike = nominal, jitter, spike_prob, spike
        self.rng = random.Random(seed)

    def __call__(self) -> float:
        rtt = self.nominal * self.rng.uniform(1.0 - self.jitter, 1.0 + self.jitter)
        return rtt + (self.spike if self.nominal and self.rng.random() < self.spike_prob else 0.0)


def feed(server: HarmonicServer, robot: str, now: float) -> None:
    s = server.sessions[robot]
    server.on_joint_state(robot, s.spec.joint_names, s.spec.home_positions, now, now)
    for cam in s.spec.cameras:
        server.on_image(robot, cam.name, np.full((cam.height, cam.width, 3), 90, np.uint8), now, now)


def realtime(priority: int) -> None:
    """SCHED_FIFO ``priority`` for every thread of this process (0: leave them)."""
    try:
        for tid in os.listdir("/proc/self/task") if priority else []:
            os.sched_setscheduler(int(tid), os.SCHED_FIFO, os.sched_param(priority))
    except PermissionError:
        print(f"no permission for SCHED_FIFO {priority}: normal priority", file=sys.stderr)


def measure(
    address: str, checkpoint: str, robot: str, network: Network, seconds: float, priority: int
) -> dict[str, str]:
    policy = RemotePolicy(address, checkpoint, added_latency=network)
    train_cfg, _, _ = read_checkpoint_config(checkpoint)
    cfg = ServerConfig(command_rate_hz=RATE, max_delay_steps=train_cfg.data.harmonic.max_delay_steps)
    spec = next(e for e in policy.embodiments if e.name == robot)
    server = HarmonicServer(policy, [(robot, spec)], cfg, clock=time.monotonic)
    server.on_instruction(robot, "stack the red cube on the blue cube")
    server.warm_up()
    session = server.sessions[robot]
    margins: list[float] = []
    idle_after_first = 0
    server.start()
    realtime(priority)
    try:
        period = 1.0 / RATE
        deadline = time.monotonic()
        end = deadline + seconds
        while deadline < end:
            deadline += period
            time.sleep(max(0.0, deadline - time.monotonic()))
            now = time.monotonic()
            feed(server, robot, now)
            server.tick(robot, now)
            with session.lock:
                if session.counters.chunks and session.scheduler is not None:
                    margins.append(session.scheduler.planned_until() - now)
                    idle_after_first += int(session.scheduler.idle(now))
    finally:
        server.stop()
        policy.close()
    c = session.counters
    m = np.array(margins) * 1e3
    return {
        "commands": str(c.ticks),
        "missed": str(session.clock.missed),
        "late chunks": str(c.late_chunks),
        "ran out (ticks)": str(idle_after_first),
        "latency p50/p99 ms": f"{c.latency.percentile(50) * 1e3:.0f} / {c.latency.percentile(99) * 1e3:.0f}",
        "d steps": str(c.delay_steps),
        "margin min/p5 ms": f"{m.min():.0f} / {np.percentile(m, 5):.0f}" if len(m) else "-",
        "chunks": str(c.chunks),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default="")
    ap.add_argument("--robot", default="arm6")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rtts-ms", type=float, nargs="+", default=[0.0, 50.0, 150.0, 300.0])
    ap.add_argument("--jitter", type=float, default=0.25, help="round trip uniform in nominal x [1 -+ jitter]")
    ap.add_argument("--spike-prob", type=float, default=0.02, help="chance of a spike per round trip (not at 0 ms)")
    ap.add_argument("--spike-ms", type=float, default=100.0, help="a spike's extra round trip")
    ap.add_argument("--realtime-priority", type=int, default=10, help="SCHED_FIFO priority; 0: normal")
    args = ap.parse_args()
    torch.set_num_threads(1)
    sys.setswitchinterval(0.001)
    with tempfile.TemporaryDirectory(prefix="remote_inference_") as tmp:
        checkpoint = args.checkpoint or str(untrained_checkpoint(args.robot, Path(tmp) / "run"))
        port = free_local_port()
        log = (Path(tmp) / "infer-server.log").open("w")
        exe = Path(sys.executable).parent / "gen-theta"
        proc = subprocess.Popen([str(exe), "infer-server", checkpoint, "--port", str(port)], stdout=log,
                                stderr=subprocess.STDOUT)
        rows = []
        try:
            for rtt in args.rtts_ms:
                network = Network(rtt * 1e-3, args.jitter, args.spike_prob, args.spike_ms * 1e-3)
                row = measure(f"127.0.0.1:{port}", checkpoint, args.robot, network, args.seconds,
                              args.realtime_priority)
                rows.append({"round trip ms": f"{rtt:.0f} +-{rtt * args.jitter:.0f}", **row})
                print(rows[-1], flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(r[k] for k in keys) + " |")


if __name__ == "__main__":
    main()
