"""Pretrained backbones from ``transformers``: a vision tower for the cameras and a text tower for the instruction.

``PolicyConfig.vision_backbone`` / ``text_backbone`` name a Hugging Face model, a Hub
id (``google/siglip-base-patch16-224``) or a local directory saved with
``save_pretrained``. Of a vision-language model (SigLIP, PaliGemma, SmolVLM) the
vision tower is its ``vision_config`` and the text tower its ``text_config``; a
single-tower model (DINOv2, T5) is used whole (T5: its encoder).

The module is always built from the backbone's config (random weights, works on the
meta device); ``load_pretrained_backbones`` then copies the pretrained weights in, and a
checkpoint's ``model.safetensors`` carries them thereafter. A checkpoint keeps each
tower's config, image-processor config and tokenizer in ``backbones/vision`` and
``backbones/text``, so loading it reads nothing from the network.

The configs of the preset backbones ship with the package (``config/backbones/``, the
architectures of the Hub models) so that ``gen-theta model-card`` counts the presets
offline; their weights and tokenizers still come from the Hub.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForTextEncoding,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.utils import logging

from gen_theta_model.config import share_dir
from gen_theta_model.tokenizer import load_tokenizer

BACKBONES = "backbones"  # checkpoint subdirectory: vision/ and text/
VISION = "vision"
TEXT = "text"


def config_source(name: str) -> str:
    """Where the config files of backbone ``name`` are read: the package's copy for a preset
    backbone's Hub id (``config/backbones/<org>--<name>``), else ``name`` itself.
    """
    shipped = share_dir() / "config" / BACKBONES / name.replace("/", "--")
    return str(shipped) if not Path(name).is_dir() and shipped.is_dir() else name


def tower_config(name: str, tower: str) -> PretrainedConfig:
    """Return the config of the ``tower`` (VISION or TEXT) of backbone ``name`` (local files or the Hub)."""
    config = AutoConfig.from_pretrained(config_source(name))
    return getattr(config, f"{tower}_config", None) or config


def _model_class(config: PretrainedConfig) -> type[PreTrainedModel]:
    """Return the transformers class of a tower: the text encoder of an encoder-decoder (T5), the
    Auto base model, or for a sub-config the Auto classes skip (SiglipTextConfig) the base model
    class of its own modeling module whose ``config_class`` it is.
    """
    for auto in (AutoModelForTextEncoding, AutoModel):
        if type(config) in auto._model_mapping:
            return auto._model_mapping[type(config)]
    module = importlib.import_module(type(config).__module__.replace(".configuration_", ".modeling_"))
    for name, cls in vars(module).items():
        if name.endswith("Model") and getattr(cls, "config_class", None) is type(config):
            return cls
    raise ValueError(f"transformers has no model class for a {type(config).__name__}")


def _image_preprocessing(name: str, config: PretrainedConfig) -> tuple[tuple[int, int], list[float], list[float]]:
    """((height, width) in pixels, mean, std) the tower was trained with: its image processor's
    crop size (center crop) or resize size, else the config's ``image_size``; mean and std per channel.
    """
    proc = AutoImageProcessor.from_pretrained(config_source(name))
    size = proc.crop_size if getattr(proc, "do_center_crop", False) else proc.size
    if size.height and size.width:
        hw = (int(size.height), int(size.width))
    elif size.shortest_edge:
        hw = (int(size.shortest_edge),) * 2
    else:
        hw = (int(config.image_size),) * 2
    return hw, list(proc.image_mean), list(proc.image_std)


class Tower(nn.Module):
    """A pretrained tower; frozen ones get no gradient, stay in eval mode and run without autograd."""

    def __init__(self, name: str, tower: str, frozen: bool) -> None:
        super().__init__()
        config = tower_config(name, tower)
        if hasattr(config, "vision_use_head"):
            config.vision_use_head = False  # SigLIP's pooling head: unused, and it would get no gradient
        self.model = _model_class(config)._from_config(config)
        self.name, self.tower, self.frozen = name, tower, frozen
        self.width = int(config.hidden_size if hasattr(config, "hidden_size") else config.d_model)
        if frozen:
            self.model.requires_grad_(False)
        self.train()  # a frozen tower in eval mode from the start (T5's dropout would be on)

    def freeze_unused(self, **inputs: torch.Tensor) -> None:
        """Freeze the parameters the last hidden state does not depend on (SigLIP's text pooling head,
        DINOv2's mask token), found by a backward pass of a copy on the meta device (``inputs`` there):
        DDP needs a gradient for every trainable parameter.
        """
        with torch.device("meta"):
            probe = type(self.model)._from_config(self.model.config)
        probe(**inputs).last_hidden_state.sum().backward()
        for name, p in probe.named_parameters():
            if p.grad is None:
                self.model.get_parameter(name).requires_grad_(False)

    def train(self, mode: bool = True) -> Tower:
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self

    def run(self, **inputs: torch.Tensor) -> torch.Tensor:
        """Run the tower on ``inputs``: its last hidden state (B, S, width)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return self.model(**inputs).last_hidden_state

    def pretrained_module(self) -> PreTrainedModel:
        """Load the pretrained model of ``self.name`` in this tower's class, on the CPU: the class loads it
        directly (SigLIP, DINOv2, T5), or, inside a vision-language model (SmolVLM, PaliGemma), the whole
        model is loaded and the submodule of the tower's class taken. An error if the weights do not fit.
        """
        cls = type(self.model)
        verbosity = logging.get_verbosity()
        logging.set_verbosity_error()  # the other tower's weights are reported as unexpected: they are
        try:
            pretrained, info = cls.from_pretrained(self.name, config=self.model.config, dtype=torch.float32,
                                                   output_loading_info=True)
            if info["missing_keys"]:
                whole = AutoModel.from_pretrained(self.name, dtype=torch.float32)
                pretrained = next((m for m in whole.modules() if type(m) is cls), None)
                info = {"missing_keys": [] if pretrained else [f"any {cls.__name__}"], "mismatched_keys": []}
        finally:
            logging.set_verbosity(verbosity)
        if info["missing_keys"] or info["mismatched_keys"]:
            raise ValueError(f"backbone {self.name}: the {self.tower} tower's weights do not fit its config "
                             f"(missing {sorted(info['missing_keys'])[:3]}, "
                             f"mismatched {sorted(info['mismatched_keys'])[:3]})")
        return pretrained

    def load_pretrained(self) -> None:
        """Copy the pretrained weights of ``self.name`` in (see ``pretrained_module``)."""
        self.model.load_state_dict(self.pretrained_module().state_dict())

    def save(self, directory: Path) -> None:
        """Write the tower's config (and image processor or tokenizer) to ``directory``."""
        self.model.config.save_pretrained(directory)
        if self.tower == VISION:
            AutoImageProcessor.from_pretrained(config_source(self.name)).save_pretrained(directory)
        else:
            load_tokenizer(self.name).save_pretrained(directory)


class VisionTower(Tower):
    """uint8-derived images in [-1, 1] (N, 3, H, W) -> patch features (N, width, h, w).

    Applies the tower's own preprocessing: bilinear (antialiased) resize to its resolution,
    then its per-channel mean and std on [0, 1] pixels. Class and register tokens are dropped.
    """

    def __init__(self, name: str, frozen: bool) -> None:
        super().__init__(name, VISION, frozen)
        self.size, *self.mean_std = _image_preprocessing(name, self.model.config)
        self.register_buffer("mean", torch.empty(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.empty(1, 3, 1, 1), persistent=False)
        self.reset_parameters()
        self.patch = int(self.model.config.patch_size)
        if not frozen:
            self.freeze_unused(pixel_values=torch.zeros(1, 3, *self.size, device="meta"))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Fill the preprocessing buffers (also after ``to_empty`` on a meta-built model)."""
        self.mean.copy_(torch.tensor(self.mean_std[0]).view(1, 3, 1, 1))
        self.std.copy_(torch.tensor(self.mean_std[1]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate((x + 1.0) / 2.0, size=self.size, mode="bilinear", antialias=True, align_corners=False)
        h, w = self.size[0] // self.patch, self.size[1] // self.patch
        hidden = self.run(pixel_values=(x - self.mean) / self.std)  # (N, prefix + h*w, width)
        return hidden[:, -h * w :].transpose(1, 2).reshape(len(x), self.width, h, w)


class TextTower(Tower):
    """Instruction tokens of the tower's tokenizer (B, L), mask (B, L) -> (B, L, d) through a Linear."""

    def __init__(self, name: str, frozen: bool, d_model: int, max_len: int, bias: bool) -> None:
        super().__init__(name, TEXT, frozen)
        positions = getattr(self.model.config, "max_position_embeddings", max_len)
        if max_len > positions:
            raise ValueError(f"max_instruction_len={max_len} exceeds the {positions} positions of text backbone {name}")
        self.proj = nn.Linear(self.width, d_model, bias=bias)
        # A decoder language model (a VLM's: Llama, Gemma) was trained with causal attention: keep it.
        self.causal = type(self.model.config) in AutoModelForCausalLM._model_mapping
        if not frozen:
            self.freeze_unused(input_ids=torch.zeros(1, 2, dtype=torch.long, device="meta"),
                               attention_mask=torch.zeros(1, 1, 2, 2, device="meta"))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # The mask as a ready 4D additive bias, which transformers takes as it is: its own 2D path asks
        # the data whether anything is padded (a host sync, and impossible on the meta device).
        keep = mask[:, None, None, :].bool()  # (B, 1, 1, L)
        if self.causal:
            n = tokens.shape[1]
            keep = keep & torch.ones(n, n, dtype=torch.bool, device=tokens.device).tril()  # (B, 1, L, L)
        dtype = self.proj.weight.dtype
        bias = (~keep).to(dtype) * torch.finfo(dtype).min
        return self.proj(self.run(input_ids=tokens, attention_mask=bias))  # (B, L, d)


def towers(model: nn.Module) -> dict[str, Tower]:
    """Return the pretrained towers of a model, by VISION / TEXT."""
    return {m.tower: m for m in model.modules() if isinstance(m, Tower)}


def load_pretrained_backbones(model: nn.Module) -> None:
    """Copy the pretrained weights of every tower of ``model`` in (a fresh policy; downloads from the Hub once)."""
    for tower in towers(model).values():
        tower.load_pretrained()


def save_backbones(model: nn.Module, directory: Path) -> None:
    """Write the configs, image processor and tokenizer of ``model``'s towers to ``directory``/{vision,text}."""
    for name, tower in towers(model).items():
        tower.save(directory / name)
