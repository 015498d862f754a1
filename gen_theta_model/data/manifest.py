"""The dataset directory: index, shards, embodiments, normalisation statistics.

``index/part-<n>.parquet`` lists the episodes (one row each, ``shards.INDEX_SCHEMA``);
their data live in ``shards/``. Ingest writes new episodes one directory each under
``episodes/`` (staging); ``finalize_dataset`` packs the staged ones into new shards,
appends one index file and merges their moments into the statistics: the cost of an
append does not depend on the size of the dataset. A dataset of format 1 (one
directory per episode, ``manifest.jsonl``) is converted by the same step
(``gen-theta dataset convert``).
"""

from __future__ import annotations

import argparse
import errno
import json
import shutil
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import yaml

from gen_theta_model.data.episode import EpisodeData, EpisodeMeta, read_episode_doc
from gen_theta_model.data.shards import (
    META_FIELDS,
    SHARD_EPISODES,
    SHARDS,
    index_table,
    pack_shard,
    read_index,
    read_packed_episode,
    write_index_part,
)
from gen_theta_model.data.stats import Moments, NormStats, norm_stats
from gen_theta_model.embodiment import EmbodimentSpec

FORMAT_VERSION = 2
INFO = "info.yaml"
INDEX = "index"
EPISODES = "episodes"  # staging: episodes written by ingest, not yet packed into a shard
LEGACY_MANIFEST = "manifest.jsonl"  # format 1
# A write failing with one of these means the output is full: the next write would fail the same way.
OUTPUT_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


@dataclass
class DatasetIndex:
    """A dataset as the loader sees it: the index rows, specs and stats by embodiment."""

    root: Path
    embodiment_names: list[str]  # EMBODIMENT_INDEX indexes this list
    specs: dict[str, EmbodimentSpec]
    stats: dict[str, NormStats]
    table: pa.Table  # the index rows (shards.INDEX_SCHEMA), in the order of ``episodes``

    @cached_property
    def episodes(self) -> list[EpisodeMeta]:
        """``EpisodeMeta`` of every index row, in index order; built on first use (~0.6 s per 100,000 rows)."""
        return episode_metas(self.table)


def episode_metas(table: pa.Table) -> list[EpisodeMeta]:
    """One ``EpisodeMeta`` per row of a table with its fields as columns (``shards.META_FIELDS``)."""
    columns = [table.column(name).to_pylist() for name, _ in META_FIELDS]  # EpisodeMeta's field order
    return [EpisodeMeta(*values) for values in zip(*columns)]


def index_files(root: str | Path) -> list[Path]:
    return sorted((Path(root) / INDEX).glob("part-*.parquet"))


def staged_episodes(root: str | Path) -> list[Path]:
    """Episode directories under ``root/episodes`` not yet packed (temporary directories excluded)."""
    d = Path(root) / EPISODES
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))


def existing_episodes(root: str | Path) -> tuple[set[str], dict[str, str]]:
    """List the episodes in the index or staged: (their ids, bag path (``EpisodeMeta.source``) -> id).

    Reads two columns of the index, not the episodes.
    """
    table = read_index(index_files(root), ["episode", "source"])
    ids = table.column("episode").to_pylist()
    sources = dict(zip(table.column("source").to_pylist(), ids))
    staged = staged_episodes(root)
    sources.update({read_episode_doc(p)["meta"]["source"]: p.name for p in staged})
    return set(ids) | {p.name for p in staged}, sources


def sum_moments(column: pa.ChunkedArray | pa.StructArray) -> Moments:
    """Merge a column of moments (``state_moments`` or ``action_moments`` rows) in one vectorised pass."""
    s = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column

    def rows(name: str):
        values = s.field(name).flatten().to_numpy()
        return values.reshape(len(s), -1)

    if len(s) == 0:
        raise ValueError("no episodes to take moments of")
    return Moments(int(pc.sum(s.field("count")).as_py()), rows("sum").sum(0), rows("sum_sq").sum(0),
                   rows("min").min(0), rows("max").max(0))


