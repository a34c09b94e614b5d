"""common.models: ALiBi math against hand-computed values, blocks against explicit references."""
import math

import pytest
import torch
import torch.nn.functional as F

from common.config import ImageEncoderConfig, TextEncoderConfig
from common.models import (
    ALiBi,
    Attention,
    Block,
    Encoder,
    ImageEmbed,
    LogitScale,
    Projection,
    SharedHead,
    TextEmbed,
    alibi_slopes,
    attention_mask,
    build_image_encoder,
    build_text_encoder,
    grid_distances,
    line_distances,
    pad_distances,
    param_count,
)

TINY = dict(dim=16, depth=3, heads=4, mlp_ratio=2.0)
PAD = 1


def image_cfg(**kw) -> ImageEncoderConfig:
    return ImageEncoderConfig(**{**TINY, "image_size": 8, "patch_size": 4, **kw})  # 2x2 patches


def text_cfg(**kw) -> TextEncoderConfig:
    return TextEncoderConfig(**{**TINY, "vocab_size": 50, "max_len": 8, **kw})


# ---------------------------------------------------------------- ALiBi geometry and slopes
def test_slopes_power_of_two_heads():
    expected = [1 / 2, 1 / 4, 1 / 8, 1 / 16, 1 / 32, 1 / 64, 1 / 128, 1 / 256]
    assert alibi_slopes(8).tolist() == pytest.approx(expected, rel=1e-7)


def test_slopes_non_power_of_two_heads_follow_data2vec_rule():
    # 12 heads: the 8-head slopes, then every other 16-head slope 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5
    expected = [0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625, 0.0078125, 0.00390625,
                0.7071067811865476, 0.3535533905932738, 0.1767766952966369, 0.08838834764831845]
    assert alibi_slopes(12).tolist() == pytest.approx(expected, rel=1e-7)
    # 6 heads: the 4-head slopes 1/4, 1/16, 1/64, 1/256, then 8-head slopes 1/2, 1/8
    assert alibi_slopes(6).tolist() == pytest.approx([0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125])


def test_line_distances_3_tokens():
    assert line_distances(3).tolist() == [[0, 1, 2],
                                          [1, 0, 1],
                                          [2, 1, 0]]


def test_grid_distances_2x2_with_cls():
    # tokens: CLS, (0,0), (0,1), (1,0), (1,1); Manhattan distance, CLS at 0 from everything
    expected = [[0, 0, 0, 0, 0],
                [0, 0, 1, 1, 2],
                [0, 1, 0, 2, 1],
                [0, 1, 2, 0, 1],
                [0, 2, 1, 1, 0]]
    assert pad_distances(grid_distances(2, 2), 1).tolist() == expected
    embed = ImageEmbed(8, 4, 3, 16)
    assert embed.distances(5, torch.device("cpu")).tolist() == expected
    with pytest.raises(ValueError):
        embed.distances(4, torch.device("cpu"))


def test_grid_distances_non_square_is_row_major():
    # 2 rows x 3 cols: token 2 is (0,2), token 3 is (1,0)
    d = grid_distances(2, 3)
    assert d[0, 2] == 2 and d[2, 3] == 3 and d[0, 5] == 3


def test_alibi_bias_is_minus_slope_times_distance():
    bias = ALiBi(2)(line_distances(3))  # slopes for 2 heads: 2^-4, 2^-8
    assert bias.shape == (1, 2, 3, 3)
    assert bias[0, 0].tolist() == [[0, -1 / 16, -2 / 16], [-1 / 16, 0, -1 / 16], [-2 / 16, -1 / 16, 0]]
    assert bias[0, 1, 0, 2].item() == -2 / 256


