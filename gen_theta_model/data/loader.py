"""The trainer's entry to the data: ``make_dataloaders`` (docs/loader.md).

Usage::

    train, val, info = make_dataloaders(dataset_dir, DataConfig(...), rank, world_size)
    for batch in train: ...  # one epoch; dict of tensors, keys in gen_theta_model/batch.py
    state = train.state_dict()  # exact resume: train.load_state_dict(state)
"""

from __future__ import annotations

import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader

from gen_theta_model.data.dataset import EpisodeDataset
from gen_theta_model.data.episode import EpisodeMeta
from gen_theta_model.data.index import EpisodeIndex
from gen_theta_model.data.manifest import open_dataset, sum_moments
from gen_theta_model.data.sampler import (
    MixtureSampler,
    check_start_weighting,
    group_weights,
    load_mixture,
    split_episodes,
)
from gen_theta_model.data.stats import NormStats, norm_stats
from gen_theta_model.data.stream import StreamingDataset
from gen_theta_model.embodiment import EmbodimentSpec
from gen_theta_model.harmonic import HarmonicConfig
from gen_theta_model.observation import ObservationConfig


@dataclass(frozen=True)
class DataConfig:
    observation: ObservationConfig = field(default_factory=ObservationConfig)
    harmonic: HarmonicConfig = field(default_factory=HarmonicConfig)
    horizon: int = 50  # action chunk H in control steps: 1 s at 50 Hz
    batch_size: int = 32
    num_workers: int = 2
    mixture: str = "default"  # name in config/mixtures/ or a YAML path
    seed: int = 0
    samples_per_epoch: int = 0  # 0: as many as there are training samples (all ranks together)
    val_fraction: float = 0.1  # share of episodes held out (by a hash of their id)
    val_tasks: tuple[str, ...] = ()  # tasks held out entirely
    val_samples: int = 256  # validation samples, evenly spaced over the held-out episodes
    # A training sample among an episode's first `start_steps` valid steps is drawn `start_weight` times as
    # often as the others (the standing start, where the first plan is made). 1: uniform.
    start_steps: int = 0
    start_weight: float = 1.0
    augment: bool = False
    max_open_videos: int = 16  # open decoders per worker (random access; streaming keeps open_episodes x cameras)
    # Streaming: decode each frame once, shuffle through a buffer (docs/loader.md). False: every sample decoded
    # by seeking, the order exactly the sampler's: for small datasets or when batches must be i.i.d. draws.
    streaming: bool = True
    # Episodes a worker reads at a time: a batch mixes samples of at least about this many episodes.
    open_episodes: int = 16
    # Samples held per worker to shuffle from; ~85 kB each at 3 cameras 96x96, so 1024 ~ 85 MB.
    shuffle_buffer: int = 1024

    def __post_init__(self) -> None:
        if self.horizon < 1 or self.batch_size < 1 or self.num_workers < 0:
            raise ValueError(f"horizon, batch_size must be >= 1 and num_workers >= 0, got {self}")
        if self.open_episodes < 1 or self.shuffle_buffer < 1:
            raise ValueError(f"open_episodes and shuffle_buffer must be >= 1, got {self}")
        check_start_weighting(self.start_steps, self.start_weight)
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")


@dataclass
class DatasetInfo:
    """What the trainer and the checkpoint need to know about the data."""

    embodiment_names: list[str]  # EMBODIMENT_INDEX indexes this list
    specs: dict[str, EmbodimentSpec]
    norm_stats: dict[str, NormStats]  # over the training episodes
    index: EpisodeIndex  # the episodes as columns; EPISODE_INDEX indexes it
    train_episodes: list[int]
    val_episodes: list[int]
    num_train_samples: int

    @cached_property
    def episodes(self) -> list[EpisodeMeta]:
        """``EpisodeMeta`` of every episode (EPISODE_INDEX indexes this list), built on first use."""
        return self.index.metas()


