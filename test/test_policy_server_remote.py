"""The policy server drives the sim robot with its model in a `gen-theta infer-server` process, over TCP.

`gen-theta bringup robot:=arm6 checkpoint:=... inference_host:=127.0.0.1:PORT inference_token_file:=...`
brings up sim_robot and policy_server over real DDS; the model runs in a separate
infer-server process. Killing that process makes the robot hold (ERROR on /diagnostics);
starting it again on the same port, the server reconnects and drives again.
"""

from __future__ import annotations

import os
import signal
import threading
import time

from rclpy.executors import SingleThreadedExecutor
from ros_helpers import ros_node, start_exe, stop_or_kill
from server_helpers import Listener, driving, free_port, infer_server, tiny_checkpoint


def test_the_server_drives_the_sim_through_a_remote_model_and_holds_while_it_is_gone(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "run", {"arm6": 0.0})
    token = tmp_path / "token"
    token.write_text("a-token-for-the-test\n")
    port = free_port()
    host = f"127.0.0.1:{port}"
    with infer_server(ckpt, port, tmp_path / "infer1.log", token) as model:
        bringup = start_exe(["bringup", "robot:=arm6", f"checkpoint:={ckpt}", f"inference_host:={host}",
                             f"inference_token_file:={token}"], tmp_path / "bringup.log")
        try:
            with ros_node("remote_inference_test") as node:
                listener = Listener(node, ["arm6"])
                executor = SingleThreadedExecutor()
                executor.add_node(node)
                threading.Thread(target=executor.spin, daemon=True).start()
                try:
                    run(listener, model, ckpt, port, token, tmp_path)
                finally:
                    executor.shutdown()
        finally:
            code = stop_or_kill(bringup, signal.SIGINT, 30)
    assert code == 0, (tmp_path / "bringup.log").read_text()


def run(listener: Listener, model, ckpt, port: int, token, tmp_path) -> None:
    listener.wait(driving(listener, "arm6"), timeout=120.0)
    chunks = int(listener.wait(lambda: listener.diag.get("arm6"))["chunks"])
    listener.wait(lambda: int(listener.diag["arm6"]["chunks"]) >= chunks + 3, timeout=30.0)
    assert listener.diag["arm6"]["inference"] == f"127.0.0.1:{port}"

    os.killpg(model.pid, signal.SIGKILL)  # the GPU box is gone

    def holding():
        """arm6 holding, ERROR: inference unavailable"""
        d = listener.diag.get("arm6", {})
        return d.get("message", "").startswith("holding: inference unavailable: inference server 127.0.0.1") \
            and d["level"] == 2

    listener.wait(holding, timeout=30.0)
    t0 = time.monotonic()
    held = listener.wait(lambda: len(listener.since("arm6", t0)) >= 20 and listener.since("arm6", t0), 10.0)
    assert all(len(m.points) == 1 for m in held)  # holds, still streamed at the command rate
    with infer_server(ckpt, port, tmp_path / "infer2.log", token):  # back on the same port
        listener.wait(lambda: listener.diag["arm6"]["message"] == "driving", timeout=60.0)
        listener.wait(driving(listener, "arm6"), timeout=30.0)
