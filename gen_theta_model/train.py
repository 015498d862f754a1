"""`gen-theta train CONFIG.yaml [--set key=value]... [--init-from CHECKPOINT]`: pretrain or fine-tune.

Also `ros2 run gen_theta train ...` and, on several processes or GPUs,
`torchrun --nproc_per_node N -m gen_theta_model.train CONFIG.yaml` (DDP, or FSDP
for the large presets; see gen_theta_model/distributed.py). The run directory
(``out_dir``) gets checkpoints/ (gen_theta_model/checkpoint.py), tensorboard/ and
train_log.jsonl. Re-running the same command resumes from the latest checkpoint.
docs/training.md describes the config keys and the commands.

main() reads top to bottom: setup, data, model, optimizer, loop.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from gen_theta_model import batch as K
from gen_theta_model.checkpoint import (
    CheckpointError,
    is_sharded,
    latest_checkpoint,
    load_policy,
    read_checkpoint_config,
)
from gen_theta_model.config import ConfigError
from gen_theta_model.data.loader import DatasetInfo, make_dataloaders
from gen_theta_model.distributed import (
    DistEnv,
    agree,
    autocast,
    choose_strategy,
    mean_across,
    min_across,
    no_sync,
    setup,
    sum_across,
    teardown,
    use_bf16,
    wrap_model,
)
from gen_theta_model.ema import averaged_policy, make_ema
from gen_theta_model.evaluate import EvalConfig, evaluate_policy, summarise
from gen_theta_model.policy.model_card import count_params
from gen_theta_model.policy.normalize import Normalizer
from gen_theta_model.policy.policy import Policy, UnknownEmbodimentError, build_policy
from gen_theta_model.sharding import materialise
from gen_theta_model.train_config import TrainConfig, check_compatible, load_train_config, policy_config
from gen_theta_model.train_state import Throughput, restore, save


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gen-theta train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="training YAML (config/train/*.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set optim.lr=1e-3 --set dataset=[data/sim]")
    parser.add_argument("--init-from", help="checkpoint to fine-tune from (same as --set init_from=...)")
    args = parser.parse_args(argv)
    overrides = args.set + ([f"init_from={args.init_from}"] if args.init_from else [])
    try:
        cfg = load_train_config(args.config, overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    env = setup(cfg.device)
    try:
        return train(cfg, env)
    except (ConfigError, CheckpointError, UnknownEmbodimentError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        teardown(env)


def train(cfg: TrainConfig, env: DistEnv) -> int:
    """Run (or resume) the training described by ``cfg``; 0 on success, 1 when stopped by a NaN loss."""
    # -- setup ---------------------------------------------------------------------
    run_dir = Path(cfg.out_dir)
    resume_from = latest_checkpoint(run_dir) if cfg.resume else None
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    bf16 = use_bf16(cfg.precision, env.device)
    if not cfg.dataset:
        raise ConfigError("the config names no dataset: set `dataset: [DIR, ...]` or --set dataset=[DIR]")

    # -- data ----------------------------------------------------------------------
    train_loader, val_loader, info = make_dataloaders(list(cfg.dataset), cfg.data, env.rank, env.world_size)
    specs = [info.specs[n] for n in info.embodiment_names]
    categories = sorted({m.category for m in info.episodes})
    episode_category = [categories.index(m.category) for m in info.episodes]
    rates = torch.tensor([s.control_rate_hz for s in specs], dtype=torch.float64)

    # -- model ---------------------------------------------------------------------
    source = resume_from or cfg.init_from
    n_params = count_params(read_checkpoint_config(source)[1] if source else policy_config(cfg))[0]
    strategy = choose_strategy(cfg.distributed, n_params, env)
    # FSDP from scratch or from a sharded checkpoint: built on the meta device, each rank allocates
    # and initialises only its shards (sharding.py); the weights of a resumed run come in `restore`.
    meta = strategy == "fsdp" and not cfg.init_from and (resume_from is None or is_sharded(resume_from))
    policy = make_policy(cfg, info, resume_from, torch.device("meta" if meta else "cpu"))
    emb_map = policy.embodiment_map(specs).to(env.device)  # dataset index -> policy index
    if cfg.freeze_trunk:
        policy.model.trunk.requires_grad_(False)
    if cfg.freeze_image_encoder:
        policy.model.image.requires_grad_(False)
    if meta:
        model = wrap_model(policy.model, strategy, env, bf16, cfg.activation_checkpointing)
        materialise(policy, env.device, pretrained=resume_from is None)
    else:
        policy.to(env.device)
        model = wrap_model(policy.model, strategy, env, bf16, cfg.activation_checkpointing)
    if cfg.ema_decay and strategy == "fsdp":
        raise ConfigError("ema_decay needs the whole model in each process (DDP or one process), not FSDP")
    # The average starts from the weights just built or loaded (a resumed run's served average).
    ema = make_ema(policy.model, cfg.ema_decay) if cfg.ema_decay else None
    served = averaged_policy(policy, ema) if ema else policy  # what validation measures and checkpoints serve

    # -- optimizer -----------------------------------------------------------------
    params = [p for p in policy.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.optim.weight_decay},
         {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
        lr=cfg.optim.lr, betas=cfg.optim.betas, fused=env.device.type == "cuda",
    )
    step = restore(resume_from, model, optimizer, train_loader, cfg, env, ema) if resume_from else 0
    log = RunLog(run_dir, env.master)
    log.info(f"{n_params:,} parameters ({cfg.preset if not cfg.init_from else 'from ' + cfg.init_from}), "
             f"{strategy} on {env.world_size} process(es), {env.device}, {'bf16' if bf16 else 'fp32'}; "
             f"{info.num_train_samples} training samples from {len(info.train_episodes)} episodes, "
             f"{len(info.val_episodes)} held out; " + (f"resumed at step {step}" if step else "from step 0"))

    # -- loop ----------------------------------------------------------------------
    batches = forever(train_loader)
    pbar = tqdm(total=cfg.max_steps, initial=step, disable=not (env.master and cfg.progress), dynamic_ncols=True)
    meter = Throughput()
    last_good = resume_from
    deadline = time.monotonic() + cfg.max_minutes * 60.0 if cfg.max_minutes else math.inf
    last = step >= cfg.max_steps  # a finished run that is re-run does nothing
    while not last:
        model.train()
        loss_sum = torch.zeros((), device=env.device)
        samples, experience = 0, 0.0
        for micro in range(cfg.optim.grad_accum):
            batch = {k: v.to(env.device, non_blocking=True) for k, v in next(batches).items()}
            experience += float((1.0 / rates[batch[K.EMBODIMENT_INDEX].cpu()]).sum())  # one control period each
            samples += batch[K.ACTION].shape[0]
            batch[K.EMBODIMENT_INDEX] = emb_map[batch[K.EMBODIMENT_INDEX]]
            with no_sync(model, micro == cfg.optim.grad_accum - 1), autocast(bf16, env.device):
                loss, parts = policy.loss(batch, model)
            (loss / cfg.optim.grad_accum).backward()
            loss_sum += loss.detach()
        loss_mean = float(mean_across(loss_sum / cfg.optim.grad_accum, env))
        grad_norm = float(nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip or math.inf))
        if not (math.isfinite(loss_mean) and math.isfinite(grad_norm)):  # stop before the weights are spoilt
            pbar.close()
            where = f"{last_good}" if last_good else "none written yet"
            log.error(f"non-finite loss ({loss_mean}) or gradient norm ({grad_norm}) at step {step + 1}: "
                      f"stopping; last good checkpoint: {where}")
            return 1
        lr = learning_rate(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update_parameters(policy.model)
        step += 1
        last = step >= cfg.max_steps or agree(time.monotonic() > deadline, env)
        rate = meter.update(samples * env.world_size, experience * env.world_size)
        pbar.update(1)
        pbar.set_postfix(loss=f"{loss_mean:.4f}", samples_s=f"{rate[0]:.1f}", exp_s_s=f"{rate[1]:.1f}")
        if step % cfg.log_interval == 0 or last:
            log.scalars(step, {"train/loss": loss_mean, "train/lr": lr, "train/grad_norm": grad_norm,
                               **{f"train/{k}": float(v) for k, v in parts.items()},  # nll, mse, keypose_mse
                               "perf/samples_per_s": rate[0], "perf/experience_s_per_s": rate[1]})
        metrics: dict[str, float] = {}
        if step % cfg.eval_interval == 0 or last:
            with autocast(bf16, env.device):
                metrics = validate(served, val_loader, emb_map, categories, episode_category, cfg, env)
            log.scalars(step, metrics)
            log.info(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()
                                                  if "/all/" in k or k == "val/loss"))
        if step % cfg.checkpoint_interval == 0 or last:
            last_good = save(run_dir, step, policy, cfg, model, optimizer, train_loader, metrics, env, ema)
        if metrics or step % cfg.checkpoint_interval == 0:
            meter.pause()  # validation and saving are not training throughput
    pbar.close()
    log.info(f"done: {step} steps; checkpoint {last_good}")
    return 0


def make_policy(cfg: TrainConfig, info: DatasetInfo, resume_from: Path | None, device: torch.device) -> Policy:
    """Build the policy to train: resumed, initialised from a checkpoint (SFT), or fresh from the preset.

    On the meta device only the structure is built (no weights are initialised or read).
    """
    specs = [info.specs[n] for n in info.embodiment_names]
    if resume_from is None and not cfg.init_from:
        return build_policy(policy_config(cfg), specs, info.norm_stats, cfg.data.observation, device)
    source = resume_from or cfg.init_from
    # A fine-tune may change what keeps the weights (e.g. shared_components); a resumed run is as saved.
    policy = load_policy(source, device, overrides=None if resume_from else cfg.policy)
    check_compatible(policy.config, cfg.data, f"checkpoint {source} with this config's data")
    known = {e.name for e in policy.embodiments}
    new = [s for s in specs if s.name not in known]
    if new and cfg.extend_embodiments:
        embodiments = policy.embodiments + new
        stats = {**policy.normalizer.stats, **{s.name: info.norm_stats[s.name] for s in new}}
        policy = Policy(policy.model, Normalizer([e.name for e in embodiments], stats, policy.config.max_dof),
                        embodiments, cfg.data.observation)
    elif new:
        raise UnknownEmbodimentError(
            f"checkpoint {source} was trained on {sorted(known)} and does not know "
            f"{[s.name for s in new]} of the dataset {list(cfg.dataset)}; fine-tune on data of known robots, "
            f"or set extend_embodiments: true to add them"
        )
    return policy


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """LR of optimizer step ``step`` (0-based): linear warmup, cosine decay to min_lr at decay_steps, then flat.

    A pure function of the step and the config, as in nanoGPT: resuming needs only the step.
    """
    o = cfg.optim
    return warmup_cosine(step, o.lr, o.min_lr, o.warmup_steps, cfg.decay_steps)


def warmup_cosine(step: int, lr: float, min_lr: float, warmup_steps: int, decay_steps: int) -> float:
    """LR of step ``step`` (0-based): linear warmup to ``lr`` over ``warmup_steps``, cosine decay to ``min_lr``
    at ``decay_steps``, then flat.
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = min((step - warmup_steps) / max(decay_steps - warmup_steps, 1), 1.0)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def validate(policy: Policy, val_loader: Any, emb_map: torch.Tensor, categories: list[str],
             episode_category: list[int], cfg: TrainConfig, env: DistEnv) -> dict[str, float]:
    """Validate on held-out episodes with ``predict_chunk``'s code path: val/loss, and MSE,
    KL and baselines at delay 0 and at ``cfg.validation_delay`` per category (``val/<cat>/<metric>_d<d>``).
    """
    ecfg = EvalConfig(delays=tuple(sorted({0, cfg.validation_delay})), kl_samples=8)
    n = min_across(len(val_loader), env)  # the same number of batches on every rank (FSDP collectives)
    if cfg.eval_batches:
        n = min(n, cfg.eval_batches)
    if n == 0:
        return {}
    policy.model.eval()
    totals, losses = evaluate_policy(policy, val_loader, emb_map, categories, episode_category, ecfg, n)
    policy.model.train()
    totals = sum_across(totals.to(env.device), env).cpu()
    # val/loss and the auxiliary terms (val/keypose_mse, val/object_cm) where the policy has them
    out = {f"val/{k}": float(mean_across(torch.tensor(v, device=env.device), env)) for k, v in losses.items()}
    for row in summarise(totals, categories, ecfg):
        for key in ("mse", "mse_joint", "kl", "mse_mean_baseline", "mse_hold_baseline"):
            out[f"val/{row['category']}/{key}_d{row['delay']}"] = row[key]
    return out


def forever(loader: Any):
    """Batches of ``loader``, epoch after epoch."""
    while True:
        yield from loader


class RunLog:
    """Messages and scalars of the master process: stdout, TensorBoard and ``train_log.jsonl``."""

    def __init__(self, run_dir: Path, master: bool) -> None:
        self.master = master
        self.writer = None
        if master:
            from torch.utils.tensorboard import SummaryWriter

            run_dir.mkdir(parents=True, exist_ok=True)
            self.writer = SummaryWriter(str(run_dir / "tensorboard"))
            self.path = run_dir / "train_log.jsonl"

    def info(self, text: str) -> None:
        if self.master:
            tqdm.write(text)

    def error(self, text: str) -> None:
        if self.master:
            print(f"error: {text}", file=sys.stderr)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.master or not values:
            return
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")


if __name__ == "__main__":
    sys.exit(main())
