"""Label-free tiny ViT teacher (data2vec 2.0-style): masking, EMA, targets, loss, cached bootstrap."""
import pytest
import torch
from torch import nn

from common.models import teachers
from common.tiny_teachers import bootstrap
from common.tiny_teachers import d2v as tt
from common.targets import layer_averaged_targets



def test_tiny_d2v_is_bootstrapped_once_then_loaded_from_cache(monkeypatch, vit_teacher_cfgs):
    t, d = vit_teacher_cfgs("tiny-d2v")
    first = teachers.build_teacher(t, d)
    report = teachers.teacher_report(t, d)
    assert report["steps"] == 2 and report["recipe"] == "tiny-d2v"
    assert report["settings"]["cls_objective"] == "mean_patches"
    keys = {f"{pool}_{labels}_top{k}" for pool in ("cls", "mean") for labels in ("fine", "coarse")
            for k in (1, 3)}
    assert set(report["knn"]) == keys and set(report["knn_untrained"]) == keys
    assert all(0.0 <= v <= 100.0 for v in report["knn"].values())
    assert report["knn_chance"] == {"fine_top1": 1.0, "fine_top3": 2.97,
                                    "coarse_top1": 10.0, "coarse_top3": 27.1}
    assert not first.training and not any(p.requires_grad for p in first.parameters())
    out = first(torch.randn(3, 3, 32, 32), return_layers=True)  # what a chapter calls
    assert out.cls.shape == (3, 32) and len(out.layers) == 2 and out.layers[0].shape == (3, 17, 32)

    def must_not_train(*args, **kwargs):
        raise AssertionError("a cached teacher was trained again")

    monkeypatch.setattr(teachers.TINY_RECIPES["tiny-d2v"], "train", must_not_train)
    second = teachers.build_teacher(t, d)
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name


def test_cache_key_includes_the_recipe_settings(monkeypatch, vit_teacher_cfgs):
    t, d = vit_teacher_cfgs("tiny-d2v")
    key = bootstrap.cache_key(t, d)
    t.d2v.mask_ratio = 0.5  # a recipe setting, by config (teacher.d2v.mask_ratio=0.5)
    assert bootstrap.cache_key(t, d) != key


def test_ema_update_is_exact_on_a_hand_case():
    teacher, student = nn.Linear(2, 2), nn.Linear(2, 2)
    teacher.register_buffer("count", torch.tensor([1.0]))
    student.register_buffer("count", torch.tensor([5.0]))
    with torch.no_grad():
        teacher.weight.fill_(1.0), teacher.bias.fill_(-2.0)
        student.weight.copy_(torch.tensor([[3.0, 5.0], [1.0, -1.0]])), student.bias.fill_(2.0)
    tt.ema_update(teacher, student, decay=0.5)
    assert torch.equal(teacher.weight, torch.tensor([[2.0, 3.0], [1.0, 0.0]]))
    assert torch.equal(teacher.bias, torch.zeros(2))
    assert torch.equal(teacher.count, torch.tensor([5.0]))  # buffers are copied, not averaged
    tt.ema_update(teacher, student, decay=0.75)
    assert torch.equal(teacher.bias, torch.tensor([0.5, 0.5]))  # 0.75 * 0 + 0.25 * 2


def test_ema_decay_ramps_linearly_then_stays():
    assert tt.ema_decay(0, 100, 0.9, 0.99, 0.5) == pytest.approx(0.9)
    assert tt.ema_decay(25, 100, 0.9, 0.99, 0.5) == pytest.approx(0.945)
    assert tt.ema_decay(50, 100, 0.9, 0.99, 0.5) == tt.ema_decay(99, 100, 0.9, 0.99, 0.5) == 0.99


@pytest.mark.parametrize("block", [1, 3])
def test_block_mask_keeps_the_requested_ratio(block):
    masked = tt.block_mask(50, (4, 4), 0.75, block)
    assert masked.shape == (50, 16) and masked.dtype == torch.bool
    assert (masked.sum(1) == 12).all()
    assert masked.float().mean(0).min() > 0  # every patch gets masked sometimes
    with pytest.raises(ValueError, match="no visible patch"):
        tt.block_mask(2, (4, 4), 1.0)


def test_loss_counts_only_masked_positions_and_cls_regresses_the_mean_of_patch_targets(
        vit_teacher_cfgs):
    t, _ = vit_teacher_cfgs("tiny-d2v")
    teacher = bootstrap.build_vit(t).eval()
    settings = tt.D2VSettings(num_masks=2, mask_ratio=0.5, cls_weight=0.5)
    images = torch.randn(3, 3, 32, 32)
    seen = {}

    def student(images, masked, num_masks):
        """Off by 1 at masked patches and by 7 elsewhere; CLS off by 2 from the mean target."""
        seen["masked"] = masked
        target = tt.patch_targets(teacher(images, return_layers=True).layers, settings.top_k)
        target = target.repeat_interleave(num_masks, 0)  # 6 x 16 x 32
        pred = target + torch.where(masked, 1.0, 7.0)[..., None]
        return target.mean(1) + 2.0, pred

    out = tt.d2v_step(student, teacher, images, settings)
    assert seen["masked"].shape == (6, 16) and (seen["masked"].sum(1) == 8).all()
    assert out["reg"].item() == pytest.approx(1.0)  # the 7s at visible patches do not count
    assert out["cls"].item() == pytest.approx(4.0)
    assert out["loss"].item() == pytest.approx(1.0 + 0.5 * 4.0)


def test_cls_target_is_the_mean_of_the_patch_targets():
    layers = [torch.randn(2, 5, 8) for _ in range(4)]  # CLS + 4 patches
    targets = tt.patch_targets(layers, top_k=3)
    assert torch.allclose(targets, layer_averaged_targets([h[:, 1:] for h in layers[1:]]))
    assert torch.allclose(tt.mean_patches_cls_target(targets), targets.mean(1))
    cls_pred = targets[:, 0] * 0 + targets.mean(1)
    assert tt.CLS_OBJECTIVES["mean_patches"](cls_pred, targets).item() == pytest.approx(0.0)


def test_student_on_visible_tokens_matches_the_encoder_with_their_alibi_distances(
        vit_teacher_cfgs):
    t, _ = vit_teacher_cfgs("tiny-d2v")
    t.encoder.patch_size = 4  # 8 x 8 grid
    student = tt.MaskedStudent(bootstrap.build_vit(t)).eval()
    enc = student.encoder
    images = torch.randn(2, 3, 32, 32)
    masked = tt.block_mask(2, enc.embed.grid_size, 0.75, 3)
    cls, pred = student(images, masked)
    assert cls.shape == (2, 32) and pred.shape == (2, 64, 32)
    for b in range(2):
        keep = torch.cat([torch.zeros(1, dtype=torch.long), (~masked[b]).nonzero()[:, 0] + 1])
        tokens = enc.embed(images[b:b + 1])[:, keep]  # 1 x (1+16) x D
        dist = enc.embed.distances(65, images.device)[keep][:, keep]
        ref = enc.forward_tokens(tokens, distances=dist).x
        assert torch.allclose(cls[b], ref[0, 0], atol=1e-5)
