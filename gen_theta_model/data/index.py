"""The episodes of one or more datasets as columns: ``EpisodeIndex`` (docs/loader.md, start-up).

``make_dataloaders`` works on whole columns of the index (steps, shards, embodiments,
tasks, categories: numpy or Arrow arrays); the Python objects of one episode
(``EpisodeRef`` with its ``EpisodeMeta`` and ``CameraInfo``) are built when that
episode is asked for, in a DataLoader worker for the episodes it reads. Built for
every episode at start-up, these objects were most of ``make_dataloaders``' time at
100,000 episodes.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gen_theta_model.data.episode import CameraInfo, EpisodeMeta
from gen_theta_model.data.manifest import DatasetIndex, episode_metas
from gen_theta_model.data.shards import META_FIELDS

BUILT = 4096  # EpisodeRefs kept once built (per process): a worker reads a few dozen episodes at a time


@dataclass
class EpisodeRef:
    """One episode of the combined (possibly multi-directory) dataset."""

    path: Path  # its shard directory
    meta: EpisodeMeta
    dataset: str  # name of the sub-dataset (its directory name)
    embodiment_index: int
    cameras: list[CameraInfo]
    num_steps: int  # action steps in the episode (control-rate grid)
    first_step: int  # first step at which every stream has an observation


class EpisodeIndex(Sequence[EpisodeRef]):
    """The episodes of ``datasets`` in order (dataset by dataset, each in index order), one row each.

    ``index[i]`` is episode i's ``EpisodeRef``, built on first use. Columns, each (n,) int64:
    ``num_steps`` and ``first_step`` (control-rate grid), ``embodiment_index`` (into
    ``embodiment_names``), ``dataset_index`` (into ``datasets``, the directory names) and
    ``shard_of`` (into ``shards``, the shard directories, numbered in order of first appearance).
    """

    def __init__(self, datasets: Sequence[DatasetIndex], embodiment_names: list[str]) -> None:
        if not datasets:
            raise ValueError("no dataset to index")
        self.datasets = [ix.root.name for ix in datasets]
        tables = [ix.table.select([name for name, _ in META_FIELDS] + ["cameras"]) for ix in datasets]
        self.rows = pa.concat_tables(tables).combine_chunks()  # EpisodeMeta's fields and the cameras
        self.dataset_index = np.concatenate([np.full(len(ix.table), k, np.int64) for k, ix in enumerate(datasets)])
        number: dict[Path, int] = {}
        shard_of = []
        for ix in datasets:
            codes = pc.dictionary_encode(ix.table.column("shard").combine_chunks())  # in order of first appearance
            ids = [number.setdefault(ix.root / s, len(number)) for s in codes.dictionary.to_pylist()]
            shard_of.append(np.asarray(ids, np.int64)[codes.indices.to_numpy()])
        self.shards = list(number)
        self.shard_of = np.concatenate(shard_of)
        self.num_steps = np.concatenate([ix.table.column("num_steps").to_numpy() for ix in datasets])
        self.first_step = np.concatenate([ix.table.column("first_step").to_numpy() for ix in datasets])
        names = pa.array(embodiment_names, pa.string())
        self.embodiment_index = np.concatenate(
            [pc.index_in(ix.table.column("embodiment"), names).to_numpy() for ix in datasets]).astype(np.int64)
        self._built: dict[int, EpisodeRef] = {}

    def __len__(self) -> int:
        return len(self.shard_of)

    def __getitem__(self, i: int) -> EpisodeRef:  # type: ignore[override]  # no slices
        i = operator.index(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"episode {i} of {len(self)}")
        i %= len(self)
        ref = self._built.get(i)
        if ref is None:
            row = self.rows.slice(i, 1).to_pylist()[0]
            cameras = [CameraInfo(**c) for c in row.pop("cameras")]
            ref = EpisodeRef(self.shards[self.shard_of[i]], EpisodeMeta(**row), self.datasets[self.dataset_index[i]],
                             int(self.embodiment_index[i]), cameras, int(self.num_steps[i]), int(self.first_step[i]))
            if len(self._built) >= BUILT:
                self._built.pop(next(iter(self._built)))
            self._built[i] = ref
        return ref

    def column(self, name: str) -> np.ndarray:
        """Return a metadata column (an ``EpisodeMeta`` field) of every episode, (n,) object array."""
        return self.rows.column(name).to_numpy(zero_copy_only=False)

    def ids(self) -> list[str]:
        """``<dataset>/<episode>`` of every episode: unique across the datasets."""
        names = np.asarray(self.datasets, object)[self.dataset_index]
        return [f"{d}/{e}" for d, e in zip(names.tolist(), self.column("episode").tolist())]

    def steps(self) -> np.ndarray:
        """(n, 2) int64: (first step a sample can start at, number of steps) of every episode."""
        return np.stack([self.first_step, self.num_steps], axis=1)

    def metas(self) -> list[EpisodeMeta]:
        """``EpisodeMeta`` of every episode (~0.6 s per 100,000: for reports, not for start-up)."""
        return episode_metas(self.rows)
