"""Self-describing checkpoints: one directory rebuilds the policy, or resumes the run exactly.

Layout of a run directory (``TrainConfig.out_dir``)::

    checkpoints/
      latest                      name of the newest complete checkpoint (text, replaced atomically)
      step_00001000/
        config.yaml               {train: TrainConfig, policy: PolicyConfig, step, metrics, torch}
        model.safetensors         model weights, fp32, full (unsharded) names of the bare nn.Module;
                                  with ``ema_decay`` the averaged weights (what serves)
        model_raw.safetensors     with ``ema_decay`` only: the optimizer's own weights (a resume continues them)
        norm_stats/<robot>.json   NormStats per embodiment (and .safetensors, exact float32)
        embodiments.yaml          [EmbodimentSpec.to_dict()] in the policy's embodiment order
        training_state.pt         optimizer, LR scheduler, RNG states, loader position, step
                                  (tensors and plain types only: loaded with weights_only=True)
        backbones/{vision,text}/  pretrained towers only: config.json, image processor, tokenizer
                                  (their weights are in model.safetensors; loading reads no network)

A run sharded with FSDP writes ``sharded/`` instead of ``model.safetensors`` and keeps the
optimizer there too: a torch.distributed.checkpoint (DCP) directory in which every rank
wrote its own shards (gen_theta_model/sharded_checkpoint.py). ``load_policy`` reads both
formats; ``gen-theta checkpoint consolidate`` turns a sharded one into the serving format.

A checkpoint is written into ``checkpoints/.tmp-<name>`` and renamed into place when
complete; ``latest`` is updated after the rename. A crash at any point leaves the
previous checkpoint and ``latest`` intact; stale ``.tmp-*`` directories are removed
by the next save. ``load_policy`` is the one loader used by the trainer
(``--init-from``), evaluation and the policy server.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import yaml
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.api import CheckpointException

from gen_theta_model.config import ConfigError, from_mapping, read_yaml, to_mapping
from gen_theta_model.data.stats import NormStats
from gen_theta_model.embodiment import EmbodimentSpec
from gen_theta_model.observation import ObservationConfig
from gen_theta_model.policy.backbones import BACKBONES, TEXT, save_backbones
from gen_theta_model.policy.config import PolicyConfig
from gen_theta_model.policy.model import HarmonicTransformer
from gen_theta_model.policy.normalize import Normalizer
from gen_theta_model.policy.policy import Policy
from gen_theta_model.train_config import TrainConfig

CHECKPOINTS = "checkpoints"
LATEST = "latest"
CONFIG = "config.yaml"
MODEL = "model.safetensors"
RAW_MODEL = "model_raw.safetensors"  # the optimizer's weights of a run that serves their EMA (gen_theta_model/ema.py)
NORM_STATS = "norm_stats"
EMBODIMENTS = "embodiments.yaml"
TRAINING_STATE = "training_state.pt"
SHARDED = "sharded"  # DCP directory: model and optimizer state, one file per rank plus .metadata
_STEP_DIR = re.compile(r"^step_(\d{8,})$")


class CheckpointError(ValueError):
    """A path is not a (complete) checkpoint; the message names it and what is missing."""


def stage_checkpoint(run_dir: str | Path, step: int) -> Path:
    """Make the empty staging directory of checkpoint ``step`` (removing stale ones); returns it."""
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale)
    tmp = staging_dir(run_dir, step)
    tmp.mkdir()
    return tmp


def staging_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f".tmp-step_{step:08d}"


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    policy: Policy,
    train_cfg: TrainConfig,
    model_state: dict[str, torch.Tensor] | None,
    training_state: dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
    keep: int = 2,
    raw_model_state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write checkpoint ``step`` of ``run_dir`` atomically; returns its directory.

    ``model_state`` is the full state dict of the bare model (the weights that serve), or None
    when the weights are already in the staging directory's ``sharded/`` (written by every rank
    with DCP after ``stage_checkpoint``). ``raw_model_state``: the optimizer's weights when
    ``model_state`` is their moving average. Older checkpoints beyond the newest ``keep`` are removed.
    """
    root = Path(run_dir) / CHECKPOINTS
    tmp = stage_checkpoint(run_dir, step) if model_state is not None else staging_dir(run_dir, step)
    _write_files(tmp, step, policy, train_cfg, model_state, training_state, metrics)
    if raw_model_state is not None:
        _save_weights(raw_model_state, tmp / RAW_MODEL, step)
    _fsync_tree(tmp)
    name = f"step_{step:08d}"
    final = root / name
    if final.exists():  # the same step saved again (a resumed run): swap it out
        old = root / f".tmp-old-{name}"
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)
    _write_text(root / LATEST, name + "\n")
    _fsync_dir(root)
    for old in list_checkpoints(run_dir)[:-keep]:
        if old != final:
            shutil.rmtree(old)
    return final


