"""Label-free DINO tiny teacher: loss on a hand case, EMA schedule, background swap, bootstrap."""
import math

import numpy as np
import pytest
import torch

from common.config import ConfigError
from common.data.synthetic import COLOUR_JITTER, COLOUR_RGB, SyntheticWorld
from common.data.transforms import eval_transform
from common.models import teachers
from common.data import views as dv
from common.tiny_teachers import dino as td


def test_dino_loss_matches_a_hand_computed_case():
    # 2 views x 1 image x 2 prototypes; temperatures 1, centre 0: plain cross-entropies
    s = torch.tensor([[[0.0, math.log(3.0)]], [[0.0, 0.0]]])  # view 0: p=(1/4, 3/4); view 1: (1/2, 1/2)
    t = torch.tensor([[[0.0, 0.0]], [[0.0, math.log(3.0)]]])  # targets: view 0 (1/2,1/2); view 1 (1/4,3/4)
    loss = td.dino_loss(s, t, torch.zeros(2), student_temp=1.0, teacher_temp=1.0)
    # teacher 0 -> student 1: -(1/2 log 1/2 + 1/2 log 1/2) = log 2
    # teacher 1 -> student 0: -(1/4 log 1/4 + 3/4 log 3/4)
    expected = (math.log(2) - (0.25 * math.log(0.25) + 0.75 * math.log(0.75))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # the centre (0, log 3) is subtracted from the teacher logits only: teacher view 0 becomes
    # (3/4, 1/4), view 1 uniform; pairs: t0 -> s1 = log 2, t1 -> s0 = -(log 1/4 + log 3/4) / 2
    centred = td.dino_loss(s, t, torch.tensor([0.0, math.log(3.0)]), 1.0, 1.0)
    expected = (math.log(2) - 0.5 * (math.log(0.25) + math.log(0.75))) / 2
    assert centred.item() == pytest.approx(expected, rel=1e-6)


def test_dino_loss_gradient_reaches_the_student_only():
    s = torch.randn(2, 4, 8, requires_grad=True)
    t = torch.randn(2, 4, 8, requires_grad=True)
    td.dino_loss(s, t, torch.zeros(8), 0.1, 0.04).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None


def test_cosine_ema_runs_from_start_to_one():
    assert td.cosine_ema(0, 100, 0.99) == pytest.approx(0.99)
    assert td.cosine_ema(50, 100, 0.99) == pytest.approx(0.995)
    assert td.cosine_ema(100, 100, 0.99) == pytest.approx(1.0)


def test_background_swap_keeps_the_objects_and_redraws_the_background():
    source = SyntheticWorld(seed=0, train_size=50).source("train")
    gen = torch.Generator().manual_seed(0)
    a, b = source.image_on_new_background(3, gen), source.image_on_new_background(3, gen)
    original = source.image(3)
    assert a.shape == original.shape == (32, 32, 3) and not np.array_equal(a, b)
    scene = source.scene(3)
    main = scene.objects[0]
    cy, cx = int(main.cy * 32), int(main.cx * 32)  # the main object's centre keeps its colour
    assert np.array_equal(a[cy, cx], original[cy, cx]) and np.array_equal(b[cy, cx], original[cy, cx])
    views = dv.TwoViews(source, eval_transform(32), background_swap=True)[3]["views"]
    assert views.shape == (2, 3, 32, 32) and not torch.equal(views[0], views[1])


def test_relayout_moves_and_reshades_the_objects_and_keeps_what_they_are():
    source = SyntheticWorld(seed=0, train_size=50).source("train")
    gen = torch.Generator().manual_seed(0)
    scenes = [source.scene(i) for i in range(50)]
    moved = [dv.relaid_scene(scene, gen) for scene in scenes]
    for scene, new in zip(scenes, moved):
        assert [(o.shape, o.colour, o.size) for o in scene.objects] == \
            [(o.shape, o.colour, o.size) for o in new.objects]  # the same objects, main first
        for o in new.objects:  # a new shade of the same named colour
            assert np.abs(np.array(o.rgb) - COLOUR_RGB[o.colour]).max() <= COLOUR_JITTER + 1e-4
        assert len({o.cell for o in new.objects}) == len(new.objects)
        assert new.label == scene.label and new.texture == scene.texture
    cells = [([o.cell for o in s.objects], [o.cell for o in n.objects]) for s, n in zip(scenes, moved)]
    assert sum(a != b for a, b in cells) > 35  # most layouts changed (1 object: 8 cells of 9)
    again = [dv.relaid_scene(scene, torch.Generator().manual_seed(0)) for scene in scenes[:1]]
    assert again[0] == moved[0]  # a pure function of the generator
    views = dv.TwoViews(source, eval_transform(32), background_swap=True, relayout=True)[3]["views"]
    assert views.shape == (2, 3, 32, 32) and not torch.equal(views[0], views[1])


def test_drop_others_keeps_the_main_object_and_drops_the_rest_at_the_given_rate():
    source = SyntheticWorld(seed=0, train_size=400).source("train")
    scenes = [source.scene(i) for i in range(400)]
    gen = torch.Generator().manual_seed(0)
    kept = [dv.without_some_others(s, 0.75, gen) for s in scenes]
    others = sum(len(s.objects) - 1 for s in scenes)
    assert all(k.objects[0] == s.objects[0] and set(k.objects) <= set(s.objects)
               for s, k in zip(scenes, kept))  # the main object always, others a subset
    rate = 1 - sum(len(k.objects) - 1 for k in kept) / others
    assert others > 300 and abs(rate - 0.75) < 0.06  # ~4 standard errors
    assert all(dv.without_some_others(s, 1.0).objects == s.objects[:1] for s in scenes[:20])
    assert all(dv.without_some_others(s, 0.0) == s for s in scenes[:20])
    views = dv.TwoViews(source, eval_transform(32), True, True, drop_others=0.5)[3]["views"]
    assert views.shape == (2, 3, 32, 32)
    for bad, why in (({"relayout": False, "drop_others": 0.5}, "needs relayout"),
                     ({"relayout": True, "drop_others": 1.5}, "probability")):
        with pytest.raises(ConfigError, match=why):
            dv.TwoViews(source, eval_transform(32), True, **bad)


def test_tiny_dino_bootstraps_and_changes_the_encoder(monkeypatch, vit_teacher_cfgs):
    t, d = vit_teacher_cfgs("tiny-dino")
    model = teachers.build_teacher(t, d)
    report = teachers.teacher_report(t, d)
    assert report["recipe"] == "tiny-dino" and report["steps"] == 2
    assert report["settings"]["background_swap"] is True
    assert set(report["knn"]) == set(report["knn_untrained"])
    out = model(torch.randn(2, 3, 32, 32))
    assert out.cls.shape == (2, 32) and not model.training
    fresh = teachers.TINY_RECIPES["tiny-dino"].build(t)
    changed = [not torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                     fresh.state_dict().values())]
    assert any(changed)  # the EMA teacher moved away from its initialisation
