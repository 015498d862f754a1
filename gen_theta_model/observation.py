"""The observation of one sample, built the same way for training and serving.

``build_observation`` is called by the dataset loader (from decoded frames and
recorded joint states) and by the policy server (from the latest messages), so
the model sees identical inputs in both. Keys and shapes: gen_theta_model/batch.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from PIL import Image

from gen_theta_model import batch
from gen_theta_model.embodiment import EmbodimentSpec
from gen_theta_model.tokenizer import encode


@dataclass(frozen=True)
class ObservationConfig:
    image_size: int = 96  # square side the model sees; frames are resized (not cropped) to it
    max_cameras: int = 3  # the humanoid has three cameras
    history: int = 4  # joint-state samples per observation (T)
    max_dof: int = 32
    instruction_len: int = 64  # tokens, BOS/EOS included
    tokenizer: str = ""  # "": byte tokens | the policy's text_backbone (Hub id or directory): its own tokenizer

    def __post_init__(self) -> None:
        for name in ("image_size", "max_cameras", "history", "max_dof"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.instruction_len < 2:
            raise ValueError(f"instruction_len must be >= 2, got {self.instruction_len}")


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (3, size, size) uint8, bilinear (aspect ratio not kept)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    if image.shape[:2] != (size, size):
        image = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
    return np.ascontiguousarray(image.transpose(2, 0, 1))


def build_observation(
    spec: EmbodimentSpec,
    frames: Mapping[str, np.ndarray | None],
    frame_ages: Mapping[str, float],
    positions: np.ndarray,
    position_ages: np.ndarray,
    instruction: str,
    cfg: ObservationConfig,
) -> dict[str, np.ndarray]:
    """One sample's observation dict (numpy, no batch axis).

    frames: camera name -> latest (H, W, 3) uint8 rgb frame, or None if that camera has
        none yet (masked out); cameras follow ``spec.cameras`` order, names not in the
        spec are an error.
    frame_ages: camera name -> age in s of that frame at the chunk start (>= 0).
    positions: (T', dof) joint positions in rad/m, spec joint order, oldest first;
        the last ``cfg.history`` rows are used, fewer are padded at the front.
    position_ages: (T',) age in s of each row.
    instruction: the task instruction text.
    """
    names = [c.name for c in spec.cameras]
    unknown = sorted(set(frames) - set(names))
    if unknown:
        raise ValueError(f"{spec.name}: unknown camera '{unknown[0]}' (cameras: {names})")
    if len(names) > cfg.max_cameras:
        raise ValueError(f"{spec.name}: {len(names)} cameras exceed max_cameras={cfg.max_cameras}")
    s = cfg.image_size
    images = np.zeros((cfg.max_cameras, 3, s, s), dtype=np.uint8)
    image_age = np.zeros(cfg.max_cameras, dtype=np.float32)
    image_mask = np.zeros(cfg.max_cameras, dtype=bool)
    for i, name in enumerate(names):
        frame = frames.get(name)
        if frame is None:
            continue
        images[i] = resize_image(frame, s)
        image_age[i] = frame_ages[name]
        image_mask[i] = True

    positions = np.asarray(positions, dtype=np.float64).reshape(-1, spec.dof)[-cfg.history:]
    ages = np.asarray(position_ages, dtype=np.float64).reshape(-1)[-cfg.history:]
    if len(ages) != len(positions):
        raise ValueError(f"{len(positions)} position rows but {len(ages)} ages")
    n = len(positions)
    state = np.zeros((cfg.history, cfg.max_dof), dtype=np.float32)
    state_age = np.zeros(cfg.history, dtype=np.float32)
    state_mask = np.zeros(cfg.history, dtype=bool)
    if n:
        state[cfg.history - n:], _ = spec.pad(spec.normalize(positions).astype(np.float32), cfg.max_dof)
        state_age[cfg.history - n:] = ages
        state_mask[cfg.history - n:] = True
    descriptors, joint_mask = spec.pad(spec.descriptors().T, cfg.max_dof)
    tokens, token_mask = encode(instruction, cfg.instruction_len, cfg.tokenizer)
    return {
        batch.IMAGES: images,
        batch.IMAGE_AGE: image_age,
        batch.IMAGE_MASK: image_mask,
        batch.STATE: state,
        batch.STATE_AGE: state_age,
        batch.STATE_MASK: state_mask,
        batch.JOINT_DESCRIPTORS: np.ascontiguousarray(descriptors.T),
        batch.JOINT_MASK: joint_mask,
        batch.INSTRUCTION: tokens,
        batch.INSTRUCTION_MASK: token_mask,
    }
