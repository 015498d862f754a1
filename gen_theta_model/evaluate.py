"""`gen-theta evaluate CHECKPOINT... --data DATASET`: validation MSE, reverse KL and the SFT/RL call.

For each checkpoint, on the held-out validation episodes of the dataset (the
split of the checkpoint's training config), and for each evaluation delay d:

* the chunk comes from ``Policy.infer`` (the function behind ``predict_chunk``, which
  the server calls) with the ground-truth first d actions as the committed prefix
  (``--no-prefix``: none, as a policy without harmonic conditioning runs asynchronously);
* MSE of the chunk over the scored steps (>= d, inside the episode) and joints, in
  canonical units and in joint units (rad^2 / m^2), next to two baselines: the
  training-mean action and "hold": repeat the last known position (the last
  committed action, or the latest joint state without a prefix);
* reverse KL(pi || N(a*, sigma^2 I)) per scored scalar (closed form for a Gaussian
  head, Monte Carlo with exact log-densities for a mixture) and the NLL;
* the SFT/RL call: low MSE and low KL -> SFT candidate; higher MSE with low KL ->
  RL candidate (diverse actions); high KL -> neither.

Writes a table per task category (stdout and ``--out``/eval.md), eval.json, and a
PNG scatter of the checkpoints in MSE-KL space.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from gen_theta_model import batch as K
from gen_theta_model.cli_args import ExtendAction
from gen_theta_model.config import ConfigError
from gen_theta_model.metrics import reverse_kl, squared_error
from gen_theta_model.policy.model import scored_steps
from gen_theta_model.policy.policy import Policy

FIELDS = ("samples", "scalars", "sq", "sq_joint", "kl", "nll", "sq_mean", "sq_hold")
ALL = "all"


@dataclass(frozen=True)
class EvalConfig:
    delays: tuple[int, ...] = (0, 7)  # 0: no prefix; 7 steps = 140 ms at 50 Hz, a typical inference delay
    sigma: float = 0.1  # canonical units (5% of a joint's range): the width of "close to the demonstration"
    kl_samples: int = 32  # Monte Carlo draws per sample for a mixture head
    mse_threshold: float = 0.01  # canonical units^2: RMS error 0.1 (5% of the range)
    kl_threshold: float = 2.0  # nats per scored scalar
    seed: int = 0  # Monte Carlo draws
    prefix: bool = True  # give the true first d actions as the committed prefix; False: no prefix, still
    # scored from step d (how a policy without harmonic conditioning runs asynchronously: naive async)

    def __post_init__(self) -> None:
        if self.sigma <= 0 or self.kl_samples < 1 or not self.delays or min(self.delays) < 0:
            raise ValueError(f"need sigma > 0, kl_samples >= 1 and delays >= 0, got {self}")


def recommend(mse: float, kl: float, cfg: EvalConfig) -> str:
    """Make the SFT/RL call for one checkpoint."""
    if kl > cfg.kl_threshold:
        return "neither (high reverse KL)"
    return "SFT candidate" if mse <= cfg.mse_threshold else "RL candidate"


def joint_half_ranges(policy: Policy) -> torch.Tensor:
    """(E, max_dof): (upper - lower) / 2 per joint of each embodiment (canonical -> joint units)."""
    out = torch.zeros(len(policy.embodiments), policy.config.max_dof)
    for i, spec in enumerate(policy.embodiments):
        out[i, : spec.dof] = torch.as_tensor((spec.upper - spec.lower) / 2.0, dtype=torch.float32)
    return out.to(policy.device)


@torch.no_grad()
def evaluate_policy(
    policy: Policy,
    batches: Iterable[dict[str, torch.Tensor]],
    embodiment_map: torch.Tensor,
    categories: Sequence[str],
    episode_category: Sequence[int],
    cfg: EvalConfig,
    max_batches: int = 0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum the metrics over ``batches``: totals (delays, categories + 1, FIELDS), and the mean over
    the batches of the training loss (``loss``) and of its auxiliary terms (``keypose_mse``,
    ``object_cm``: those the policy has; nll and mse are in the totals, at each delay).

    ``embodiment_map`` maps the dataset's EMBODIMENT_INDEX to the policy's;
    ``episode_category[EPISODE_INDEX]`` indexes ``categories``; the last category row is
    all samples. Totals are sums (samples, scalars, squared errors, KL, NLL), so
    processes can add theirs before ``summarise``.
    """
    device = policy.device
    emb_map = embodiment_map.to(device)
    ep_cat = torch.as_tensor(list(episode_category), dtype=torch.int64, device=device)
    half = joint_half_ranges(policy)
    mean_action = policy.normalizer.action_scale_shift(torch.arange(len(policy.embodiments), device=device),
                                                       policy.config.max_dof)[1]  # (E, D)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    totals = torch.zeros(len(cfg.delays), len(categories) + 1, len(FIELDS), dtype=torch.float64, device=device)
    loss_sums: dict[str, float] = {}
    n_batches = 0
    for i, raw in enumerate(batches):
        if max_batches and i >= max_batches:
            break
        batch = {k: v.to(device) for k, v in raw.items()}
        batch[K.EMBODIMENT_INDEX] = emb_map[batch[K.EMBODIMENT_INDEX]]
        loss, parts = policy.loss(batch)
        for key, value in {"loss": loss, **parts}.items():
            if key not in ("nll", "mse"):
                loss_sums[key] = loss_sums.get(key, 0.0) + float(value)
        n_batches += 1
        obs = {k: batch[k] for k in (*K.OBSERVATION_KEYS, K.EMBODIMENT_INDEX)}
        target, jmask, e = batch[K.ACTION], batch[K.JOINT_MASK], batch[K.EMBODIMENT_INDEX]
        d_pad = target.shape[-1]
        cat = ep_cat[batch[K.EPISODE_INDEX]]
        for di, d in enumerate(cfg.delays):
            given = d if cfg.prefix else 0
            chunk, dist = policy.infer(obs, target[:, :given], given)
            steps = scored_steps(torch.full_like(e, d), batch[K.ACTION_MASK])
            sq, n = squared_error(chunk, target, steps, jmask)
            sq_joint, _ = squared_error(chunk, target, steps, jmask, scale=half[e, :d_pad])
            sq_mean, _ = squared_error(mean_action[e, :d_pad][:, None].expand_as(target), target, steps, jmask)
            last = target[:, d - 1] if d > 0 else batch[K.STATE][:, -1]  # (B, D)
            sq_hold, _ = squared_error(last[:, None].expand_as(target), target, steps, jmask)
            kl = reverse_kl(dist, target, cfg.sigma, steps, jmask, cfg.kl_samples, gen)
            nll = -dist.log_prob(target, steps, jmask)
            rows = torch.stack([torch.ones_like(sq), n, sq, sq_joint, kl, nll, sq_mean, sq_hold], 1).double()
            totals[di].index_add_(0, cat, rows)
            totals[di, -1] += rows.sum(0)
    return totals.cpu(), {k: v / max(n_batches, 1) for k, v in loss_sums.items()}


