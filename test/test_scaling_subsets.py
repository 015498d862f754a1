"""Nested pretraining subsets and downstream suites as dataset views over real episodes."""

from __future__ import annotations

import pytest
from data_helpers import make_episode

from gen_theta_model.data.loader import load_episodes
from gen_theta_model.data.manifest import finalize_dataset, open_dataset
from gen_theta_model.embodiment import load_robot
from gen_theta_model.scaling.subsets import (
    list_episodes,
    materialize_view,
    nested_order,
    nested_subsets,
    split_suites,
)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("src") / "sim"
    specs = {n: load_robot(n) for n in ("arm6", "arm7")}
    for i in range(12):
        robot = "arm6" if i % 3 else "arm7"
        task, category = ("pick", "dexterity") if i % 2 else ("pack", "real_world")
        make_episode(root, specs[robot], f"ep{i:02d}", duration=0.4, task=task, category=category, seed=i)
    finalize_dataset(root, specs)
    return root


def test_subsets_are_nested_deterministic_and_cover_groups(source):
    eps = list_episodes([source])
    order = nested_order(eps, seed=3)
    assert sorted(e.episode for e in order) == sorted(e.episode for e in eps)
    assert [e.episode for e in nested_order(list(reversed(eps)), seed=3)] == [e.episode for e in order]
    assert [e.episode for e in nested_order(eps, seed=4)] != [e.episode for e in order]
    subsets = nested_subsets(order, [8, 4, 2])
    small, mid, big = ({e.episode for e in subsets[d]} for d in (2, 4, 8))
    assert small < mid < big and len(big) == 8
    groups = {(e.embodiment, e.task) for e in eps}
    assert {(e.embodiment, e.task) for e in subsets[4]} == groups  # every prefix of 4 covers the 4 groups
    with pytest.raises(ValueError, match=r"subset sizes \[13\] are not in \[1, 12\]"):
        nested_subsets(order, [4, 13])


def test_suites_leave_the_pool_and_views_load(source, tmp_path):
    eps = list_episodes([source])
    suites, pool = split_suites(eps, {"pick_suite": (["pick"], 3)}, seed=0)
    assert len(suites["pick_suite"]) == 3 and {e.task for e in suites["pick_suite"]} == {"pick"}
    assert len(pool) == 9 and not {e.episode for e in pool} & {e.episode for e in suites["pick_suite"]}
    with pytest.raises(ValueError, match="suite 'x': wants 9 episodes of tasks \\['pick'\\], found 6"):
        split_suites(eps, {"x": (["pick"], 9)}, seed=0)

    subset = nested_subsets(nested_order(pool, 0), [5])[5]
    (view,) = materialize_view([source], subset, tmp_path / "D5")
    assert view.name == "sim" and not (view / "shards").exists()  # the index points at the source's shards
    index = open_dataset(view)
    assert sorted(m.episode for m in index.episodes) == sorted(e.episode for e in subset)
    refs, names, _, _ = load_episodes([view])
    assert len(refs) == 5 and set(names) <= {"arm6", "arm7"}
    # re-materialising with fewer episodes replaces the view's index
    materialize_view([source], subset[:2], tmp_path / "D5")
    assert len(open_dataset(view).episodes) == 2
