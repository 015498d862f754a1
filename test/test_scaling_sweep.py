"""A tiny sweep end to end on the CPU with the real trainer: plan, train, fine-tune, resume, fit; Ray."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from data_helpers import make_episode

from gen_theta_model.checkpoint import latest_checkpoint, read_checkpoint_config
from gen_theta_model.config import from_mapping, share_dir
from gen_theta_model.data.manifest import finalize_dataset
from gen_theta_model.embodiment import load_robot
from gen_theta_model.scaling import cli
from gen_theta_model.scaling.results import load_results
from gen_theta_model.scaling.sweep import SweepConfig, plan_sweep
from gen_theta_model.scaling.trial import zero_shot_point

FAST = {  # a few-second run per training: small batches and images, narrow model, no workers
    "data.batch_size": 4, "data.num_workers": 0, "data.val_samples": 8, "data.horizon": 20,
    "data.harmonic.max_delay_steps": 6, "data.observation.image_size": 32, "optim.warmup_steps": 1,
    "log_interval": 1, "eval_batches": 1,
}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("src") / "sim"
    spec = load_robot("arm6")
    for i in range(10):
        task, category = ("pick", "dexterity") if i % 2 else ("pack", "real_world")
        make_episode(root, spec, f"ep{i:02d}", duration=1.2, task=task, category=category, seed=i)
    finalize_dataset(root, {"arm6": spec})
    return root


def write_config(path: Path, source: Path, out: Path, **run) -> Path:
    cfg = {
        "data": [str(source)], "sizes": [3, 6],
        "models": [{"name": "nano", "preset": "tiny", "policy": {"d_model": 32, "n_layer": 1, "n_head": 2,
                                                                  "image_channels": 4, "image_grid": 2}}],
        "suites": [{"name": "pick_suite", "tasks": ["pick"], "episodes": 3}],
        "pretrain_config": str(share_dir() / "config/train/tiny_pretrain.yaml"),
        "finetune_config": str(share_dir() / "config/train/tiny_sft.yaml"),
        "pretrain_set": {**FAST, "max_steps": 4, "eval_interval": 2, "checkpoint_interval": 2},
        "finetune_set": {**FAST, "max_steps": 4, "eval_interval": 2, "checkpoint_interval": 2},
        "out_dir": str(out), "run": run or {"engine": "local", "workers": 1},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_tiny_sweep_end_to_end_and_resume(source, tmp_path, capsys):
    out = tmp_path / "sweep"
    config = write_config(tmp_path / "sweep.yaml", source, out)
    assert cli.main(["sweep", str(config)]) == 0
    subsets = json.loads((out / "subsets.json").read_text())
    small, big = set(subsets["sizes"]["3"]), set(subsets["sizes"]["6"])
    suite = set(subsets["suites"]["pick_suite"])
    assert small < big and not big & suite and len(suite) == 3
    trials = {t.trial_id: t for t in load_results([out])}
    assert sorted(trials) == ["nano-D3-s0", "nano-D6-s0"]
    t = trials["nano-D6-s0"]
    assert t.d == 6 and 0 < t.n_params < 100_000 and t.info["episodes"] == 6
    assert [p.step for p in t.pretrain_curve] == [2, 4]
    (s,) = t.suites
    assert s.suite == "pick_suite" and s.category == "dexterity" and [p.step for p in s.curve] == [0, 2, 4]
    assert s.mse > 0 and s.rkl is not None and s.mse == s.curve[-1].mse
    # step 0 is measured like the trainer's validation: the final checkpoint gives the final logged point
    ft_dir = out / "trials" / "nano-D6-s0" / "finetune" / "pick_suite"
    ft_cfg, _, _ = read_checkpoint_config(latest_checkpoint(ft_dir))
    again = zero_shot_point(latest_checkpoint(ft_dir), ft_cfg, delay=0)
    assert again.mse == pytest.approx(s.mse, rel=1e-5) and again.rkl == pytest.approx(s.rkl, rel=1e-4)
    report = (out / "report" / "scaling.md").read_text()
    assert "| nano |" in report and (out / "report" / "loss_vs_d.png").is_file()
    capsys.readouterr()

    # Re-running finishes nothing twice; a trial without result.json is redone (resuming its runs).
    done = out / "trials" / "nano-D3-s0" / "result.json"
    kept = (out / "trials" / "nano-D6-s0" / "result.json").stat().st_mtime_ns
    done.unlink()
    assert cli.main(["sweep", str(config), "--no-fit"]) == 0
    assert "1 of 2 trials already finished; running 1" in capsys.readouterr().out
    assert done.is_file() and (out / "trials" / "nano-D6-s0" / "result.json").stat().st_mtime_ns == kept
    redone = load_results([done])[0]
    assert [p.step for p in redone.pretrain_curve] == [2, 4] and redone.suites[0].mse == pytest.approx(
        trials["nano-D3-s0"].suites[0].mse)


@pytest.mark.parametrize("engine", ["ray", "local"])
def test_parallel_sweep_one_trial_per_task(engine, source, tmp_path, capsys):
    """Ray (a local instance, 2 CPUs) and the local spawn pool: the trials run in other processes."""
    out = tmp_path / "sweep"
    config = write_config(tmp_path / "sweep.yaml", source, out, engine=engine, workers=2, cpus_per_trial=1)
    assert cli.main(["sweep", str(config), "--no-fit"]) == 0
    assert f"running 2 ({engine}, 2 at once" in capsys.readouterr().out
    assert sorted(t.trial_id for t in load_results([out])) == ["nano-D3-s0", "nano-D6-s0"]


def test_bad_sweep_configs_are_named(source, tmp_path, capsys):
    config = write_config(tmp_path / "sweep.yaml", source, tmp_path / "x")
    data = yaml.safe_load(config.read_text())
    data["sizes"] = [3, 50]
    config.write_text(yaml.safe_dump(data))
    assert cli.main(["sweep", str(config)]) == 2
    assert "subset sizes [50] are not in [1, 7]" in capsys.readouterr().err
    data["sizes"], data["models"][0]["sizes"] = [3], [6]
    config.write_text(yaml.safe_dump(data))
    assert cli.main(["sweep", str(config)]) == 2
    assert "model 'nano': sizes [6] are not in the sweep's sizes [3]" in capsys.readouterr().err
    data["models"][0]["sizes"] = []
    data["modles"] = data.pop("models")
    config.write_text(yaml.safe_dump(data))
    assert cli.main(["sweep", str(config)]) == 2
    assert "unknown key 'modles'" in capsys.readouterr().err


def test_plan_runs_models_in_order_on_their_sizes(source, tmp_path):
    config = write_config(tmp_path / "sweep.yaml", source, tmp_path / "plan")
    data = yaml.safe_load(config.read_text())
    data["models"].append({"name": "big", "preset": "tiny", "sizes": [6]})
    data["seeds"] = [0, 1]
    specs = plan_sweep(from_mapping(SweepConfig, data))
    assert [s.trial_id for s in specs] == ["nano-D3-s0", "nano-D6-s0", "nano-D3-s1", "nano-D6-s1",
                                           "big-D6-s0", "big-D6-s1"]
    assert specs[-1].pretrain_data == specs[1].pretrain_data  # the same D=6 view for every model
