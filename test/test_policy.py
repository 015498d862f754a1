"""The harmonic policy: one set of weights for 7, 8 and 16 DoF in one batch, masks that
really isolate padding, the committed prefix as input and never as target, exact
mixture densities, and parameter counts of every preset on the meta device.
"""

import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy.stats import norm
from train_helpers import fit_batch

from gen_theta_model import batch as K
from gen_theta_model.embodiment import load_robot
from gen_theta_model.policy.config import PRESET_NAMES, nominal_params, preset
from gen_theta_model.policy.encoders import object_set_loss
from gen_theta_model.policy.example import example_batch, example_norm_stats
from gen_theta_model.policy.head import ChunkMixture, MixtureHead
from gen_theta_model.policy.model import chunk_loss, scored_steps
from gen_theta_model.policy.model_card import count_params
from gen_theta_model.policy.model_card import main as model_card_main
from gen_theta_model.policy.policy import Policy, UnknownEmbodimentError, build_policy

CFG = preset("tiny", chunk_len=12, max_prefix_steps=6, max_instruction_len=32, image_grid=2)


@pytest.fixture(scope="module")
def specs():
    return [load_robot(n) for n in ("arm6", "arm7", "humanoid16")]


@pytest.fixture(scope="module")
def policy(specs) -> Policy:
    torch.manual_seed(0)
    return build_policy(CFG, specs, {s.name: example_norm_stats(s, 0.1, 0.4) for s in specs})


def observation(batch):
    return {k: batch[k] for k in (*K.OBSERVATION_KEYS, K.EMBODIMENT_INDEX)}


def test_one_batch_of_three_robots(policy, specs):
    batch = example_batch(specs, CFG, 6, image_size=32)
    d = 4
    out = policy.predict_chunk(observation(batch), batch[K.ACTION][:, :d], d)
    assert out.shape == (6, CFG.chunk_len, CFG.max_dof)
    assert torch.equal(out[:, :d], batch[K.ACTION][:, :d])
    for i, spec in enumerate(specs * 2):
        assert torch.all(out[i, :, spec.dof :] == 0)
        assert torch.all(out[i, d:, : spec.dof] != 0)
    assert policy.last_inference_ms > 0


def test_samples_do_not_see_each_other_or_the_padding(policy, specs):
    batch = example_batch(specs, CFG, 3, image_size=32)
    prefix = batch[K.ACTION][:, :2]
    together = policy.predict_chunk(observation(batch), prefix, 2)
    for i, spec in enumerate(specs):
        one = {k: v[i : i + 1] for k, v in observation(batch).items()}
        alone = policy.predict_chunk(one, prefix[i : i + 1], 2)
        torch.testing.assert_close(alone, together[i : i + 1], rtol=1e-4, atol=1e-5)
        # Less padding (D = 16 instead of 32) gives the same chunk: padded joint tokens are masked out.
        cut = {k: v for k, v in one.items()}
        cut[K.STATE] = one[K.STATE][..., :16]
        cut[K.JOINT_DESCRIPTORS] = one[K.JOINT_DESCRIPTORS][:, :16]
        cut[K.JOINT_MASK] = one[K.JOINT_MASK][:, :16]
        short = policy.predict_chunk(cut, prefix[i : i + 1, :, :16], 2)
        torch.testing.assert_close(short, alone[..., :16], rtol=1e-4, atol=1e-5)
        assert spec.dof <= 16


def test_prefix_is_input_not_target(policy, specs):
    torch.manual_seed(1)
    batch = example_batch(specs, CFG, 3, image_size=32)
    batch[K.DELAY][:] = torch.tensor([0, 3, 5])
    batch[K.ACTION_MASK][2, 9:] = False  # episode ends inside the chunk
    normed = policy.normalizer.normalize_batch(batch)
    dist = policy.model(normed)
    loss, _ = chunk_loss(dist, normed, mse_weight=1.0)
    # Change every target entry that must not count: the prefix, steps past the end, padded joints.
    changed = dict(normed)
    action = normed[K.ACTION].clone()
    scored = scored_steps(normed[K.DELAY], normed[K.ACTION_MASK])
    action[~scored] = 100.0
    action[~normed[K.JOINT_MASK][:, None, :].expand_as(action)] = -100.0
    changed[K.ACTION] = action
    loss2, _ = chunk_loss(dist, changed, mse_weight=1.0)
    torch.testing.assert_close(loss, loss2)
    # The prefix changes the prediction: it is an input.
    moved = dict(normed)
    moved[K.ACTION] = normed[K.ACTION].clone()
    moved[K.ACTION][1, :3] += 1.0
    dist2 = policy.model(moved)
    assert not torch.allclose(dist.mean[1], dist2.mean[1])
    torch.testing.assert_close(dist.mean[0], dist2.mean[0])


