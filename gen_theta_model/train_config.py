"""TrainConfig: one YAML file describes a training run (config/train/*.yaml).

``load_train_config(path, ["optim.lr=1e-3", ...])`` reads the file, applies
``--set`` overrides (dotted keys, YAML-typed values) and validates everything:
a typo names the key (``unknown key 'optim.lrr' for OptimConfig; known keys: ...``).
The policy is a preset plus field overrides; the fields that must agree with the
data (chunk length, DoF padding, cameras, instruction length, prefix length) are
taken from the data config unless overridden, and checked when overridden.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from gen_theta_model.config import ConfigError, from_mapping, read_yaml, set_dotted, to_mapping
from gen_theta_model.data.loader import DataConfig
from gen_theta_model.policy.config import PolicyConfig, preset


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 3e-4
    min_lr: float = 3e-5  # cosine decay ends at lr/10 (Chinchilla-style)
    weight_decay: float = 0.1  # on weight matrices only, as in nanoGPT
    betas: tuple[float, float] = (0.9, 0.95)  # beta2 0.95: steadier for transformers at large batch
    warmup_steps: int = 100
    decay_steps: int = 0  # length of the cosine schedule; 0: max_steps (set it to stop a run early and resume)
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    grad_accum: int = 1  # micro-batches per optimizer step (per rank)

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ValueError(f"need 0 <= min_lr <= lr and lr > 0, got lr={self.lr}, min_lr={self.min_lr}")
        if self.warmup_steps < 0 or self.decay_steps < 0 or self.grad_accum < 1 or self.grad_clip < 0:
            raise ValueError(f"warmup_steps, decay_steps, grad_clip must be >= 0 and grad_accum >= 1, got {self}")


@dataclass(frozen=True)
class TrainConfig:
    dataset: tuple[str, ...] = ()  # dataset directories; several form a mixture (weights in data.mixture)
    out_dir: str = "runs/train"  # checkpoints/, tensorboard/ and train_log.jsonl go here
    preset: str = "tiny"  # policy size preset (gen_theta_model/policy/config.py)
    policy: dict[str, Any] = field(default_factory=dict)  # PolicyConfig fields overriding the preset
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    seed: int = 0  # model initialisation; the data order has data.seed
    max_steps: int = 1000  # optimizer steps
    max_minutes: float = 0.0  # wall-clock budget: validate, save and stop when it is spent (0: none)
    init_from: str = ""  # checkpoint to fine-tune from (SFT): its architecture; `policy` only what keeps shapes
    freeze_trunk: bool = False  # SFT: train only encoders and head
    # SFT: keep the image encoder as the checkpoint has it (one pretrained on object positions,
    # `gen-theta pretrain-vision`); an object readout, when there is one, still trains
    freeze_image_encoder: bool = False
    ema_decay: float = 0.0  # serve an exponential moving average of the weights (0: off; gen_theta_model/ema.py)
    extend_embodiments: bool = False  # SFT: add robots the checkpoint does not know instead of failing
    resume: bool = True  # continue from out_dir's latest checkpoint when there is one
    distributed: Literal["auto", "ddp", "fsdp"] = "auto"  # auto: FSDP for >= 500M parameters, else DDP
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 autocast on GPUs that support it
    activation_checkpointing: bool = False  # recompute block activations in backward (large presets)
    device: str = "auto"  # auto: cuda:<local_rank> when available, else cpu
    log_interval: int = 10  # steps between TensorBoard / log-file points
    eval_interval: int = 200  # steps between validations (and at the end)
    eval_batches: int = 8  # validation batches per validation (0: all)
    eval_delay: int = -1  # delay of the delayed validation MSE; -1: data.harmonic.max_delay_steps // 2
    checkpoint_interval: int = 200  # steps between checkpoints (and at the end)
    keep_checkpoints: int = 2  # newest complete checkpoints kept on disk
    progress: bool = True  # tqdm bar on the master process

    def __post_init__(self) -> None:
        for name in ("max_steps", "log_interval", "eval_interval", "checkpoint_interval", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_batches < 0 or self.max_minutes < 0:
            raise ValueError(f"eval_batches and max_minutes must be >= 0, got {self.eval_batches}, {self.max_minutes}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if self.eval_delay >= self.data.horizon:
            raise ValueError(f"eval_delay={self.eval_delay} must be < data.horizon={self.data.horizon}")

    @property
    def validation_delay(self) -> int:
        return self.eval_delay if self.eval_delay >= 0 else self.data.harmonic.max_delay_steps // 2

    @property
    def decay_steps(self) -> int:
        return self.optim.decay_steps or self.max_steps


def data_tied_fields(data: DataConfig) -> dict[str, int]:
    """PolicyConfig fields fixed by the data: chunk length, padding and input sizes."""
    obs = data.observation
    return {
        "chunk_len": data.horizon,
        "max_dof": obs.max_dof,
        "max_cameras": obs.max_cameras,
        "max_instruction_len": obs.instruction_len,
        "max_prefix_steps": max(data.harmonic.max_delay_steps, 1),
    }


def policy_config(cfg: TrainConfig, source: str = "<train config>") -> PolicyConfig:
    """Return the preset with ``cfg.policy`` overrides and the data-tied fields filled in (see module doc)."""
    try:
        base = to_mapping(preset(cfg.preset))
    except ValueError as err:
        raise ConfigError(f"{source}: key 'preset': {err}") from err
    merged = {**base, **data_tied_fields(cfg.data), **cfg.policy}
    pc = from_mapping(PolicyConfig, merged, source, prefix="policy.")
    check_compatible(pc, cfg.data, source)
    return pc


def check_compatible(pc: PolicyConfig, data: DataConfig, source: str) -> None:
    """Raise ConfigError when a policy cannot consume the data's samples."""
    obs = data.observation
    problems = []
    if pc.chunk_len != data.horizon:
        problems.append(f"policy chunk_len={pc.chunk_len} != data.horizon={data.horizon}")
    if pc.max_dof != obs.max_dof:
        problems.append(f"policy max_dof={pc.max_dof} != data.observation.max_dof={obs.max_dof}")
    if pc.max_cameras < obs.max_cameras:
        problems.append(f"policy max_cameras={pc.max_cameras} < data.observation.max_cameras={obs.max_cameras}")
    if pc.max_instruction_len < obs.instruction_len:
        problems.append(f"policy max_instruction_len={pc.max_instruction_len} < "
                        f"data.observation.instruction_len={obs.instruction_len}")
    if pc.text_backbone != obs.tokenizer:
        problems.append(f"policy text_backbone={pc.text_backbone!r} reads tokens of its own tokenizer but "
                        f"data.observation.tokenizer={obs.tokenizer!r} (set policy.text_backbone in the "
                        f"training config; the tokenizer follows it)")
    if pc.max_prefix_steps < data.harmonic.max_delay_steps:
        problems.append(f"policy max_prefix_steps={pc.max_prefix_steps} < "
                        f"data.harmonic.max_delay_steps={data.harmonic.max_delay_steps}")
    if problems:
        raise ConfigError(f"{source}: the policy does not fit the data: {'; '.join(problems)}")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["optim.lr=1e-3", "data.batch_size=8"]`` -> {dotted key: YAML-typed value}."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        value = yaml.safe_load(text) if text else ""
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                value = float(value)
            except ValueError:
                pass
        out[key.strip()] = value
    return out


