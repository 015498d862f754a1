"""Policy: normalise in -> HarmonicTransformer -> unnormalise out, for training, evaluation and serving.

``Policy.predict_chunk`` is the one inference function: the training-time
validation, ``gen-theta evaluate`` and the policy server all call it, so what is
measured is what runs on the robot. Load one from a checkpoint with
``gen_theta_model.checkpoint.load_policy``.

The observation dict holds the OBSERVATION_KEYS of gen_theta_model.batch with a
leading batch dimension, plus EMBODIMENT_INDEX (B,) int64 in this policy's
numbering (``Policy.embodiment_index(name)``; optional when the policy knows one
embodiment). Robots of different DoF share a batch through JOINT_MASK.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from gen_theta_model import batch as K
from gen_theta_model.data.stats import NormStats
from gen_theta_model.embodiment import EmbodimentSpec
from gen_theta_model.observation import ObservationConfig
from gen_theta_model.policy.backbones import load_pretrained_backbones
from gen_theta_model.policy.config import PolicyConfig
from gen_theta_model.policy.head import ChunkMixture
from gen_theta_model.policy.model import HarmonicTransformer, chunk_loss, trim_padding
from gen_theta_model.policy.normalize import Normalizer


class UnknownEmbodimentError(ValueError):
    """A dataset or a request names a robot the policy was not trained on (or another URDF of it)."""


def embodiment_index(embodiments: Sequence[EmbodimentSpec], name: str) -> int:
    """Index of the embodiment called ``name`` in a policy's ``embodiments``; UnknownEmbodimentError if absent."""
    for i, e in enumerate(embodiments):
        if e.name == name:
            return i
    raise UnknownEmbodimentError(
        f"the policy does not know embodiment '{name}'; it was trained on {[e.name for e in embodiments]}"
    )


