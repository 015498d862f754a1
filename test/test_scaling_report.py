"""From trial results to the report: analysis, plots, markdown and strict JSON, and `scaling fit`."""

import dataclasses
import json

import matplotlib.image
import numpy as np
import pytest

from gen_theta_model.config import ConfigError
from gen_theta_model.scaling import cli
from gen_theta_model.scaling.analysis import AnalysisOptions, analyze, steps_to_target
from gen_theta_model.scaling.plots import plot_all
from gen_theta_model.scaling.report import write_report
from gen_theta_model.scaling.results import (
    CurvePoint,
    SuiteResult,
    TrialResult,
    load_results,
    read_result,
    write_result,
)

PRESETS = {"tiny": (1_000_000, 0.30, 400.0), "small": (8_000_000, 0.40, 100.0)}  # params, alphaD, ft tau
PRE_STEPS = [50, 100, 200, 400, 800, 1600]
FT_STEPS = [0, 100, 200, 400, 800, 1600, 3200]


def synthetic_trial(preset: str, d: int, seed: int = 0) -> TrialResult:
    n, alpha, tau = PRESETS[preset]
    rng = np.random.default_rng([list(PRESETS).index(preset), d, seed])
    suites = []
    for name, category, scale in (("pick", "dexterity", 0.9), ("pack", "real-world", 1.1)):
        final = scale * (5.0 / d) ** alpha * float(np.exp(rng.normal(0, 0.03)))
        curve = [CurvePoint(s, final * (1.0 + 3.0 * float(np.exp(-s / tau))), 1.0) for s in FT_STEPS]
        suites.append(SuiteResult(name, category, curve[-1].mse, 1.0, curve))
    if preset == "tiny":  # plateaus
        pre = [0.5 + 0.3 * np.exp(-s / 60.0) + rng.normal(0, 0.002) for s in PRE_STEPS]
    else:  # keeps improving
        pre = [2.0 * (s / 10.0) ** -0.15 for s in PRE_STEPS]
    return TrialResult(
        trial_id=f"{preset}-D{d}-s{seed}", preset=preset, n_params=n, d=d, seed=seed,
        pretrain_curve=[CurvePoint(s, float(v), None) for s, v in zip(PRE_STEPS, pre)], suites=suites,
        info={"mean_episode_s": 6.0},
    )


@pytest.fixture(scope="module")
def trials():
    return [synthetic_trial(p, d) for p in PRESETS for d in (25, 50, 100, 200, 400)]


def test_analysis_recovers_the_synthetic_law_and_size_effects(trials):
    analysis = analyze(trials, AnalysisOptions(n_boot=100, targets=[0.2]))
    fits = {p.preset: p for p in analysis.presets}
    assert fits["tiny"].power.alpha == pytest.approx(0.30, abs=0.05)
    assert fits["small"].power.alpha == pytest.approx(0.40, abs=0.05)
    req = fits["tiny"].requirements[0]
    assert req["target"] == 0.2 and req["d_needed"] > 400
    assert req["hours_per_trajectory"] == pytest.approx(6.0 / 3600)  # from the trials' episode durations
    assert analysis.loss_vs_size_d == 400 and analysis.loss_vs_size is not None
    # the bigger model reaches the fine-tuning target in fewer steps
    assert analysis.ft_steps["small"] < analysis.ft_steps["tiny"]
    assert analysis.ft_steps_vs_size.alpha > 0
    assert analysis.ossification.ossified == ["tiny"]


def test_report_and_plots_are_written_and_readable(trials, tmp_path):
    analysis = analyze(trials, AnalysisOptions(n_boot=50))
    plots = plot_all(analysis, trials, tmp_path)
    for p in plots:
        img = matplotlib.image.imread(p)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 200
    js, md = write_report(analysis, plots, tmp_path)
    data = json.loads(js.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
    assert data["presets"][0]["power"]["alpha"] == pytest.approx(analysis.presets[0].power.alpha)
    text = md.read_text()
    assert f"{analysis.presets[1].power.alpha:.4g}" in text and "![loss_vs_d](loss_vs_d.png)" in text
    assert "Ossified (plateaued while a larger model still improves): tiny." in text


def test_results_round_trip_and_scaling_fit_cli(trials, tmp_path, capsys):
    for t in trials:
        write_result(t, tmp_path / "trials" / t.trial_id)
    assert read_result(tmp_path / "trials" / trials[0].trial_id / "result.json") == trials[0]
    assert sorted(t.trial_id for t in load_results([tmp_path])) == sorted(t.trial_id for t in trials)
    rc = cli.main(["fit", str(tmp_path), "--n-boot", "30", "--out", str(tmp_path / "rep"), "--target", "0.25"])
    assert rc == 0
    assert (tmp_path / "rep" / "scaling.md").is_file() and (tmp_path / "rep" / "loss_vs_d.png").is_file()
    assert "| tiny | 1,000,000 | power |" in capsys.readouterr().out


def test_bad_result_files_are_named(tmp_path, capsys):
    bad = tmp_path / "t1" / "result.json"
    bad.parent.mkdir()
    bad.write_text(json.dumps({**synthetic_trial("tiny", 25).to_dict(), "d": "many"}))
    with pytest.raises(ConfigError, match=r"t1/result.json: key 'd': expected int"):
        read_result(bad)
    assert cli.main(["fit", str(tmp_path)]) == 2
    assert "t1/result.json" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="nothing: no such file"):
        load_results([tmp_path / "t1" / "nothing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="empty: no result.json"):
        load_results([tmp_path / "empty"])


def test_trajectory_duration_must_be_known(trials):
    bare = [dataclasses.replace(t, info={}) for t in trials]
    with pytest.raises(ValueError, match="--seconds-per-trajectory"):
        analyze(bare, AnalysisOptions(n_boot=0))
    analysis = analyze(bare, AnalysisOptions(n_boot=0, hours_per_trajectory=0.01, targets=[0.2]))
    assert analysis.presets[0].requirements[0]["hours"] == pytest.approx(
        0.01 * analysis.presets[0].requirements[0]["d_needed"])


def test_steps_to_target_interpolates():
    steps, losses = np.array([0, 100, 200]), np.array([1.0, 0.6, 0.2])
    assert steps_to_target(steps, losses, 0.4) == pytest.approx(150.0)
    assert steps_to_target(steps, losses, 1.5) == 0.0
    assert steps_to_target(steps, losses, 0.1) is None
