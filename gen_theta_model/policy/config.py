"""PolicyConfig: the shape of the harmonic transformer, and the size presets.

``preset("tiny")`` .. ``preset("10b")`` return ready configs; a training YAML names
a preset and may override single fields (``policy: {n_layer: 6}``). The parameter
count of every preset is checked against its nominal size on the meta device
(test/test_policy.py, ``gen-theta model-card PRESET``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from gen_theta_model.embodiment import DEFAULT_MAX_DOF, JOINT_DESCRIPTOR_DIM
from gen_theta_model.tokenizer import VOCAB_SIZE

IMAGE_ENCODERS = ("conv", "resnet")
IMAGE_POOLS = ("avg", "spatial_softmax")
IMAGE_STRIDES = (4, 8)


@dataclass(frozen=True)
class PolicyConfig:
    # trunk
    d_model: int = 128
    n_layer: int = 4
    n_head: int = 4
    mlp_ratio: int = 4  # GPT-style 4x hidden width in the block MLP
    dropout: float = 0.0  # robot data is large and highly correlated in time; dropout mostly slows learning
    bias: bool = True  # biases in Linear/LayerNorm; negligible cost, keeps tiny models easy to fit
    # action chunk and head
    chunk_len: int = 50  # H: 1 s of actions at the 50 Hz control rate, must equal the loader's H
    n_components: int = 4  # K Gaussians per joint over the chunk: multimodal demos without mode averaging
    shared_components: bool = False  # one set of K weights per chunk: every joint follows the same mode
    min_log_std: float = -5.0  # std >= 0.0067 normalised units: keeps the NLL bounded on static joints
    max_log_std: float = 1.0  # std <= 2.7 normalised units: data is z-scored, wider is never needed
    mse_weight: float = 0.0  # optional MSE on the mixture mean added to the NLL
    residual: bool = True  # means relative to the last committed action: a chunk continues from its prefix
    # training only: MSE weight of an auxiliary prediction of where the next gripper event happens
    # (batch KEYPOSE); it makes the trunk locate the object from the first frame of an approach
    keypose_weight: float = 0.0
    # the chunk is drawn toward the keypose: each component's mean mu_jkh becomes mu + g_jkh (keypose_j - mu),
    # g a learned gain per step read from the joint token (0 at the start; 1 is exactly the keypose), the
    # keypose the head's own prediction with its gradient stopped. A chunk can then go where the keypose
    # head locates the object instead of re-learning that location in 50 steps' means (needs keypose_weight)
    keypose_path: bool = False
    # training only: weight of an auxiliary loss that places the scene's objects (batch OBJECTS, where the
    # data has them: the sim's object poses) from the image tokens alone, through `object_slots` learned
    # queries (ObjectReadout). The images must then carry where the objects are, which the trunk can
    # otherwise read off the arm's approach in a demonstration and lose in closed loop; Levine et al.
    # (2016) trained their spatial-softmax encoder on object positions for the same reason. A set loss
    # (Chamfer distance, dm^2): slots need no fixed order, so scenes with different objects share them
    object_weight: float = 0.0
    object_slots: int = 4
    # inputs
    max_dof: int = DEFAULT_MAX_DOF  # joint tokens padded to this many (EmbodimentSpec.max_dof)
    joint_descriptor_dim: int = JOINT_DESCRIPTOR_DIM
    max_cameras: int = 4  # size of the camera-index embedding table
    image_channels: int = 32  # width of the first conv layer (doubled twice) of the shared image encoder
    image_grid: int = 4  # image_pool avg: tokens per camera = image_grid**2 (adaptive pooling of the conv map)
    image_encoder: str = "conv"  # conv: 3 strided convs | resnet: ResNet-style blocks with GroupNorm (robomimic, DP)
    image_blocks: int = 1  # resnet: residual blocks per stage (3 stages; 2 is the ResNet-18 depth per stage)
    # downsampling of the stem's feature map: 8 (three stride-2 stages) or 4 (the last stage keeps the
    # resolution: a 16x16 map at 64 px, where keypoints place a 3-pixel cube on a finer grid at twice the stem cost)
    image_stride: int = 8
    image_pool: str = "avg"  # avg: a grid of pooled patches | spatial_softmax: learned keypoints (x, y, feature)
    image_keypoints: int = 16  # spatial_softmax: tokens per camera, one per keypoint
    image_shift: int = 0  # training only: random shift of each image by up to this many pixels (DrQ); 0 off
    # training only: std of Gaussian noise added to every observed position of a joint that is not a
    # gripper (proprioception), in the dataset's standard deviations, drawn independently per joint and
    # history step; 0 off. In a demonstration the arm's own pose points at the object as well as the
    # image does, so a policy can locate the object from it and, in closed loop, follow its own drift;
    # noise makes the image the reliable source. Grippers stay exact (whether it holds something is
    # the task's phase, not where the object is), as do the committed prefix and the residual anchor
    state_noise: float = 0.0
    vision_backbone: str = ""  # "": the conv/resnet stem above | Hub id or directory of a transformers vision model
    text_backbone: str = ""  # "": byte tokens, learned embedding | Hub id or directory of a transformers text model
    freeze_backbone: bool = True  # robot data is tiny next to the towers' pretraining data: keep their features
    vocab_size: int = VOCAB_SIZE
    max_instruction_len: int = 64  # tokens; longer instructions are truncated by the loader
    max_prefix_steps: int = 16  # committed-prefix tokens; >= HarmonicConfig.max_delay_steps (15 at 50 Hz)
    age_frequencies: int = 16  # sinusoidal features of an observation's age (sin and cos of each)
    age_min_period_s: float = 0.002  # shortest period: resolves a 500 Hz joint_states stream
    age_max_period_s: float = 10.0  # longest period: ages beyond a few seconds are all "stale"

    def __post_init__(self) -> None:
        positive = ("d_model", "n_layer", "n_head", "mlp_ratio", "chunk_len", "n_components", "max_dof",
                    "max_cameras", "image_channels", "image_grid", "max_instruction_len", "max_prefix_steps",
                    "age_frequencies")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_head={self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.min_log_std >= self.max_log_std:
            raise ValueError(f"min_log_std={self.min_log_std} must be < max_log_std={self.max_log_std}")
        if self.mse_weight < 0:
            raise ValueError(f"mse_weight must be >= 0, got {self.mse_weight}")
        if self.keypose_weight < 0:
            raise ValueError(f"keypose_weight must be >= 0, got {self.keypose_weight}")
        if self.object_weight < 0 or self.object_slots < 1:
            raise ValueError(f"need object_weight >= 0 and object_slots >= 1, got {self.object_weight}, "
                             f"{self.object_slots}")
        if self.keypose_path and not self.keypose_weight > 0:
            raise ValueError("keypose_path draws the chunk toward the predicted keypose: it needs keypose_weight > 0")
        if not 0 < self.age_min_period_s < self.age_max_period_s:
            raise ValueError(
                f"need 0 < age_min_period_s < age_max_period_s, got {self.age_min_period_s}, {self.age_max_period_s}"
            )
        if self.max_prefix_steps >= self.chunk_len:
            raise ValueError(f"max_prefix_steps={self.max_prefix_steps} must be < chunk_len={self.chunk_len}")
        if self.image_encoder not in IMAGE_ENCODERS:
            raise ValueError(f"image_encoder must be one of {IMAGE_ENCODERS}, got {self.image_encoder!r}")
        if self.image_pool not in IMAGE_POOLS:
            raise ValueError(f"image_pool must be one of {IMAGE_POOLS}, got {self.image_pool!r}")
        if self.image_stride not in IMAGE_STRIDES:
            raise ValueError(f"image_stride must be one of {IMAGE_STRIDES}, got {self.image_stride}")
        for name in ("image_blocks", "image_keypoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.image_shift < 0:
            raise ValueError(f"image_shift must be >= 0 pixels, got {self.image_shift}")
        if self.state_noise < 0:
            raise ValueError(f"state_noise must be >= 0 standard deviations, got {self.state_noise}")
        for name in ("vision_backbone", "text_backbone"):
            value = getattr(self, name)
            if not isinstance(value, str) or value != value.strip() or (value and len(value.split()) != 1):
                raise ValueError(f"{name} must be a Hugging Face Hub id or a directory without spaces, or empty "
                                 f"for the built-in encoder; got {value!r}")
        if self.image_encoder != "conv" and self.vision_backbone:
            raise ValueError(f"image_encoder={self.image_encoder!r} has no effect with vision_backbone="
                             f"{self.vision_backbone!r}: leave image_encoder at 'conv' or clear vision_backbone")

    @property
    def image_tokens(self) -> int:
        """Tokens per camera."""
        return self.image_grid**2 if self.image_pool == "avg" else self.image_keypoints


SIGLIP_BASE = "google/siglip-base-patch16-224"  # 224 px, patch 16: 196 patches of width 768
SIGLIP_SO400M = "google/siglip-so400m-patch14-384"  # 384 px, patch 14: 729 patches of width 1152

# name -> (nominal parameter count, config). Trunk widths and depths follow GPT-style
# aspect ratios (d_model / n_layer ~ 32-160) with head size 64-128.
_PRESETS: dict[str, tuple[int, PolicyConfig]] = {
    "tiny": (1_000_000, PolicyConfig(d_model=128, n_layer=4, n_head=4, image_channels=16, image_grid=4,
                                     n_components=4)),
    "small": (25_000_000, PolicyConfig(d_model=384, n_layer=14, n_head=6, image_channels=32, image_grid=6)),
    "base": (100_000_000, PolicyConfig(d_model=768, n_layer=14, n_head=12, image_channels=64, image_grid=6)),
    "1b": (1_000_000_000, PolicyConfig(d_model=2048, n_layer=20, n_head=16, image_channels=96, image_grid=8)),
    "6b": (6_000_000_000, PolicyConfig(d_model=4096, n_layer=30, n_head=32, image_channels=128, image_grid=8)),
    "7b": (7_000_000_000, PolicyConfig(d_model=4096, n_layer=35, n_head=32, image_channels=128, image_grid=8)),
    "10b": (10_000_000_000, PolicyConfig(d_model=5120, n_layer=32, n_head=40, image_channels=128, image_grid=8)),
    # Pretrained SigLIP towers (frozen) read the cameras and the instruction; the trunk is the joint-token
    # action expert. 1b: SigLIP base (196M) + a 16-layer 2048 trunk; 7b: SigLIP so400m (863M) + the 6b trunk.
    "siglip-1b": (1_000_000_000, PolicyConfig(d_model=2048, n_layer=16, n_head=16, image_grid=8,
                                              vision_backbone=SIGLIP_BASE, text_backbone=SIGLIP_BASE)),
    "siglip-7b": (7_000_000_000, PolicyConfig(d_model=4096, n_layer=30, n_head=32, image_grid=8,
                                              vision_backbone=SIGLIP_SO400M, text_backbone=SIGLIP_SO400M)),
}
PRESET_NAMES = tuple(_PRESETS)


def preset(name: str, **overrides: object) -> PolicyConfig:
    """Return the named preset's PolicyConfig, with single fields replaced by ``overrides``."""
    if name not in _PRESETS:
        raise ValueError(f"unknown policy preset '{name}'; known presets: {', '.join(PRESET_NAMES)}")
    return dataclasses.replace(_PRESETS[name][1], **overrides)


def nominal_params(name: str) -> int:
    """Return the parameter count a preset is named for (within 5% of the built model)."""
    if name not in _PRESETS:
        raise ValueError(f"unknown policy preset '{name}'; known presets: {', '.join(PRESET_NAMES)}")
    return _PRESETS[name][0]
