"""common.models.multimodal (MM-D2V2), pair cosines, mean recall and variant sweeps."""
import math

import pytest
import torch
from torch import nn

from common.config import (ConfigError, EncoderConfig, ImageEncoderConfig, TextEncoderConfig,
                           TrainConfig, load_config)
from common.models.attention import grid_distances, line_distances, pad_distances
from common.models.encoder import EncoderOutput
from common.mm_d2v2 import cls_distillation
from common.models.multimodal import HeadConfig, MultimodalEncoder, build_multimodal, teacher_width
from common.optim import param_groups
from common.retrieval import mean_recall, pair_cosines
from common.sweep import Variant, expand, include_extras, seed_count

TINY = dict(dim=16, heads=4, mlp_ratio=2.0)
PAD = 1


def build(image_depth=2, text_depth=2, shared_depth=1, freeze=True, contrastive=False,
          **head) -> MultimodalEncoder:
    image = ImageEncoderConfig(**TINY, depth=image_depth, image_size=8, patch_size=4,
                               freeze_embed=freeze)  # 2 x 2 patches + CLS
    text = TextEncoderConfig(**TINY, depth=text_depth, vocab_size=50, max_len=8, freeze_embed=freeze)
    return build_multimodal(image, text, EncoderConfig(**TINY, depth=shared_depth),
                            HeadConfig(**head), PAD, contrastive)


def inputs(batch=3):
    images = torch.randn(batch, 3, 8, 8)
    ids = torch.tensor([[0, 5, 6, 7, 2, PAD], [0, 8, 2, PAD, PAD, PAD], [0, 9, 10, 11, 12, 2]])[:batch]
    return images, ids, ids.eq(PAD)


# ------------------------------------------------------------------------- architecture
def test_both_modalities_pass_the_same_shared_blocks_with_their_own_geometry():
    torch.manual_seed(0)
    model = build().eval()
    images, ids, pad = inputs()
    # reference: the shared stack run by hand on each encoder's tokens, with 2-D (image) and
    # 1-D (text) ALiBi distances; the CLS (first token) is the representation
    img_tokens = model.image(images).x  # B x 5 x D
    txt_tokens = model.text(ids, pad).x  # B x 6 x D
    ref_img = model.shared.forward_tokens(img_tokens, None, distances=pad_distances(grid_distances(2, 2), 1)).x[:, 0]
    ref_txt = model.shared.forward_tokens(txt_tokens, pad, distances=line_distances(6)).x[:, 0]
    out_img, out_txt = model.forward_image(images), model.forward_text(ids, pad)
    torch.testing.assert_close(out_img.cls, ref_img)
    torch.testing.assert_close(out_txt.cls, ref_txt)
    torch.testing.assert_close(out_img.encoder_cls, img_tokens[:, 0])
    # one module, one set of weights: a shared parameter receives gradient from either modality
    # (a random readout: a post-norm CLS sums to ~0 over channels, so .sum() has no gradient)
    qkv, readout = model.shared.blocks[0].attn.qkv.weight, torch.randn(16)
    (out_img.cls @ readout).sum().backward()
    assert qkv.grad.abs().sum() > 0 and model.text.blocks[0].attn.qkv.weight.grad is None
    model.zero_grad()
    (model.forward_text(ids, pad).cls @ readout).sum().backward()
    assert qkv.grad.abs().sum() > 0 and model.image.blocks[0].attn.qkv.weight.grad is None


def test_padding_does_not_change_the_shared_cls():
    torch.manual_seed(0)
    model = build().eval()
    ids = torch.tensor([[0, 5, 6, 2]])
    padded = torch.tensor([[0, 5, 6, 2, PAD, PAD]])
    torch.testing.assert_close(model.forward_text(ids, ids.eq(PAD)).cls,
                               model.forward_text(padded, padded.eq(PAD)).cls)


