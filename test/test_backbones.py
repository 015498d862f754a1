"""Pretrained backbones: tiny random SigLIP and DINOv2 towers saved with ``save_pretrained`` and
loaded from their directories as a user's downloaded model would be (nothing is downloaded:
HF_HUB_OFFLINE=1). Their weights load, their own preprocessing and tokenizer are applied, a
frozen tower gets no gradient, and a SigLIP-backed policy trains with the real loop and
serves from its checkpoint after the source directory is gone.
"""

import dataclasses
import io
import shutil

import numpy as np
import pytest
import sentencepiece as spm
import torch
from train_helpers import CONFIG, build_dataset, losses, run, torchrun
from transformers import (
    BitImageProcessor,
    Dinov2Config,
    Dinov2Model,
    SiglipConfig,
    SiglipImageProcessor,
    SiglipModel,
    SiglipTokenizer,
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

from gen_theta_model import batch as K
from gen_theta_model.checkpoint import CheckpointError, latest_checkpoint, load_policy
from gen_theta_model.config import ConfigError
from gen_theta_model.embodiment import load_robot
from gen_theta_model.evaluate import EvalConfig, evaluate_checkpoint
from gen_theta_model.observation import ObservationConfig, build_observation
from gen_theta_model.policy.backbones import BACKBONES, towers
from gen_theta_model.policy.config import preset
from gen_theta_model.policy.example import example_batch, example_norm_stats
from gen_theta_model.policy.model_card import forward_flops, model_card
from gen_theta_model.policy.policy import build_policy
from gen_theta_model.tokenizer import encode, load_tokenizer
from gen_theta_model.train_config import load_train_config

TEXTS = ["pick the cube", "put the red cube in the bin", "open the drawer", "task 0 for the arm6"]
MEAN, STD = [0.4, 0.45, 0.5], [0.2, 0.25, 0.3]  # not SigLIP's 0.5: shows whose statistics are applied
TOWER = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}


@pytest.fixture(scope="module")
def siglip(tmp_path_factory):
    """Save a tiny random SigLIP (both towers, 28 px, patch 7), its image processor and a real SigLIP tokenizer."""
    path = tmp_path_factory.mktemp("siglip")
    torch.manual_seed(0)
    config = SiglipConfig(text_config={**TOWER, "vocab_size": 64, "max_position_embeddings": 32},
                          vision_config={**TOWER, "image_size": 28, "patch_size": 7})
    SiglipModel(config).save_pretrained(path)
    SiglipImageProcessor(size={"height": 28, "width": 28}, image_mean=MEAN, image_std=STD).save_pretrained(path)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(TEXTS * 20), model_writer=model, vocab_size=60,
                                   hard_vocab_limit=False, minloglevel=2)
    (path / "spiece.model").write_bytes(model.getvalue())
    SiglipTokenizer(vocab_file=str(path / "spiece.model")).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def dinov2(tmp_path_factory):
    """Save a tiny random DINOv2 (class token first) whose processor center-crops 28 px out of a 32 px resize."""
    path = tmp_path_factory.mktemp("dinov2")
    Dinov2Model(Dinov2Config(**TOWER, image_size=28, patch_size=7)).save_pretrained(path)
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 28, "width": 28}, do_center_crop=True,
                      image_mean=MEAN, image_std=STD).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def t5(tmp_path_factory):
    """Save a tiny random T5 encoder and a T5 tokenizer: the other family of text towers."""
    path = tmp_path_factory.mktemp("t5")
    config = T5Config(vocab_size=64, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2)
    T5EncoderModel(config).save_pretrained(path)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(TEXTS * 20), model_writer=model, vocab_size=60,
                                   hard_vocab_limit=False, minloglevel=2, pad_id=0, eos_id=1, unk_id=2, bos_id=-1)
    (path / "spiece.model").write_bytes(model.getvalue())
    T5Tokenizer(vocab_file=str(path / "spiece.model"), extra_ids=0).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def smolvlm(t5, tmp_path_factory):
    """Save a tiny random SmolVLM (SigLIP-style vision tower + Llama text model) with an image processor
    and a tokenizer: towers inside a vision-language model, whose weights carry the model's prefixes.
    """
    path = tmp_path_factory.mktemp("smolvlm")
    config = SmolVLMConfig(vision_config={**TOWER, "image_size": 28, "patch_size": 7},
                           text_config={**TOWER, "num_key_value_heads": 2, "vocab_size": 64})
    SmolVLMForConditionalGeneration(config).save_pretrained(path)
    SiglipImageProcessor(size={"height": 28, "width": 28}, image_mean=MEAN, image_std=STD).save_pretrained(path)
    T5Tokenizer.from_pretrained(t5).save_pretrained(path)
    return path