@pytest.mark.parametrize("shared", [False, True], ids=["per_joint", "shared_components"])
def test_training_steps_reduce_the_loss(specs, shared):
    torch.manual_seed(0)
    cfg = dataclasses.replace(CFG, shared_components=shared)
    pol = build_policy(cfg, specs, {s.name: example_norm_stats(s) for s in specs})
    batch = example_batch(specs, CFG, 6, image_size=32, seed=3)
    losses, logs = fit_batch(pol, batch, 30)
    assert set(logs) == {"nll", "mse"}
    assert losses[-1] < losses[0] - 0.5


def test_keypose_head_learns_the_next_gripper_event_and_is_absent_by_default(specs):
    """keypose_weight > 0 adds a head and its loss; without it the model and its checkpoints are unchanged."""
    torch.manual_seed(0)
    stats = {s.name: example_norm_stats(s) for s in specs}
    pol = build_policy(dataclasses.replace(CFG, keypose_weight=1.0), specs, stats)
    batch = example_batch(specs, CFG, 6, image_size=32, seed=3)
    before = float(pol.loss(batch)[1]["keypose_mse"])
    _, logs = fit_batch(pol, batch, 80, lr=1e-3)
    assert set(logs) == {"nll", "mse", "keypose_mse"}
    assert float(logs["keypose_mse"]) < 0.25 * before
    # canonical units out, as the chunk: the fitted prediction is the batch's keypose on the present joints
    predicted = pol.action_distribution(batch).keypose.detach()  # (B, D)
    jmask = batch[K.JOINT_MASK]
    assert (predicted - batch[K.KEYPOSE])[jmask].abs().mean() < 0.5 * batch[K.KEYPOSE][jmask].abs().mean()
    plain = build_policy(CFG, specs, stats)
    assert {k for k in pol.model.state_dict() if k not in plain.model.state_dict()} == {"keypose.weight",
                                                                                       "keypose.bias"}
    assert plain.model(plain.normalizer.normalize_batch(batch)).keypose is None


def test_object_set_loss_matches_sets_in_any_order_and_skips_absent_objects():
    """The Chamfer loss is 0 for the true set in any slot order, ignores masked objects, counts each missed
    object in cm, and is an exact 0 (with a graph) for a batch without objects.
    """
    target = torch.tensor([[[0.4, 0.0, 0.02], [0.5, 0.1, 0.02], [9.0, 9.0, 9.0]]])  # the third is padding
    mask = torch.tensor([[True, True, False]])
    swapped = target[:, [1, 0, 1, 0]].clone().requires_grad_()  # four slots over the two objects
    loss, cm = object_set_loss(swapped, target, mask)
    assert float(loss.detach()) == 0.0 and float(cm) == 0.0
    moved = swapped.detach().clone()
    moved[:, :, 0] += 0.03  # every slot 3 cm off in x: each object 3 cm from its nearest slot
    loss, cm = object_set_loss(moved, target, mask)
    assert math.isclose(float(cm), 3.0, rel_tol=1e-4) and math.isclose(float(loss), 2 * 0.09, rel_tol=1e-4)
    loss, cm = object_set_loss(swapped, target, torch.zeros_like(mask))
    loss.backward()
    assert float(loss.detach()) == 0.0 and float(cm) == 0.0 and swapped.grad is not None and not swapped.grad.any()