def export_checkpoint(out: str | Path, step: int, policy: Policy, train_cfg: TrainConfig,
                      metrics: dict[str, float] | None = None) -> Path:
    """Write ``policy`` as one serving checkpoint directory ``out`` (no training state), atomically."""
    out = Path(out)
    if out.exists():
        raise CheckpointError(f"{out} exists; name a new directory")
    tmp = out.with_name(f".tmp-{out.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    _write_files(tmp, step, policy, train_cfg, policy.model.state_dict(), None, metrics)
    _fsync_tree(tmp)
    tmp.rename(out)
    _fsync_dir(out.parent)
    return out


def _write_files(directory: Path, step: int, policy: Policy, train_cfg: TrainConfig,
                 model_state: dict[str, torch.Tensor] | None, training_state: dict[str, Any] | None,
                 metrics: dict[str, float] | None) -> None:
    doc = {
        "train": to_mapping(train_cfg),
        "policy": to_mapping(policy.config),
        "step": int(step),
        "metrics": {k: float(v) for k, v in (metrics or {}).items()},
        "torch": str(torch.__version__),
    }
    _write_text(directory / CONFIG, yaml.safe_dump(doc, sort_keys=False))
    _write_text(directory / EMBODIMENTS, yaml.safe_dump([e.to_dict() for e in policy.embodiments], sort_keys=False))
    if model_state is not None:
        _save_weights(model_state, directory / MODEL, step)
    save_backbones(policy.model, directory / BACKBONES)
    for stats in policy.normalizer.stats.values():
        stats.save(directory / NORM_STATS)
    if training_state is not None:
        torch.save(training_state, directory / TRAINING_STATE)


def _save_weights(state: dict[str, torch.Tensor], path: Path, step: int) -> None:
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}
    save_file(tensors, str(path), metadata={"format": "pt", "step": str(step)})


def read_raw_weights(path: str | Path) -> dict[str, torch.Tensor] | None:
    """Return the optimizer's weights of a checkpoint that serves their moving average, else None."""
    file = resolve_checkpoint(path) / RAW_MODEL
    return load_file(str(file)) if file.is_file() else None


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoint directories of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name) and _has_weights(p)]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """Return the checkpoint ``checkpoints/latest`` names (the newest complete one if it is gone), or None."""
    root = Path(run_dir) / CHECKPOINTS
    marker = root / LATEST
    if marker.is_file():
        named = root / marker.read_text().strip()
        if _has_weights(named):
            return named
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def resolve_checkpoint(path: str | Path) -> Path:
    """Resolve a checkpoint directory, or a run directory (its latest checkpoint), to the checkpoint directory."""
    p = Path(path)
    if _has_weights(p) and (p / CONFIG).is_file():
        return p
    latest = latest_checkpoint(p) or (latest_checkpoint(p.parent) if p.name == CHECKPOINTS else None)
    if latest is not None:
        return latest
    if not p.exists():
        raise CheckpointError(f"{p}: no such checkpoint or run directory")
    raise CheckpointError(f"{p}: not a checkpoint (no {MODEL} or {SHARDED}/, and {CONFIG}) and holds no {CHECKPOINTS}/")


def is_sharded(path: str | Path) -> bool:
    """Tell whether the checkpoint (or a run's latest) keeps its weights sharded (DCP ``sharded/``)."""
    ckpt = resolve_checkpoint(path)
    return not (ckpt / MODEL).is_file() and (ckpt / SHARDED / ".metadata").is_file()


def _has_weights(p: Path) -> bool:
    return (p / MODEL).is_file() or (p / SHARDED / ".metadata").is_file()


def read_checkpoint_config(path: str | Path) -> tuple[TrainConfig, PolicyConfig, dict[str, Any]]:
    """(TrainConfig, PolicyConfig, the whole config.yaml) of a checkpoint."""
    ckpt = resolve_checkpoint(path)
    doc = read_yaml(ckpt / CONFIG)
    source = str(ckpt / CONFIG)
    for key in ("train", "policy"):
        if key not in doc:
            raise ConfigError(f"{source}: missing section '{key}'")
    return from_mapping(TrainConfig, doc["train"], source), from_mapping(PolicyConfig, doc["policy"], source), doc


