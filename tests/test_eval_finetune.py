"""Fine-tuning pieces: layer-decay learning rates (THESIS.md chapter 1's table), the pooled
classifier, top-k accuracy, the linear-probe recipe and deterministic augmentation."""
import re

import pytest
import torch

from common.config import DataConfig, ImageEncoderConfig, TextEncoderConfig, TrainConfig
from common.data.sources import synthetic_world
from common.errors import UserError
from common.finetune import (AugmentedImages, EncoderClassifier, FinetuneConfig,
                             classifier_setup, image_head, layer_decay_param_groups,
                             resolve_config, topk_accuracy, train_image_transform)
from common.models import build_image_encoder, build_text_encoder
from common.optim import build_optimizer

# THESIS.md chapter 1: lr_l = 1e-3 * 0.81^(L+1-l) for L=6, layers 0 (embedding) .. 7 (head)
THESIS_LR_TABLE = [2.3e-4, 2.8e-4, 3.5e-4, 4.3e-4, 5.3e-4, 6.6e-4, 8.1e-4, 1e-3]


def tiny_encoder(depth=6):
    return build_image_encoder(ImageEncoderConfig(dim=16, depth=depth, heads=2, image_size=16,
                                                  patch_size=8))


def layer_of(name: str) -> int:
    if name.startswith("encoder.embed"):
        return 0
    match = re.match(r"encoder\.blocks\.(\d+)\.", name)
    return int(match.group(1)) + 1 if match else 7


def test_layer_decay_learning_rates_match_the_thesis_table_for_six_blocks():
    model = EncoderClassifier(tiny_encoder(6), image_head(16, 10))
    groups = layer_decay_param_groups(model, weight_decay=0.05, layer_decay=0.81)
    optimizer = build_optimizer(model, TrainConfig(lr=1e-3), groups)  # what fit() builds
    names = {id(p): n for n, p in model.named_parameters()}
    lr_by_layer = {}
    for group in optimizer.param_groups:
        for param in group["params"]:
            layer = layer_of(names[id(param)])
            lr_by_layer.setdefault(layer, set()).add(group["lr"])
            exempt = param.ndim <= 1 or names[id(param)] == "encoder.embed.cls_token"
            assert group["weight_decay"] == (0.0 if exempt else 0.05)
    assert sorted(lr_by_layer) == list(range(8))
    assert all(len(lrs) == 1 for lrs in lr_by_layer.values())
    lrs = [lr_by_layer[layer].pop() for layer in range(8)]
    assert lrs == pytest.approx([1e-3 * 0.81 ** (7 - layer) for layer in range(8)])
    assert [float(f"{lr:.1e}") for lr in lrs] == THESIS_LR_TABLE  # the table, 2 significant digits


def frozen_embed_encoder(depth=6):
    """A tower as the chapters leave it: ``freeze_embed`` on (chapter 3-5 configs)."""
    return build_image_encoder(ImageEncoderConfig(dim=16, depth=depth, heads=2, image_size=16,
                                                  patch_size=8, freeze_embed=True))


def test_full_finetuning_trains_a_frozen_embedding_at_layer_zeros_lr():
    encoder = frozen_embed_encoder(6)
    cfg = FinetuneConfig(mode="full")
    model, frozen, groups = classifier_setup(encoder, image_head(16, 10), "mean", cfg)
    optimizer = build_optimizer(model, TrainConfig(lr=1e-3), groups)
    embed = {id(p) for p in model.encoder.embed.parameters()}
    lrs = {g["lr"] for g in optimizer.param_groups if embed & {id(p) for p in g["params"]}}
    assert frozen == [] and not model.encoder.freeze_embed
    assert list(lrs) == [pytest.approx(1e-3 * 0.81 ** 7)]  # 2.3e-4, THESIS.md's layer 0
    assert sum(len(embed & {id(p) for p in g["params"]}) for g in groups) == len(embed)
    assert all(not p.requires_grad for p in encoder.embed.parameters())  # caller's copy