def test_frozen_embeddings_get_no_gradients_and_blocks_do():
    model = build(freeze=True)
    images, ids, pad = inputs()
    img, txt, _ = model(images, ids, pad)
    readout = torch.randn(16)  # a post-norm CLS sums to ~0 over channels: .sum() has no gradient
    ((img.kd @ readout).sum() + (txt.kd @ readout).sum()).backward()
    for name, p in model.named_parameters():
        if name.startswith(("image.embed.", "text.embed.")):
            assert not p.requires_grad and p.grad is None, name
        else:
            assert p.grad is not None, name  # every other parameter trains


def test_weight_decay_groups_spare_cls_token_and_text_embedding():
    model = build(freeze=False, target_dim=24, contrastive=True)
    groups = param_groups(model, 0.01, no_decay=["image.embed.cls_token", "text.embed"])
    decay = {n: g["weight_decay"] for g in groups for n in g["param_names"]}
    assert decay["image.embed.cls_token"] == 0.0  # [1, 1, D]: would decay without the rule
    assert decay["text.embed.token_embed.weight"] == 0.0
    assert decay["text.embed.pos_embed"] == 0.0
    assert decay["image.embed.patch_embed.proj.weight"] == 0.01
    assert decay["shared.blocks.0.attn.qkv.weight"] == 0.01
    assert decay["kd_map.weight"] == 0.01 and decay["kd_map.bias"] == 0.0
    assert decay["logit_scale.log_scale"] == 0.0
    frozen = param_groups(build(freeze=True), 0.01)
    assert not any(n.startswith(("image.embed.", "text.embed."))
                   for g in frozen for n in g["param_names"])


def test_kd_map_only_where_the_teacher_width_differs():
    assert isinstance(build(target_dim=0).kd_map, nn.Identity)
    assert isinstance(build(target_dim=16).kd_map, nn.Identity)
    model = build(target_dim=24)
    images, ids, pad = inputs()
    assert model.forward_image(images).kd.shape == (3, 24)
    assert model.forward_text(ids, pad).kd.shape == (3, 24)


def test_projection_placements():
    images, ids, pad = inputs()
    none = build(proj="none").eval()
    out = none.forward_image(images)
    assert out.embedding is out.cls and none.image_proj is None

    enc = build(proj="encoder", proj_dim=8).eval()  # CLIP/FLAVA: one per modality, on encoder CLS
    assert enc.image_proj is not enc.text_proj
    out = enc.forward_text(ids, pad)
    torch.testing.assert_close(out.embedding, enc.text_proj(out.encoder_cls))
    assert out.embedding.shape == (3, 8)

    shared = build(proj="shared").eval()  # one projection of the shared CLS for both modalities
    assert shared.image_proj is shared.text_proj
    out = shared.forward_image(images)
    torch.testing.assert_close(out.embedding, shared.image_proj(out.cls))
    names = [n for n, _ in shared.named_parameters()]
    assert len(names) == len(set(id(p) for p in shared.parameters()))  # registered once

    with pytest.raises(ValueError, match="head.proj"):
        build(proj="both")


def test_only_a_contrastive_model_has_temperature_and_banks():
    model = build(proj="shared", proj_dim=8, bank_size=5, contrastive=True)
    assert model.image_bank.rows.shape == (5, 8) and model.text_bank.rows.shape == (5, 8)
    assert "image_bank.rows" in model.state_dict() and "text_bank.ptr" in model.state_dict()
    images, ids, pad = inputs()
    assert math.isclose(model(images, ids, pad)[2].item(), 1 / 0.07, rel_tol=1e-5)
    plain = build(bank_size=5)  # distillation only: no parameter without a gradient (DDP)
    assert plain.image_bank is None and plain.logit_scale is None and plain(images, ids, pad)[2] is None


