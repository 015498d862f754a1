"""The dataset directory: manifest, embodiments, normalisation statistics.

``episodes/<id>/episode.yaml`` is the source of truth; ``finalize_dataset`` rebuilds
``manifest.jsonl``, ``info.yaml``, ``embodiments/<name>.yaml`` and
``stats/<name>.{json,safetensors}`` from the episodes present, so a re-run that
adds episodes keeps everything consistent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from gen_theta_model.data.episode import EpisodeMeta, read_episode_doc
from gen_theta_model.data.stats import Moments, NormStats, norm_stats
from gen_theta_model.embodiment import EmbodimentSpec

FORMAT_VERSION = 1
MANIFEST = "manifest.jsonl"
INFO = "info.yaml"
EPISODES = "episodes"


@dataclass
class DatasetIndex:
    """A dataset as the loader sees it: episodes in manifest order, specs and stats by embodiment."""

    root: Path
    episodes: list[EpisodeMeta]
    embodiment_names: list[str]  # EMBODIMENT_INDEX indexes this list
    specs: dict[str, EmbodimentSpec]
    stats: dict[str, NormStats]


def existing_episodes(root: str | Path) -> set[str]:
    """Ids of the complete episodes under ``root/episodes`` (temporary directories excluded)."""
    d = Path(root) / EPISODES
    if not d.is_dir():
        return set()
    return {p.name for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")}


def existing_sources(root: str | Path) -> dict[str, str]:
    """Bag path (``EpisodeMeta.source``) -> id of the complete episodes under ``root/episodes``."""
    d = Path(root) / EPISODES
    return {read_episode_doc(d / ep)["meta"]["source"]: ep for ep in sorted(existing_episodes(root))}


def finalize_dataset(root: str | Path, specs: dict[str, EmbodimentSpec]) -> DatasetIndex:
    """Rebuild manifest, info, embodiment files and NormStats from ``root/episodes``.

    ``specs`` must hold every embodiment of the episodes present (those saved by an
    earlier run are read from ``embodiments/``); a spec whose URDF hash differs from
    the saved one is an error, since the episodes' canonical values would disagree.
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
    metas: list[EpisodeMeta] = []
    moments: dict[str, tuple[Moments, Moments]] = {}
    for ep in sorted(existing_episodes(root)):
        doc = read_episode_doc(root / EPISODES / ep)
        meta = EpisodeMeta(**doc["meta"])
        if meta.embodiment not in all_specs:
            raise ValueError(f"{root / EPISODES / ep}: embodiment '{meta.embodiment}' has no spec")
        metas.append(meta)
        s, a = Moments.from_dict(doc["moments"]["state"]), Moments.from_dict(doc["moments"]["action"])
        if meta.embodiment in moments:
            s0, a0 = moments[meta.embodiment]
            s, a = s0.merge(s), a0.merge(a)
        moments[meta.embodiment] = (s, a)
    names = sorted(moments)
    stats = {n: norm_stats(n, *moments[n]) for n in names}
    (root / "embodiments").mkdir(parents=True, exist_ok=True)
    for name, spec in all_specs.items():
        _write_atomic(root / "embodiments" / f"{name}.yaml", yaml.safe_dump(spec.to_dict(), sort_keys=False))
    for st in stats.values():
        st.save(root / "stats")
    lines = "".join(json.dumps(m.to_dict()) + "\n" for m in metas)
    _write_atomic(root / MANIFEST, lines)
    info = {"format_version": FORMAT_VERSION, "embodiments": names, "episodes": len(metas),
            "duration_s": round(sum(m.duration_s for m in metas), 3)}
    _write_atomic(root / INFO, yaml.safe_dump(info, sort_keys=False))
    return DatasetIndex(root, metas, names, {n: all_specs[n] for n in names}, stats)


def load_specs(root: str | Path) -> dict[str, EmbodimentSpec]:
    d = Path(root) / "embodiments"
    if not d.is_dir():
        return {}
    return {p.stem: EmbodimentSpec.from_dict(yaml.safe_load(p.read_text())) for p in sorted(d.glob("*.yaml"))}


def open_dataset(root: str | Path) -> DatasetIndex:
    """Read a dataset written by ingest (manifest, info, specs, stats)."""
    root = Path(root)
    try:
        info = yaml.safe_load((root / INFO).read_text())
        lines = (root / MANIFEST).read_text().splitlines()
    except OSError as err:
        raise ValueError(f"{root}: not a gen_theta dataset ({err.strerror}: {err.filename})") from err
    if info.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{root / INFO}: format_version {info.get('format_version')}, expected {FORMAT_VERSION}")
    metas = [EpisodeMeta(**json.loads(line)) for line in lines if line.strip()]
    names = list(info["embodiments"])
    specs = load_specs(root)
    stats = {n: NormStats.load(root / "stats" / f"{n}.safetensors") for n in names}
    return DatasetIndex(root, metas, names, {n: specs[n] for n in names}, stats)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