def load_embodiments(path: str | Path) -> list[EmbodimentSpec]:
    """Read the embodiment specs a checkpoint was trained on, in the policy's order."""
    ckpt = resolve_checkpoint(path)
    try:
        docs = yaml.safe_load((ckpt / EMBODIMENTS).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise CheckpointError(f"{ckpt / EMBODIMENTS}: cannot read: {err}") from err
    return [EmbodimentSpec.from_dict(d) for d in docs]


def observation_config(path: str | Path) -> ObservationConfig:
    """How the policy of a checkpoint wants its observations built: the training data's config, with
    the tokenizer saved in the checkpoint where the policy has a text tower.
    """
    ckpt = resolve_checkpoint(path)
    return _with_saved_tokenizer(ckpt, read_checkpoint_config(ckpt)[0].data.observation)


def _with_saved_tokenizer(ckpt: Path, obs: ObservationConfig) -> ObservationConfig:
    return dataclasses.replace(obs, tokenizer=str(ckpt / BACKBONES / TEXT)) if obs.tokenizer else obs


def load_policy(checkpoint_dir: str | Path, device: str | torch.device = "cpu",
                overrides: dict[str, Any] | None = None) -> Policy:
    """Rebuild the policy of a checkpoint (or a run's latest) on ``device``, in eval mode.

    A sharded checkpoint is read whole into this process (no process group needed).
    On the meta device only the structure is built: no weights are read.
    ``overrides``: PolicyConfig fields to change (a fine-tune's ``policy``); only those that keep
    every weight's shape (e.g. ``shared_components``, ``image_shift``, ``dropout``), else CheckpointError.
    """
    ckpt = resolve_checkpoint(checkpoint_dir)
    train_cfg, policy_cfg, _ = read_checkpoint_config(ckpt)
    if overrides:
        policy_cfg = from_mapping(PolicyConfig, {**to_mapping(policy_cfg), **overrides}, f"{ckpt}: overrides",
                                  prefix="policy.")
    specs = load_embodiments(ckpt)
    stats = {}
    for spec in specs:
        path = ckpt / NORM_STATS / f"{spec.name}.safetensors"
        if not path.is_file():
            raise CheckpointError(f"{ckpt}: no normalisation statistics for embodiment '{spec.name}' ({path})")
        stats[spec.name] = NormStats.load(path)
    if (policy_cfg.vision_backbone or policy_cfg.text_backbone) and not (ckpt / BACKBONES).is_dir():
        raise CheckpointError(f"{ckpt}: the policy has pretrained towers but the checkpoint lacks their configs "
                              f"({BACKBONES}/; written by save_checkpoint)")
    meta = torch.device(device).type == "meta"
    with torch.device("meta" if meta else "cpu"):
        model = HarmonicTransformer(policy_cfg, ckpt / BACKBONES)
    if not meta:
        _load_weights(ckpt, model)
    policy = Policy(model, Normalizer([s.name for s in specs], stats, policy_cfg.max_dof), specs,
                    observation=_with_saved_tokenizer(ckpt, train_cfg.data.observation))
    model.eval()
    return policy if meta else policy.to(device)  # a meta policy's statistics stay on the CPU


def _load_weights(ckpt: Path, model: HarmonicTransformer) -> None:
    if not (ckpt / MODEL).is_file():  # DCP: the shards of every rank, read into this process's full tensors
        try:
            load_sharded_state({"model": model.state_dict()}, ckpt)
        except CheckpointException as err:  # a BaseException: wraps missing or misshapen keys
            raise CheckpointError(f"{ckpt / SHARDED}: weights do not match the config: {err}") from None
        return
    try:
        missing, unexpected = model.load_state_dict(load_file(str(ckpt / MODEL)), strict=False)
    except RuntimeError as err:  # misshapen tensors: the config (or its overrides) is another architecture
        raise CheckpointError(f"{ckpt / MODEL}: weights do not match the config: {err}") from None
    if missing or unexpected:
        raise CheckpointError(
            f"{ckpt / MODEL}: weights do not match the config (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )


def load_sharded_state(state: dict[str, Any], ckpt: Path) -> None:
    """Fill ``state`` (nested dicts of tensors, sharded or whole) in place from checkpoint ``ckpt``'s ``sharded/``.

    Collective when a process group exists (every process reads the parts it holds), else in this process alone.
    """
    alone = not (dist.is_available() and dist.is_initialized())
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.filterwarnings("ignore", message=".*single process", category=UserWarning)
        dcp.load(state, checkpoint_id=ckpt / SHARDED, no_dist=alone)


def load_training_state(path: str | Path) -> dict[str, Any]:
    """Read the training state of a checkpoint (optimizer, scheduler, RNG, loader, step)."""
    ckpt = resolve_checkpoint(path)
    file = ckpt / TRAINING_STATE
    if not file.is_file():
        raise CheckpointError(f"{ckpt}: no {TRAINING_STATE}; this checkpoint can initialise, not resume, a run")
    return torch.load(file, map_location="cpu", weights_only=True)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_tree(root: Path) -> None:
    for p in sorted(root.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    for d in [root, *[p for p in root.rglob("*") if p.is_dir()]]:
        _fsync_dir(d)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