# ---------------------------------------------------------------- attention and blocks
def reference_attention(attn: Attention, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d) + bias) V written out, with the module's weights."""
    B, T, D = x.shape
    H = attn.num_heads
    q, k, v = F.linear(x, attn.qkv.weight, attn.qkv.bias).chunk(3, dim=-1)  # B x T x D each
    q, k, v = (t.reshape(B, T, H, D // H).transpose(1, 2) for t in (q, k, v))  # B x H x T x d
    scores = q @ k.transpose(-1, -2) / math.sqrt(D // H) + bias  # B x H x T x T
    out = scores.softmax(-1) @ v  # B x H x T x d
    return F.linear(out.transpose(1, 2).reshape(B, T, D), attn.proj.weight, attn.proj.bias)


def test_alibi_attention_matches_explicit_softmax():
    attn = Attention(8, 2).eval()
    x = torch.randn(2, 3, 8)
    bias = ALiBi(2)(line_distances(3))
    expected = reference_attention(attn, x, bias)
    torch.testing.assert_close(attn(x, bias), expected)
    # and the bias matters: without it the output differs
    assert not torch.allclose(attn(x), expected, atol=1e-4)


def test_attention_mask_adds_minus_inf_on_padded_keys():
    bias = ALiBi(2)(line_distances(3))
    pad = torch.tensor([[False, False, True]])
    mask = attention_mask(bias, pad, torch.float32)
    assert mask.shape == (1, 2, 3, 3)
    assert torch.isinf(mask[..., 2]).all() and torch.equal(mask[..., :2], bias[..., :2])
    assert attention_mask(None, None, torch.float32) is None


def reference_block(block: Block, x: torch.Tensor, bias: torch.Tensor, pre_norm: bool) -> torch.Tensor:
    def ln(norm, t):
        return F.layer_norm(t, t.shape[-1:], norm.weight, norm.bias, norm.eps)

    def mlp(t):
        h = F.gelu(F.linear(t, block.mlp.fc1.weight, block.mlp.fc1.bias))
        return F.linear(h, block.mlp.fc2.weight, block.mlp.fc2.bias)

    if pre_norm:
        x = x + reference_attention(block.attn, ln(block.norm1, x), bias)
        return x + mlp(ln(block.norm2, x))
    x = ln(block.norm1, x + reference_attention(block.attn, x, bias))
    return ln(block.norm2, x + mlp(x))


@pytest.mark.parametrize("pre_norm", [True, False])
def test_block_matches_hand_written_reference(pre_norm):
    block = Block(8, 2, mlp_ratio=2.0, layer_norm_first=pre_norm).eval()
    for norm in (block.norm1, block.norm2):  # non-trivial affine params so the norms are exercised
        torch.nn.init.normal_(norm.weight, 1.0, 0.1)
        torch.nn.init.normal_(norm.bias, 0.0, 0.1)
    x = torch.randn(2, 4, 8)
    bias = ALiBi(2)(line_distances(4))
    torch.testing.assert_close(block(x, bias), reference_block(block, x, bias, pre_norm))


# ---------------------------------------------------------------- embeddings
def test_image_pos_embed_is_mae_sincos_without_cls():
    embed = ImageEmbed(8, 4, 3, 16)  # 2x2 grid, D/4 = 4 frequencies 1, 0.1, 0.01, 0.001
    pos = embed.pos_embed[0]
    omega = torch.tensor([1.0, 0.1, 0.01, 0.001])
    # token 1 is (row 0, col 1): [sin(w), cos(w), sin(h), cos(h)] with w=1, h=0
    expected = torch.cat([omega.sin(), omega.cos(), torch.zeros(4), torch.ones(4)])
    torch.testing.assert_close(pos[1], expected)
    assert embed(torch.randn(2, 3, 8, 8)).shape == (2, 5, 16)


def test_text_embed_shape_padding_and_length_check():
    embed = TextEmbed(50, 8, 16, PAD)
    tokens = torch.tensor([[0, 5, 6, 2, PAD, PAD]])
    assert embed(tokens).shape == (1, 6, 16)
    assert embed.padding_mask(tokens).tolist() == [[False] * 4 + [True] * 2]
    assert embed.token_embed.weight[PAD].abs().sum() == 0
    assert embed.num_extra_tokens == 0 and ImageEmbed(8, 4, 3, 16).num_extra_tokens == 1
    with pytest.raises(ValueError, match="max_len"):
        embed(torch.zeros(1, 9, dtype=torch.long))
    fixed = TextEmbed(50, 8, 16, PAD, learned_pos=False)
    assert "pos_embed" not in dict(fixed.named_parameters())


# ---------------------------------------------------------------- encoders
def test_padded_tokens_do_not_change_unpadded_outputs():
    enc = build_text_encoder(text_cfg(), PAD).eval()
    tokens = torch.tensor([[0, 7, 8, 9, 2, PAD], [0, 4, 2, PAD, PAD, PAD]])
    pad = tokens.eq(PAD)
    other = tokens.masked_fill(pad, 33)  # different ids at padded positions, same mask
    a = enc(tokens, pad).x
    b = enc(other, pad).x
    torch.testing.assert_close(a[~pad], b[~pad])
    assert not torch.allclose(a[pad], b[pad])
    torch.testing.assert_close(enc(tokens).x, a)  # mask derived from pad_id when not given


def test_image_encoder_shapes_layers_and_forward_tokens():
    enc = build_image_encoder(image_cfg()).eval()
    images = torch.randn(2, 3, 8, 8)
    out = enc(images, return_layers=True)
    assert out.x.shape == (2, 5, 16) and out.cls.shape == (2, 16)
    assert len(out.layers) == 3 and all(t.shape == (2, 5, 16) for t in out.layers)
    assert enc(images).layers is None
    torch.testing.assert_close(enc.forward_tokens(enc.embed(images)).x, out.x)
    # a split run (specific blocks, then the rest) equals the full run
    first = enc.forward_tokens(enc.embed(images), blocks=slice(0, 1))
    torch.testing.assert_close(enc.forward_tokens(first.x, blocks=range(1, 3)).x, out.x)


def test_text_encoder_shapes_and_pre_norm_final_norm():
    enc = build_text_encoder(text_cfg(layer_norm_first=True), PAD).eval()
    tokens = torch.randint(3, 50, (2, 6))
    out = enc(tokens, return_layers=True)
    assert out.x.shape == (2, 6, 16) and len(out.layers) == 3
    torch.testing.assert_close(out.x, enc.norm(out.layers[-1]))
    assert build_text_encoder(text_cfg(), PAD).norm is None  # post-norm: no final norm


def test_shared_blocks_run_either_modality_with_its_distances():
    shared = Encoder(None, text_cfg(depth=1)).eval()
    image_enc = build_image_encoder(image_cfg()).eval()
    tokens = image_enc(torch.randn(2, 3, 8, 8)).x
    dist = image_enc.embed.distances(5, tokens.device)
    out = shared.forward_tokens(tokens, distances=dist).x
    bias = shared.alibi(dist)
    torch.testing.assert_close(out, shared.blocks[0](tokens, bias))
    with pytest.raises(ValueError, match="distances"):
        shared.forward_tokens(tokens)


def test_alibi_off_and_bias_cache():
    enc = build_image_encoder(image_cfg(alibi=False)).eval()
    tokens = enc.embed(torch.randn(1, 3, 8, 8))
    assert enc._alibi_bias(tokens, None) is None
    enc = build_image_encoder(image_cfg()).eval()
    assert enc._alibi_bias(tokens, None) is enc._alibi_bias(tokens, None)


def test_frozen_embed_gets_no_grads_and_stays_in_eval():
    enc = build_image_encoder(image_cfg(freeze_embed=True, dropout=0.1, drop_path=0.1))
    enc.train()
    assert enc.training and not enc.embed.training
    enc(torch.randn(2, 3, 8, 8)).x.sum().backward()
    assert all(p.grad is None and not p.requires_grad for p in enc.embed.parameters())
    assert all(p.grad is not None for p in enc.blocks.parameters())
    assert param_count(enc, trainable_only=True) == param_count(enc.blocks)
    assert param_count(enc) == param_count(enc.blocks) + param_count(enc.embed)


def test_init_is_trunc_normal_with_zero_bias_and_unit_norm():
    enc = build_image_encoder(image_cfg(dim=64, heads=4))
    w = enc.blocks[0].attn.qkv.weight
    assert abs(w.std().item() - 0.02) < 0.003  # timm truncates at +-2 absolute, as its ViT
    assert enc.blocks[0].attn.qkv.bias.abs().sum() == 0
    assert torch.equal(enc.blocks[0].norm1.weight, torch.ones(64))


# ---------------------------------------------------------------- heads
def test_heads_shapes():
    head = SharedHead(16, 10)
    assert head.fc1.out_features == 64 and isinstance(head.norm, torch.nn.LayerNorm)
    assert head(torch.randn(3, 16)).shape == (3, 10)
    proj = Projection(16, 8)
    assert proj.bias is None and proj(torch.randn(3, 16)).shape == (3, 8)


def test_logit_scale_init_and_clamp():
    scale = LogitScale()
    assert scale().item() == pytest.approx(1 / 0.07, rel=1e-6)
    with torch.no_grad():
        scale.log_scale.fill_(10.0)
    assert scale().item() == pytest.approx(100.0, rel=1e-6)
