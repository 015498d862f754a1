"""The trainer's entry to the data: ``make_dataloaders`` (docs/loader.md).

Usage::

    train, val, info = make_dataloaders(dataset_dir, DataConfig(...), rank, world_size)
    for batch in train: ...  # one epoch; dict of tensors, keys in gen_theta_model/batch.py
    state = train.state_dict()  # exact resume: train.load_state_dict(state)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch.utils.data import DataLoader

from gen_theta_model.data.dataset import EpisodeDataset, EpisodeRef
from gen_theta_model.data.episode import CameraInfo, EpisodeMeta
from gen_theta_model.data.manifest import open_dataset, sum_moments
from gen_theta_model.data.sampler import MixtureSampler, group_weights, load_mixture, split_episodes
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
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")


@dataclass
class DatasetInfo:
    """What the trainer and the checkpoint need to know about the data."""

    embodiment_names: list[str]  # EMBODIMENT_INDEX indexes this list
    specs: dict[str, EmbodimentSpec]
    norm_stats: dict[str, NormStats]  # over the training episodes
    episodes: list[EpisodeMeta]  # EPISODE_INDEX indexes this list
    train_episodes: list[int]
    val_episodes: list[int]
    num_train_samples: int


def collate(samples: Sequence[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """Stack sample dicts (numpy) into a batch dict of tensors with a leading B axis."""
    return {k: torch.from_numpy(np.stack([s[k] for s in samples])) for k in samples[0]}


class TrainLoader:
    """One epoch per ``iter``; counts consumed batches so that ``state_dict`` resumes exactly."""

    def __init__(self, dataset: EpisodeDataset, sampler: MixtureSampler, cfg: DataConfig,
                 shard_of: np.ndarray) -> None:
        self.dataset, self.sampler = dataset, sampler
        self.batch_size = cfg.batch_size
        if cfg.num_workers > 0:
            # Workers hand batches over as named shared-memory files, not as file descriptors
            # passed through multiprocessing's resource sharer: with fd passing, a batch fetch
            # in a process that had other threads when it forked the workers once hung for good
            # in the sharer's handshake (py-spy: answer_challenge, the worker idle).
            torch.multiprocessing.set_sharing_strategy("file_system")
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
                                     collate_fn=collate, multiprocessing_context=context)
        else:
            self.loader = DataLoader(
                dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                collate_fn=collate, drop_last=True, persistent_workers=cfg.num_workers > 0,
                multiprocessing_context=context,
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


def load_episodes(dirs: Sequence[Path]) -> tuple[list[EpisodeRef], list[str], dict[str, EmbodimentSpec], pa.Table]:
    """Index the episodes of one or more datasets from their index files alone.

    Returns (refs, embodiment names, specs, the index rows in ref order).
    """
    indexes = [open_dataset(d) for d in dirs]
    specs: dict[str, EmbodimentSpec] = {}
    for ix in indexes:
        for name, spec in ix.specs.items():
            if name in specs and specs[name].urdf_sha256 != spec.urdf_sha256:
                raise ValueError(f"{ix.root}: embodiment '{name}' differs (URDF sha256) from another dataset's")
            specs[name] = spec
    names = sorted(specs)
    refs = []
    for ix in indexes:
        t = ix.table
        shards = {s: ix.root / s for s in pc.unique(t.column("shard")).to_pylist()}
        cams = t.column("cameras").combine_chunks()
        flat = cams.flatten()  # every camera row of every episode, fields in CameraInfo's order
        infos = [CameraInfo(*v) for v in zip(*(flat.field(i).to_pylist() for i in range(flat.type.num_fields)))]
        ends = cams.offsets.to_numpy() - cams.offsets[0].as_py()  # flatten() starts at the first row
        cols = zip(t.column("shard").to_pylist(), ends[:-1].tolist(), ends[1:].tolist(),
                   t.column("num_steps").to_pylist(), t.column("first_step").to_pylist())
        for meta, (shard, lo, hi, steps, first) in zip(ix.episodes, cols):
            refs.append(EpisodeRef(shards[shard], meta, ix.root.name, names.index(meta.embodiment), infos[lo:hi],
                                   steps, first))
    table = pa.concat_tables([ix.table for ix in indexes]) if indexes else None
    return refs, names, specs, table


def make_dataloaders(
    dataset_dirs: str | Path | Sequence[str | Path], cfg: DataConfig, rank: int = 0, world_size: int = 1
) -> tuple[TrainLoader, DataLoader, DatasetInfo]:
    """Training loader (mixture sampler, sharded by rank), validation loader and DatasetInfo.

    ``dataset_dirs``: one dataset directory or several (sub-datasets of the mixture,
    weighted by directory name). The validation loader yields the same batches on
    every call (fixed keys), this rank's share of them.
    """
    dirs = [Path(dataset_dirs)] if isinstance(dataset_dirs, (str, Path)) else [Path(d) for d in dataset_dirs]
    refs, names, specs, table = load_episodes(dirs)
    ids = [f"{r.dataset}/{r.meta.episode}" for r in refs]
    train_eps, val_eps = split_episodes(ids, [r.meta.task for r in refs], cfg.val_fraction, cfg.val_tasks)
    if not train_eps:
        raise ValueError(f"{[str(d) for d in dirs]}: no training episodes (all {len(refs)} held out)")
    train_rows = table.select(["embodiment", "state_moments", "action_moments"]).take(pa.array(train_eps, pa.int64()))
    stats = {}
    for name in names:
        mine = train_rows.filter(pc.equal(train_rows.column("embodiment"), name))
        if len(mine):
            stats[name] = norm_stats(name, sum_moments(mine.column("state_moments")),
                                     sum_moments(mine.column("action_moments")))
    dataset = EpisodeDataset(
        refs, [specs[n] for n in names], cfg.observation, cfg.horizon, cfg.harmonic, cfg.augment, cfg.max_open_videos
    )
    steps = [(r.first_step, r.num_steps) for r in refs]
    mixture = load_mixture(cfg.mixture)
    tr = [refs[i] for i in train_eps]
    groups, weights = group_weights(
        mixture, [r.dataset for r in tr], [r.meta.embodiment for r in tr], [r.meta.category for r in tr],
        [r.num_steps - r.first_step for r in tr],
    )
    sampler = MixtureSampler(train_eps, steps, groups, weights, cfg.samples_per_epoch, cfg.seed, rank, world_size)
    shard_names: dict[Path, int] = {}
    shard_of = np.array([shard_names.setdefault(r.path, len(shard_names)) for r in refs], np.int64)
    train = TrainLoader(dataset, sampler, cfg, shard_of)
    val_keys = validation_keys(val_eps, steps, cfg.val_samples, cfg.seed)[rank::world_size]
    val_dataset = EpisodeDataset(
        refs, dataset.specs, cfg.observation, cfg.horizon, cfg.harmonic, False, cfg.max_open_videos
    )
    val = DataLoader(val_dataset, batch_size=cfg.batch_size, sampler=val_keys, num_workers=0, collate_fn=collate)
    info = DatasetInfo(names, specs, stats, [r.meta for r in refs], train_eps, val_eps,
                       sum(s[1] - s[0] for s in (steps[i] for i in train_eps)))
    return train, val, info


def validation_keys(episodes: Sequence[int], steps: Sequence[tuple[int, int]], total: int, seed: int) -> list:
    """``total`` fixed keys evenly spaced over the steps of ``episodes`` (delays drawn from ``seed``)."""
    counts = np.array([max(steps[e][1] - steps[e][0], 0) for e in episodes], np.int64)
    if not counts.sum():
        return []
    cum = np.cumsum(counts)
    pick = np.linspace(0, cum[-1] - 1, min(total, int(cum[-1]))).round().astype(np.int64)
    m = np.searchsorted(cum, pick, side="right")
    offset = pick - np.concatenate([[0], cum[:-1]])[m]
    rng = np.random.default_rng([seed, 1 << 20])
    return [(int(episodes[i]), int(steps[episodes[i]][0] + o), int(rng.integers(0, 2**62))) for i, o in zip(m, offset)]
