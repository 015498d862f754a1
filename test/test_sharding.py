"""FSDP at scale, on two CPU processes (gloo): meta-device initialisation, sharded (DCP) checkpoints
that resume exactly and on another process count, consolidation for serving, and the activation
checkpointing and bf16 paths.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from train_helpers import build_dataset, losses, run, torchrun

from gen_theta_model import batch as K
from gen_theta_model.checkpoint import (
    CheckpointError,
    list_checkpoints,
    load_policy,
    load_training_state,
    save_checkpoint,
)
from gen_theta_model.distributed import (
    DistEnv,
    autocast,
    free_local_port,
    full_state,
    setup,
    teardown,
    wrap_model,
)
from gen_theta_model.embodiment import load_robot
from gen_theta_model.policy.config import preset
from gen_theta_model.policy.example import example_batch, example_norm_stats
from gen_theta_model.policy.model import HarmonicTransformer
from gen_theta_model.policy.policy import build_policy
from gen_theta_model.sharded_checkpoint import main as checkpoint_main
from gen_theta_model.sharded_checkpoint import save_sharded
from gen_theta_model.sharding import init_sharded, materialise
from gen_theta_model.train_config import TrainConfig

CFG = preset("tiny", d_model=64, n_layer=2, n_head=2, image_grid=2, chunk_len=20, max_prefix_steps=6)
FSDP = ("distributed=fsdp", "checkpoint_interval=2")


def small_policy(device: str = "cpu"):
    specs = [load_robot(n) for n in ("arm6", "humanoid16")]
    return build_policy(CFG, specs, {s.name: example_norm_stats(s, 0.05, 0.2) for s in specs}, device=device)


def observation(policy) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    batch = example_batch(policy.embodiments, policy.config, 4)
    return {k: batch[k] for k in (*K.OBSERVATION_KEYS, K.EMBODIMENT_INDEX)}, batch[K.ACTION][:, :3]


@pytest.mark.parametrize("encoder", [{}, {"image_encoder": "resnet", "image_pool": "spatial_softmax"}])
def test_meta_build_then_init_equals_the_whole_build(encoder):
    cfg = preset("tiny", **encoder)
    torch.manual_seed(0)
    whole = HarmonicTransformer(cfg)
    with torch.device("meta"):
        meta = HarmonicTransformer(cfg)
    meta.to_empty(device="cpu")
    torch.manual_seed(0)
    init_sharded(meta)
    for (name, a), b in zip([*whole.state_dict().items(), *whole.named_buffers()],
                            [*meta.state_dict().values(), *dict(meta.named_buffers()).values()], strict=True):
        assert torch.equal(a, b), name


def _fsdp_worker(rank: int, port: int, out: Path) -> None:
    """One of two gloo processes: meta build, shard, init; two AdamW steps; DCP save; outputs."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")
    torch.set_num_threads(1)
    env = setup("cpu")
    try:
        torch.manual_seed(0)
        policy = small_policy("meta")
        model = wrap_model(policy.model, "fsdp", env, bf16=False, checkpointing=False)
        materialise(policy, env.device, pretrained=True)
        local = sum(p.to_local().numel() for p in model.parameters())
        initial, _ = full_state(model, None, env)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        batch = example_batch(policy.embodiments, policy.config, 4, seed=rank)
        for _ in range(2):
            loss, _ = policy.loss(batch, model)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        save_sharded(out, 2, policy, TrainConfig(), model, optimizer, {"step": 2}, {}, env)
        obs, prefix = observation(policy)
        chunk = policy.predict_chunk(obs, prefix, 3)
        if env.master:
            torch.save({"initial": initial, "chunk": chunk, "local": local}, out / "rank0.pt")
    finally:
        teardown(env)


