"""Rendered layouts (a real pybullet sim) and the image encoder pretrained on them, then a policy
training started from that checkpoint.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import save_file
from train_helpers import SMALL, build_dataset, run

from gen_theta_model import batch as K
from gen_theta_model.checkpoint import load_policy
from gen_theta_model.config import ConfigError
from gen_theta_model.embodiment import load_robot
from gen_theta_model.policy.config import preset
from gen_theta_model.policy.example import example_batch, example_norm_stats
from gen_theta_model.policy.policy import build_policy
from gen_theta_model.sim.layouts import LayoutConfig, load_layouts, render_layouts, save_layouts
from gen_theta_model.sim.objects import CUBE_HALF
from gen_theta_model.sim.robot import SimRobot
from gen_theta_model.sim.tasks import BELT_HEIGHT
from gen_theta_model.train_config import load_train_config, policy_config
from gen_theta_model.vision_pretrain import (
    RAISED_M,
    VisionPretrainConfig,
    placement_cm,
    pretrain_vision,
    split_layouts,
    validate_readout,
)

READOUT = "policy={d_model: 64, n_layer: 2, n_head: 2, image_grid: 2, object_weight: 1.0}"


@pytest.fixture(scope="module")
def arm6():
    return load_robot("arm6")


@pytest.fixture(scope="module")
def layouts(arm6):
    cfg = LayoutConfig(poses_per_layout=3, image_size=96, max_cameras=2)
    return render_layouts(arm6, ["stack", "conveyor_pack"], [5, 6], cfg)


def test_each_layout_is_one_scene_seen_with_the_arm_in_several_poses(arm6, layouts):
    assert layouts["images"].shape == (12, 2, 3, 96, 96) and layouts["images"].dtype == np.uint8
    assert layouts["layout"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert layouts["task"].tolist() == [0] * 6 + [3] * 6  # stack, conveyor_pack: indices into sim.tasks.TASKS
    assert layouts["image_mask"].all()  # arm6 has two cameras
    robot = SimRobot(arm6)
    try:
        for k, (task, seed) in enumerate([("stack", 5), ("stack", 6)]):
            robot.reset(task, seed, now=0.0)
            _, positions, _ = robot.world.object_poses()  # the scene of that seed, as the sim publishes it
            rows = np.flatnonzero(layouts["layout"] == k)
            for r in rows:
                assert layouts["objects_mask"][r].sum() == len(positions)
                np.testing.assert_allclose(layouts["objects"][r, : len(positions)], positions, atol=1e-5)
            # the same scene, another arm pose: the wrist camera sees something else in every frame
            wrist = layouts["images"][rows, 1].astype(int)
            assert all(np.abs(wrist[i] - wrist[j]).mean() > 1.0 for i in range(3) for j in range(i))
    finally:
        robot.close()
    conveyor = layouts["objects"][6:][layouts["objects_mask"][6:]]
    cube_on_belt = np.isclose(conveyor[:, 2], BELT_HEIGHT + CUBE_HALF, atol=3e-3)
    assert cube_on_belt.any()  # the conveyor's cube lies on its belt wherever the pre-roll carried it


def test_a_layout_file_round_trips_and_a_wrong_file_is_named(tmp_path, layouts):
    path = tmp_path / "l.safetensors"
    save_layouts(path, layouts, "arm6", ["stack", "conveyor_pack"], 96)
    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata()
        assert sorted(f.keys()) == sorted(layouts)
    assert meta["robot"] == "arm6" and meta["layouts"] == "4" and meta["tasks"] == "stack,conveyor_pack"
    back = load_layouts(path)
    for k, v in layouts.items():
        np.testing.assert_array_equal(back[k], v)
    bad = tmp_path / "bad.safetensors"
    save_file({"images": layouts["images"]}, str(bad))
    with pytest.raises(ValueError, match="not a layout file"):
        load_layouts(bad)


def test_an_unknown_task_is_named_before_anything_renders(arm6):
    with pytest.raises(ValueError, match="unknown task 'stak'"):
        render_layouts(arm6, ["stak"], [1], LayoutConfig())


def test_the_layouts_command_names_a_bad_robot(tmp_path):
    gen_theta = str(Path(sys.executable).parent / "gen-theta")
    proc = subprocess.run([gen_theta, "layouts", "--robot", "no_such_robot", "--seeds", "1", "--out",
                           str(tmp_path / "x.safetensors")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no_such_robot" in proc.stderr and not (tmp_path / "x.safetensors").exists()


def test_held_out_layouts_are_whole_scenes():
    layout = np.repeat(np.arange(20), 4)
    train, val = split_layouts(layout, 0.25, seed=0)
    assert len(val) == 20 and not set(layout[train]) & set(layout[val])
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(80))


def test_pretraining_trains_the_image_encoder_alone_and_the_policy_starts_from_it(tmp_path, layouts, capsys):
    data = build_dataset(tmp_path / "data", {"arm6": 3})
    file = tmp_path / "l.safetensors"
    save_layouts(file, layouts, "arm6", ["stack", "conveyor_pack"], 96)
    sets = [f"dataset=[{data}]", *SMALL, READOUT]
    cfg = load_train_config(Path("config/train/tiny_pretrain.yaml"), sets)
    out = tmp_path / "vision"
    ckpt = pretrain_vision(cfg, [str(file)], out, VisionPretrainConfig(steps=30, batch_size=8, eval_interval=30,
                                                                       val_fraction=0.25, eval_batches=1))
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    train = [r["pretrain/loss"] for r in rows if "pretrain/loss" in r]
    assert len(train) == 3 and train[-1] < train[0]  # the readout learns the training layouts
    val = [r for r in rows if "val/layouts_object_cm" in r]
    assert len(val) == 1 and val[0]["val/layouts_object_cm"] > 0
    _, held = split_layouts(layouts["layout"], 0.25, seed=0)  # the pretraining's split
    tasks = {("stack", "pick_place_bin", "instruction_pick", "conveyor_pack")[t] for t in layouts["task"][held]}
    assert {k for k in val[0] if k.startswith("val/layouts/")} == {f"val/layouts/{t}_object_cm" for t in tasks}
    assert "val/object_cm" not in val[0]  # these demonstrations have no object poses

    pretrained = load_policy(ckpt)
    torch.manual_seed(cfg.seed)  # what the policy training would have drawn from the same config
    fresh = build_policy(policy_config(cfg), pretrained.embodiments, pretrained.normalizer.stats,
                         cfg.data.observation, torch.device("cpu")).model.state_dict()
    for name, value in pretrained.model.state_dict().items():
        trained = name.startswith(("image.", "objects."))
        assert torch.equal(value, fresh[name]) != trained, name

    # the policy training starts from it, and keeps training the readout on the demonstrations
    capsys.readouterr()
    run_dir = tmp_path / "policy"
    assert run(run_dir, data, READOUT, "max_steps=2", f"init_from={ckpt}") == 0
    assert f"parameters (from {ckpt})" in capsys.readouterr().out
    tuned = load_policy(run_dir).model.state_dict()
    before = pretrained.model.state_dict()
    stem = [k for k in before if k.startswith("image.stem.")]
    assert stem and all(not torch.equal(tuned[k], before[k]) for k in stem)
    # or keeps the pretrained encoder as it is, and trains the rest and the readout
    frozen_dir = tmp_path / "frozen"
    assert run(frozen_dir, data, READOUT, "max_steps=2", f"init_from={ckpt}", "freeze_image_encoder=true") == 0
    frozen = load_policy(frozen_dir).model.state_dict()
    assert all(torch.equal(frozen[k], v) for k, v in before.items() if k.startswith("image."))
    assert not torch.equal(frozen["objects.query.weight"], before["objects.query.weight"])
    assert not torch.equal(frozen["head.proj.weight"], before["head.proj.weight"])


def test_pretraining_needs_the_readout(tmp_path):
    data = build_dataset(tmp_path / "data", {"arm6": 1})
    cfg = load_train_config(Path("config/train/tiny_pretrain.yaml"), [f"dataset=[{data}]", *SMALL])
    with pytest.raises(ConfigError, match="object_weight"):
        pretrain_vision(cfg, [], tmp_path / "out", VisionPretrainConfig())


def test_demonstration_frames_are_scored_on_the_table_and_raised_apart(arm6, layouts):
    cfg = preset("tiny", d_model=32, n_layer=1, n_head=2, chunk_len=12, max_prefix_steps=6, max_instruction_len=32,
                 object_weight=1.0)
    torch.manual_seed(0)
    model = build_policy(cfg, [arm6], {"arm6": example_norm_stats(arm6)}).model
    demo = example_batch([arm6], cfg, 6, image_size=32)  # objects 0-10 cm above the table
    arrays = {**layouts, "images": layouts["images"][..., :32, :32]}
    out = validate_readout(model, arrays, np.arange(6), [demo], VisionPretrainConfig(eval_batches=1))
    assert set(out) == {"val/layouts_object_cm", "val/layouts/stack_object_cm", "val/object_cm",
                        "val/object_cm_table", "val/object_cm_raised"}
    with torch.no_grad():
        cm = placement_cm(model.eval(), demo[K.IMAGES], demo[K.IMAGE_MASK], demo[K.OBJECTS])[demo[K.OBJECTS_MASK]]
    up = demo[K.OBJECTS][..., 2][demo[K.OBJECTS_MASK]] > RAISED_M
    assert 0 < int(up.sum()) < len(up)
    assert out["val/object_cm_raised"] == pytest.approx(float(cm[up].mean()))
    assert out["val/object_cm_table"] == pytest.approx(float(cm[~up].mean()))
    assert out["val/object_cm"] == pytest.approx(float(cm.mean()))