def collate(samples: Sequence[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """Stack sample dicts (numpy) into a batch dict of tensors with a leading B axis."""
    return {k: torch.from_numpy(np.stack([s[k] for s in samples])) for k in samples[0]}


def start_worker(worker_id: int) -> None:
    """Set up a loader worker (``worker_init_fn``; it runs in the worker, a fresh forkserver child).

    Batches come back as named shared-memory files, not as file descriptors passed through
    multiprocessing's resource sharer: with fd passing a batch fetch once hung for good in the
    sharer's handshake (py-spy: answer_challenge, the worker idle), and a Ctrl-C that cut the
    handshake printed the sharer thread's traceback. The strategy is per process, so it is set
    here, not in the parent. Ctrl-C is the parent's to handle: it ends the workers in order.
    """
    torch.multiprocessing.set_sharing_strategy("file_system")
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class TrainLoader:
    """One epoch per ``iter``; counts consumed batches so that ``state_dict`` resumes exactly."""

    def __init__(self, dataset: EpisodeDataset, sampler: MixtureSampler, cfg: DataConfig,
                 shard_of: np.ndarray) -> None:
        self.dataset, self.sampler = dataset, sampler
        self.batch_size = cfg.batch_size
        # Workers start from a fresh server process, not forked from this one: a fork copies the
        # locks that this process's other threads (DDS, Ray, pyarrow, a rollout) hold at that
        # moment, and a worker that needs one waits forever (seen once in the test suite: a
        # worker idle in a futex, the batch never came).
        context = "forkserver" if cfg.num_workers > 0 else None
        self.stream = None
        if cfg.streaming:
            dataset.max_open_videos = max(cfg.max_open_videos, cfg.open_episodes * cfg.observation.max_cameras)
            self.stream = StreamingDataset(dataset, sampler, shard_of, cfg.batch_size, cfg.open_episodes,
                                           cfg.shuffle_buffer)
            # Not persistent: each epoch's workers get the epoch and the resume point with the dataset.
            self.loader = DataLoader(self.stream, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                                     collate_fn=collate, multiprocessing_context=context,
                                     worker_init_fn=start_worker)
        else:
            self.loader = DataLoader(
                dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                collate_fn=collate, drop_last=True, persistent_workers=cfg.num_workers > 0,
                multiprocessing_context=context, worker_init_fn=start_worker,
            )
        self.workers = max(cfg.num_workers, 1)
        self.epoch, self.batches = 0, 0

    def __len__(self) -> int:
        if self.stream is not None:
            return sum(self.stream.batches_per_worker(self.workers))
        return len(self.sampler) // self.batch_size

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        drop = 0
        if self.stream is not None:
            # Workers take turns from worker 0, so each skips the whole rounds already consumed (without
            # decoding) and the rest (fewer than 2 rounds: the last round may be uneven) is dropped here.
            rounds = min(self.batches // self.workers, min(self.stream.batches_per_worker(self.workers)))
            self.stream.epoch, self.stream.skip_batches = self.epoch, rounds
            drop = self.batches - rounds * self.workers
        else:
            self.sampler.set_epoch(self.epoch, start=self.batches * self.batch_size)
        for b in self.loader:
            if drop:
                drop -= 1
                continue
            self.batches += 1
            yield b
        self.epoch, self.batches = self.epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches": self.batches, "seed": self.sampler.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["seed"] != self.sampler.seed:
            raise ValueError(f"loader state has seed {state['seed']}, this loader {self.sampler.seed}")
        self.epoch, self.batches = int(state["epoch"]), int(state["batches"])


def load_episodes(dirs: Sequence[Path]) -> tuple[EpisodeIndex, list[str], dict[str, EmbodimentSpec], pa.Table]:
    """Index the episodes of one or more datasets from their index files alone.

    Returns (the episodes as columns, embodiment names, specs, the index rows in the same order).
    """
    indexes = [open_dataset(d) for d in dirs]
    specs: dict[str, EmbodimentSpec] = {}
    for ix in indexes:
        for name, spec in ix.specs.items():
            if name in specs and specs[name].urdf_sha256 != spec.urdf_sha256:
                raise ValueError(f"{ix.root}: embodiment '{name}' differs (URDF sha256) from another dataset's")
            specs[name] = spec
    names = sorted(specs)
    return EpisodeIndex(indexes, names), names, specs, pa.concat_tables([ix.table for ix in indexes])


def training_stats(table: pa.Table, embodiment_index: np.ndarray, names: list[str],
                   train: np.ndarray) -> dict[str, NormStats]:
    """NormStats per embodiment over the ``train`` rows ((k,) int64) of the index ``table``."""
    keep = np.zeros(len(table), bool)
    keep[train] = True
    stats = {}
    for e, name in enumerate(names):
        mine = pa.array(keep & (embodiment_index == e))
        if mine.true_count:
            stats[name] = norm_stats(name, sum_moments(table.column("state_moments").filter(mine)),
                                     sum_moments(table.column("action_moments").filter(mine)))
    return stats


def make_dataloaders(
    dataset_dirs: str | Path | Sequence[str | Path], cfg: DataConfig, rank: int = 0, world_size: int = 1
) -> tuple[TrainLoader, DataLoader, DatasetInfo]:
    """Training loader (mixture sampler, sharded by rank), validation loader and DatasetInfo.

    ``dataset_dirs``: one dataset directory or several (sub-datasets of the mixture,
    weighted by directory name). The validation loader yields the same batches on
    every call (fixed keys), this rank's share of them. Start-up works on columns of the
    index; an episode's Python objects are built when it is read (gen_theta_model/data/index.py).
    """
    dirs = [Path(dataset_dirs)] if isinstance(dataset_dirs, (str, Path)) else [Path(d) for d in dataset_dirs]
    index, names, specs, table = load_episodes(dirs)
    train_eps, val_eps = split_episodes(index.ids(), index.column("task"), cfg.val_fraction, cfg.val_tasks)
    if not train_eps:
        raise ValueError(f"{[str(d) for d in dirs]}: no training episodes (all {len(index)} held out)")
    train = np.asarray(train_eps, np.int64)
    stats = training_stats(table, index.embodiment_index, names, train)
    dataset = EpisodeDataset(
        index, [specs[n] for n in names], cfg.observation, cfg.horizon, cfg.harmonic, cfg.augment, cfg.max_open_videos
    )
    steps = index.steps()  # (n, 2): first step, number of steps
    counts = steps[train, 1] - steps[train, 0]
    groups, weights = group_weights(
        load_mixture(cfg.mixture), np.asarray(index.datasets, object)[index.dataset_index[train]],
        np.asarray(names, object)[index.embodiment_index[train]], index.column("category")[train], counts,
    )
    sampler = MixtureSampler(train, steps, groups, weights, cfg.samples_per_epoch, cfg.seed, rank, world_size,
                             cfg.start_steps, cfg.start_weight)
    loader = TrainLoader(dataset, sampler, cfg, index.shard_of)
    val_keys = validation_keys(val_eps, steps, cfg.val_samples, cfg.seed)[rank::world_size]
    # Validation sees what the server sees: no augmentation, no extra staleness.
    val_harmonic = replace(cfg.harmonic, max_staleness_s=0.0)
    val_dataset = EpisodeDataset(
        index, dataset.specs, cfg.observation, cfg.horizon, val_harmonic, False, cfg.max_open_videos
    )
    val = DataLoader(val_dataset, batch_size=cfg.batch_size, sampler=val_keys, num_workers=0, collate_fn=collate)
    info = DatasetInfo(names, specs, stats, index, train_eps, val_eps, int(counts.sum()))
    return loader, val, info


def validation_keys(episodes: Sequence[int], steps: np.ndarray, total: int, seed: int) -> list:
    """``total`` fixed keys evenly spaced over the steps of ``episodes`` (delays drawn from ``seed``).

    ``steps``: (n, 2) int64, (first step, number of steps) of every episode.
    """
    first = steps[np.asarray(episodes, np.int64), 0]
    counts = np.maximum(steps[np.asarray(episodes, np.int64), 1] - first, 0)
    if not counts.sum():
        return []
    cum = np.cumsum(counts)
    pick = np.linspace(0, cum[-1] - 1, min(total, int(cum[-1]))).round().astype(np.int64)
    m = np.searchsorted(cum, pick, side="right")
    offset = pick - np.concatenate([[0], cum[:-1]])[m]
    rng = np.random.default_rng([seed, 1 << 20])
    return [(int(episodes[i]), int(first[i] + o), int(rng.integers(0, 2**62))) for i, o in zip(m, offset)]
