"""Data mixtures, train/validation splits and the deterministic, resumable sampler.

A mixture (config/mixtures/*.yaml) weights groups of samples. A group is a
(sub-dataset, embodiment, category) triple; the probability of drawing from a
group is proportional to ``w_dataset * w_embodiment * w_category * n ** size_exponent``
(n = samples in the group), and samples within a group are uniform. With every
weight 1 and ``size_exponent: 1`` this is plain uniform sampling over samples;
``size_exponent: 0`` balances the groups. Within a group, the samples of each episode's
first ``start_steps`` steps may weigh ``start_weight`` times the others (the standing
start, where the policy's first plan is made from a robot at rest).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
from torch.utils.data import Sampler

from gen_theta_model.config import load_config, resolve_path


@dataclass(frozen=True)
class Mixture:
    datasets: dict[str, float] = field(default_factory=dict)  # sub-dataset directory name -> weight
    embodiments: dict[str, float] = field(default_factory=dict)
    categories: dict[str, float] = field(default_factory=dict)
    size_exponent: float = 1.0  # 1: groups weighted by their size too; 0: balanced groups
    default_weight: float = 1.0  # weight of a name the mixture does not list

    def __post_init__(self) -> None:
        for key in ("datasets", "embodiments", "categories"):
            for name, w in getattr(self, key).items():
                if w < 0:
                    raise ValueError(f"{key}.{name}: weight must be >= 0, got {w}")
        if self.default_weight < 0 or self.size_exponent < 0:
            raise ValueError("default_weight and size_exponent must be >= 0")

    def weight(self, dataset: str, embodiment: str, category: str) -> float:
        d = self.default_weight
        return self.datasets.get(dataset, d) * self.embodiments.get(embodiment, d) * self.categories.get(category, d)


def check_start_weighting(start_steps: int, start_weight: float) -> None:
    """Raise ValueError unless start_steps >= 0 (steps) and start_weight > 0 (a sampling ratio)."""
    if start_steps < 0 or start_weight <= 0:
        raise ValueError(f"start_steps must be >= 0 and start_weight > 0, got {start_steps}, {start_weight}")


def load_mixture(path: str | Path) -> Mixture:
    """Load a mixture YAML (a path, or a name under config/mixtures/)."""
    p = Path(path)
    if p.suffix not in (".yaml", ".yml"):
        p = Path("config/mixtures") / f"{path}.yaml"
    return load_config(Mixture, resolve_path(p))


def split_episodes(
    ids: Sequence[str], tasks: Sequence[str], val_fraction: float, val_tasks: Sequence[str]
) -> tuple[list[int], list[int]]:
    """Split episode indices into (train, validation).

    Validation holds every episode of a task in ``val_tasks`` (held-out tasks) and a
    ``val_fraction`` of the others chosen by a hash of the episode id (held-out
    episodes: stable when the dataset grows); at least one if the fraction is > 0.
    """
    digests = b"".join(hashlib.sha256(i.encode()).digest()[:8] for i in ids)
    score = np.frombuffer(digests, ">u8").astype(np.float64) / 2**64  # (n,) in [0, 1)
    held = np.isin(np.asarray(tasks, object), list(val_tasks)) if len(val_tasks) else np.zeros(len(ids), bool)
    val = held | (score < val_fraction)
    rest = np.flatnonzero(~val)
    if val_fraction > 0 and len(rest) > 1 and not (val & ~held).any():
        val[rest[np.argmin(score[rest])]] = True  # the first lowest score, as min() picks it
    return np.flatnonzero(~val).tolist(), np.flatnonzero(val).tolist()


class MixtureSampler(Sampler):
    """Yields ``(episode, step, seed)`` keys for this rank, deterministic in (seed, epoch).

    ``episode_steps[i]`` = (first valid step, number of steps) of episode i (an (n, 2)
    array or a list of pairs), ``groups`` the group id of each of ``episodes`` and
    ``group_weights`` the mixture weight per group. Each epoch draws ``samples_per_epoch``
    keys for all ranks together (rounded up to a multiple of ``world_size``); rank r takes
    every world_size-th from r. A key among an episode's first ``start_steps`` valid steps is
    ``start_weight`` times as likely as any other of its group. ``set_epoch(epoch, start)``
    picks the epoch and skips ``start`` keys (exact resume).
    """

    def __init__(
        self,
        episodes: Sequence[int],
        episode_steps: np.ndarray | Sequence[tuple[int, int]],
        groups: np.ndarray | Sequence[int],
        group_weights: dict[int, float],
        samples_per_epoch: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        start_steps: int = 0,
        start_weight: float = 1.0,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        check_start_weighting(start_steps, start_weight)
        self.episodes = np.asarray(episodes, dtype=np.int64)
        steps = np.asarray(episode_steps, dtype=np.int64).reshape(-1, 2)[self.episodes]
        first, count = steps[:, 0], steps[:, 1] - steps[:, 0]
        keep = count > 0
        self.episodes, self.first, self.count = self.episodes[keep], first[keep], count[keep]
        self.group_of = np.asarray(groups, dtype=np.int64)[keep] if len(groups) else np.zeros(0, np.int64)
        # Sampling mass of each episode: its first `start_steps` steps weigh `start_weight` each, the rest 1.
        self.start_weight = float(start_weight)
        self.head_steps = np.minimum(self.count, start_steps)
        self.mass = self.count + (self.start_weight - 1.0) * self.head_steps
        self.group_ids = np.unique(self.group_of).tolist()
        mass = np.array([group_weights.get(g, 0.0) for g in self.group_ids], dtype=np.float64)
        if not len(mass) or mass.sum() <= 0:
            raise ValueError("the mixture gives every group weight 0 (or there are no samples)")
        self.group_p = mass / mass.sum()
        total = int(self.count.sum())
        per_rank = -(-(samples_per_epoch or total) // world_size)
        self.num_samples = per_rank
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.num_samples

    def keys(self, epoch: int) -> np.ndarray:
        """(num_samples, 3) int64 keys of this rank for ``epoch``."""
        return self.all_keys(epoch)[self.rank :: self.world_size]

    def all_keys(self, epoch: int) -> np.ndarray:
        """(num_samples * world_size, 3) int64 keys of every rank for ``epoch``: (episode, step, seed)."""
        rng = np.random.default_rng([self.seed, epoch])
        n = self.num_samples * self.world_size
        group = rng.choice(len(self.group_ids), size=n, p=self.group_p)
        u = rng.random(n)
        seeds = rng.integers(0, 2**62, size=n)
        out = np.zeros((n, 3), dtype=np.int64)
        for gi, g in enumerate(self.group_ids):
            sel = np.nonzero(group == gi)[0]
            members = np.nonzero(self.group_of == g)[0]
            if self.start_weight == 1.0:  # integer arithmetic: the keys do not depend on float rounding
                cum = np.cumsum(self.count[members])
                flat = np.minimum((u[sel] * cum[-1]).astype(np.int64), cum[-1] - 1)
                m = np.searchsorted(cum, flat, side="right")
                offset = flat - np.concatenate([[0], cum[:-1]])[m]
            else:
                cum = np.cumsum(self.mass[members])
                flat = u[sel] * cum[-1]
                m = np.minimum(np.searchsorted(cum, flat, side="right"), len(members) - 1)
                within = flat - np.concatenate([[0.0], cum[:-1]])[m]  # mass into episode m
                head = self.head_steps[members[m]] * self.start_weight  # mass of its weighted first steps
                offset = np.where(within < head, within / self.start_weight,
                                  self.head_steps[members[m]] + (within - head)).astype(np.int64)
                offset = np.clip(offset, 0, self.count[members[m]] - 1)
            out[sel, 0] = self.episodes[members[m]]
            out[sel, 1] = self.first[members[m]] + offset
        out[:, 2] = seeds
        return out

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        keys = self.keys(self.epoch)
        start, self.start = self.start, 0
        for k in keys[start:]:
            yield int(k[0]), int(k[1]), int(k[2])


def group_weights(
    mixture: Mixture, datasets: Sequence[str], embodiments: Sequence[str], categories: Sequence[str],
    counts: np.ndarray | Sequence[int],
) -> tuple[np.ndarray, dict[int, float]]:
    """Per-episode group ids ((n,) int64, numbered in order of first appearance) and the mixture mass of each
    group (see module docstring); the four arguments are one entry per episode.
    """
    n = len(counts)
    code = np.zeros(n, np.int64)  # one integer per (dataset, embodiment, category) triple
    for names in (datasets, embodiments, categories):
        encoded = pa.array(np.asarray(names, object), pa.string()).dictionary_encode()
        code = code * len(encoded.dictionary) + encoded.indices.to_numpy()
    _, first, inverse = np.unique(code, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank = np.empty(len(first), np.int64)
    rank[order] = np.arange(len(first))
    groups = rank[inverse.reshape(n)]
    sizes = np.bincount(groups, weights=np.asarray(counts, np.float64), minlength=len(first))
    weights = {}
    for g, i in enumerate(first[order].tolist()):
        w = mixture.weight(datasets[i], embodiments[i], categories[i])
        weights[g] = w * float(sizes[g]) ** mixture.size_exponent if sizes[g] > 0 else 0.0
    return groups, weights
