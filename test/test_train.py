"""Training end to end on a real (tiny) dataset: exact resume, SFT, bad input, NaN stop,
and torchrun with two CPU processes on gloo (DDP and FSDP).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_helpers import CONFIG, SMALL, build_dataset, losses, run, torchrun

from gen_theta_model.checkpoint import list_checkpoints, load_policy, read_checkpoint_config, read_raw_weights
from gen_theta_model.ema import warmed_up_decay
from gen_theta_model.train_config import load_train_config, policy_config


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return build_dataset(tmp_path_factory.mktemp("mixed"), {"arm6": 3, "arm7": 2, "humanoid16": 2})


@pytest.mark.parametrize("ema", ["ema_decay=0", "ema_decay=0.9"], ids=["plain", "ema"])
def test_stopped_and_resumed_run_matches_an_uninterrupted_one(tmp_path, dataset, ema):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert run(straight, dataset, "max_steps=6", "checkpoint_interval=3", ema) == 0
    # Same schedule (decay over 6 steps), stopped after 3, then the same command with max_steps=6 resumes.
    assert run(stopped, dataset, "max_steps=3", "optim.decay_steps=6", "checkpoint_interval=3", ema) == 0
    assert run(stopped, dataset, "max_steps=6", "checkpoint_interval=3", ema) == 0
    a, b = losses(straight), losses(stopped)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    for step in a:
        assert abs(a[step] - b[step]) <= 1e-6, (step, a[step], b[step])
    # The served weights (the average, with EMA) and the optimizer's own both continue exactly.
    assert (read_raw_weights(straight) is None) == (ema == "ema_decay=0")
    for weights in (lambda out: load_policy(out).model.state_dict(), read_raw_weights):
        final_a, final_b = weights(straight), weights(stopped)
        for k in final_a or {}:
            torch.testing.assert_close(final_a[k], final_b[k], rtol=0, atol=1e-6)
    assert [p.name for p in list_checkpoints(stopped)] == ["step_00000003", "step_00000006"]


def test_an_ema_run_serves_the_average_of_its_weights(tmp_path, dataset):
    """Every step's optimizer weights, read from checkpoints, averaged by hand give the served weights."""
    out = tmp_path / "run"
    assert run(out, dataset, "max_steps=4", "checkpoint_interval=1", "keep_checkpoints=4", "ema_decay=0.5") == 0
    raws = [read_raw_weights(c) for c in list_checkpoints(out)]
    expected = {k: v.clone() for k, v in raws[0].items()}  # the first update copies
    for n, raw in enumerate(raws[1:], start=1):
        d = warmed_up_decay(0.5, n)
        expected = {k: d * expected[k] + (1 - d) * raw[k] for k in expected}
    served = load_policy(out).model.state_dict()
    assert any(not torch.equal(served[k], raws[-1][k]) for k in served)  # it is not the last step's
    for k in expected:
        torch.testing.assert_close(served[k], expected[k], rtol=1e-5, atol=1e-6)


def test_checkpoint_describes_itself(tmp_path, dataset):
    out = tmp_path / "run"
    assert run(out, dataset, "max_steps=2", "eval_interval=2") == 0
    train_cfg, policy_cfg, doc = read_checkpoint_config(out)
    assert train_cfg.max_steps == 2 and policy_cfg.d_model == 64 and policy_cfg.chunk_len == 20
    assert doc["step"] == 2 and "val/all/mse_d0" in doc["metrics"]
    policy = load_policy(out)
    assert [e.name for e in policy.embodiments] == ["arm6", "arm7", "humanoid16"]
    assert policy.observation_config == train_cfg.data.observation
    ckpt = list_checkpoints(out)[-1]
    assert {p.name for p in ckpt.iterdir()} == {"config.yaml", "model.safetensors", "norm_stats", "embodiments.yaml",
                                                "training_state.pt"}
    assert not list((out / "checkpoints").glob(".tmp-*"))
    assert list((out / "tensorboard").iterdir())


def test_fine_tune_from_a_checkpoint_with_a_frozen_trunk(tmp_path, dataset):
    pre, sft = tmp_path / "pre", tmp_path / "sft"
    assert run(pre, dataset, "max_steps=2") == 0
    task = build_dataset(tmp_path / "task", {"arm7": 3})
    assert run(sft, task, "max_steps=2", f"init_from={pre}", "freeze_trunk=true", "data.val_fraction=0.3") == 0
    before, after = load_policy(pre).model.state_dict(), load_policy(sft).model.state_dict()
    trunk = [k for k in before if k.startswith("trunk.")]
    assert trunk and all(torch.equal(before[k], after[k]) for k in trunk)
    assert not torch.equal(before["head.proj.weight"], after["head.proj.weight"])
    assert [e.name for e in load_policy(sft).embodiments] == ["arm6", "arm7", "humanoid16"]