# ------------------------------------------------------------------------- distillation
class ConstantTeacher(nn.Module):
    """A ViT-like teacher whose CLS is the per-image mean pixel broadcast to 4 channels."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(4), requires_grad=False)

    def forward(self, images):
        cls = images.mean(dim=(1, 2, 3))[:, None] * self.w  # B x 4
        return EncoderOutput(x=cls[:, None])


def test_cls_distillation_regresses_the_image_teacher_for_both_modalities():
    torch.manual_seed(0)
    model = build(target_dim=4)
    teacher = ConstantTeacher()
    images, ids, pad = inputs()
    assert teacher_width(teacher, 8) == 4
    batch = {"image": images, "text_ids": ids, "text_padding_mask": pad}
    img, txt, _, terms = cls_distillation(model, teacher, batch)
    target = images.mean(dim=(1, 2, 3))[:, None].expand(3, 4)  # what the caption must predict too
    torch.testing.assert_close(terms["kd_image"], ((img.kd - target) ** 2).mean())
    torch.testing.assert_close(terms["kd_text"], ((txt.kd - target) ** 2).mean())
    (terms["kd_image"] + terms["kd_text"]).backward()
    assert teacher.w.grad is None


def test_cls_distillation_can_regress_batch_standardised_targets():
    torch.manual_seed(0)
    model = build(target_dim=4, kd_target="batch")
    images, ids, pad = inputs()
    _, txt, _, terms = cls_distillation(model, ConstantTeacher(),
                                        {"image": images, "text_ids": ids, "text_padding_mask": pad})
    raw = images.mean(dim=(1, 2, 3))[:, None].expand(3, 4)
    target = (raw - raw.mean(0)) / torch.sqrt(raw.var(0, unbiased=False) + 1e-5)  # per channel over B
    torch.testing.assert_close(terms["kd_text"], ((txt.kd - target) ** 2).mean())
    with pytest.raises(ConfigError, match="kd_target"):
        build(kd_target="layer")


# ------------------------------------------------------------------------- metrics
def test_pair_cosines_by_hand():
    images = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    texts = torch.tensor([[3.0, 0.0], [1.0, 1.0], [0.0, -1.0]])  # captions of images 0, 0, 1
    ids = torch.tensor([0, 0, 1])
    r = 1 / math.sqrt(2)
    # positives: cos(t0, i0) = 1, cos(t1, i0) = r, cos(t2, i1) = -1
    # negatives: cos(t0, i1) = 0, cos(t1, i1) = r, cos(t2, i0) = 0
    out = pair_cosines(images, texts, ids)
    assert out["pos"] == pytest.approx((1 + r - 1) / 3)
    assert out["neg"] == pytest.approx((0 + r + 0) / 3)


def test_mean_recall_is_the_average_of_r1_r5_r10():
    recall = {"i2t_r1": 10.0, "i2t_r5": 20.0, "i2t_r10": 60.0, "t2i_r1": 3.0, "t2i_r5": 6.0, "t2i_r10": 9.0}
    assert mean_recall(recall) == {"i2t_mean_recall": 30.0, "t2i_mean_recall": 6.0}


# ------------------------------------------------------------------------- variants x seeds
def _sweep_cfg():
    from dataclasses import dataclass, field

    @dataclass
    class Cfg:
        run: str = "x"
        shared: EncoderConfig = field(default_factory=EncoderConfig)
        train: TrainConfig = field(default_factory=TrainConfig)

    return load_config(Cfg, None, ["train.seed=7"])


def test_expand_variants_and_seeds(monkeypatch):
    monkeypatch.delenv("SEEDS", raising=False)
    cfg = _sweep_cfg()
    variants = [Variant("base", "B"), Variant("deep", "D", overrides=["shared.depth=2"]),
                Variant("pair", "P", kind="unimodal_pair")]
    runs = expand(cfg, variants, seeds=2)
    assert [(v.name, c.run, c.train.seed, c.shared.depth) for v, c in runs] == [
        ("base", "base", 7, 12), ("base", "base", 8, 12), ("deep", "deep", 7, 2),
        ("deep", "deep", 8, 2), ("pair", "pair", 7, 12)]  # nothing random to repeat for the pair
    assert cfg.run == "x" and cfg.shared.depth == 12  # the chapter config is untouched
    assert [v.name for v, _ in expand(cfg, variants, only=["deep"])] == ["deep"]


def test_extra_variants_run_only_on_request(monkeypatch):
    cfg = _sweep_cfg()
    variants = [Variant("base", "B"), Variant("cmp", "C", extra=True)]
    assert [v.name for v, _ in expand(cfg, variants)] == ["base"]
    assert [v.name for v, _ in expand(cfg, variants, extras=True)] == ["base", "cmp"]
    assert [v.name for v, _ in expand(cfg, variants, only=["cmp"])] == ["cmp"]  # named: runs
    with pytest.raises(ConfigError, match="variant 'cmp'"):  # not run, but its overrides are checked
        expand(cfg, [Variant("base", "B"), Variant("cmp", "C", overrides=["shared.dpeth=2"], extra=True)])
    monkeypatch.setenv("EXTRAS", "1")
    assert include_extras()
    monkeypatch.setenv("EXTRAS", "yes")
    with pytest.raises(ConfigError, match="EXTRAS='yes'"):
        include_extras()
    monkeypatch.delenv("EXTRAS")
    assert not include_extras()


def test_expand_fails_fast_with_one_line(monkeypatch):
    cfg = _sweep_cfg()
    with pytest.raises(ConfigError, match="variant 'bad'.*shared.dpeth"):
        expand(cfg, [Variant("ok", "O"), Variant("bad", "B", overrides=["shared.dpeth=2"])])
    with pytest.raises(ConfigError, match="unknown variants"):
        expand(cfg, [Variant("ok", "O")], only=["nope"])
    with pytest.raises(ConfigError, match="kind"):
        expand(cfg, [Variant("ok", "O", kind="finetune")])


def test_seed_count_from_environment(monkeypatch):
    monkeypatch.delenv("SEEDS", raising=False)
    assert seed_count(1) == 1
    monkeypatch.setenv("SEEDS", "3")
    assert seed_count(1) == 3
    monkeypatch.setenv("SEEDS", "three")
    with pytest.raises(ConfigError, match="SEEDS"):
        seed_count(1)


def test_embed_trainable_keeps_only_the_named_embedding_parameters_training():
    """Chapters 3-5 (full): the image CLS token and the text token table train inside frozen
    embeddings, and train.no_decay exempts exactly those from weight decay."""
    image = ImageEncoderConfig(**TINY, depth=1, image_size=8, patch_size=4, freeze_embed=True,
                               embed_trainable=["cls_token"])
    text = TextEncoderConfig(**TINY, depth=1, vocab_size=50, max_len=8, freeze_embed=True,
                             embed_trainable=["token_embed"])
    model = build_multimodal(image, text, EncoderConfig(**TINY, depth=1), HeadConfig(), PAD, False)
    images, ids, pad = inputs()
    img, txt, _ = model(images, ids, pad)
    readout = torch.randn(16)
    ((img.kd @ readout).sum() + (txt.kd @ readout).sum()).backward()
    trained = {n for n, p in model.named_parameters() if n.startswith(("image.embed.", "text.embed."))
               and p.grad is not None}
    assert trained == {"image.embed.cls_token", "text.embed.token_embed.weight"}
    groups = param_groups(model, 0.01, no_decay=["image.embed.cls_token", "text.embed.token_embed"])
    decay = {n: g["weight_decay"] for g in groups for n in g["param_names"]}
    assert decay["image.embed.cls_token"] == decay["text.embed.token_embed.weight"] == 0.0
    assert "image.embed.patch_embed.proj.weight" not in decay  # still frozen
    with pytest.raises(ConfigError, match=r"embed_trainable=\['cls'\]"):
        build_multimodal(ImageEncoderConfig(**TINY, depth=1, image_size=8, patch_size=4,
                                            freeze_embed=True, embed_trainable=["cls"]),
                         text, EncoderConfig(**TINY, depth=1), HeadConfig(), PAD, False)


def test_no_decay_naming_only_frozen_parameters_is_a_config_error():
    """Before: train.no_decay on a frozen embedding silently did nothing (chapter 3 full)."""
    with pytest.raises(ConfigError, match=r"train.no_decay=\['image.embed.cls_token'\] names no "
                                          r"trainable parameter"):
        param_groups(build(freeze=True), 0.01, no_decay=["image.embed.cls_token"])
