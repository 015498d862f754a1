"""The image encoders a policy can choose (conv / resnet stem, avg grid / spatial-softmax
keypoints) and the random-shift augmentation, on real tensors.
"""

import pytest
import torch
import torch.nn.functional as F
from train_helpers import fit_batch

from gen_theta_model import batch as K
from gen_theta_model.embodiment import load_robot
from gen_theta_model.policy.config import preset
from gen_theta_model.policy.encoders import ImageEncoder, SpatialSoftmax, image_stem, random_shift
from gen_theta_model.policy.example import example_batch, example_norm_stats
from gen_theta_model.policy.policy import build_policy


def test_random_shift_moves_each_image_by_its_own_whole_pixel_offset():
    torch.manual_seed(0)
    x = torch.rand(16, 3, 12, 10)
    y = random_shift(x, 3)
    assert y.shape == x.shape
    padded = F.pad(x, (3, 3, 3, 3), mode="replicate")
    offsets = set()
    for i in range(len(x)):  # each output is one crop of its padded input
        hits = [(r, c) for r in range(7) for c in range(7) if torch.equal(padded[i, :, r:r + 12, c:c + 10], y[i])]
        assert hits, f"image {i} is not a shifted crop"
        offsets.add(hits[0])
    assert len(offsets) > 3  # offsets differ between images
    assert torch.equal(random_shift(x, 0), x)


def test_spatial_softmax_finds_a_bright_spot():
    ss = SpatialSoftmax(1, 1)
    with torch.no_grad():
        ss.logits.weight.fill_(1.0)
        ss.logits.bias.zero_()
        ss.log_temperature.fill_(-3.0)  # sharp
    x = torch.zeros(2, 1, 9, 9)
    x[0, 0, 2, 6] = 5.0  # row 2, column 6
    x[1, 0, 8, 0] = 5.0
    out = ss(x)  # (2, 1, 3)
    assert out.shape == (2, 1, 3)
    torch.testing.assert_close(out[0, 0, :2], torch.tensor([0.5, -0.5]), atol=1e-3, rtol=0)  # x, y in [-1, 1]
    torch.testing.assert_close(out[1, 0, :2], torch.tensor([-1.0, 1.0]), atol=1e-3, rtol=0)
    torch.testing.assert_close(out[:, 0, 2], torch.tensor([5.0, 5.0]), atol=1e-2, rtol=0)  # the pooled feature


@pytest.mark.parametrize("encoder,pool", [("conv", "avg"), ("conv", "spatial_softmax"),
                                          ("resnet", "avg"), ("resnet", "spatial_softmax")])
def test_every_encoder_trains_and_only_shifts_in_training(encoder, pool):
    cfg = preset("tiny", chunk_len=12, max_prefix_steps=6, max_instruction_len=32, image_encoder=encoder,
                 image_pool=pool, image_keypoints=5, image_grid=2, image_shift=2, image_blocks=2)
    enc = ImageEncoder(cfg)
    images = torch.randint(0, 256, (3, 2, 3, 32, 32), dtype=torch.uint8)
    enc.eval()
    out = enc(images)
    assert out.shape == (3, 2 * cfg.image_tokens, cfg.d_model)
    assert torch.equal(out, enc(images))  # no augmentation outside training
    enc.train()
    torch.manual_seed(1)
    assert not torch.equal(enc(images), out)
    # The whole policy learns with it: a few steps lower the loss on a fixed batch.
    specs = [load_robot("arm6"), load_robot("humanoid16")]
    torch.manual_seed(0)
    policy = build_policy(cfg, specs, {s.name: example_norm_stats(s) for s in specs})
    batch = example_batch(specs, cfg, 4, image_size=32, seed=3)
    assert batch[K.IMAGES].shape[-1] == 32
    losses, _ = fit_batch(policy, batch, 15)
    assert losses[-1] < losses[0] - 0.3


@pytest.mark.parametrize("encoder", ["conv", "resnet"])
def test_a_stride_of_4_keeps_twice_the_resolution(encoder):
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    maps = {s: image_stem(preset("tiny", image_encoder=encoder, image_stride=s))(x) for s in (8, 4)}
    assert maps[8].shape == (2, 64, 8, 8) and maps[4].shape == (2, 64, 16, 16)
    with pytest.raises(ValueError, match="image_stride"):
        preset("tiny", image_stride=2)


def test_unknown_encoder_or_pool_is_named():
    with pytest.raises(ValueError, match="image_encoder"):
        preset("tiny", image_encoder="vit9")
    with pytest.raises(ValueError, match="image_pool"):
        preset("tiny", image_pool="max")
    with pytest.raises(ValueError, match="image_shift"):
        preset("tiny", image_shift=-1)