def test_object_readout_places_objects_from_the_images_alone_and_is_absent_by_default(specs):
    """object_weight > 0 adds a readout over the image tokens and its loss; its gradient reaches the image
    encoder and never the joints' encoders; without it the model and its checkpoints are unchanged.
    """
    torch.manual_seed(0)
    stats = {s.name: example_norm_stats(s) for s in specs}
    pol = build_policy(dataclasses.replace(CFG, object_weight=1.0), specs, stats)
    batch = example_batch(specs, CFG, 6, image_size=32, seed=3)
    normed = pol.normalizer.normalize_batch(batch)
    dist = pol.model(normed)
    assert dist.objects.shape == (6, CFG.object_slots, 3)
    objects, before = object_set_loss(dist.objects, batch[K.OBJECTS], batch[K.OBJECTS_MASK])
    pol.model.zero_grad()
    objects.backward()
    grads = {n: p.grad for n, p in pol.model.named_parameters()}
    assert any(g is not None and g.any() for n, g in grads.items() if n.startswith("image."))
    assert all(g is None or not g.any() for n, g in grads.items() if n.startswith(("proprio.", "joints.", "trunk.")))
    _, logs = fit_batch(pol, batch, 150, lr=1e-3)
    assert set(logs) == {"nll", "mse", "object_cm"}
    assert float(logs["object_cm"]) < 0.25 * float(before)
    plain = build_policy(CFG, specs, stats)
    assert all(k.startswith("objects.") for k in pol.model.state_dict() if k not in plain.model.state_dict())
    assert plain.model(plain.normalizer.normalize_batch(batch)).objects is None
    assert set(plain.loss(batch)[1]) == {"nll", "mse"}


def test_keypose_path_draws_the_chunk_toward_the_predicted_keypose(specs):
    """keypose_path moves every component's mean a learned share of the way to the keypose: zero at the start
    (the chunk of the same weights without the path), the keypose read with its gradient stopped (the chunk's
    NLL trains the gains and the trunk, never the keypose head), and it needs a keypose head.
    """
    with pytest.raises(ValueError, match="keypose_weight"):
        dataclasses.replace(CFG, keypose_path=True)
    torch.manual_seed(0)
    stats = {s.name: example_norm_stats(s) for s in specs}
    pol = build_policy(dataclasses.replace(CFG, keypose_weight=1.0, keypose_path=True), specs, stats)
    batch = example_batch(specs, CFG, 6, image_size=32, seed=3)
    normed = pol.normalizer.normalize_batch(batch)
    model = pol.model
    start = model(normed)
    assert not model.keypose_gain.weight.any() and not model.keypose_gain.bias.any()
    with torch.no_grad():
        model.keypose_gain.bias.fill_(0.5)
    drawn = model(normed)
    torch.testing.assert_close(drawn.mean, 0.5 * (start.mean + start.keypose[:, :, None, None]))
    torch.testing.assert_close(drawn.keypose, start.keypose)
    nll, _ = chunk_loss(drawn, normed)  # the chunk's loss alone
    model.zero_grad()
    nll.backward()
    assert model.keypose.weight.grad is None or not model.keypose.weight.grad.any()
    assert model.keypose_gain.weight.grad.abs().sum() > 0
    losses, logs = fit_batch(pol, batch, 30)
    assert set(logs) == {"nll", "mse", "keypose_mse"} and losses[-1] < losses[0] - 0.5


def test_state_noise_perturbs_only_observed_joints_and_only_in_training(specs):
    """state_noise draws N(0, state_noise^2) per present non-gripper joint and history step (normalised units) in
    training; grippers, padded joints and missing steps stay exact, and evaluation sees the state as it is.
    """
    torch.manual_seed(0)
    stats = {s.name: example_norm_stats(s) for s in specs}
    pol = build_policy(dataclasses.replace(CFG, state_noise=0.5), specs, stats)
    batch = example_batch(specs, CFG, 6, image_size=32, seed=3)
    batch[K.STATE_MASK][0, 0] = False  # a history step the robot did not have
    normed = pol.normalizer.normalize_batch(batch)
    seen = []
    hook = pol.model.proprio.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    pol.model.eval()
    first, second = pol.model(normed).mean, pol.model(normed).mean
    torch.testing.assert_close(first, second)
    assert torch.equal(seen[0], normed[K.STATE]) and torch.equal(seen[1], normed[K.STATE])
    pol.model.train()
    pol.model(normed)
    hook.remove()
    delta = seen[2] - normed[K.STATE]  # (B, T, D)
    gripper = torch.from_numpy(np.stack([s.pad(s.gripper_mask, CFG.max_dof)[0] for s in specs * 2]))  # (B, D)
    assert gripper.any(dim=1).all()
    noisy = (normed[K.JOINT_MASK] & ~gripper)[:, None, :] & normed[K.STATE_MASK][:, :, None]
    assert torch.all(delta[~noisy] == 0)
    assert abs(float(delta[noisy].std()) - 0.5) < 0.05
    with pytest.raises(ValueError, match="state_noise"):
        preset("tiny", state_noise=-0.1)