def tiny(**backbones):
    return preset("tiny", chunk_len=12, max_prefix_steps=6, max_instruction_len=16, image_grid=2, **backbones)


def backbone_policy(cfg):
    specs = [load_robot("arm6"), load_robot("arm7")]
    return build_policy(cfg, specs, {s.name: example_norm_stats(s) for s in specs}), specs


@pytest.mark.parametrize("kind, prefix", [("siglip", ""), ("smolvlm", "model.")])
def test_towers_get_the_pretrained_weights(kind, prefix, request):
    path = request.getfixturevalue(kind)
    policy, specs = backbone_policy(tiny(vision_backbone=str(path), text_backbone=str(path)))
    model = {"siglip": SiglipModel, "smolvlm": SmolVLMForConditionalGeneration}[kind]
    source = model.from_pretrained(path).state_dict()
    for tower in towers(policy.model).values():  # {prefix}vision_model.* and {prefix}text_model.*
        for name, value in tower.model.state_dict().items():
            torch.testing.assert_close(value, source[f"{prefix}{tower.tower}_model.{name}"], rtol=0, atol=0)
    batch = example_batch(specs, policy.config, 2, image_size=28)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the mask bias meets bf16 attention
        assert torch.isfinite(policy.loss(batch)[0])


@pytest.mark.parametrize("kind", ["siglip", "dinov2"])
def test_vision_tower_sees_its_own_resolution_and_statistics(kind, request):
    path = request.getfixturevalue(kind)
    policy, specs = backbone_policy(tiny(vision_backbone=str(path)))
    seen = {}
    tower = towers(policy.model)["vision"]
    tower.model.register_forward_pre_hook(lambda _, args, kwargs: seen.update(kwargs), with_kwargs=True)
    batch = example_batch(specs, policy.config, 2, image_size=28)
    policy.predict_chunk({k: batch[k] for k in (*K.OBSERVATION_KEYS, K.EMBODIMENT_INDEX)}, batch[K.ACTION][:, :2], 2)
    pixels = seen["pixel_values"]
    assert pixels.shape == (4, 3, 28, 28)  # 2 samples x 2 cameras at the processor's (crop) size
    images = batch[K.IMAGES].flatten(0, 1).float() / 255.0  # already 28 px: no resize, exact statistics
    expected = (images - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(pixels, expected, rtol=1e-5, atol=1e-5)
    features = tower(torch.zeros(1, 3, 96, 96))  # any camera size: resized to 28 px first
    assert features.shape == (1, 32, 4, 4)  # 4x4 patches of 7 px, the class token dropped


def test_instructions_use_the_text_towers_tokenizer(siglip):
    reference = SiglipTokenizer.from_pretrained(siglip)
    tokens, mask = encode("  put the red cube in the bin ", 32, str(siglip))
    ids = reference("put the red cube in the bin")["input_ids"]
    assert tokens[: len(ids)].tolist() == ids and mask.sum() == len(ids) and not mask[len(ids):].any()
    spec = load_robot("arm6")
    obs = build_observation(spec, {}, {}, np.zeros((1, spec.dof)), np.zeros(1), "put the red cube in the bin",
                            ObservationConfig(instruction_len=32, tokenizer=str(siglip)))
    assert obs[K.INSTRUCTION].tolist() == tokens.tolist()
    assert encode("pick", 8)[0][:2].tolist() == [1, 3 + ord("p")]  # no tokenizer: byte tokens, as before


@pytest.mark.parametrize("kind", ["siglip", "t5", "smolvlm"])
def test_text_tower_ignores_padding(kind, request):
    path = request.getfixturevalue(kind)
    policy, _ = backbone_policy(tiny(text_backbone=str(path)))
    tower = towers(policy.model)["text"]
    tokens, mask = (torch.from_numpy(x)[None] for x in encode("open it", 16, str(path)))
    n = int(mask.sum())
    assert 2 < n < 16
    longer = torch.cat([tokens, torch.full((1, 8), 7)], dim=1)  # other padding ids, and more of them
    with torch.no_grad():
        short = tower(tokens, mask)
        long = tower(longer, torch.cat([mask, torch.zeros(1, 8, dtype=torch.bool)], dim=1))
    torch.testing.assert_close(long[:, :n], short[:, :n], rtol=1e-5, atol=1e-5)
    changed = tokens.clone()
    changed[0, n - 1] = (changed[0, n - 1] + 1) % 60
    with torch.no_grad():
        unmasked = tower(tokens, torch.ones_like(mask))[:, :n]
        early = tower(changed, mask)[:, : n - 1]
    assert tower.causal == (kind == "smolvlm")  # the decoder LM keeps its causal attention, encoders see all:
    assert torch.allclose(unmasked, short[:, :n], atol=1e-5) == tower.causal  # the padding once unmasked
    assert torch.allclose(early, short[:, : n - 1], atol=1e-5) == tower.causal  # or a later token


@pytest.mark.parametrize("vision", ["siglip", "dinov2"])
def test_frozen_towers_get_no_gradient_and_trained_ones_do(vision, siglip, request):
    for freeze in (True, False):
        policy, specs = backbone_policy(tiny(vision_backbone=str(request.getfixturevalue(vision)),
                                             text_backbone=str(siglip), freeze_backbone=freeze))
        batch = example_batch(specs, policy.config, 2, image_size=28)
        policy.model.train()
        policy.loss(batch)[0].backward()
        for tower in towers(policy.model).values():
            grads = [p.grad for p in tower.model.parameters()]
            if freeze:
                assert not tower.model.training and all(g is None for g in grads)
            else:  # every trainable weight gets a gradient (DDP needs it); unused ones are frozen
                trained = [p for p in tower.model.parameters() if p.requires_grad]
                assert tower.model.training and len(trained) > 0.9 * len(grads)
                assert all(p.grad is not None for p in trained) and any(p.grad.abs().sum() > 0 for p in trained)
        assert towers(policy.model)["text"].proj.weight.grad is not None  # the projection always trains


def test_config_errors_are_named(siglip):
    with pytest.raises(ValueError, match="vision_backbone must be a Hugging Face Hub id"):
        tiny(vision_backbone=" google/siglip-base-patch16-224")
    with pytest.raises(ValueError, match="image_encoder='resnet' has no effect"):
        tiny(vision_backbone=str(siglip), image_encoder="resnet")
    with pytest.raises(ValueError, match="max_instruction_len=64 exceeds the 32 positions"):
        backbone_policy(dataclasses.replace(tiny(), text_backbone=str(siglip), max_instruction_len=64))


def test_training_config_tokenises_with_the_text_tower(siglip):
    policy = f"policy={{text_backbone: {siglip}}}"
    assert load_train_config(CONFIG, [policy]).data.observation.tokenizer == str(siglip)
    assert load_train_config(CONFIG).data.observation.tokenizer == ""  # byte tokens without a text tower
    with pytest.raises(ConfigError, match="data.observation.tokenizer='other' differs"):
        load_train_config(CONFIG, [policy, "data.observation.tokenizer=other"])


def backbone_run(source, freeze: bool = True) -> list[str]:
    """--set items of a few-step training run of a narrow policy on the towers of ``source``."""
    return [f"policy={{d_model: 64, n_layer: 2, n_head: 2, image_grid: 2, max_instruction_len: 16, "
            f"vision_backbone: {source}, text_backbone: {source}, freeze_backbone: {str(freeze).lower()}}}",
            "data.observation.instruction_len=16", "data.observation.image_size=32"]


def test_siglip_policy_trains_and_serves_from_its_checkpoint(siglip, tmp_path):
    data = build_dataset(tmp_path / "data", {"arm6": 2})
    source = shutil.copytree(siglip, tmp_path / "siglip")  # removed before serving: the checkpoint suffices
    out = tmp_path / "run"
    assert run(out, data, *backbone_run(source), "max_steps=3") == 0
    assert len(losses(out)) == 3 and all(np.isfinite(list(losses(out).values())))
    pretrained = SiglipModel.from_pretrained(source).state_dict()
    shutil.rmtree(source)
    load_tokenizer.cache_clear()  # as in a fresh serving process
    ckpt = latest_checkpoint(out)
    assert sorted(p.name for p in (ckpt / BACKBONES).iterdir()) == ["text", "vision"]
    policy = load_policy(out)
    copy = shutil.copytree(ckpt, tmp_path / "incomplete")
    shutil.rmtree(copy / BACKBONES)
    with pytest.raises(CheckpointError, match="lacks their configs"):
        load_policy(copy)
    for name, value in towers(policy.model)["vision"].model.state_dict().items():  # frozen: left as it was
        torch.testing.assert_close(value, pretrained[f"vision_model.{name}"], rtol=0, atol=0)
    obs_cfg = policy.observation_config
    assert obs_cfg.tokenizer == str(ckpt / BACKBONES / "text")
    spec = policy.embodiments[0]
    frames = {c.name: np.full((48, 64, 3), 90, np.uint8) for c in spec.cameras}
    obs = build_observation(spec, frames, dict.fromkeys(frames, 0.01), np.zeros((2, spec.dof)),
                            np.array([0.02, 0.0]), "pick the cube", obs_cfg)
    assert obs[K.INSTRUCTION].tolist() == encode("pick the cube", 16, str(siglip))[0].tolist()
    batch = {k: torch.from_numpy(v)[None] for k, v in obs.items()}
    chunk = policy.predict_chunk(batch, torch.zeros(1, 2, obs_cfg.max_dof), 2)
    assert chunk.shape == (1, policy.config.chunk_len, obs_cfg.max_dof) and torch.isfinite(chunk).all()
    rows, _ = evaluate_checkpoint(str(out), [str(data)], EvalConfig(delays=(0,), kl_samples=2), "cpu", 4, 8, 1)
    assert rows and all(np.isfinite(r["mse"]) for r in rows)  # gen-theta evaluate: the checkpoint's tokenizer


def test_model_card_counts_the_backbone_presets_offline():
    card = model_card("siglip-1b", gpus=8)
    towers_params = card.params - card.trunk_params
    assert 190e6 < card.frozen_params < towers_params  # SigLIP base's two towers, frozen
    assert card.state_gib_per_gpu * 8 * 2**30 == pytest.approx(16 * (card.params - card.frozen_params)
                                                               + 4 * card.frozen_params)
    flops, frozen_flops = forward_flops(preset("siglip-1b"))
    assert 0 < frozen_flops < flops and card.train_flops_per_sample == 3 * flops - 2 * frozen_flops


@pytest.mark.parametrize("strategy, freeze", [("ddp", False), ("fsdp", True)])
def test_towers_train_on_two_processes(strategy, freeze, siglip, tmp_path):
    data = build_dataset(tmp_path / "data", {"arm6": 2})
    out = tmp_path / strategy
    proc = torchrun(out, data, *backbone_run(siglip, freeze), "max_steps=2", "eval_interval=2",
                    f"distributed={strategy}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{strategy} on 2 process(es)" in proc.stdout + proc.stderr
    pretrained = SiglipModel.from_pretrained(siglip).state_dict()
    trained = towers(load_policy(out).model)["vision"].model.state_dict()
    changed = [not torch.equal(v, pretrained[f"vision_model.{k}"]) for k, v in trained.items()]
    assert any(changed) != freeze  # trained towers moved, frozen ones did not (FSDP: gathered for the checkpoint)
    # Resumed (FSDP: built on the meta device again), the towers' weights come from the checkpoint.
    proc = torchrun(out, data, *backbone_run(siglip, freeze), "max_steps=3", "eval_interval=2",
                    f"distributed={strategy}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed at step 2" in proc.stdout + proc.stderr
    assert list(losses(out)) == [1, 2, 3] and all(np.isfinite(list(losses(out).values())))
