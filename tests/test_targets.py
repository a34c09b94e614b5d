"""Layer-averaged data2vec targets and CLS targets against hand-computed values."""
import math

import pytest
import torch
import torch.nn.functional as F

from common.targets import batch_standardized, instance_norm_over_time, layer_averaged_targets

EPS = 1e-5


def two_layers():
    """Two [1, 3, 2] layers whose per-channel statistics are easy to write down.

    float64, so the comparison checks the formula and not float32 rounding (a constant
    channel's rounding noise is amplified by 1/sqrt(eps) in float32).
    """
    layer_a = torch.tensor([[[1.0, 0.0], [2.0, 0.0], [3.0, 3.0]]], dtype=torch.float64)
    layer_b = torch.tensor([[[2.0, 5.0], [4.0, 5.0], [6.0, 5.0]]], dtype=torch.float64)
    return [layer_a, layer_b]


def test_instance_norm_then_layer_average_by_hand():
    # layer a, channel 0: [1,2,3], mean 2, biased var 2/3; channel 1: [0,0,3], mean 1, var 2
    a0 = [(x - 2) / math.sqrt(2 / 3 + EPS) for x in (1, 2, 3)]
    a1 = [(x - 1) / math.sqrt(2 + EPS) for x in (0, 0, 3)]
    # layer b, channel 0: [2,4,6], mean 4, var 8/3; channel 1: constant 5 -> 0 / sqrt(eps) = 0
    b0 = [(x - 4) / math.sqrt(8 / 3 + EPS) for x in (2, 4, 6)]
    b1 = [0.0, 0.0, 0.0]
    expected = [[(a0[t] + b0[t]) / 2, (a1[t] + b1[t]) / 2] for t in range(3)]
    out = layer_averaged_targets(two_layers(), layer_norm=False)
    assert out.shape == (1, 3, 2)
    assert torch.allclose(out[0], torch.tensor(expected, dtype=torch.float64), atol=1e-9)


def test_final_layer_norm_by_hand():
    averaged = layer_averaged_targets(two_layers(), layer_norm=False)[0].tolist()
    # layer norm over D=2 values [u, v]: mean (u+v)/2, var ((u-v)/2)^2 -> +-d / sqrt(d^2 + eps)
    expected = []
    for u, v in averaged:
        d = (u - v) / 2
        expected.append([d / math.sqrt(d * d + EPS), -d / math.sqrt(d * d + EPS)])
    out = layer_averaged_targets(two_layers())
    assert torch.allclose(out[0], torch.tensor(expected, dtype=torch.float64), atol=1e-9)


def test_layer_norm_only_over_three_channels_by_hand():
    x = torch.tensor([[[1.0, 2.0, 6.0]]], dtype=torch.float64)  # one layer, one step: mean 3, var 14/3
    out = layer_averaged_targets([x], instance_norm=False)
    expected = [(v - 3) / math.sqrt(14 / 3 + EPS) for v in (1, 2, 6)]
    assert torch.allclose(out[0, 0], torch.tensor(expected, dtype=torch.float64), atol=1e-9)


def test_without_normalisation_is_the_plain_layer_mean():
    out = layer_averaged_targets(two_layers(), instance_norm=False, layer_norm=False)
    assert torch.equal(out, torch.tensor([[[1.5, 2.5], [3.0, 2.5], [4.5, 4.0]]], dtype=torch.float64))


def test_masked_instance_norm_ignores_padding():
    x = torch.randn(2, 5, 4)
    padding = torch.tensor([[False] * 5, [False, False, False, True, True]])
    out = instance_norm_over_time(x, padding)
    # no padding: same as F.instance_norm on [B, D, T]
    assert torch.allclose(out[0], F.instance_norm(x[:1].transpose(1, 2)).transpose(1, 2)[0], atol=1e-5)
    # padded sample: statistics from its 3 valid steps only; padded steps are 0
    short = F.instance_norm(x[1:, :3].transpose(1, 2)).transpose(1, 2)[0]
    assert torch.allclose(out[1, :3], short, atol=1e-5)
    assert torch.equal(out[1, 3:], torch.zeros(2, 4))
    # the values at padded steps do not matter
    x2 = x.clone()
    x2[1, 3:] = 1e3
    assert torch.equal(instance_norm_over_time(x2, padding), out)


def test_mask_without_padding_equals_unmasked():
    layers = [torch.randn(3, 6, 8) for _ in range(4)]
    no_padding = torch.zeros(3, 6, dtype=torch.bool)
    assert torch.allclose(layer_averaged_targets(layers, padding_mask=no_padding),
                          layer_averaged_targets(layers), atol=1e-5)


def test_half_precision_layers_give_float32_targets():
    layers = [torch.randn(2, 4, 8).to(torch.bfloat16) for _ in range(2)]
    assert layer_averaged_targets(layers).dtype == torch.float32


def test_gradient_flows_for_the_student_side():
    layers = [torch.randn(2, 4, 8, requires_grad=True) for _ in range(2)]
    layer_averaged_targets(layers).pow(2).sum().backward()
    assert all(h.grad is not None for h in layers)


def test_rejects_empty_and_mismatched_layers():
    with pytest.raises(ValueError):
        layer_averaged_targets([])
    with pytest.raises(ValueError):
        layer_averaged_targets([torch.zeros(1, 3, 2), torch.zeros(1, 4, 2)])


def test_batch_standardized_by_hand():
    # channel 0: values 1, 3 -> mean 2, biased var 1; channel 1: 10, 10 -> var 0 (eps only)
    x = torch.tensor([[1.0, 10.0], [3.0, 10.0]])
    got = batch_standardized(x, eps=1e-5)
    s = 1 / math.sqrt(1 + 1e-5)
    torch.testing.assert_close(got, torch.tensor([[-s, 0.0], [s, 0.0]]))
    # equals parameter-free batch norm in training mode
    y = torch.randn(6, 4) * 3 + 5
    torch.testing.assert_close(batch_standardized(y), F.batch_norm(y, None, None, training=True))