def test_unknown_embodiment_is_named(policy, specs):
    with pytest.raises(UnknownEmbodimentError, match="arm9"):
        policy.embodiment_map([specs[0], dataclasses.replace(specs[0], name="arm9")])
    with pytest.raises(UnknownEmbodimentError, match="URDF .* differs"):
        policy.embodiment_map([dataclasses.replace(specs[1], urdf_sha256="0" * 64)])
    assert policy.embodiment_map(specs[::-1]).tolist() == [2, 1, 0]


def mixture_1d(weights, means, stds) -> ChunkMixture:
    """Make a one-joint, one-step mixture (B=1, D=1, K, H=1)."""
    k = len(weights)
    return ChunkMixture(torch.log(torch.tensor(weights)).view(1, 1, k), torch.tensor(means).view(1, 1, k, 1),
                        torch.log(torch.tensor(stds)).view(1, 1, k, 1))


def test_log_prob_is_the_mixture_density():
    w, m, s = [0.2, 0.5, 0.3], [-1.0, 0.5, 2.0], [0.3, 0.8, 0.5]
    dist = mixture_1d(w, m, s)
    for x in (-1.2, 0.0, 1.7):
        expected = math.log(sum(wi * norm.pdf(x, mi, si) for wi, mi, si in zip(w, m, s)))
        ones = torch.ones(1, 1, dtype=torch.bool)
        got = dist.log_prob(torch.tensor([[[x]]]), ones, ones)
        assert got.item() == pytest.approx(expected, abs=1e-5)


def test_log_prob_marginalises_unscored_steps():
    g = torch.Generator().manual_seed(0)
    b, d, k, h = 2, 3, 4, 6
    dist = ChunkMixture(torch.randn(b, d, k, generator=g), torch.randn(b, d, k, h, generator=g),
                        0.3 * torch.randn(b, d, k, h, generator=g))
    a = torch.randn(b, h, d, generator=g)
    steps = torch.zeros(b, h, dtype=torch.bool)
    steps[:, 2:5] = True
    joints = torch.tensor([[True, True, False], [True, False, False]])
    sub = ChunkMixture(dist.logits, dist.mean[..., 2:5], dist.log_std[..., 2:5])
    full = sub.log_prob(a[:, 2:5], torch.ones(b, 3, dtype=torch.bool), joints)
    torch.testing.assert_close(dist.log_prob(a, steps, joints), full)


def test_samples_follow_the_mixture():
    w, m, s = [0.3, 0.7], [-2.0, 1.0], [0.5, 0.25]
    dist = mixture_1d(w, m, s)
    big = ChunkMixture(dist.logits.expand(20_000, 1, 2), dist.mean.expand(20_000, 1, 2, 1),
                       dist.log_std.expand(20_000, 1, 2, 1))
    x = big.sample(torch.Generator().manual_seed(0)).ravel().numpy()
    mean = sum(wi * mi for wi, mi in zip(w, m))
    var = sum(wi * (si**2 + mi**2) for wi, mi, si in zip(w, m, s)) - mean**2
    assert x.mean() == pytest.approx(mean, abs=0.03)
    assert x.var() == pytest.approx(var, rel=0.03)
    assert np.mean(x < -0.5) == pytest.approx(0.3, abs=0.01)  # the left component's share
    assert big.expectation()[0, 0, 0].item() == pytest.approx(mean, abs=1e-6)


def test_top_component_is_one_mode_per_joint_not_their_average():
    # Two joints over two steps: joint 0 weighs component 1, joint 1 component 0.
    logits = torch.log(torch.tensor([[[0.3, 0.7], [0.6, 0.4]]]))  # (1, 2, 2)
    mean = torch.tensor([[[[-2.0, -1.0], [1.0, 3.0]], [[0.5, 0.25], [4.0, 5.0]]]])  # (1, 2, 2, 2)
    dist = ChunkMixture(logits, mean, torch.zeros_like(mean))
    top = dist.decode("top")  # (1, H=2, D=2)
    torch.testing.assert_close(top, torch.tensor([[[1.0, 0.5], [3.0, 0.25]]]))
    # the mean lies between the modes, where neither component puts its mass
    between = torch.tensor([0.3 * -2.0 + 0.7 * 1.0, 0.3 * -1.0 + 0.7 * 3.0])
    torch.testing.assert_close(dist.decode("mean")[0, :, 0], between)
    assert dist.decode("sample", torch.Generator().manual_seed(0)).shape == (1, 2, 2)
    with pytest.raises(ValueError, match="decode must be one of"):
        dist.decode("median")


