"""grasp_error on recorded episodes: the demonstration's own chunk scores zero, standing still does not,
at the grasp and at the release.
"""

import numpy as np
import pytest
import torch
from data_helpers import make_episode

from gen_theta_model import batch as K
from gen_theta_model.data.loader import DataConfig, make_dataloaders
from gen_theta_model.data.manifest import finalize_dataset
from gen_theta_model.embodiment import load_robot
from gen_theta_model.observation import ObservationConfig
from gen_theta_model.sim.grasp_error import event_step, queries, score, table
from gen_theta_model.sim.kinematics import ArmKinematics


def test_the_grasp_is_the_first_close_after_an_open_command_the_release_the_next_open():
    spec = load_robot("arm6")
    g = 6  # the gripper: open at the upper limit, closed at the lower
    actions = np.tile(spec.home_positions, (12, 1))
    actions[:, g] = spec.upper[g]
    actions[:2, g] = spec.lower[g]  # closed at the start: not a grasp
    actions[6:, g] = spec.lower[g]
    assert event_step(actions, spec, g) == 6
    assert event_step(actions, spec, g, "release") is None  # holds to the end
    actions[9:, g] = spec.upper[g]
    assert event_step(actions, spec, g, "release") == 9
    actions[6:, g] = spec.upper[g]
    assert event_step(actions, spec, g) is None and event_step(actions, spec, g, "release") is None
    with pytest.raises(ValueError, match="event must be one of"):
        event_step(actions, spec, g, "place")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """Three 10 s arm6 episodes whose gripper command opens at ~0.3 s, closes at ~4.8 s, opens at ~9.3 s."""
    root = tmp_path_factory.mktemp("grasp_data")
    spec = load_robot("arm6")
    for i in range(3):
        make_episode(root, spec, f"arm6_{i}", duration=10.0, seed=i)
    finalize_dataset(root, {"arm6": spec})
    cfg = DataConfig(observation=ObservationConfig(image_size=32, max_cameras=2, history=2, max_dof=7),
                     num_workers=0, val_fraction=0.0)
    _, val, info = make_dataloaders(root, cfg)
    kin = ArmKinematics(spec)
    yield val.dataset, info, spec, kin
    kin.close()


def test_the_demonstrations_chunk_scores_zero_and_standing_still_does_not(recorded):
    dataset, info, spec, kin = recorded
    qs, grasps = queries(dataset, {"train": info.train_episodes}, spec, kin.gripper, [0.2, 0.5, 1.5])
    assert len(grasps) == 3 and all(200 < s < 300 for s in grasps.values())  # ~4.8 s at 50 Hz
    assert len(qs) == 9 and {q.lead_steps for q in qs} == {10, 25, 75}

    rows = score(dataset, lambda batch: (batch[K.ACTION], None), spec, kin, qs, grasps, batch_size=4)
    assert [(r.split, round(r.lead_s, 1), r.samples) for r in rows] == [("train", 0.2, 3), ("train", 0.5, 3),
                                                                       ("train", 1.5, 3)]
    for r in rows:
        assert r.xy_cm_median == pytest.approx(0.0, abs=1e-6) and r.height_cm_median == pytest.approx(0.0, abs=1e-6)
        assert r.on_time == 1.0  # closes at the grasp inside the chunk; stays open when it lies beyond
        # The synthetic episodes all grasp at one point (their joints follow one function of time).
        assert r.spread_cm_median == pytest.approx(0.0, abs=1e-6) and r.follows == {}

    def stand_still(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        last = batch[K.STATE][:, -1]  # (B, D) canonical: the latest joint state, held for the whole chunk
        return last[:, None].expand(-1, batch[K.ACTION].shape[1], -1), torch.zeros(len(last))  # no plan closes

    still = score(dataset, stand_still, spec, kin, qs, grasps)
    assert all(r.xy_cm_median > 1.0 and r.on_time == 0.0 for r in still[:2])  # moves and closes: missed
    assert still[2].on_time == 1.0  # open through a chunk that ends before the grasp, as shown
    assert len(table(still).splitlines()) == 2 + len(still)
    assert all(r.act_weight == 0.0 for r in still) and all(r.act_weight is None for r in rows)
    assert table(still).splitlines()[2].split(" | ")[6] == "0.00" and table(rows).splitlines()[2].split(" | ")[6] == "-"

    qs, releases = queries(dataset, {"train": info.train_episodes}, spec, kin.gripper, [0.2, 0.5], "release")
    assert all(450 < s < 480 for s in releases.values())  # ~9.3 s
    rows = score(dataset, lambda batch: (batch[K.ACTION], None), spec, kin, qs, releases, event="release")
    assert [r.samples for r in rows] == [3, 3] and all(r.on_time == 1.0 and r.xy_cm_median < 1e-4 for r in rows)
    still = score(dataset, stand_still, spec, kin, qs, releases, event="release")
    assert all(r.on_time == 0.0 for r in still)  # holds closed through the release
    assert "opens within 0.1 s" in table(still, "release")
