"""Nested pretraining subsets and downstream suites as dataset *views*.

A view is a dataset directory (docs/dataset_format.md) whose index rows point at
the shards of a source dataset; its statistics are rebuilt from those rows by the
data code's ``write_view``, so the trainer
and loader read a view like any dataset, and nothing is copied.

Subsets are nested: the episodes are put in one deterministic order under a
seed, and the subset of size D is the first D of that order, so the subset for
D=50 contains the one for D=25. The order interleaves the (embodiment, task)
groups round-robin, each group shuffled by a hash of (seed, episode id), so every
prefix covers the groups evenly and a small subset does not miss an embodiment.
D counts episodes: one demonstration is one action trajectory.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from gen_theta_model.data.manifest import open_dataset, write_view


@dataclass(frozen=True)
class EpisodeKey:
    """One episode of one source dataset."""

    source: int  # index into the list of source dataset directories
    episode: str
    embodiment: str
    task: str
    category: str
    duration_s: float


def list_episodes(sources: list[Path]) -> list[EpisodeKey]:
    """Every episode of the source datasets, in index order."""
    out = []
    for i, root in enumerate(sources):
        for m in open_dataset(root).episodes:
            out.append(EpisodeKey(i, m.episode, m.embodiment, m.task, m.category, m.duration_s))
    return out


def _rank(seed: int, key: EpisodeKey) -> bytes:
    return hashlib.sha256(f"{seed}/{key.source}/{key.episode}".encode()).digest()


def nested_order(episodes: list[EpisodeKey], seed: int) -> list[EpisodeKey]:
    """All ``episodes`` in the nested-subset order (module docstring)."""
    groups: dict[tuple[str, str], list[EpisodeKey]] = defaultdict(list)
    for e in episodes:
        groups[(e.embodiment, e.task)].append(e)
    queues = [sorted(groups[g], key=lambda e: _rank(seed, e)) for g in sorted(groups)]
    order = []
    for i in range(max((len(q) for q in queues), default=0)):
        order += [q[i] for q in queues if i < len(q)]
    return order


def split_suites(
    episodes: list[EpisodeKey], suites: dict[str, tuple[list[str], int]], seed: int
) -> tuple[dict[str, list[EpisodeKey]], list[EpisodeKey]]:
    """Take each suite's episodes out of the pool: ({suite: episodes}, pretraining pool).

    ``suites`` maps a suite name to (its tasks, how many episodes). A suite takes
    the first episodes of its tasks in the seeded order, so the choice is stable.
    """
    taken: set[tuple[int, str]] = set()
    chosen = {}
    for name, (tasks, count) in suites.items():
        mine = [e for e in nested_order(episodes, seed) if e.task in tasks and (e.source, e.episode) not in taken]
        if len(mine) < count:
            have = sorted({e.task for e in episodes})
            raise ValueError(
                f"suite '{name}': wants {count} episodes of tasks {tasks}, found {len(mine)} "
                f"(tasks in the data: {have})"
            )
        chosen[name] = mine[:count]
        taken |= {(e.source, e.episode) for e in chosen[name]}
    pool = [e for e in episodes if (e.source, e.episode) not in taken]
    return chosen, pool


def nested_subsets(order: list[EpisodeKey], sizes: list[int]) -> dict[int, list[EpisodeKey]]:
    """Return the first D episodes of ``order`` for each D in ``sizes``."""
    too_big = [d for d in sizes if d > len(order) or d < 1]
    if too_big:
        raise ValueError(f"subset sizes {too_big} are not in [1, {len(order)}] (episodes in the pretraining pool)")
    return {d: order[:d] for d in sorted(sizes)}


def materialize_view(sources: list[Path], episodes: list[EpisodeKey], out: Path) -> list[Path]:
    """Write the view of ``episodes`` under ``out/<source dir name>/``; returns the view directories.

    Each view keeps its source's directory name, so mixtures that weight
    sub-datasets by name and the loader's hash split see the same names. A view's
    index holds its episodes' rows of the source index, pointing at the source's
    shards; an existing view is replaced.
    """
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ValueError(f"source datasets must have distinct directory names, got {names}")
    by_source: dict[int, list[str]] = defaultdict(list)
    for e in episodes:
        by_source[e.source].append(e.episode)
    views = []
    for i in sorted(by_source):
        view = out / names[i]
        write_view(sources[i], sorted(by_source[i]), view)
        views.append(view)
    return views
