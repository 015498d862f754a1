"""Loader: samples match the recorded streams, mixture/split/shard/resume are exact."""

from __future__ import annotations

import signal

import numpy as np
import pytest
import torch
from data_helpers import T0, frame_value, joint_positions, make_episode

from gen_theta_model import batch
from gen_theta_model.data.dataset import augment_image
from gen_theta_model.data.episode import ACTION_POSITION, ACTION_STAMP, JOINT_STAMP, camera_stamp_key
from gen_theta_model.data.index import EpisodeRef
from gen_theta_model.data.loader import DataConfig, load_episodes, make_dataloaders, start_worker
from gen_theta_model.data.manifest import finalize_dataset, read_episode, write_view
from gen_theta_model.data.sampler import Mixture, MixtureSampler, group_weights, split_episodes
from gen_theta_model.data.shards import first_step
from gen_theta_model.data.stream import StreamingDataset
from gen_theta_model.embodiment import load_robot
from gen_theta_model.harmonic import HarmonicConfig
from gen_theta_model.observation import ObservationConfig, build_observation


@pytest.fixture(scope="module")
def specs():
    return {n: load_robot(n) for n in ("arm6", "humanoid16")}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, specs):
    root = tmp_path_factory.mktemp("ds")
    for i in range(4):
        make_episode(root, specs["arm6"], f"arm6_{i}", task=f"pick{i % 2}", seed=i)
    for i in range(2):
        make_episode(root, specs["humanoid16"], f"hum_{i}", task="stack", category="dexterity", seed=10 + i)
    finalize_dataset(root, specs)
    return root