def summarise(totals: torch.Tensor, categories: Sequence[str], cfg: EvalConfig) -> list[dict]:
    """Rows {delay, category, samples, mse, mse_joint, kl, nll, mse_mean_baseline, mse_hold_baseline, call}."""
    rows = []
    names = [*categories, ALL]
    for di, d in enumerate(cfg.delays):
        for ci, name in enumerate(names):
            t = dict(zip(FIELDS, totals[di, ci].tolist()))
            if t["samples"] == 0:
                continue
            n = max(t["scalars"], 1.0)
            row = {"delay": d, "category": name, "samples": int(t["samples"]), "mse": t["sq"] / n,
                   "mse_joint": t["sq_joint"] / n, "kl": t["kl"] / n, "nll": t["nll"] / n,
                   "mse_mean_baseline": t["sq_mean"] / n, "mse_hold_baseline": t["sq_hold"] / n}
            row["call"] = recommend(row["mse"], row["kl"], cfg)
            rows.append(row)
    return rows


def format_rows(title: str, rows: list[dict]) -> str:
    """Format a Markdown table of ``summarise`` rows."""
    cols = ("delay", "category", "samples", "mse", "mse_joint", "kl", "nll", "mse_mean_baseline",
            "mse_hold_baseline", "call")
    lines = [f"### {title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def scatter_plot(points: list[tuple[str, float, float]], cfg: EvalConfig, path: Path, title: str) -> None:
    """PNG of checkpoints (label, mse, kl) in MSE-KL space with the SFT/RL thresholds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for label, mse, kl in points:
        ax.scatter(mse, kl, s=40)
        ax.annotate(label, (mse, kl), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.axvline(cfg.mse_threshold, color="grey", ls="--", lw=1)
    ax.axhline(cfg.kl_threshold, color="grey", ls="--", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("validation MSE (canonical units²)")
    ax.set_ylabel(f"reverse KL to N(a*, {cfg.sigma}²I), nats/scalar")
    ax.set_title(title)
    ax.text(0.02, 0.97, "below the KL line: SFT left of the MSE line, RL right of it", transform=ax.transAxes,
            fontsize=8, color="grey", va="top")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def evaluate_checkpoint(checkpoint: str, data: list[str], cfg: EvalConfig, device: str, batch_size: int,
                        samples: int, max_batches: int) -> tuple[list[dict], dict[str, float]]:
    """Evaluate one checkpoint on the validation split of ``data``: ``summarise`` rows, and the mean
    training loss and auxiliary terms (``evaluate_policy``).
    """
    import dataclasses

    from gen_theta_model.checkpoint import load_policy, read_checkpoint_config
    from gen_theta_model.data.loader import make_dataloaders

    policy = load_policy(checkpoint, device)
    train_cfg, _, _ = read_checkpoint_config(checkpoint)
    data_cfg = dataclasses.replace(train_cfg.data, batch_size=batch_size, num_workers=0,
                                   val_samples=samples or train_cfg.data.val_samples,
                                   observation=policy.observation_config)  # the checkpoint's own tokenizer
    _, val, info = make_dataloaders(data, data_cfg)
    if len(val.sampler) == 0:
        raise ValueError(f"{data}: no validation episodes (val_fraction={data_cfg.val_fraction})")
    emb_map = policy.embodiment_map([info.specs[n] for n in info.embodiment_names])
    categories = sorted({m.category for m in info.episodes})
    ep_cat = [categories.index(m.category) for m in info.episodes]
    totals, terms = evaluate_policy(policy, val, emb_map, categories, ep_cat, cfg, max_batches)
    return summarise(totals, categories, cfg), terms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gen-theta evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", help="checkpoint or run directories")
    parser.add_argument("--data", nargs="+", action=ExtendAction, required=True,
                        help="dataset directories (validation split)")
    parser.add_argument("--delay", type=int, action="append", help="evaluation delay(s) in steps (default 0 and 7)")
    parser.add_argument("--sigma", type=float, default=EvalConfig.sigma, help="KL target std, canonical units")
    parser.add_argument("--kl-samples", type=int, default=EvalConfig.kl_samples)
    parser.add_argument("--mse-threshold", type=float, default=EvalConfig.mse_threshold)
    parser.add_argument("--kl-threshold", type=float, default=EvalConfig.kl_threshold)
    parser.add_argument("--no-prefix", action="store_true",
                        help="do not give the committed prefix (score from step d anyway): naive async")
    parser.add_argument("--samples", type=int, default=0, help="validation samples (default: the training config's)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=0, help="stop after this many batches (0: all)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", help="directory for eval.json, eval.md and mse_kl.png")
    args = parser.parse_args(argv)
    try:
        cfg = EvalConfig(delays=tuple(args.delay or EvalConfig.delays), sigma=args.sigma, kl_samples=args.kl_samples,
                         mse_threshold=args.mse_threshold, kl_threshold=args.kl_threshold,
                         prefix=not args.no_prefix)
        evaluated = {c: evaluate_checkpoint(c, args.data, cfg, args.device, args.batch_size, args.samples,
                                            args.batches) for c in args.checkpoints}
    except (ConfigError, ValueError, OSError) as err:  # CheckpointError/UnknownEmbodimentError are ValueErrors
        print(f"error: {err}", file=sys.stderr)
        return 1
    results = {c: rows for c, (rows, _) in evaluated.items()}
    # the loss terms of the training objective (object_cm: cm; 0 where the data has no object poses)
    text = "\n\n".join(format_rows(c, rows) + "\n\nvalidation loss terms: " + ", ".join(
        f"{k} {v:.4g}" for k, v in terms.items()) for c, (rows, terms) in evaluated.items())
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval.json").write_text(json.dumps(results, indent=1))
        (out / "eval.md").write_text(text + "\n")
        d = max(cfg.delays)
        points = [(Path(c).name, r["mse"], r["kl"]) for c, rows in results.items() for r in rows
                  if r["category"] == ALL and r["delay"] == d]
        scatter_plot(points, cfg, out / "mse_kl.png", f"checkpoints at delay {d}")
        print(f"wrote {out / 'eval.json'}, {out / 'eval.md'}, {out / 'mse_kl.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
