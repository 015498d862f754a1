"""The LeRobot side of a served LeRobot policy: run with the LeRobot venv's Python, never the project's.

    LEROBOT_PYTHON -m gen_theta_model.lerobot_worker PRETRAINED_MODEL_DIR

Started by gen_theta_model.lerobot_serving.LeRobotChunkPolicy. It imports only the standard
library, numpy, torch and lerobot (this package's ``__init__`` imports nothing), loads the policy
and its saved pre/post-processors with LeRobot's own functions, and answers over two pipes
(stdin: requests, the original stdout: replies; anything the libraries print goes to stderr):

- first it sends ``{"type", "chunk_size", "state_dim", "action_dim", "cameras", "image_shape"}``
  (cameras: the names after ``observation.images.``; image_shape: (3, H, W));
- then, per request ``{"observation": {key: numpy}, "task": str, "robot_type": str}`` (images
  (H, W, 3) uint8, state (dof,) float32 in joint units, LeRobot's keys), it replies
  ``{"actions": (chunk_size, action_dim) float32}`` in joint units (LeRobot's
  ``predict_action_chunk`` and postprocessor), or ``{"error": message}``;
- ``None`` or a closed pipe ends it.
"""

from __future__ import annotations

import os
import sys
from multiprocessing.connection import Connection

import torch
from lerobot.configs.policies import PreTrainedConfig
from lerobot.policies.factory import get_policy_class, make_pre_post_processors
from lerobot.policies.utils import prepare_observation_for_inference

IMAGE_PREFIX = "observation.images."


def main(argv: list[str]) -> int:
    requests = Connection(os.dup(0), writable=False)
    replies = Connection(os.dup(1), readable=False)
    os.dup2(2, 1)  # whatever the libraries print must not reach the reply pipe
    path = argv[0]
    cfg = PreTrainedConfig.from_pretrained(path)
    cfg.device = "cpu"
    policy = get_policy_class(cfg.type).from_pretrained(path, config=cfg)
    policy.eval()
    preprocess, postprocess = make_pre_post_processors(cfg, pretrained_path=path)
    chunk_size = getattr(cfg, "chunk_size", None)
    if chunk_size is None:
        replies.send({"error": f"{cfg.type}: no chunk_size in its config (serve a chunking policy: act, smolvla, pi0)"})
        return 1
    images = list(cfg.image_features)
    replies.send({"type": cfg.type, "chunk_size": int(chunk_size), "state_dim": int(cfg.robot_state_feature.shape[0]),
                  "action_dim": int(cfg.action_feature.shape[0]),
                  "cameras": [k.removeprefix(IMAGE_PREFIX) for k in images],
                  "image_shape": list(cfg.image_features[images[0]].shape) if images else []})
    while True:
        try:
            request = requests.recv()
        except EOFError:
            return 0
        if request is None:
            return 0
        try:
            batch = prepare_observation_for_inference(dict(request["observation"]), torch.device("cpu"),
                                                      request["task"], request["robot_type"])
            with torch.inference_mode():
                actions = postprocess(policy.predict_action_chunk(preprocess(batch)))
            replies.send({"actions": actions[0].float().numpy()})
        except Exception as err:  # noqa: BLE001 - the server decides what a failed inference means
            replies.send({"error": f"{type(err).__name__}: {err}"})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