def test_linear_probe_trains_only_the_head():
    model, frozen, groups = classifier_setup(frozen_embed_encoder(2), image_head(16, 3), "mean",
                                             FinetuneConfig(mode="linear"))
    assert frozen == [model.encoder] and len([p for g in groups for p in g["params"]]) == 4


def test_cls_token_and_learned_positions_get_no_weight_decay():
    """timm's no_weight_decay() convention (BEiT v2, MAE, data2vec): cls_token, pos_embed."""
    text = build_text_encoder(TextEncoderConfig(dim=16, depth=1, heads=2, vocab_size=50,
                                                max_len=8, learned_pos=True), pad_id=1)
    for encoder in (tiny_encoder(1), text):
        model, _, groups = classifier_setup(encoder, image_head(16, 3), "mean", FinetuneConfig())
        names = {id(p): n for n, p in model.named_parameters()}
        decay = {names[id(p)]: g["weight_decay"] for g in groups for p in g["params"]}
        exempt = [n for n in decay if n.endswith(("cls_token", "pos_embed"))]
        assert exempt and all(decay[n] == 0.0 for n in exempt)
        assert any(w > 0 for w in decay.values())


def test_frozen_encoder_is_left_out_of_the_groups():
    model = EncoderClassifier(tiny_encoder(2), image_head(16, 3))
    model.encoder.requires_grad_(False)
    groups = layer_decay_param_groups(model, 0.05, 0.81)
    params = [p for g in groups for p in g["params"]]
    assert len(params) == 4 and all(g["lr_scale"] == 1.0 for g in groups)  # head: LN + linear


def test_classifier_mean_pools_patch_tokens_without_cls():
    encoder = tiny_encoder(1).eval()
    head = torch.nn.Identity()
    model = EncoderClassifier(encoder, head).eval()
    images = torch.randn(2, 3, 16, 16)
    tokens = encoder(images).x  # 2 x (1 + 4) x 16
    assert torch.allclose(model(images), tokens[:, 1:].mean(dim=1))
    assert torch.allclose(EncoderClassifier(encoder, head, pool="cls")(images), tokens[:, 0])


def test_topk_accuracy_counts_ties_against_the_row():
    logits = torch.tensor([[3.0, 1.0, 2.0],   # label 0: rank 0
                           [3.0, 1.0, 2.0],   # label 2: rank 1
                           [1.0, 1.0, 0.0],   # label 1: tied with class 0 -> rank 1
                           [0.0, 1.0, 2.0]])  # label 0: rank 2
    acc = topk_accuracy(logits, torch.tensor([0, 2, 1, 0]), ks=(1, 2))
    assert acc == {"top1": 25.0, "top2": 75.0}


def test_linear_probe_recipe_and_epochs():
    cfg = FinetuneConfig(mode="linear", epochs=2, train=TrainConfig(batch_size=64))
    out = resolve_config(cfg, train_size=1000)
    assert (out.mixup, out.cutmix, out.rand_augment, out.reprob, out.layer_decay) == (0, 0, "", 0, 1.0)
    assert out.train.steps == 32  # ceil(2 * 1000 / 64)
    assert cfg.mixup == 0.8 and cfg.train.steps != 32  # the input is not changed
    with pytest.raises(UserError, match="mode=probe"):
        resolve_config(FinetuneConfig(mode="probe"), 10)


def test_augmented_items_are_a_pure_function_of_the_torch_seed():
    source = synthetic_world(DataConfig(image_size=32, train_size=100)).source("train")
    data = AugmentedImages(source, train_image_transform(FinetuneConfig(), 32))

    def item(seed):
        torch.manual_seed(seed)
        return data[5]["image"]

    a, b, c = item(1), item(1), item(2)
    assert a.shape == (3, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    assert data[5]["label"] == source.label(5)
