"""CLIP-style zero-shot classifier and accuracy on a 2-class x 2-template hand case."""
import math

import pytest
import torch

from common.errors import UserError
from common.zero_shot import zero_shot_accuracy, zero_shot_classifier

PROMPTS = {  # deliberately different norms: each template must vote equally
    "a photo of a cat.": [2.0, 0.0], "a drawing of a cat.": [0.0, 3.0],
    "a photo of a dog.": [-1.0, 0.0], "a drawing of a dog.": [0.0, 0.5],
}
TEMPLATES = ["a photo of a {}.", "a drawing of a {}."]


def fake_encoder(calls):
    def encode_text(texts):
        calls.append(list(texts))
        return torch.tensor([PROMPTS[t] for t in texts])
    return encode_text


def test_classifier_by_hand():
    calls = []
    classifier = zero_shot_classifier(fake_encoder(calls), ["cat", "dog"], TEMPLATES)
    r = 1 / math.sqrt(2)
    # cat: mean of (1, 0) and (0, 1) -> (r, r); dog: mean of (-1, 0) and (0, 1) -> (-r, r)
    assert torch.allclose(classifier, torch.tensor([[r, r], [-r, r]]), atol=1e-6)
    assert calls == [["a photo of a cat.", "a drawing of a cat."],
                     ["a photo of a dog.", "a drawing of a dog."]]


def test_callable_templates_give_the_same_classifier():
    templates = [lambda c: f"a photo of a {c}.", lambda c: f"a drawing of a {c}."]
    assert torch.equal(zero_shot_classifier(fake_encoder([]), ["cat", "dog"], templates),
                       zero_shot_classifier(fake_encoder([]), ["cat", "dog"], TEMPLATES))


def test_accuracy_by_hand():
    classifier = zero_shot_classifier(fake_encoder([]), ["cat", "dog"], TEMPLATES)
    images = torch.tensor([[1.0, 0.1], [-1.0, 0.2], [-3.0, 1.0], [0.0, 5.0]])
    labels = torch.tensor([0, 0, 1, 1])
    # scores * sqrt(2): img0 cat 1.1 dog -0.9 -> right; img1 cat -0.8 dog 1.2 -> wrong;
    # img2 cat -2 dog 4 -> right; img3 cat 5 dog 5 -> tie, counted against the image
    assert zero_shot_accuracy(images, labels, classifier, ks=(1, 2)) == pytest.approx(
        {"top1": 50.0, "top2": 100.0})
    assert zero_shot_accuracy(images, labels, classifier) == pytest.approx({"top1": 50.0, "top5": 100.0})


def test_user_errors():
    with pytest.raises(UserError):
        zero_shot_classifier(fake_encoder([]), ["cat"], ["a photo"])  # no {} for the class name
    with pytest.raises(UserError):
        zero_shot_classifier(fake_encoder([]), [], TEMPLATES)
    classifier = torch.eye(2)
    with pytest.raises(UserError):
        zero_shot_accuracy(torch.randn(2, 2), torch.tensor([0, 2]), classifier)