def test_sample_matches_streams(dataset, specs):
    cfg = DataConfig(batch_size=2, num_workers=0, val_fraction=0.0, horizon=20)
    train, _, info = make_dataloaders(dataset, cfg)
    ds = train.dataset
    for ep in range(len(info.episodes)):
        ref = ds.episodes[ep]
        spec = specs[ref.meta.embodiment]
        data = read_episode(dataset, ref.meta.episode)
        for step in (ref.first_step, (ref.first_step + ref.num_steps) // 2, ref.num_steps - 3):
            s = ds[(ep, step, 7)]
            t = int(data.arrays[ACTION_STAMP][step])
            for c, cam in enumerate(ref.cameras):
                stamps = data.arrays[camera_stamp_key(cam.name)]
                i = int(np.searchsorted(stamps, t, side="right")) - 1
                assert s[batch.IMAGE_MASK][c]
                assert abs(float(s[batch.IMAGES][c].mean()) - frame_value(i)) < 3, (ep, step, cam.name)
                assert s[batch.IMAGE_AGE][c] == pytest.approx((t - stamps[i]) * 1e-9, abs=1e-6)
                assert 0 <= s[batch.IMAGE_AGE][c] < 1.0 / cam.fps + 0.03
            assert not s[batch.IMAGE_MASK][len(ref.cameras):].any()
            js = data.arrays[JOINT_STAMP]
            j = int(np.searchsorted(js, t, side="right"))
            n = min(j, 4)
            want = spec.normalize(joint_positions(spec, (js[j - n:j] - T0) * 1e-9))
            np.testing.assert_allclose(s[batch.STATE][4 - n:, : spec.dof], want, atol=1e-5)
            assert not s[batch.STATE][:, spec.dof:].any() and s[batch.STATE_MASK].sum() == n
            assert s[batch.STATE_MASK][-n:].all()
            assert np.all(np.diff(s[batch.STATE_AGE][-n:]) < 0) and s[batch.STATE_AGE][-1] >= 0
            n = min(20, ref.num_steps - step)
            act_t = (data.arrays[ACTION_STAMP][step: step + n] - T0) * 1e-9
            np.testing.assert_allclose(
                s[batch.ACTION][:n, : spec.dof], spec.normalize(joint_positions(spec, act_t + 0.1)), atol=1e-5
            )
            assert s[batch.ACTION_MASK].sum() == n and s[batch.ACTION_MASK][:n].all()
            # KEYPOSE: the command at the next change of any gripper's open/closed state, else the last one
            commands = data.arrays[ACTION_POSITION]
            closed = spec.closed_grippers(commands)
            later = [k for k in range(step + 1, len(commands)) if (closed[k] != closed[k - 1]).any()]
            want = spec.normalize(commands[later[0] if later else len(commands) - 1])
            np.testing.assert_allclose(s[batch.KEYPOSE][: spec.dof], want, atol=1e-5)
            assert not s[batch.KEYPOSE][spec.dof:].any()
            assert not s[batch.OBJECTS_MASK].any()  # these bags carry no object poses
            assert 0 <= s[batch.DELAY] <= min(cfg.harmonic.max_delay_steps, n - 1)
            assert info.embodiment_names[int(s[batch.EMBODIMENT_INDEX])] == ref.meta.embodiment
            assert int(s[batch.EPISODE_INDEX]) == ep
            assert s[batch.JOINT_MASK].sum() == spec.dof


def test_staleness_shows_older_streams_with_their_true_ages(dataset):
    """With harmonic.max_staleness_s each sample sees the streams as they were up to s before its
    chunk starts, ages measured to the chunk start; the actions are the same.
    """
    base = DataConfig(batch_size=2, num_workers=0, val_fraction=0.0, horizon=20)
    stale = DataConfig(batch_size=2, num_workers=0, val_fraction=0.0, horizon=20,
                       harmonic=HarmonicConfig(max_staleness_s=0.2))
    fresh_ds = make_dataloaders(dataset, base)[0].dataset
    stale_ds = make_dataloaders(dataset, stale)[0].dataset
    ref = fresh_ds.episodes[0]
    extra = []
    for step in range(ref.first_step + 20, ref.num_steps - 5, 7):
        fresh, old = fresh_ds[(0, step, step)], stale_ds[(0, step, step)]
        np.testing.assert_array_equal(fresh[batch.ACTION], old[batch.ACTION])
        extra.append(float(old[batch.STATE_AGE][-1] - fresh[batch.STATE_AGE][-1]))
        assert old[batch.IMAGE_AGE][0] >= fresh[batch.IMAGE_AGE][0]
        assert old[batch.IMAGE_AGE][0] < 0.2 + 1.0 / ref.cameras[0].fps + 0.03
    assert min(extra) >= -1e-9 and max(extra) <= 0.2 + 0.011  # joint states at 100 Hz
    assert np.std(extra) > 0.03  # drawn per sample, not a fixed shift
    with pytest.raises(ValueError, match="max_staleness_s"):
        HarmonicConfig(max_staleness_s=-0.1)


def test_episode_index_builds_each_episode_as_its_own_row_says(dataset, tmp_path):
    """Start-up keeps the index as columns; an episode's objects, built when asked for, are those of its row."""
    view = tmp_path / "view"  # a second sub-dataset, whose index points at the first one's shards
    write_view(dataset, ["hum_1", "arm6_2"], view)
    index, names, _, _ = load_episodes([dataset, view])
    assert len(index) == 8 and index.datasets == [dataset.name, "view"]
    for i in (0, 3, 5, 6, -1):
        ref = index[i]
        root = dataset if i in (0, 3, 5) else view
        data = read_episode(root, ref.meta.episode)
        assert ref == EpisodeRef(data.path, data.meta, root.name, names.index(data.meta.embodiment), data.cameras,
                                 len(data.arrays[ACTION_STAMP]), first_step(data.arrays, data.cameras))
        assert index.steps()[i].tolist() == [ref.first_step, ref.num_steps]
    assert index.metas() == [ref.meta for ref in index]
    with pytest.raises(IndexError):
        index[8]


def test_batches_have_the_documented_layout(dataset):
    cfg = DataConfig(batch_size=3, num_workers=2, val_fraction=0.2, horizon=10, samples_per_epoch=12)
    train, val, info = make_dataloaders(dataset, cfg)
    b = next(iter(train))
    o = cfg.observation
    shapes = {
        batch.IMAGES: ((3, o.max_cameras, 3, o.image_size, o.image_size), torch.uint8),
        batch.IMAGE_AGE: ((3, o.max_cameras), torch.float32),
        batch.STATE: ((3, o.history, o.max_dof), torch.float32),
        batch.JOINT_DESCRIPTORS: ((3, o.max_dof, 12), torch.float32),
        batch.INSTRUCTION: ((3, o.instruction_len), torch.int64),
        batch.ACTION: ((3, 10, o.max_dof), torch.float32),
        batch.ACTION_MASK: ((3, 10), torch.bool),
        batch.DELAY: ((3,), torch.int64),
        batch.EPISODE_INDEX: ((3,), torch.int64),
    }
    for key, (shape, dtype) in shapes.items():
        assert tuple(b[key].shape) == shape and b[key].dtype == dtype, key
    vb = list(val)
    assert vb and all(int(e) in info.val_episodes for x in vb for e in x[batch.EPISODE_INDEX])
    again = list(val)
    assert all(torch.equal(x[batch.ACTION], y[batch.ACTION]) for x, y in zip(vb, again))
    assert set(info.norm_stats) <= set(info.embodiment_names)


@pytest.mark.parametrize("streaming, workers", [(False, 0), (True, 0), (True, 2)])
def test_resume_is_exact_and_epochs_differ(dataset, streaming, workers):
    cfg = DataConfig(batch_size=4, num_workers=workers, samples_per_epoch=40, seed=3, streaming=streaming)
    a, _, _ = make_dataloaders(dataset, cfg)
    it = iter(a)
    first = [next(it) for _ in range(3)]
    state = a.state_dict()
    rest = list(it)
    b, _, _ = make_dataloaders(dataset, cfg)
    b.load_state_dict(state)
    resumed = list(b)
    assert len(resumed) == len(rest) == 7
    for x, y in zip(rest, resumed):
        assert torch.equal(x[batch.EPISODE_INDEX], y[batch.EPISODE_INDEX])
        assert torch.equal(x[batch.ACTION], y[batch.ACTION]) and torch.equal(x[batch.DELAY], y[batch.DELAY])
    epoch1 = next(iter(a))
    assert a.state_dict()["epoch"] == 1
    assert not torch.equal(epoch1[batch.ACTION], first[0][batch.ACTION])


def test_sampler_mixture_sharding_and_determinism():
    steps = [(0, 100)] * 4 + [(5, 25)] * 2
    mixture = Mixture(embodiments={"a": 3.0, "b": 1.0}, size_exponent=0.0)
    groups, weights = group_weights(mixture, ["d"] * 6, ["a"] * 4 + ["b"] * 2, ["x"] * 6, [s[1] - s[0] for s in steps])
    full = MixtureSampler(range(6), steps, groups, weights, 4000, seed=1)
    keys = full.keys(0)
    share_b = np.isin(keys[:, 0], [4, 5]).mean()
    assert 0.2 < share_b < 0.3  # 1 / (3 + 1) despite b having 40 of 440 samples
    assert (keys[np.isin(keys[:, 0], [4, 5]), 1] >= 5).all() and (keys[:, 1] < 100).all()
    np.testing.assert_array_equal(keys, MixtureSampler(range(6), steps, groups, weights, 4000, seed=1).keys(0))
    assert not np.array_equal(keys, full.keys(1))
    shards = [MixtureSampler(range(6), steps, groups, weights, 3999, 1, r, 3).keys(0) for r in range(3)]
    merged = np.zeros((3999, 3), np.int64)
    for r in range(3):
        merged[r::3] = shards[r]
    np.testing.assert_array_equal(merged, MixtureSampler(range(6), steps, groups, weights, 3999, 1).keys(0))


def test_sampler_weights_each_episodes_standing_start():
    """start_weight w on the first start_steps valid steps: those steps are w times as likely, every one of them
    drawn, each other step as likely as before; w = 1 gives the uniform sampler's keys exactly.
    """
    steps = [(3, 103), (0, 10), (10, 60)]  # 100, 10 (shorter than the weighted start) and 50 valid steps
    groups, weights = group_weights(Mixture(), ["d"] * 3, ["a"] * 3, ["x"] * 3, [s[1] - s[0] for s in steps])
    keys = MixtureSampler(range(3), steps, groups, weights, 200_000, 0, start_steps=20, start_weight=4.0).keys(0)
    first = np.array([s[0] for s in steps])[keys[:, 0]]
    counts = np.array([s[1] - s[0] for s in steps])[keys[:, 0]]
    into = keys[:, 1] - first
    assert (into >= 0).all() and (into < counts).all()
    mass = {0: 20 * 4 + 80, 1: 10 * 4, 2: 20 * 4 + 30}  # total 310
    for ep, m in mass.items():
        share = (keys[:, 0] == ep).mean()
        assert abs(share - m / 310) < 0.01, (ep, share)
        mine = into[keys[:, 0] == ep]
        hist = np.bincount(mine, minlength=steps[ep][1] - steps[ep][0]) / len(keys)
        head = min(20, len(hist))
        np.testing.assert_allclose(hist[:head], 4 / 310, rtol=0.15)
        np.testing.assert_allclose(hist[head:], 1 / 310, rtol=0.25)
    uniform = MixtureSampler(range(3), steps, groups, weights, 5000, 0).keys(0)
    np.testing.assert_array_equal(MixtureSampler(range(3), steps, groups, weights, 5000, 0, start_steps=20).keys(0),
                                  uniform)
    with pytest.raises(ValueError, match="start_weight"):
        MixtureSampler(range(3), steps, groups, weights, 10, 0, start_steps=5, start_weight=0.0)


def test_data_config_weights_the_standing_start_of_the_training_episodes(dataset):
    cfg = DataConfig(batch_size=4, num_workers=0, val_fraction=0.0, samples_per_epoch=4000, start_steps=5,
                     start_weight=8.0)
    train, _, info = make_dataloaders(dataset, cfg)
    keys = train.sampler.keys(0)
    steps = info.index.steps()
    head = keys[:, 1] - steps[keys[:, 0], 0] < 5
    uniform = 5 * len(info.train_episodes) / info.num_train_samples
    assert head.mean() > 3 * uniform  # 8x the weight on the first 5 steps of every episode
    with pytest.raises(ValueError, match="start_weight"):
        DataConfig(start_weight=-1.0)


def test_mixture_groups_are_numbered_in_order_of_first_appearance():
    """The sampler draws group i with the i-th weight, so the numbering is part of which samples a seed gives."""
    groups, weights = group_weights(Mixture(embodiments={"a": 2.0}), ["d", "d", "d", "e"], ["b", "a", "b", "a"],
                                    ["x"] * 4, [10, 20, 30, 0])
    assert groups.tolist() == [0, 1, 0, 2] and weights == {0: 40.0, 1: 40.0, 2: 0.0}


def test_split_holds_out_tasks_and_episodes():
    ids = [f"ep{i}" for i in range(40)]
    tasks = ["pick", "stack", "sort", "pour"] * 10
    train, val = split_episodes(ids, tasks, 0.2, ["sort"])
    assert set(train).isdisjoint(val) and sorted(train + val) == list(range(40))
    assert all(tasks[i] != "sort" for i in train) and {i for i in range(40) if tasks[i] == "sort"} <= set(val)
    assert any(tasks[i] != "sort" for i in val)
    again = split_episodes(ids + ["new"], tasks + ["pick"], 0.2, ["sort"])[1]
    assert set(val) <= set(again)  # growing the dataset keeps earlier held-out episodes held out


def test_observation_builder_pads_masks_and_resizes(specs):
    spec = specs["arm6"]
    cfg = ObservationConfig(image_size=32, max_cameras=3, history=4, max_dof=10, instruction_len=16)
    frames = {"scene": np.full((48, 64, 3), 100, np.uint8), "wrist": None}
    q = np.stack([spec.home_positions] * 2)
    obs = build_observation(spec, frames, {"scene": 0.05}, q, np.array([0.02, 0.01]), "Pick it", cfg)
    assert obs[batch.IMAGES].shape == (3, 3, 32, 32) and (obs[batch.IMAGES][0] == 100).all()
    assert obs[batch.IMAGE_MASK].tolist() == [True, False, False]
    assert obs[batch.STATE_MASK].tolist() == [False, False, True, True]
    np.testing.assert_allclose(obs[batch.STATE][2, :7], spec.normalize(spec.home_positions), atol=1e-6)
    assert obs[batch.STATE].shape == (4, 10) and obs[batch.JOINT_MASK].sum() == 7
    np.testing.assert_allclose(obs[batch.JOINT_DESCRIPTORS][:7], spec.descriptors())
    assert obs[batch.INSTRUCTION_MASK].sum() == len("pick it") + 2
    with pytest.raises(ValueError, match="unknown camera 'head'"):
        build_observation(spec, {"head": None}, {}, q, np.zeros(2), "", cfg)


def test_augment_changes_pixels_within_bounds():
    img = np.full((8, 8, 3), 128, np.uint8)
    out = augment_image(img, np.random.default_rng(0))
    assert out.dtype == np.uint8 and abs(int(out.mean()) - 128) <= 14


def _identity(sample: dict) -> tuple:
    """Tell samples apart: episode, commanded chunk (a function of the step) and delay (of the seed)."""
    return int(sample[batch.EPISODE_INDEX]), sample[batch.ACTION].tobytes(), int(sample[batch.DELAY])


def test_streaming_serves_every_sample_of_the_epoch_once(dataset):
    cfg = DataConfig(batch_size=4, num_workers=2, val_fraction=0.0, samples_per_epoch=64, seed=5,
                     open_episodes=3, shuffle_buffer=16)
    train, _, _ = make_dataloaders(dataset, cfg)
    got = [_identity({k: v[i].numpy() for k, v in b.items()}) for b in train for i in range(cfg.batch_size)]
    keys = train.sampler.all_keys(0)
    want = [_identity(train.dataset[tuple(k)]) for k in keys]  # random access to the same keys
    assert len(got) == len(train) * cfg.batch_size == 64 and sorted(got) == sorted(want)
    assert got != want  # not in the sampler's order: shuffled through the buffer
    # Ranks and workers: contiguous equal parts of the reading order, together every key once.
    plans = []
    for rank in range(2):
        rank_train, _, _ = make_dataloaders(dataset, cfg, rank=rank, world_size=2)
        stream = rank_train.stream
        assert isinstance(stream, StreamingDataset)
        plans += [stream.worker_schedule(w, 2) for w in range(2)]
    assert [len(p.keys) for p in plans] == [16] * 4
    merged = np.concatenate([p.keys for p in plans])
    np.testing.assert_array_equal(np.unique(merged, axis=0), np.unique(keys, axis=0))
    assert sorted(map(tuple, merged.tolist())) == sorted(map(tuple, keys.tolist()))
    for p in plans:
        assert sorted(p.emit.tolist()) == list(range(len(p.keys)))  # each decoded sample comes out once
        assert (p.emit_after > p.emit).all()  # and only after it was decoded
        assert len(set(p.slots.tolist())) <= cfg.open_episodes
        for ep in set(p.keys[:, 0].tolist()):  # each episode read forward, by one decoder slot
            mine = p.keys[:, 0] == ep
            assert (np.diff(p.keys[mine, 1]) >= 0).all() and len(set(p.slots[mine].tolist())) == 1


def test_random_access_mode_follows_the_sampler(dataset):
    cfg = DataConfig(batch_size=4, num_workers=0, val_fraction=0.0, samples_per_epoch=16, seed=2, streaming=False)
    train, _, _ = make_dataloaders(dataset, cfg)
    got = [_identity({k: v[i].numpy() for k, v in b.items()}) for b in train for i in range(cfg.batch_size)]
    assert got == [_identity(train.dataset[tuple(k)]) for k in train.sampler.keys(0)]


class WorkerSettings(torch.utils.data.Dataset):
    """What a loader worker runs with: its tensor sharing strategy and its SIGINT handler."""

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> tuple[str, bool]:
        return torch.multiprocessing.get_sharing_strategy(), signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_workers_share_batches_as_files_and_leave_ctrl_c_to_the_parent():
    """The strategy is per process: a forkserver worker must set it itself (start_worker)."""
    loader = torch.utils.data.DataLoader(WorkerSettings(), batch_size=None, num_workers=1,
                                         multiprocessing_context="forkserver", worker_init_fn=start_worker)
    assert [tuple(item) for item in loader] == [("file_system", True)]
