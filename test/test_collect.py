"""The data-collection path end to end: sim + expert + recorder over DDS -> bag -> ingest -> loader batch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from gen_theta_model import batch
from gen_theta_model.data.ingest import IngestOptions, ingest
from gen_theta_model.data.loader import DataConfig, make_dataloaders
from gen_theta_model.data.recording import read_record


def test_collect_ingest_load(tmp_path):
    bags = tmp_path / "bags"
    exe = Path(sys.executable).parent / "gen-theta"
    run = subprocess.run([str(exe), "collect", "--robot", "arm6", "--task", "pick_place_bin", "--episodes", "1",
                          "--out", str(bags), "--log-dir", str(tmp_path / "logs")],
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "collect: 1 episodes" in run.stdout
    (bag,) = bags.iterdir()
    record = read_record(bag)
    assert record.status == "complete" and record.task == "pick_place_bin" and record.category == "real_world"
    assert record.success is not None and record.instruction
    assert all(n > 0 for t, n in record.messages.items() if not t.endswith("instruction")), record.messages
    assert (bag / "metadata.yaml").is_file()

    # The expert may fail this seed: the episode enters the dataset either way.
    report = ingest([bag], tmp_path / "ds", IngestOptions(include_failed=True), jobs=1, progress=False)
    assert report.added == [bag.name], report.failed
    train, _, info = make_dataloaders(tmp_path / "ds", DataConfig(batch_size=4, num_workers=0, val_fraction=0.0,
                                                                  samples_per_epoch=8))
    b = next(iter(train))
    assert info.episodes[0].num_trajectories > 0 and info.episodes[0].success == record.success
    assert b[batch.IMAGE_MASK][:, :2].all() and b[batch.ACTION_MASK].any()
    assert torch.isfinite(b[batch.ACTION]).all() and b[batch.IMAGES].float().std() > 1  # real rendered frames
