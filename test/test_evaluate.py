"""Evaluation: reverse KL against analytic values, the SFT/RL call, and `gen-theta evaluate` on a checkpoint."""

from __future__ import annotations

import json
import math

import pytest
import torch
from data_helpers import make_episode
from scipy import integrate
from scipy.stats import norm
from train_helpers import run

from gen_theta_model.data.manifest import finalize_dataset
from gen_theta_model.embodiment import load_robot
from gen_theta_model.evaluate import EvalConfig, main, recommend
from gen_theta_model.metrics import reverse_kl, reverse_kl_gaussian_closed, reverse_kl_monte_carlo
from gen_theta_model.policy.head import ChunkMixture

SIGMA = 0.3
HOLD_OUT = ("data.val_fraction=0", "data.val_tasks=[t0, t1]")  # one held-out task per category


def gaussian(mu: torch.Tensor, std: torch.Tensor) -> ChunkMixture:
    """One-component mixture with mean/std (B, D, H)."""
    b, d, _ = mu.shape
    return ChunkMixture(torch.zeros(b, d, 1), mu.unsqueeze(2), std.log().unsqueeze(2))


def test_closed_form_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu, std = torch.randn(2, 3, 5, generator=g), torch.rand(2, 3, 5, generator=g) + 0.1
    target = torch.randn(2, 5, 3, generator=g)
    steps = torch.ones(2, 5, dtype=torch.bool)
    steps[:, :2] = False  # a committed prefix of 2 steps is not scored
    joints = torch.tensor([[True, True, True], [True, False, False]])
    got = reverse_kl_gaussian_closed(gaussian(mu, std), target, SIGMA, steps, joints)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, std), torch.distributions.Normal(target.transpose(1, 2), SIGMA)
    )  # (B, D, H)
    ref = (ref * joints[:, :, None] * steps[:, None, :]).sum((1, 2))
    torch.testing.assert_close(got, ref)
    mc = reverse_kl_monte_carlo(gaussian(mu, std), target, SIGMA, steps, joints, samples=2000,
                                generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(mc, ref, rtol=0.05, atol=0.05)


def test_monte_carlo_kl_of_a_mixture_matches_numerical_integration():
    w, m, s, a_star = [0.3, 0.7], [-0.4, 0.5], [0.2, 0.1], 0.3
    dist = ChunkMixture(torch.log(torch.tensor(w)).view(1, 1, 2), torch.tensor(m).view(1, 1, 2, 1),
                        torch.log(torch.tensor(s)).view(1, 1, 2, 1))

    def p(x: float) -> float:
        return sum(wi * norm.pdf(x, mi, si) for wi, mi, si in zip(w, m, s))

    exact, _ = integrate.quad(lambda x: p(x) * (math.log(p(x)) - norm.logpdf(x, a_star, SIGMA)), -3, 3, limit=200)
    ones = torch.ones(1, 1, dtype=torch.bool)
    est = reverse_kl(dist, torch.tensor([[[a_star]]]), SIGMA, ones, ones, samples=20_000,
                     generator=torch.Generator().manual_seed(0))
    assert est.item() == pytest.approx(exact, rel=0.03)


def test_sft_rl_call():
    cfg = EvalConfig(mse_threshold=0.01, kl_threshold=2.0)
    assert recommend(0.005, 1.0, cfg) == "SFT candidate"
    assert recommend(0.05, 1.0, cfg) == "RL candidate"
    assert recommend(0.005, 5.0, cfg).startswith("neither")


def test_evaluate_checkpoints_writes_table_json_and_scatter(tmp_path, capsys):
    specs = {n: load_robot(n) for n in ("arm6", "humanoid16")}
    for i in range(4):
        for name, spec in specs.items():
            make_episode(tmp_path / "ds", spec, f"{name}_{i}", duration=1.5, task=f"t{i}",
                         category=("dexterity", "real_world")[i % 2], seed=i)
    finalize_dataset(tmp_path / "ds", specs)
    assert run(tmp_path / "a", tmp_path / "ds", "max_steps=2", *HOLD_OUT) == 0
    assert run(tmp_path / "b", tmp_path / "ds", "max_steps=4", *HOLD_OUT,
               "policy={d_model: 64, n_layer: 2, n_head: 2, image_grid: 2, n_components: 1}") == 0
    capsys.readouterr()
    out = tmp_path / "eval"
    code = main([str(tmp_path / "a"), str(tmp_path / "b"), "--data", str(tmp_path / "ds"), "--delay", "0",
                 "--delay", "5", "--batch-size", "4", "--samples", "8", "--kl-samples", "4", "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "| delay | category |" in text and "dexterity" in text and "real_world" in text
    assert text.count("validation loss terms: loss ") == 2
    assert any(call in text for call in ("SFT candidate", "RL candidate", "neither"))
    results = json.loads((out / "eval.json").read_text())
    assert set(results) == {str(tmp_path / "a"), str(tmp_path / "b")}
    for rows in results.values():
        assert {(r["delay"], r["category"]) for r in rows} >= {(0, "all"), (5, "all")}
        for r in rows:
            assert r["mse"] >= 0 and r["mse_joint"] >= 0 and math.isfinite(r["kl"])
    assert (out / "mse_kl.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main([str(tmp_path / "a"), "--data", str(tmp_path / "nowhere")]) == 1
