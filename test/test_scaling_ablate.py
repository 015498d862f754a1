"""Mixture ablations: end to end on the CPU with the real trainer, and the report's aggregation."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import pytest
import yaml
from data_helpers import make_episode
from test_scaling_sweep import FAST

from gen_theta_model.checkpoint import latest_checkpoint, read_checkpoint_config
from gen_theta_model.config import share_dir
from gen_theta_model.data.manifest import finalize_dataset
from gen_theta_model.embodiment import load_robot
from gen_theta_model.evaluate import EvalConfig, recommend
from gen_theta_model.scaling import ablate
from gen_theta_model.scaling.ablate_report import ablation_rows, mixture_calls
from gen_theta_model.scaling.results import CurvePoint, SuiteResult, TrialResult


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("src") / "sim"
    specs = {n: load_robot(n) for n in ("arm6", "arm7")}
    for i in range(12):
        task, category = ("pick", "dexterity") if i % 2 else ("pack", "real_world")
        make_episode(root, specs["arm6" if i % 3 else "arm7"], f"ep{i:02d}", duration=1.2, task=task,
                     category=category, seed=i)
    finalize_dataset(root, specs)
    return root


def write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def ablate_config(tmp_path: Path, source: Path) -> Path:
    return write(tmp_path / "ablate.yaml", {
        "data": [str(source)],
        "suites": [{"name": "pick_suite", "tasks": ["pick"], "episodes": 3},
                   {"name": "pack_suite", "tasks": ["pack"], "episodes": 3}],
        "model": {"name": "nano", "preset": "tiny",
                  "policy": {"d_model": 32, "n_layer": 1, "n_head": 2, "image_channels": 4, "image_grid": 2}},
        "pretrain_config": str(share_dir() / "config/train/tiny_pretrain.yaml"),
        "finetune_config": str(share_dir() / "config/train/tiny_sft.yaml"),
        "pretrain_set": {**FAST, "max_steps": 3, "eval_interval": 3, "checkpoint_interval": 3},
        "finetune_set": {**FAST, "max_steps": 2, "eval_interval": 2, "checkpoint_interval": 2},
        "mse_threshold": 10.0, "out_dir": str(tmp_path / "abl"),
    })


def test_ablation_end_to_end(source, tmp_path, capsys):
    dex = write(tmp_path / "dex_heavy.yaml", {"categories": {"dexterity": 4.0, "real_world": 1.0}})
    arm7 = write(tmp_path / "arm7_only.yaml", {"embodiments": {"arm6": 0.0, "arm7": 1.0}, "datasets": {"sim": 1.0}})
    assert ablate.main([str(dex), str(arm7), "--config", str(ablate_config(tmp_path, source))]) == 0
    text = capsys.readouterr().out
    assert "## dexterity" in text and "## real_world" in text and "| dex_heavy | pick_suite |" in text
    report = tmp_path / "abl" / "report"
    data = json.loads((report / "ablation.json").read_text())
    assert {(r["mixture"], r["suite"]) for r in data["rows"]} == {
        (m, s) for m in ("dex_heavy", "arm7_only") for s in ("pick_suite", "pack_suite")}
    for m, call in data["calls"].items():
        assert call["call"] == recommend(call["mse0"], call["rkl0"], EvalConfig(mse_threshold=10.0)), m
    for png in ("heatmap.png", "mse_kl.png"):
        assert matplotlib.image.imread(report / png).shape[0] > 100
    # the mixture reached the trainer
    train_cfg, _, _ = read_checkpoint_config(latest_checkpoint(tmp_path / "abl/trials/arm7_only-s0/pretrain"))
    assert train_cfg.data.mixture == str(arm7)


def test_mixture_naming_absent_data_is_an_error(source, tmp_path, capsys):
    bad = write(tmp_path / "typo.yaml", {"categories": {"dexterity": 1.0, "realworld": 2.0}})
    assert ablate.main([str(bad), "--config", str(ablate_config(tmp_path, source))]) == 2
    assert "typo.yaml: categories ['realworld'] are not in the data" in capsys.readouterr().err


def test_rows_average_seeds_and_calls_follow_recommend():
    def trial(mixture: str, seed: int, mse: float, mse0: float, kl0: float) -> TrialResult:
        curve = [CurvePoint(0, mse0, kl0), CurvePoint(10, mse, 1.0)]
        return TrialResult(f"{mixture}-s{seed}", "nano", 1000, 10, seed, [],
                           [SuiteResult("pick", "dexterity", mse, 1.0, curve)], mixture=mixture)

    rows = ablation_rows([trial("a", 0, 0.2, 0.004, 1.0), trial("a", 1, 0.4, 0.006, 1.0),
                          trial("b", 0, 0.1, 0.5, 0.5)])
    a = next(r for r in rows if r.mixture == "a")
    assert a.seeds == 2 and a.mse == pytest.approx(0.3) and a.mse0 == pytest.approx(0.005)
    calls = mixture_calls(rows, EvalConfig())
    assert calls["a"]["call"] == "SFT candidate" and calls["b"]["call"] == "RL candidate"