def test_fsdp_meta_init_shards_then_consolidates_for_serving(tmp_path):
    mp.spawn(_fsdp_worker, args=(free_local_port(), tmp_path), nprocs=2, join=True)
    got = torch.load(tmp_path / "rank0.pt", weights_only=True)
    torch.manual_seed(0)
    whole = small_policy().model
    for name, value in whole.state_dict().items():  # the sharded init is the whole model's, bit for bit
        assert torch.equal(got["initial"][name], value), name
    n = sum(p.numel() for p in whole.parameters())
    assert n / 2 <= got["local"] <= n / 2 + 1000  # each rank holds half (+ the padding of odd first dims)
    ckpt = list_checkpoints(tmp_path)[-1]
    assert {p.name for p in (ckpt / "sharded").iterdir()} == {".metadata", "__0_0.distcp", "__1_0.distcp"}
    assert not (ckpt / "model.safetensors").exists()
    assert checkpoint_main(["consolidate", str(tmp_path), "--out", str(tmp_path / "serve")]) == 0
    assert (tmp_path / "serve" / "model.safetensors").is_file() and not (tmp_path / "serve" / "sharded").exists()
    served = load_policy(tmp_path / "serve")
    obs, prefix = observation(served)
    torch.testing.assert_close(served.predict_chunk(obs, prefix, 3), got["chunk"], rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return build_dataset(tmp_path_factory.mktemp("mixed"), {"arm6": 2, "arm7": 2, "humanoid16": 1})


@pytest.fixture(scope="module")
def fsdp_runs(tmp_path_factory, dataset) -> SimpleNamespace:
    """Run FSDP for 4 steps on 2 processes, and the same run stopped after 2 and resumed."""
    root = tmp_path_factory.mktemp("fsdp")
    straight, stopped = root / "straight", root / "stopped"
    for out, sets in ((straight, ["max_steps=4"]), (stopped, ["max_steps=2", "optim.decay_steps=4"]),
                      (stopped, ["max_steps=4"])):
        proc = torchrun(out, dataset, *FSDP, *sets)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return SimpleNamespace(straight=straight, stopped=stopped, log=proc.stdout + proc.stderr)


def test_fsdp_stopped_and_resumed_run_matches_an_uninterrupted_one(fsdp_runs):
    assert "fsdp on 2 process(es)" in fsdp_runs.log and "resumed at step 2" in fsdp_runs.log
    a, b = losses(fsdp_runs.straight), losses(fsdp_runs.stopped)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for step in a:
        assert abs(a[step] - b[step]) <= 1e-6, (step, a[step], b[step])
    final_a = load_policy(fsdp_runs.straight).model.state_dict()
    final_b = load_policy(fsdp_runs.stopped).model.state_dict()
    for k in final_a:
        torch.testing.assert_close(final_a[k], final_b[k], rtol=0, atol=1e-6)
    ckpt = list_checkpoints(fsdp_runs.stopped)[-1]
    assert (ckpt / "sharded" / ".metadata").is_file() and not (ckpt / "model.safetensors").exists()
    state = load_training_state(ckpt)
    assert state["world_size"] == 2 and len(state["rank_rng"]) == 2 and "optimizer" not in state


def test_fsdp_run_resumes_on_one_process(tmp_path, fsdp_runs, dataset):
    out = shutil.copytree(fsdp_runs.straight, tmp_path / "run")
    before = load_policy(out).model.state_dict()
    assert run(out, dataset, *FSDP, "max_steps=6") == 0  # one process: no sharding, the same checkpoint
    assert sorted(losses(out)) == [1, 2, 3, 4, 5, 6]
    assert all(v == v for v in losses(out).values())
    last = list_checkpoints(out)[-1]
    assert last.name == "step_00000006" and (last / "model.safetensors").is_file()  # one process writes it whole
    after = load_policy(out).model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_fsdp_with_activation_checkpointing_and_bf16_trains_close_to_fp32(tmp_path, dataset, fsdp_runs):
    out = tmp_path / "bf16"
    proc = torchrun(out, dataset, *FSDP, "max_steps=2", "optim.decay_steps=4", "precision=bf16",
                    "activation_checkpointing=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fsdp on 2 process(es), cpu, bf16" in proc.stdout + proc.stderr
    fp32, bf16 = losses(fsdp_runs.straight), losses(out)
    for step in (1, 2):  # the same weights and data: only the rounding differs
        assert abs(bf16[step] - fp32[step]) <= 0.05 * abs(fp32[step]), (step, bf16[step], fp32[step])


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    batch = example_batch(small_policy().embodiments, CFG, 4)
    env = DistEnv(0, 0, 1, torch.device("cpu"))
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        policy = small_policy()
        model = wrap_model(policy.model, "none", env, bf16=False, checkpointing=checkpointing)
        loss, _ = policy.loss(batch, model)
        loss.backward()
        grads.append((loss.detach(), {n.replace("._checkpoint_wrapped_module", ""): p.grad
                                      for n, p in model.named_parameters()}))
    (loss_a, grad_a), (loss_b, grad_b) = grads
    assert any("_checkpoint_wrapped_module" in n for n, _ in model.named_parameters())
    torch.testing.assert_close(loss_a, loss_b, rtol=0, atol=1e-6)
    assert grad_a.keys() == grad_b.keys() and all(g is not None for g in grad_b.values())
    for name in grad_a:
        torch.testing.assert_close(grad_a[name], grad_b[name], rtol=1e-5, atol=1e-7, msg=name)


def test_bf16_autocast_on_cpu_gives_a_finite_loss_close_to_fp32():
    torch.manual_seed(0)
    policy = small_policy()
    batch = example_batch(policy.embodiments, CFG, 4)
    fp32, _ = policy.loss(batch)
    with autocast(True, torch.device("cpu")):
        bf16, _ = policy.loss(batch)
    bf16.backward()
    assert torch.isfinite(bf16) and abs(bf16.item() - fp32.item()) <= 0.02 * abs(fp32.item())
    grads = [p.grad for p in policy.model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_gpu_scale_script_runs_its_cpu_path(tmp_path):
    """bench/gpu_scale.py (deliverable 5, meant for one GPU) at tiny size on the CPU: trains, saves, resumes."""
    script = Path(__file__).resolve().parent.parent / "bench" / "gpu_scale.py"
    proc = subprocess.run([sys.executable, str(script), "--device", "cpu", "--preset", "tiny", "--steps", "4",
                           "--resume-steps", "1", "--micro-batch", "2", "--out", str(tmp_path / "out"),
                           "--ckpt-dir", str(tmp_path / "ckpt")], capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "gpu_scale_tiny.json").read_text())
    assert report["preset"] == "tiny" and report["steps"] == 4 and len(report["resumed_losses"]) == 2
    assert report["resume_loss_diff"] == 0.0  # the resumed step repeats the saved run's next step exactly
    assert all(math.isfinite(x) for x in report["losses"] + report["resumed_losses"])
    assert report["samples_per_s"] > 0 and report["checkpoint_gib"] > 0 and not (tmp_path / "ckpt").exists()


def test_sharded_weights_that_do_not_fit_the_config_are_a_checkpoint_error(tmp_path):
    policy = small_policy()
    ckpt = save_checkpoint(tmp_path, 1, policy, TrainConfig(), policy.model.state_dict())
    (ckpt / "model.safetensors").unlink()
    fewer_layers = HarmonicTransformer(dataclasses.replace(CFG, n_layer=1))
    with warnings.catch_warnings():  # "assuming the intent is to save in a single process": it is
        warnings.filterwarnings("ignore", message=".*single process", category=UserWarning)
        dcp.save({"model": fewer_layers.state_dict()}, checkpoint_id=ckpt / "sharded", no_dist=True)
    with pytest.raises(CheckpointError, match="sharded: weights do not match the config"):
        load_policy(tmp_path)
