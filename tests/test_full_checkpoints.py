"""Every full preset that starts an encoder from data2vec 2.0 accepts the published files.

Checkpoints are written as fairseq's trainer writes them (``{"args", "cfg", "model", ...}``,
``modality_encoders.IMAGE|TEXT`` keys, the model config data2vec 2.0 was trained with: ALiBi
off, post-norm, LayerNorm eps 1e-6 image / 1e-5 text) with only the width shrunk, and each
preset's own architecture settings must pass :func:`common.models.converters.check_settings`.
"""
import pytest
import torch

from common.chapters import chapter, chapters
from common.fixtures import beitv2_checkpoint, data2vec2_image_checkpoint, data2vec2_text_checkpoint
from common.models.converters import check_settings, convert, read_checkpoint
from common.models.encoder import build_image_encoder, build_text_encoder
from common.models.registry import init_encoder

D, HEADS, DEPTH = 24, 12, 2  # the width is the only thing shrunk (12 heads of 2 channels)


def d2v2_image(path):
    return data2vec2_image_checkpoint(path, dim=D, prenet_depth=1, depth=DEPTH - 1, heads=HEADS)


def d2v2_text(path, vocab=50):
    return data2vec2_text_checkpoint(path, vocab, dim=D, depth=DEPTH, heads=HEADS)


def _d2v2_encoders(cfg):
    """(config path, encoder config) of every encoder the preset starts from data2vec 2.0."""
    return [(key, cfg[key]) for key in ("image", "text", "student")
            if key in cfg and "data2vec2" in str(cfg[key].get("init", ""))]


CASES = [(c, key) for c in chapters("full") for key, _ in _d2v2_encoders(c.load_config("full"))]


def test_the_chapters_that_start_from_data2vec2_are_covered():
    assert {c.name for c, _ in CASES} >= {"shre", "separate_self_attention", "itc_ablation",
                                          "teacher_comparison"}


@pytest.mark.parametrize("chapter,key", CASES, ids=[f"{c.name}-{k}" for c, k in CASES])
def test_full_preset_accepts_the_published_data2vec2_layout(tmp_path, chapter, key):
    cfg = chapter.load_config("full")[key]
    cfg.dim, cfg.depth = D, DEPTH  # size only: every architecture switch is the preset's
    modality = "text" if key == "text" else "image"
    path = (d2v2_text if modality == "text" else d2v2_image)(tmp_path / f"{modality}.pt")
    ckpt = read_checkpoint(path)
    check_settings(convert(ckpt, modality, cfg), cfg, key, ckpt.source)  # raises on a mismatch


def _file_tensor(state, key, prenet):
    """The file's tensor behind encoder parameter ``key`` (data2vec 2.0: prenet blocks first)."""
    block, rest = key.split(".", 2)[1:] if key.startswith("blocks.") else (None, key)
    if block is None:
        return None
    k = int(block)
    src = (f"modality_encoders.IMAGE.context_encoder.blocks.{k}." if k < prenet
           else f"blocks.{k - prenet}.")
    return state.get(src + rest)


@pytest.mark.parametrize("modality", ["image", "text"])
def test_converted_data2vec2_encoder_holds_the_files_tensors(tmp_path, modality):
    """Every block parameter of the encoder the full preset builds equals the file's tensor."""
    cfg = chapter("separate_self_attention").load_config("full")[modality]
    cfg.dim, cfg.depth = D, DEPTH
    path = (d2v2_text if modality == "text" else d2v2_image)(tmp_path / f"{modality}.pt")
    cfg.init = str(path)
    if modality == "text":
        cfg.vocab_size, cfg.max_len = 50, 8
        encoder = build_text_encoder(cfg, pad_id=1)
    else:
        encoder = build_image_encoder(cfg)
    init_encoder(encoder, cfg, modality)
    state = read_checkpoint(path).state
    compared = 0
    for key, value in encoder.state_dict().items():
        expected = _file_tensor(state, key, prenet=1 if modality == "image" else 0)
        if expected is not None:
            torch.testing.assert_close(value, expected, rtol=0, atol=0)
            compared += 1
    assert compared == 12 * DEPTH  # 12 tensors per block, every block


def test_converted_beitv2_teacher_holds_the_files_tensors(tmp_path):
    """unilm's BEiT v2 .pth as the chapters 3-5 teacher: blocks, CLS and patch projection are
    the file's tensors (q/v biases joined around a zero k bias, as BEiT defines it)."""
    from common.models.converters import encoder_from_checkpoint

    path = beitv2_checkpoint(tmp_path / "beitv2_base_patch16_224_pt1k.pth", dim=D, depth=DEPTH,
                             heads=HEADS, image_size=32)
    ckpt = read_checkpoint(path)
    base = chapter("separate_self_attention").load_config("full").image
    base.image_size = 32
    encoder, _ = encoder_from_checkpoint(ckpt, base)
    state, ours = ckpt.state, encoder.state_dict()
    same = [k for k in ours if k in state]
    for key in same:
        torch.testing.assert_close(ours[key], state[key], rtol=0, atol=0)
    assert len(same) >= 9 * DEPTH  # norms, qkv/proj/fc weights, proj/fc biases of every block
    for k in range(DEPTH):
        q, v = state[f"blocks.{k}.attn.q_bias"], state[f"blocks.{k}.attn.v_bias"]
        torch.testing.assert_close(ours[f"blocks.{k}.attn.qkv.bias"], torch.cat([q, 0 * q, v]))
    torch.testing.assert_close(ours["embed.cls_token"], state["cls_token"], rtol=0, atol=0)
    torch.testing.assert_close(ours["embed.patch_embed.proj.weight"], state["patch_embed.proj.weight"])