def load_train_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read a training YAML, apply ``--set`` overrides, validate (ConfigError names file and key)."""
    data = read_yaml(path)
    for dotted, value in parse_overrides(overrides or []).items():
        set_dotted(data, dotted, value)
    cfg = tie_tokenizer(from_mapping(TrainConfig, data, source=str(path)), str(path))
    policy_config(cfg, str(path))  # validate the policy part now, not after the data is loaded
    return cfg


def tie_tokenizer(cfg: TrainConfig, source: str) -> TrainConfig:
    """Return ``cfg`` whose loader tokenises instructions as the policy's text tower does: with
    ``text_backbone``'s tokenizer (``data.observation.tokenizer``), or byte tokens without one.
    """
    try:
        text = {**to_mapping(preset(cfg.preset)), **cfg.policy}.get("text_backbone", "")
    except ValueError as err:
        raise ConfigError(f"{source}: key 'preset': {err}") from err
    obs = cfg.data.observation
    if obs.tokenizer and obs.tokenizer != text:
        raise ConfigError(f"{source}: data.observation.tokenizer={obs.tokenizer!r} differs from the policy's "
                          f"text_backbone={text!r}; leave it unset, it follows the policy")
    return replace(cfg, data=replace(cfg.data, observation=replace(obs, tokenizer=text)))

