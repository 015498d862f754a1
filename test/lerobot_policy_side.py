"""The LeRobot side of the served-policy tests: run with the LeRobot venv's python, never the project's.

    python lerobot_policy_side.py act DIR OBS.npz OUT.npz

Builds a tiny random ACT policy (LeRobot's ACTPolicy, resnet18 stem without pretrained weights)
for a 7-joint robot with cameras ``scene`` and ``wrist`` at 96x96, saves it with its pre- and
post-processors into DIR (a ``pretrained_model`` directory, as ``lerobot-train`` writes), then runs
LeRobot's own inference on the observation in OBS.npz (``observation.state`` (7,) float32,
``observation.images.<camera>`` (96, 96, 3) uint8, ``task``) and writes the action chunk,
(chunk_size, 7) in joint units, to OUT.npz as ``actions``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from lerobot.configs.types import FeatureType, PolicyFeature
from lerobot.policies.act.configuration_act import ACTConfig
from lerobot.policies.act.modeling_act import ACTPolicy
from lerobot.policies.factory import make_pre_post_processors
from lerobot.policies.utils import prepare_observation_for_inference

DOF, SIZE, CAMERAS, CHUNK = 7, 96, ("scene", "wrist"), 10


def act(out_dir: Path, obs_path: Path, out: Path) -> None:
    torch.manual_seed(0)
    features = {"observation.state": PolicyFeature(FeatureType.STATE, (DOF,))}
    features.update({f"observation.images.{c}": PolicyFeature(FeatureType.VISUAL, (3, SIZE, SIZE)) for c in CAMERAS})
    cfg = ACTConfig(input_features=features, output_features={"action": PolicyFeature(FeatureType.ACTION, (DOF,))},
                    chunk_size=CHUNK, n_action_steps=CHUNK, dim_model=32, n_heads=2, dim_feedforward=64,
                    n_encoder_layers=1, n_decoder_layers=1, n_vae_encoder_layers=1, latent_dim=8,
                    pretrained_backbone_weights=None, device="cpu", push_to_hub=False)
    stats = {"observation.state": {"mean": torch.linspace(-0.5, 0.5, DOF), "std": torch.full((DOF,), 0.4)},
             "action": {"mean": torch.linspace(0.3, -0.3, DOF), "std": torch.full((DOF,), 0.6)}}
    stats.update({f"observation.images.{c}": {"mean": torch.full((3, 1, 1), 0.4), "std": torch.full((3, 1, 1), 0.2)}
                  for c in CAMERAS})
    policy = ACTPolicy(cfg)
    policy.save_pretrained(out_dir)
    preprocess, postprocess = make_pre_post_processors(cfg, dataset_stats=stats)
    preprocess.save_pretrained(out_dir)
    postprocess.save_pretrained(out_dir)

    data = np.load(obs_path)
    obs = {k: data[k] for k in data.files if k.startswith("observation.")}
    batch = prepare_observation_for_inference(obs, torch.device("cpu"), str(data["task"]), "arm6")
    policy.eval()
    with torch.inference_mode():
        actions = postprocess(policy.predict_action_chunk(preprocess(batch)))
    np.savez(out, actions=actions[0].float().numpy())


if __name__ == "__main__":
    if sys.argv[1] != "act":
        sys.exit(f"unknown command {sys.argv[1]!r}: act")
    act(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
