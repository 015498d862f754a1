"""The GPU competence run of docs/training.md ("On one GPU"), prepared here, run on a lent device.

A device call carries at most 64 MiB of working tree, and the training data (58 MiB for the
shipped checkpoint's three datasets) plus the one wheel the device's Python most lacks (PyAV,
36 MiB) do not fit in one. So the run is staged in parts that travel one call each, while the
machine stays warm (ignored files a call carried stay there for the next call):

    # here: wheels + every dataset file, packed into .device/part-1 ... part-N (each < --part-mib)
    .venv/bin/python bench/gpu_competence.py stage
    # device, one `run` per part, in order, carry [".device/part-K"]:
    #   part 1: python3 bench/gpu_competence.py check          (wheels, imports, CUDA)
    #   middle parts: python3 bench/gpu_competence.py verify --present-only
    #   last part: python3 bench/gpu_competence.py train --minutes 7
    # here: the checkpoint back into runs/gpu_competence/step_NNNNNNNN, ready for `gen-theta rollout`
    .venv/bin/python bench/gpu_competence.py unpack /work/.device/<files_at>

`train` writes to $OUT: the checkpoint as a tar split into pieces under 15 MiB (a device call
returns at most 8 files of 16 MiB), the run's train_log.jsonl and the last lines of its output.

The driver uses the standard library alone: on the device it runs before the carried wheels are
installed, so checkpoint.py's names (`checkpoints/latest`, the serving files) are spelled here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGE = ROOT / ".device"  # git-ignored; each part-K/ travels in one device call
MANIFEST = "manifest.json"
CONFIG = "config/train/gpu_competence.yaml"
DATASETS = ("runs/multi/data", "runs/conv6/data", "runs/conv6b/data")  # -> .device/data/{multi,conv6,conv6b}
WHEELS = ("av==18.1.0", "yourdfpy==0.0.60", "trimesh==5.2.0")  # what the device's python3 (3.12) lacks
DEVICE_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
SITE = Path("/tmp/gen_theta_site")  # wheels installed on the device, outside the working tree
PIECE_BYTES = 15 * 2**20


def pack_parts(sizes: dict[str, int], limit: int) -> list[list[str]]:
    """Pack files (relative path -> bytes) into parts of at most ``limit`` bytes, first fit.

    Files keep their order within a part; the wheels (``whl/``) go first, so part 1 can check
    the device before the data arrives. Raises ValueError for a file larger than ``limit``.
    """
    parts: list[list[str]] = []
    used: list[int] = []
    order = sorted(sizes, key=lambda p: (not p.startswith("whl/"), p))
    for path in order:
        if sizes[path] > limit:
            raise ValueError(f"{path} is {sizes[path] / 2**20:.1f} MiB, more than a part holds "
                             f"({limit / 2**20:.1f} MiB): raise --part-mib or split the dataset's shards")
        for k, u in enumerate(used):
            if u + sizes[path] <= limit:
                parts[k].append(path)
                used[k] += sizes[path]
                break
        else:
            parts.append([path])
            used.append(sizes[path])
    return parts


def stage(datasets: list[str], part_mib: float) -> list[Path]:
    """Download the wheels and hard-link every dataset file into ``.device/part-K/``; returns the parts."""
    names = [Path(d).parent.name for d in datasets]
    if len(set(names)) != len(names):
        raise ValueError(f"datasets are named by their parent folder, and these repeat one: {datasets}")
    missing = [d for d in datasets if not (Path(d) / "info.yaml").is_file()]
    if missing:
        raise FileNotFoundError(f"not datasets (no info.yaml): {missing}; `gen-theta ingest ... --out DIR` makes one")
    shutil.rmtree(STAGE, ignore_errors=True)
    whl = STAGE / "whl"
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp",
                    *[f"--platform={p}" for p in DEVICE_PLATFORMS], "-d", str(whl), *WHEELS], check=True)
    sources = {f"whl/{w.name}": w for w in sorted(whl.iterdir())}
    for data in map(Path, datasets):
        for f in sorted(p for p in data.rglob("*") if p.is_file()):
            sources[f"data/{data.parent.name}/{f.relative_to(data)}"] = f
    sizes = {rel: src.stat().st_size for rel, src in sources.items()}
    parts = pack_parts(sizes, int(part_mib * 2**20))
    manifest = {"parts": len(parts), "files": {rel: [sizes[rel], k + 1] for k, part in enumerate(parts)
                                                for rel in part}}
    out = []
    for k, part in enumerate(parts, start=1):
        root = STAGE / f"part-{k}"
        for rel in part:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            os.link(sources[rel], root / rel)
        (root / MANIFEST).write_text(json.dumps(manifest, indent=1))
        out.append(root)
    shutil.rmtree(whl)
    return out


def verify(present_only: bool = False) -> tuple[dict, list[str]]:
    """Check the parts on this machine against the manifest; returns (manifest, missing messages)."""
    found = sorted(STAGE.glob(f"part-*/{MANIFEST}"))
    if not found:
        raise FileNotFoundError(f"no {STAGE.name}/part-K/{MANIFEST} here: carry the parts `stage` made")
    manifest = json.loads(found[0].read_text())
    missing = []
    for rel, (size, k) in manifest["files"].items():
        path = STAGE / f"part-{k}" / rel
        if not path.is_file() and not present_only:
            missing.append(f"part-{k}: {rel}")
        elif path.is_file() and path.stat().st_size != size:
            missing.append(f"part-{k}: {rel} is {path.stat().st_size} bytes, the manifest says {size}")
    return manifest, missing


def merge(manifest: dict) -> None:
    """Hard-link the parts' files into ``.device/whl`` and ``.device/data`` (the config's paths)."""
    for rel, (_, k) in manifest["files"].items():
        dst = STAGE / rel
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.link(STAGE / f"part-{k}" / rel, dst)


def install_wheels() -> None:
    """Install the carried wheels into SITE (no index: the device reaches no network)."""
    wheels = sorted(str(p) for p in STAGE.glob("part-*/whl/*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
                    "--upgrade", "--target", str(SITE), *wheels], check=True)


def run_env() -> dict[str, str]:
    """Return the training process's environment: the carried wheels and this checkout importable."""
    path = os.pathsep.join([str(SITE), str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}


def check() -> int:
    """Part 1 on the device: the wheels install, the training code imports, and CUDA is there."""
    install_wheels()
    probe = ("import torch, av, yourdfpy; from gen_theta_model.train import main; "
             "print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), "
             "torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-', 'av', av.__version__); "
             "raise SystemExit(0 if torch.cuda.is_available() else 3)")
    return subprocess.run([sys.executable, "-c", probe], env=run_env(), cwd=ROOT).returncode


def train(minutes: float, out: Path, extra: list[str]) -> int:
    """Run the last part on the device: verify, merge, train for ``minutes``, write the results to ``out``."""
    manifest, missing = verify()
    if missing:
        print(f"{len(missing)} file(s) missing or wrong (a part did not arrive, or the machine was given "
              f"back between calls; carry each part again):", *missing[:20], sep="\n  ", file=sys.stderr)
        return 2
    merge(manifest)
    install_wheels()
    run_dir = ROOT / "runs" / "gpu_competence"
    cmd = [sys.executable, "-m", "gen_theta_ros.cli", "train", CONFIG, "--set", f"out_dir={run_dir}",
           "--set", f"max_minutes={minutes}", *extra]
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "train_output.txt", "w") as log:
        rc = subprocess.run(cmd, env=run_env(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    lines = (out / "train_output.txt").read_text(errors="replace").replace("\r", "\n").splitlines()
    (out / "train_output.txt").write_text("\n".join(lines[-400:]) + "\n")  # tqdm redraws: keep the end
    if (run_dir / "train_log.jsonl").is_file():
        shutil.copy(run_dir / "train_log.jsonl", out / "train_log.jsonl")
    latest = run_dir / "checkpoints" / "latest"  # names the newest complete checkpoint (checkpoint.py)
    if latest.is_file():
        pack_checkpoint(latest.parent / latest.read_text().strip(), out)
    return rc


def pack_checkpoint(checkpoint: Path, out: Path) -> None:
    """Tar what `load_policy` reads of ``checkpoint`` (no optimizer state) in pieces under 15 MiB."""
    tar_path = out / "checkpoint.tar"
    with tarfile.open(tar_path, "w") as tar:
        for name in ("config.yaml", "embodiments.yaml", "model.safetensors", "norm_stats"):
            tar.add(checkpoint / name, arcname=f"{checkpoint.name}/{name}")
    data = tar_path.read_bytes()
    tar_path.unlink()
    for k in range(0, len(data), PIECE_BYTES):
        (out / f"checkpoint.tar.{k // PIECE_BYTES:02d}").write_bytes(data[k:k + PIECE_BYTES])


def unpack(files: Path, dest: Path) -> Path:
    """Join ``files``/checkpoint.tar.NN and extract the checkpoint under ``dest``; returns its directory."""
    pieces = sorted(files.glob("checkpoint.tar.[0-9][0-9]"))
    if not pieces:
        raise FileNotFoundError(f"no checkpoint.tar.NN in {files}: did `train` save a checkpoint?")
    dest.mkdir(parents=True, exist_ok=True)
    joined = dest / "checkpoint.tar"
    joined.write_bytes(b"".join(p.read_bytes() for p in pieces))
    with tarfile.open(joined) as tar:
        names = tar.getnames()
        tar.extractall(dest, filter="data")
    joined.unlink()
    for name in ("train_log.jsonl", "train_output.txt"):
        if (files / name).is_file():
            shutil.copy(files / name, dest / name)
    return dest / names[0].split("/")[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("stage", help="here: wheels and datasets into .device/part-K")
    p.add_argument("--data", nargs="+", action="extend", help="dataset directories, named by their parent; repeatable "
                   "(default: the three of the staged recipe)")
    p.add_argument("--part-mib", type=float, default=52.0,
                   help="bytes per part; the checkout (~7 MiB) travels with each, 64 MiB in all")
    p = sub.add_parser("verify", help="device: are the parts' files here?")
    p.add_argument("--present-only", action="store_true", help="check only the parts that arrived")
    sub.add_parser("check", help="device, part 1: wheels, imports, CUDA")
    p = sub.add_parser("train", help="device, last part: train and write the checkpoint to $OUT")
    p.add_argument("--minutes", type=float, default=7.0, help="training budget (the config's max_minutes)")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_competence_out")))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to gen-theta train")
    p = sub.add_parser("unpack", help="here: the returned pieces into a checkpoint directory")
    p.add_argument("files", type=Path, help="the folder the device's files came back in")
    p.add_argument("--dest", type=Path, default=ROOT / "runs" / "gpu_competence")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ValueError, OSError, subprocess.CalledProcessError) as err:
        print(f"gpu_competence {args.verb}: error: {err}", file=sys.stderr)
        return 1


def run(args: argparse.Namespace) -> int:
    """Do what the parsed command line asks; returns the exit status."""
    if args.verb == "stage":
        for part in stage(args.data or list(DATASETS), args.part_mib):
            mib = sum(f.stat().st_size for f in part.rglob("*") if f.is_file()) / 2**20
            print(f"{part.relative_to(ROOT)}: {mib:.1f} MiB")
        return 0
    if args.verb == "verify":
        manifest, missing = verify(args.present_only)
        print(f"{manifest['parts']} parts, {len(manifest['files'])} files; "
              f"{len(missing)} missing or wrong", *missing[:20], sep="\n  ")
        return 1 if missing else 0
    if args.verb == "check":
        return check()
    if args.verb == "train":
        return train(args.minutes, args.out, [a for kv in args.set for a in ("--set", kv)])
    print(unpack(args.files, args.dest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