def test_shared_components_log_prob_is_the_chunk_mixture_density():
    g = torch.Generator().manual_seed(0)
    cfg = dataclasses.replace(CFG, n_components=2, chunk_len=2, max_prefix_steps=1, shared_components=True)
    head = MixtureHead(cfg)
    with torch.no_grad():
        head.proj.weight.normal_(0.0, 0.2, generator=g)  # weights far from the near-N(0, 1) start
    tokens, mask = torch.randn(2, 4, CFG.d_model, generator=g), torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    dist = head(tokens, mask).pad_joints(4)  # the padded joint's tokens do not move the weights
    assert dist.shared and (dist.logits == dist.logits[:, :1]).all()
    tokens[:, 3] += 10.0
    torch.testing.assert_close(head(tokens, mask).logits[:, 0], dist.logits[:, 0])
    dist = ChunkMixture(dist.logits[:, :3], dist.mean[:, :3], dist.log_std[:, :3], shared=True)
    a = torch.randn(2, 2, 3, generator=torch.Generator().manual_seed(1))  # (B, H, D)
    joints = torch.tensor([[True, True, True], [True, True, False]])
    steps = torch.ones(2, 2, dtype=torch.bool)
    for i in range(2):  # log sum_k w_k prod_{j valid, h} N(a_hj; mu_jkh, s_jkh), by hand
        log_w = torch.log_softmax(dist.logits[i, 0], -1)
        per_plan = [log_w[c].item() + sum(norm.logpdf(a[i, t, j].item(), dist.mean[i, j, c, t].item(),
                                                      dist.log_std[i, j, c, t].exp().item())
                                          for j in range(3) if joints[i, j] for t in range(2)) for c in range(2)]
        expected = float(np.logaddexp(*per_plan))
        assert dist.log_prob(a, steps, joints)[i].item() == pytest.approx(expected, rel=1e-5, abs=1e-4)


def test_shared_components_move_every_joint_with_one_mode():
    # Component 0 puts every joint near -3, component 1 near +3; per-joint draws would mix them.
    b, d = 4000, 3
    logits = torch.randn(b, 1, 2, generator=torch.Generator().manual_seed(0)).expand(b, d, 2)
    mean = torch.tensor([-3.0, 3.0]).view(1, 1, 2, 1).expand(b, d, 2, 1)
    dist = ChunkMixture(logits, mean, torch.full_like(mean, math.log(0.1)), shared=True)
    x = dist.sample(torch.Generator().manual_seed(1))[:, 0]  # (B, D)
    assert ((x > 0) == (x[:, :1] > 0)).all()  # one mode per chunk, on every joint
    share = torch.softmax(logits[:, 0], -1)[:, 1].mean().item()
    assert (x[:, 0] > 0).float().mean().item() == pytest.approx(share, abs=0.03)
    chosen = logits[:, 0].argmax(-1)  # (B,)
    torch.testing.assert_close(dist.decode("top")[:, 0], mean[torch.arange(b), :, chosen, 0])
    padded = dist.pad_joints(5)
    assert padded.shared and (padded.logits == padded.logits[:, :1]).all()


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_preset_sizes_match_their_names(name):
    params, trunk = count_params(preset(name))
    assert abs(params / nominal_params(name) - 1) < 0.05
    assert trunk < params
    if name == "tiny":
        assert params < 5_000_000


def test_model_card_prints_a_table(capsys):
    assert model_card_main(["tiny", "--gpus", "2"]) == 0
    out = capsys.readouterr().out
    assert "tiny" in out and "GiB/GPU" in out and "over 2 GPU" in out


def test_untrained_chunk_continues_from_the_committed_prefix(specs):
    """Residual head: before training the chunk holds the last committed action (without one: the mean)."""
    torch.manual_seed(0)
    pol = build_policy(CFG, specs, {s.name: example_norm_stats(s, 0.1, 0.4) for s in specs})
    batch = example_batch(specs, CFG, 3, image_size=32)
    jmask = batch[K.JOINT_MASK][:, None]
    for d in (0, 4):
        out = pol.predict_chunk(observation(batch), batch[K.ACTION][:, :d], d)
        start = batch[K.ACTION][:, d - 1] if d else torch.full_like(batch[K.ACTION][:, 0], 0.1)  # (B, D)
        assert ((out[:, d:] - start[:, None]) * jmask).abs().max() < 0.05