def finalize_dataset(root: str | Path, specs: dict[str, EmbodimentSpec]) -> int:
    """Pack the staged episodes into new shards, append them to the index, update info and statistics.

    Returns the number of episodes packed. Reads the staged episodes and the last index
    file, never the packed episodes.

    ``specs`` must hold every embodiment of the staged episodes (those saved by an
    earlier run are read from ``embodiments/``); a spec whose URDF hash differs from
    the saved one is an error, since the episodes' canonical values would disagree.
    A format-1 dataset is converted: all its episodes are staged ones.
    """
    root = Path(root)
    all_specs = dict(load_specs(root))
    for name, spec in specs.items():
        old = all_specs.get(name)
        if old is not None and old.urdf_sha256 != spec.urdf_sha256:
            raise ValueError(
                f"{root}: embodiment '{name}' has URDF sha256 {spec.urdf_sha256[:12]} but the dataset was built "
                f"with {old.urdf_sha256[:12]}; use a new dataset directory"
            )
        all_specs[name] = spec
    parts = index_files(root)
    info = _read_info(root) if parts else {}
    # Staged episodes already packed: only a run that stopped between writing its index file and
    # removing the staged copies leaves them, so they are in the last index file.
    packed_last = set(read_index(parts[-1:], ["episode"]).column("episode").to_pylist())
    staged = []
    for d in staged_episodes(root):
        if d.name in packed_last:
            shutil.rmtree(d)
        else:
            staged.append(d)
    for d in staged:
        name = read_episode_doc(d)["meta"]["embodiment"]
        if name not in all_specs:
            raise ValueError(f"{d}: embodiment '{name}' has no spec")
    (root / "embodiments").mkdir(parents=True, exist_ok=True)
    for name, spec in all_specs.items():
        _write_atomic(root / "embodiments" / f"{name}.yaml", yaml.safe_dump(spec.to_dict(), sort_keys=False))
    if not parts:  # loadable (empty) before anything is packed, even if packing then fails
        info = {"format_version": FORMAT_VERSION, "embodiments": [], "episodes": 0, "duration_s": 0.0}
        _write_atomic(root / INFO, yaml.safe_dump(info, sort_keys=False))
    # The next number after every index file and shard (a shard left by a crash before its index file is skipped).
    taken = [int(p.stem.split("-")[1]) for p in parts] + [int(d.name) for d in (root / SHARDS).glob("[0-9]*")]
    number = max(taken, default=-1) + 1
    group, k = SHARD_EPISODES, 0
    while k < len(staged):
        chunk = staged[k:k + group]
        try:
            new = _pack_part(root, chunk, number)
        except OSError as err:
            if err.errno in OUTPUT_FULL and group > 1:  # a smaller shard may fit; packed ones free their copies
                group = max(group // 2, 1)
                continue
            raise
        _merge_into_stats(root, new)
        names = sorted(set(info["embodiments"]) | set(new.column("embodiment").to_pylist()))
        info = {"format_version": FORMAT_VERSION, "embodiments": names, "episodes": int(info["episodes"]) + len(new),
                "duration_s": round(float(info["duration_s"]) + pc.sum(new.column("duration_s")).as_py(), 3)}
        _write_atomic(root / INFO, yaml.safe_dump(info, sort_keys=False))
        for d in chunk:
            shutil.rmtree(d)
        k, number = k + len(chunk), number + 1
    (root / LEGACY_MANIFEST).unlink(missing_ok=True)
    return len(staged)


def _pack_part(root: Path, episode_dirs: list[Path], number: int) -> pa.Table:
    """Pack ``episode_dirs`` into ``shards/<number>`` and list them in ``index/part-<number>.parquet``."""
    name = f"{number:06d}"
    rows = pack_shard(episode_dirs, root, name)
    table = index_table(rows)
    try:
        (root / INDEX).mkdir(exist_ok=True)
        write_index_part(root / INDEX / f"part-{name}.parquet", table)
    except BaseException:
        shutil.rmtree(root / SHARDS / name, ignore_errors=True)  # a shard no index lists would only take room
        raise
    return table


def _merge_into_stats(root: Path, rows: pa.Table) -> None:
    """Merge the moments of ``rows`` into ``stats/<embodiment>.moments.json`` and rewrite NormStats."""
    for name in sorted(set(rows.column("embodiment").to_pylist())):
        mine = rows.filter(pc.equal(rows.column("embodiment"), name))
        s, a = sum_moments(mine.column("state_moments")), sum_moments(mine.column("action_moments"))
        path = root / "stats" / f"{name}.moments.json"
        if path.is_file():
            old = json.loads(path.read_text())
            s, a = Moments.from_dict(old["state"]).merge(s), Moments.from_dict(old["action"]).merge(a)
        write_stats(root, name, s, a)


def write_stats(root: Path, name: str, state: Moments, action: Moments) -> None:
    """``stats/<name>.{json,safetensors}`` (NormStats) and the moments they come from."""
    norm_stats(name, state, action).save(root / "stats")
    doc = json.dumps({"state": state.to_dict(), "action": action.to_dict()})
    _write_atomic(root / "stats" / f"{name}.moments.json", doc)


def load_specs(root: str | Path) -> dict[str, EmbodimentSpec]:
    d = Path(root) / "embodiments"
    if not d.is_dir():
        return {}
    return {p.stem: EmbodimentSpec.from_dict(yaml.safe_load(p.read_text())) for p in sorted(d.glob("*.yaml"))}


def _read_info(root: Path) -> dict:
    try:
        return yaml.safe_load((root / INFO).read_text())
    except OSError as err:
        raise ValueError(f"{root}: not a gen_theta dataset ({err.strerror}: {err.filename})") from err


def open_dataset(root: str | Path) -> DatasetIndex:
    """Read a dataset's index, info, specs and stats; touches no episode and builds no per-episode object."""
    root = Path(root)
    info = _read_info(root)
    version = info.get("format_version")
    if version == 1:
        raise ValueError(f"{root}: dataset format 1 (one directory per episode); convert it to shards with "
                         f"`gen-theta dataset convert {root}`")
    if version != FORMAT_VERSION:
        raise ValueError(f"{root / INFO}: format_version {version}, expected {FORMAT_VERSION}")
    table = read_index(index_files(root))
    names = list(info["embodiments"])
    specs = load_specs(root)
    stats = {n: NormStats.load(root / "stats" / f"{n}.safetensors") for n in names}
    return DatasetIndex(root, names, {n: specs[n] for n in names}, stats, table)


def read_episode(root: str | Path, episode: str) -> EpisodeData:
    """One episode of a dataset by id: metadata, cameras (frame offsets into the shard videos), streams."""
    root = Path(root)
    table = read_index(index_files(root))
    rows = table.filter(pc.equal(table.column("episode"), episode)).to_pylist()
    if not rows:
        raise KeyError(f"{root}: no episode '{episode}'")
    spec = load_specs(root)[rows[0]["embodiment"]]
    return read_packed_episode(root, rows[0], spec.joint_names)


def write_view(source: Path, episodes: list[str], out: Path) -> None:
    """Make ``out`` a dataset of some ``episodes`` of ``source`` whose index points at the source's shards.

    An existing view is replaced (its index, info and statistics).
    """
    table = read_index(index_files(source))
    table = table.filter(pc.is_in(table.column("episode"), pa.array(episodes, pa.string())))
    shards = [str((source / s).resolve()) for s in table.column("shard").to_pylist()]
    table = table.set_column(table.schema.get_field_index("shard"), "shard", pa.array(shards, pa.string()))
    shutil.rmtree(out / INDEX, ignore_errors=True)
    shutil.rmtree(out / "stats", ignore_errors=True)
    (out / INDEX).mkdir(parents=True)
    specs = load_specs(source)
    (out / "embodiments").mkdir(exist_ok=True)
    names = sorted(set(table.column("embodiment").to_pylist()))
    for name in names:
        _write_atomic(out / "embodiments" / f"{name}.yaml", yaml.safe_dump(specs[name].to_dict(), sort_keys=False))
        mine = table.filter(pc.equal(table.column("embodiment"), name))
        write_stats(out, name, sum_moments(mine.column("state_moments")), sum_moments(mine.column("action_moments")))
    write_index_part(out / INDEX / "part-000000.parquet", table)
    info = {"format_version": FORMAT_VERSION, "embodiments": names, "episodes": len(table),
            "duration_s": round(pc.sum(table.column("duration_s")).as_py() or 0.0, 3)}
    _write_atomic(out / INFO, yaml.safe_dump(info, sort_keys=False))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def convert(root: Path) -> int:
    """Convert a format-1 dataset (one directory per episode) in place; returns the number of episodes packed.

    A conversion that stopped (disk full) goes on where it stopped.
    """
    info = _read_info(root)
    if info.get("format_version") != 1 and not staged_episodes(root):
        raise ValueError(f"{root}: format_version {info.get('format_version')} and nothing staged: "
                         "nothing to convert")
    return finalize_dataset(root, load_specs(root))


def main(argv: list[str] | None = None) -> int:
    """`gen-theta dataset convert DATASET`: pack a format-1 dataset into shards and an index, in place."""
    ap = argparse.ArgumentParser(prog="gen-theta dataset", description="dataset maintenance")
    sub = ap.add_subparsers(dest="cmd", required=True)
    conv = sub.add_parser("convert", help="convert a format-1 dataset (one directory per episode) to shards, "
                          "in place")
    conv.add_argument("dataset")
    a = ap.parse_args(argv)
    try:
        n = convert(Path(a.dataset))
    except (ValueError, KeyError) as err:
        print(f"gen-theta dataset: {err}", file=sys.stderr)
        return 2
    print(f"dataset convert: {n} episodes packed into shards -> {a.dataset}")
    return 0
