"""Streaming reads: each frame decoded once, samples served from a shuffle buffer.

An epoch's keys come from the same ``MixtureSampler`` as in random access (so
mixture weights and the per-sample seeds are the same). They are then put in
reading order: shards in a seeded random order, episodes in file order within a
shard, steps in time order within an episode. Ranks take contiguous, equal parts of
that list (so each reads about 1/world_size of the shards) and DataLoader workers
contiguous parts of their rank's part, in whole batches. A worker reads
``open_episodes`` episodes at a time, each with a decoder of its own that only
decodes forward, takes the next sample from one of them at random, and puts it
into a shuffle buffer of ``shuffle_buffer`` samples from which a random one comes
out (the scheme of WebDataset and MosaicML streaming). Every key of the epoch is
served exactly once across ranks and workers.

The whole order is a function of (seed, epoch, rank, worker) and of the keys, not
of what is decoded, so a resumed run skips the samples it had consumed without
decoding them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from gen_theta_model.data.dataset import EpisodeDataset
from gen_theta_model.data.sampler import MixtureSampler


def reading_order(keys: np.ndarray, shard_of: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``keys`` (n, 3) sorted into reading order: shards shuffled, then episode index, then step.

    ``shard_of[e]`` is the shard number of episode e; episode indices follow file order within a shard.
    """
    rank = rng.permutation(int(shard_of.max()) + 1)
    return keys[np.lexsort((keys[:, 1], keys[:, 0], rank[shard_of[keys[:, 0]]]))]


def parts(n: int, count: int, unit: int = 1) -> list[tuple[int, int]]:
    """Split ``range(n)`` into ``count`` contiguous [lo, hi) ranges of whole ``unit``s (the remainder dropped)."""
    units = n // unit
    return [(units * i // count * unit, units * (i + 1) // count * unit) for i in range(count)]


@dataclass
class Schedule:
    """What one worker does in an epoch: keys in decode order, their decoder slots, and the output order."""

    keys: np.ndarray  # (n, 3) in the order they are decoded (inserted into the buffer)
    slots: np.ndarray  # (n,) decoder slot of each
    emit: np.ndarray  # (n,) position (into ``keys``) of the i-th sample to come out
    emit_after: np.ndarray  # (n,) how many samples are inserted before the i-th comes out


def schedule(keys: np.ndarray, open_episodes: int, buffer: int, rng: np.random.Generator) -> Schedule:
    """Interleave the episodes of ``keys`` (reading order) ``open_episodes`` at a time, then shuffle-buffer."""
    runs = np.flatnonzero(np.diff(keys[:, 0])) + 1
    starts, ends = np.concatenate([[0], runs]), np.concatenate([runs, [len(keys)]])
    order = np.empty(len(keys), np.int64)
    slots = np.empty(len(keys), np.int64)
    active: list[list[int]] = []  # [next position, end, slot]
    free = list(range(open_episodes))[::-1]
    nxt, p = 0, 0
    while p < len(keys):
        while len(active) < open_episodes and nxt < len(starts):
            active.append([int(starts[nxt]), int(ends[nxt]), free.pop()])
            nxt += 1
        j = int(rng.integers(len(active)))
        cur = active[j]
        order[p], slots[p] = cur[0], cur[2]
        p, cur[0] = p + 1, cur[0] + 1
        if cur[0] == cur[1]:
            free.append(cur[2])
            active[j] = active[-1]
            active.pop()
    emit, after, held = [], [], []
    for i in range(len(keys)):
        if len(held) == buffer:
            j = int(rng.integers(buffer))
            emit.append(held[j])
            after.append(i)
            held[j] = i
        else:
            held.append(i)
    emit += [held[j] for j in rng.permutation(len(held))]
    after += [len(keys)] * len(held)
    return Schedule(keys[order], slots, np.asarray(emit, np.int64), np.asarray(after, np.int64))


class StreamingDataset(IterableDataset):
    """The training samples of one epoch for this rank, in streaming order (module docstring).

    ``skip_batches`` (set by the loader for an exact resume): batches each worker leaves
    out at the start of the epoch, without decoding them.
    """

    def __init__(self, dataset: EpisodeDataset, sampler: MixtureSampler, shard_of: np.ndarray, batch_size: int,
                 open_episodes: int, shuffle_buffer: int) -> None:
        self.dataset, self.sampler = dataset, sampler
        self.shard_of = np.asarray(shard_of, np.int64)
        self.batch_size, self.open_episodes, self.shuffle_buffer = batch_size, open_episodes, shuffle_buffer
        self.epoch, self.skip_batches = 0, 0

    def worker_schedule(self, worker: int, workers: int) -> Schedule:
        """Plan the epoch of DataLoader worker ``worker`` of ``workers`` on this rank, for ``self.epoch``."""
        s = self.sampler
        rng = np.random.default_rng([s.seed, self.epoch, 7])
        keys = reading_order(s.all_keys(self.epoch), self.shard_of, rng)
        lo, hi = parts(len(keys), s.world_size)[s.rank]
        wlo, whi = parts(hi - lo, workers, self.batch_size)[worker]
        wrng = np.random.default_rng([s.seed, self.epoch, s.rank, worker])
        return schedule(keys[lo + wlo: lo + whi], self.open_episodes, self.shuffle_buffer, wrng)

    def batches_per_worker(self, workers: int) -> list[int]:
        n = len(self.sampler)
        return [(hi - lo) // self.batch_size for lo, hi in parts(n, workers, self.batch_size)]

    def __len__(self) -> int:
        return sum(self.batches_per_worker(1)) * self.batch_size

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        plan = self.worker_schedule(worker, workers)
        skip = self.skip_batches * self.batch_size
        skipped = np.zeros(len(plan.keys), bool)
        skipped[plan.emit[:skip]] = True
        ready: dict[int, dict[str, np.ndarray]] = {}
        inserted = 0
        for pos, after in zip(plan.emit[skip:], plan.emit_after[skip:]):
            while inserted < after:
                if not skipped[inserted]:
                    ep, step, seed = (int(v) for v in plan.keys[inserted])
                    ready[inserted] = self.dataset.sample(ep, step, seed, int(plan.slots[inserted]))
                inserted += 1
            yield ready.pop(int(pos))