def test_fine_tune_may_change_what_keeps_the_weights_shapes(tmp_path, dataset, capsys):
    pre = tmp_path / "pre"
    assert run(pre, dataset, "max_steps=1") == 0
    assert not load_policy(pre).config.shared_components
    assert run(tmp_path / "shared", dataset, "max_steps=1", f"init_from={pre}",
               "policy={shared_components: true, image_shift: 2}") == 0
    cfg = load_policy(tmp_path / "shared").config
    assert cfg.shared_components and cfg.image_shift == 2 and cfg.d_model == load_policy(pre).config.d_model
    assert run(tmp_path / "wider", dataset, "max_steps=1", f"init_from={pre}", "policy={d_model: 96}") == 2
    assert "weights do not match the config" in capsys.readouterr().err
    assert not (tmp_path / "wider" / "checkpoints").exists()


def test_unknown_embodiment_is_a_clear_error(tmp_path, capsys):
    arm_only = build_dataset(tmp_path / "arm6", {"arm6": 3})
    humanoid = build_dataset(tmp_path / "hum", {"humanoid16": 3})
    assert run(tmp_path / "pre", arm_only, "max_steps=1") == 0
    code = run(tmp_path / "sft", humanoid, "max_steps=1", f"init_from={tmp_path / 'pre'}")
    assert code == 2
    err = capsys.readouterr().err
    assert "humanoid16" in err and "does not know" in err and "extend_embodiments" in err
    code = run(tmp_path / "sft2", humanoid, "max_steps=1", f"init_from={tmp_path / 'pre'}", "extend_embodiments=true",
               "data.val_fraction=0.3")
    assert code == 0
    assert [e.name for e in load_policy(tmp_path / "sft2").embodiments] == ["arm6", "humanoid16"]


def test_config_typo_names_the_key(tmp_path, dataset, capsys):
    assert run(tmp_path / "x", dataset, "optim.lrr=0.1") == 2
    assert "unknown key 'optim.lrr' for OptimConfig" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text(CONFIG.read_text().replace("eval_interval:", "eval_intervall:"))
    assert run(tmp_path / "y", dataset, config=bad) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "unknown key 'eval_intervall'" in err
    assert run(tmp_path / "z", dataset, "policy={n_layers: 3}") == 2
    assert "unknown key 'policy.n_layers' for PolicyConfig" in capsys.readouterr().err


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, dataset, capsys):
    out = tmp_path / "run"
    assert run(out, dataset, "max_steps=2", "checkpoint_interval=2") == 0
    good = load_policy(out).model.state_dict()
    # Resume with an absurd learning rate: step 3 blows the weights up, step 4's loss is NaN.
    assert run(out, dataset, "max_steps=10", "checkpoint_interval=2", "optim.lr=1.0e30", "optim.min_lr=0") == 1
    err = capsys.readouterr().err
    assert "non-finite loss" in err and "step 4" in err and "step_00000002" in err
    assert [p.name for p in list_checkpoints(out)] == ["step_00000002"]
    kept = load_policy(out).model.state_dict()
    assert all(torch.equal(good[k], kept[k]) for k in good)
    assert not list((out / "checkpoints").glob(".tmp-*"))


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_torchrun_two_cpu_processes(tmp_path, dataset, strategy):
    out = tmp_path / strategy
    # with an object readout on data without object poses: its zero loss keeps every rank's graph the same
    proc = torchrun(out, dataset, "max_steps=3", "eval_interval=3", f"distributed={strategy}",
                    "policy.object_weight=1.0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{strategy} on 2 process(es)" in proc.stdout + proc.stderr
    steps = losses(out)
    assert sorted(steps) == [1, 2, 3] and all(v == v for v in steps.values())
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["val/object_cm"] for r in rows if "val/loss" in r] == [0.0]  # no object poses in these bags
    policy = load_policy(out)  # the gathered (FSDP: unsharded) weights load into a plain model
    assert sum(p.numel() for p in policy.model.parameters()) > 0
    state = torch.load(list_checkpoints(out)[-1] / "training_state.pt", weights_only=True)
    assert state["world_size"] == 2 and state["step"] == 3


@pytest.mark.parametrize("name", sorted(p.name for p in (CONFIG.parent).glob("*.yaml")))
def test_shipped_configs_load(name):
    cfg = load_train_config(CONFIG.parent / name)
    assert policy_config(cfg).chunk_len == cfg.data.horizon


def test_time_budget_ends_the_run_with_validation_and_a_checkpoint(tmp_path, dataset):
    out = tmp_path / "run"
    assert run(out, dataset, "max_steps=1000", "max_minutes=1.0e-6") == 0
    assert [p.name for p in list_checkpoints(out)] == ["step_00000001"]
    _, _, doc = read_checkpoint_config(out)
    assert "val/loss" in doc["metrics"]


def test_ctrl_c_ends_training_in_one_line(tmp_path, dataset):
    """Ctrl-C in a terminal (SIGINT to the process group, loader worker included): one line, exit 130."""
    out = tmp_path / "run"
    args = [str(Path(sys.executable).parent / "gen-theta"), "train", str(CONFIG), "--set", f"dataset=[{dataset}]",
            "--set", f"out_dir={out}"]
    for s in (*SMALL, "data.num_workers=1", "max_steps=100000"):
        args += ["--set", s]
    err = (tmp_path / "train.err").open("w")
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not ((out / "train_log.jsonl").is_file() and (out / "train_log.jsonl").read_text().strip()):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "train.err").read_text()
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        err.close()
    stderr = (tmp_path / "train.err").read_text()
    assert code == 130 and "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1] == "gen-theta train: interrupted", stderr