class Policy:
    def __init__(
        self,
        model: HarmonicTransformer,
        normalizer: Normalizer,
        embodiments: Sequence[EmbodimentSpec],
        observation: ObservationConfig | None = None,
    ) -> None:
        names = [e.name for e in embodiments]
        if names != normalizer.names:
            raise ValueError(f"embodiments {names} and normalisation statistics {normalizer.names} differ")
        self.model = model
        self.normalizer = normalizer
        self.embodiments = list(embodiments)
        # How observations are built for this policy (training data config; the server builds the same).
        self.observation_config = observation or ObservationConfig(
            max_cameras=model.cfg.max_cameras, max_dof=model.cfg.max_dof, instruction_len=model.cfg.max_instruction_len,
            tokenizer=model.cfg.text_backbone,
        )
        self.last_inference_ms = float("nan")  # wall time of the latest predict_chunk

    @property
    def config(self) -> PolicyConfig:
        return self.model.cfg

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> Policy:
        self.model.to(device)
        self.normalizer.to(device)
        return self

    def embodiment_index(self, name: str) -> int:
        """Return this policy's index of the embodiment called ``name``."""
        return embodiment_index(self.embodiments, name)

    def embodiment_map(self, specs: Sequence[EmbodimentSpec]) -> torch.Tensor:
        """(len(specs),) int64: a dataset's embodiment index -> this policy's index.

        Raises UnknownEmbodimentError for a robot the policy does not know, or one whose
        URDF (sha256) differs from the one it was trained on.
        """
        out = []
        for spec in specs:
            i = self.embodiment_index(spec.name)
            if spec.urdf_sha256 != self.embodiments[i].urdf_sha256 or spec.dof != self.embodiments[i].dof:
                raise UnknownEmbodimentError(
                    f"embodiment '{spec.name}': the dataset's URDF ({spec.urdf_path}, sha256 "
                    f"{spec.urdf_sha256[:12]}) differs from the one the policy was trained on "
                    f"({self.embodiments[i].urdf_path}, sha256 {self.embodiments[i].urdf_sha256[:12]})"
                )
            out.append(i)
        return torch.tensor(out, dtype=torch.int64)

    # -- training -------------------------------------------------------------------
    def loss(self, batch: dict[str, torch.Tensor], model: torch.nn.Module | None = None
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of a training batch (canonical units, policy embodiment indices).

        ``model`` is the module to call (a DDP/FSDP wrapper of ``self.model``), default the bare model.
        """
        normed = trim_padding(self.normalizer.normalize_batch(batch))
        dist = (model or self.model)(normed)
        return chunk_loss(dist, normed, self.config.mse_weight, self.config.keypose_weight, self.config.object_weight)

    # -- inference ------------------------------------------------------------------
    def action_distribution(self, batch: dict[str, torch.Tensor]) -> ChunkMixture:
        """Return the mixture in canonical units for a batch with ACTION (prefix), ACTION_MASK, DELAY."""
        e = self._embodiments_of(batch)
        normed = trim_padding(self.normalizer.normalize_batch({**batch, K.EMBODIMENT_INDEX: e}))
        dist = self.model(normed)  # (B, D', K, H), D' <= D joints in use
        std, mean = self.normalizer.action_scale_shift(e, dist.logits.shape[1])
        return dist.affine(std, mean).pad_joints(batch[K.JOINT_MASK].shape[1])  # (B, D, K, H) canonical

    def predict_chunk(
        self,
        observation: dict[str, torch.Tensor],
        committed_prefix: torch.Tensor,
        delay: int,
        *,
        decode: str = "mean",
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Predict the next action chunk (B, H, D), canonical, whose first ``delay`` rows are ``committed_prefix``.

        committed_prefix (B, delay, D) canonical: the actions the robot executes while
        the model infers. ``decode`` reads the chunk from the mixture (``ChunkMixture.decode``): its
        mean (default), each joint's heaviest component ("top") or a draw ("sample").
        Padded joints are 0. The wall time is left in ``last_inference_ms``.
        """
        return self.infer(observation, committed_prefix, delay, decode=decode, generator=generator)[0]

    @torch.no_grad()
    def infer(
        self,
        observation: dict[str, torch.Tensor],
        committed_prefix: torch.Tensor,
        delay: int,
        *,
        decode: str = "mean",
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, ChunkMixture]:
        """``predict_chunk`` that also returns the policy's distribution (canonical units) for metrics."""
        start = time.perf_counter()
        batch = self.chunk_request(observation, committed_prefix, delay)
        was_training = self.model.training
        self.model.eval()
        dist = self.action_distribution(batch)
        self.model.train(was_training)
        chunk = dist.decode(decode, generator)  # (B, H, D)
        chunk = chunk * batch[K.JOINT_MASK].to(chunk.dtype)[:, None, :]
        chunk[:, :delay] = committed_prefix.to(chunk.dtype)
        if chunk.is_cuda:
            torch.cuda.synchronize(chunk.device)
        self.last_inference_ms = (time.perf_counter() - start) * 1e3
        return chunk, dist

    def chunk_request(
        self, observation: dict[str, torch.Tensor], committed_prefix: torch.Tensor, delay: int
    ) -> dict[str, torch.Tensor]:
        """Observation + committed prefix -> a model batch (ACTION holds the prefix, DELAY = delay)."""
        missing = [k for k in K.OBSERVATION_KEYS if k not in observation]
        if missing:
            raise KeyError(f"observation lacks '{missing[0]}' (see gen_theta_model.batch)")
        cfg, device = self.config, self.device
        b, d = observation[K.JOINT_MASK].shape
        if not 0 <= delay <= cfg.max_prefix_steps or delay >= cfg.chunk_len:
            raise ValueError(f"delay must be in [0, {min(cfg.max_prefix_steps, cfg.chunk_len - 1)}], got {delay}")
        if tuple(committed_prefix.shape) != (b, delay, d):
            raise ValueError(
                f"committed_prefix must be (B, delay, D) = {(b, delay, d)}, got {tuple(committed_prefix.shape)}"
            )
        batch = {k: v.to(device) for k, v in observation.items()}
        action = torch.zeros(b, cfg.chunk_len, d, device=device)
        action[:, :delay] = committed_prefix.to(device=device, dtype=action.dtype)
        batch[K.ACTION] = action
        batch[K.ACTION_MASK] = torch.ones(b, cfg.chunk_len, dtype=torch.bool, device=device)
        batch[K.DELAY] = torch.full((b,), delay, dtype=torch.int64, device=device)
        return batch

    def _embodiments_of(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if K.EMBODIMENT_INDEX in batch:
            e = batch[K.EMBODIMENT_INDEX].to(self.device)
            if e.numel() and (int(e.min()) < 0 or int(e.max()) >= len(self.embodiments)):
                raise UnknownEmbodimentError(
                    f"embodiment index {e.tolist()} outside this policy's {len(self.embodiments)} embodiments"
                )
            return e
        if len(self.embodiments) != 1:
            raise KeyError(f"observation lacks '{K.EMBODIMENT_INDEX}' and the policy knows several embodiments")
        return torch.zeros(batch[K.JOINT_MASK].shape[0], dtype=torch.int64, device=self.device)


def build_policy(
    cfg: PolicyConfig,
    embodiments: Sequence[EmbodimentSpec],
    stats: dict[str, NormStats],
    observation: ObservationConfig | None = None,
    device: torch.device | str = "cpu",
) -> Policy:
    """Build a freshly initialised policy for ``embodiments`` with their dataset statistics.

    The model is built on ``device``: on "meta" it has shapes and no values (sharding.materialise
    allocates and initialises it later, pretrained towers included); the statistics always start on
    the CPU. Pretrained towers (``cfg.vision_backbone``, ``cfg.text_backbone``) get their pretrained weights.
    """
    normalizer = Normalizer([e.name for e in embodiments], stats, cfg.max_dof)
    with torch.device(device):
        model = HarmonicTransformer(cfg)
    if torch.device(device).type != "meta":
        load_pretrained_backbones(model)
    return Policy(model, normalizer, embodiments, observation)
