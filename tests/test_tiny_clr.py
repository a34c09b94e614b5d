"""Label-free contrastive tiny teacher: InfoNCE on hand cases, heads, cached bootstrap."""
import math

import pytest
import torch

from common.models import teachers
from common.tiny_teachers import clr as tc
from common.tiny_teachers.bootstrap import build_vit


def test_info_nce_matches_a_hand_computed_case():
    # orthonormal queries and keys, temperature 1/2: logits 2 * I, each row -log(e^2 / (e^2 + 1))
    eye = torch.eye(2)
    assert tc.info_nce(eye, eye, 0.5).item() == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-6)
    # cosine logits: the lengths of queries and keys do not matter
    assert tc.info_nce(3 * eye, 0.5 * eye, 0.5).item() == pytest.approx(math.log(1 + math.exp(-2)))
    # keys swapped: every query's own key is the least similar one, -log(1 / (1 + e^2))
    swapped = eye.flip(0)
    expected = math.log(1 + math.exp(2))
    assert tc.info_nce(eye, swapped, 0.5).item() == pytest.approx(expected, rel=1e-6)


def test_heads_end_in_a_batch_norm_without_affine_parameters():
    head = tc.mlp(16, 32, 8, layers=3)
    linears = [m for m in head if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [32, 32, 8]
    assert isinstance(head[-1], torch.nn.BatchNorm1d) and not head[-1].affine
    out = head(torch.randn(64, 16))
    assert out.shape == (64, 8) and out.mean(0).abs().max() < 1e-5  # batch-normalised output



def test_momentum_contrast_trains_the_student_only(vit_teacher_cfgs):
    t, _ = vit_teacher_cfgs("tiny-clr")
    net = tc.MomentumContrast(build_vit(t), tc.ClrSettings(proj_hidden=16, proj_dim=8), seed=1)
    net.teacher.eval()
    net.teacher_proj.eval()  # as fit() runs frozen modules
    out = net(torch.randn(4, 2, 3, 32, 32), tc.ClrSettings())
    out["loss"].backward()
    assert out["loss"].item() > 0 and 0.0 <= out["pair_acc"].item() <= 1.0
    assert all(p.grad is None for p in net.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.student.parameters())


def test_tiny_clr_bootstraps_once_deterministically(monkeypatch, tmp_path, vit_teacher_cfgs):
    t, d = vit_teacher_cfgs("tiny-clr")
    model = teachers.build_teacher(t, d)
    report = teachers.teacher_report(t, d)
    assert report["recipe"] == "tiny-clr" and report["steps"] == 2
    assert report["settings"]["background_swap"] is True
    assert set(report["knn"]) == set(report["knn_untrained"])
    out = model(torch.randn(2, 3, 32, 32), return_layers=True)
    assert out.cls.shape == (2, 32) and len(out.layers) == 2 and not model.training
    fresh = teachers.TINY_RECIPES["tiny-clr"].build(t)
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                     fresh.state_dict().values()))

    def must_not_train(*args, **kwargs):
        raise AssertionError("a cached teacher was trained again")

    with monkeypatch.context() as m:  # cached: loaded, not trained again
        m.setattr(teachers.TINY_RECIPES["tiny-clr"], "train", must_not_train)
        cached = teachers.build_teacher(t, d)
    monkeypatch.setenv("MMKD_CACHE", str(tmp_path / "other-cache"))  # a fresh build, same seed
    again = teachers.build_teacher(t, d)
    for (name, a), (_, b), (_, c) in zip(model.state_dict().items(), cached.state_dict().items(),
                                         again.state_dict().items()):
        assert torch.equal(a, b) and torch.equal(a, c), name
