"""Serve a LeRobot policy checkpoint (ACT, SmolVLA, pi0: any with an action chunk) through gen_theta's
server and simulator: the field's baseline, measured with the same closed loop as our policies.

    gen-theta rollout runs/act/checkpoints/last/pretrained_model --robot arm6 --in-process
        --lerobot-python $HOME/lrb/V/bin/python --modes sync naive_async

LeRobot lives in its own venv (it pins another torch; docs/lerobot.md), so the policy runs in a
child process of that venv's Python (gen_theta_model.lerobot_worker). ``LeRobotChunkPolicy`` is a
``ChunkPolicy`` (gen_theta_model.serving) in this process: for each observation the server builds
it sends the child what LeRobot's own robots send, keyed as in our LeRobot export
(gen_theta_model.data.lerobot): ``observation.state`` (the latest joint positions, rad/m),
``observation.images.<camera>`` ((H, W, 3) uint8, the latest frame at the policy's resolution)
and the task instruction; it gets back LeRobot's ``predict_action_chunk`` after its
postprocessor (joint units) and returns it in canonical units. A LeRobot policy knows one robot,
runs at its dataset's fps and takes no committed prefix: serve it in ``sync`` or ``naive_async``
mode (``predict_chunk`` refuses a prefix).
"""

from __future__ import annotations

import json
import os
import subprocess
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np
import torch

from gen_theta_model import batch as K
from gen_theta_model.embodiment import EmbodimentSpec
from gen_theta_model.observation import ObservationConfig
from gen_theta_model.policy.config import PolicyConfig
from gen_theta_model.tokenizer import decode as decode_instruction

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PREPROCESSOR = "policy_preprocessor.json"
INSTRUCTION_LEN = 256  # byte tokens: room for a whole instruction, which the child gets as text


def is_lerobot_checkpoint(path: str | Path) -> bool:
    """Tell whether ``path`` is a LeRobot ``pretrained_model`` directory (config.json with a policy
    ``type`` and the saved preprocessor), not a gen_theta checkpoint.
    """
    p = Path(path)
    if not (p / "config.json").is_file() or not (p / PREPROCESSOR).is_file():
        return False
    try:
        return "type" in json.loads((p / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False


class LeRobotChunkPolicy:
    """A LeRobot policy in a child process of ``python`` (the LeRobot venv's), serving robot ``spec``.

    ``timeout_s`` bounds loading (the first reply) and every inference; a child that dies, hangs
    or fails an inference raises RuntimeError with its reason. ``threads``: the child's torch threads.
    """

    def __init__(self, path: str | Path, spec: EmbodimentSpec, python: str | Path,
                 timeout_s: float = 120.0, threads: int = 1) -> None:
        if not is_lerobot_checkpoint(path):
            raise ValueError(f"{path}: not a LeRobot pretrained_model directory (config.json and {PREPROCESSOR})")
        if not Path(python).is_file():
            raise FileNotFoundError(f"{python}: no such Python (the LeRobot venv's; docs/lerobot.md)")
        self.path, self.spec, self.timeout_s = Path(path), spec, timeout_s
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"),
                   PYTHONPATH=os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p))
        self._proc = subprocess.Popen([str(python), "-m", "gen_theta_model.lerobot_worker", str(self.path)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self._requests = Connection(os.dup(self._proc.stdin.fileno()), readable=False)
        self._replies = Connection(os.dup(self._proc.stdout.fileno()), writable=False)
        self._proc.stdin.close()
        self._proc.stdout.close()
        try:
            hello = self._reply("loading")
            self._check(hello)
        except BaseException:
            self.close()
            raise
        self.cameras: list[str] = hello["cameras"]  # the policy's, a subset of the robot's
        self.config = PolicyConfig(chunk_len=hello["chunk_size"], max_dof=spec.dof,
                                   max_cameras=max(len(spec.cameras), 1), max_prefix_steps=1)
        self.observation_config = ObservationConfig(
            image_size=hello["image_shape"][1] if self.cameras else 96, max_cameras=max(len(spec.cameras), 1),
            history=1, max_dof=spec.dof, instruction_len=INSTRUCTION_LEN)
        self.embodiments = [spec]

    def _check(self, hello: dict) -> None:
        spec = self.spec
        if hello["state_dim"] != spec.dof or hello["action_dim"] != spec.dof:
            raise ValueError(f"{self.path}: state {hello['state_dim']} / action {hello['action_dim']} dims, "
                             f"but {spec.name} has {spec.dof} joints")
        ours = [c.name for c in spec.cameras]
        missing = [c for c in hello["cameras"] if c not in ours]
        if missing:
            raise ValueError(f"{self.path}: camera '{missing[0]}' is not one of {spec.name}'s {ours}")
        shape = hello["image_shape"]
        if shape and shape[1] != shape[2]:
            raise ValueError(f"{self.path}: images {shape[1]}x{shape[2]}; only square images are served")

    def _reply(self, what: str) -> dict:
        if not self._replies.poll(self.timeout_s):
            raise RuntimeError(f"LeRobot policy {self.path}: no reply within {self.timeout_s:.0f} s ({what})")
        try:
            reply = self._replies.recv()
        except EOFError:
            code = self._proc.wait(timeout=5.0)
            raise RuntimeError(f"LeRobot policy {self.path}: its process ended (status {code}) while {what}; "
                               "its error is above") from None
        if "error" in reply:
            raise RuntimeError(f"LeRobot policy {self.path}: {reply['error']} ({what})")
        return reply

    def embodiment_index(self, name: str) -> int:
        """0 for the one robot it serves; any other name is an error."""
        if name != self.spec.name:
            raise KeyError(f"LeRobot policy {self.path} serves {self.spec.name}, not '{name}'")
        return 0

    def predict_chunk(
        self, observation: dict[str, torch.Tensor], committed_prefix: torch.Tensor, delay: int, *, decode: str = "mean"
    ) -> torch.Tensor:
        """(B, H, dof) canonical chunks for a batch of observations (the server's layout,
        gen_theta_model.batch); ``decode`` is ignored (LeRobot's chunk is its point prediction).
        """
        if delay:
            raise ValueError("a LeRobot policy takes no committed prefix: serve it in sync or naive_async mode")
        spec, names = self.spec, [c.name for c in self.spec.cameras]
        chunks = []
        for b in range(observation[K.STATE].shape[0]):
            obs = {"observation.state": spec.denormalize(observation[K.STATE][b, -1, : spec.dof].numpy())
                   .astype(np.float32)}
            for camera in self.cameras:  # a camera without a frame yet (the warm-up) is black, as its padding
                image = observation[K.IMAGES][b, names.index(camera)].numpy()
                obs[f"observation.images.{camera}"] = np.ascontiguousarray(image.transpose(1, 2, 0))
            task = decode_instruction(observation[K.INSTRUCTION][b].numpy())
            self._requests.send({"observation": obs, "task": task, "robot_type": spec.name})
            actions = self._reply("inferring")["actions"]
            chunks.append(spec.normalize(actions).astype(np.float32))
        return torch.from_numpy(np.stack(chunks))

    def close(self) -> None:
        """End the child process (politely, then by force)."""
        try:
            self._requests.send(None)
        except OSError:
            pass
        try:
            self._proc.wait(timeout=10.0)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._requests.close()
        self._replies.close()
