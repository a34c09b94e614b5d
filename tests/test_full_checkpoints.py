"""Every full preset that starts an encoder from data2vec 2.0 accepts the published files.

Checkpoints are written as fairseq's trainer writes them (``{"args", "cfg", "model", ...}``,
``modality_encoders.IMAGE|TEXT`` keys, the model config data2vec 2.0 was trained with: ALiBi
off, post-norm, LayerNorm eps 1e-6 image / 1e-5 text) with only the width shrunk, and each
preset's own architecture settings must pass :func:`common.models.converters.check_settings`.
"""
import pytest
import torch
from omegaconf import OmegaConf

from common.chapters import chapters
from common.models.converters import check_settings, convert, read_checkpoint

D, HEADS, DEPTH = 24, 12, 2  # the width is the only thing shrunk (12 heads of 2 channels)


def _block(sd, prefix, g):
    shapes = {"norm1.weight": (D,), "norm1.bias": (D,), "attn.qkv.weight": (3 * D, D),
              "attn.qkv.bias": (3 * D,), "attn.proj.weight": (D, D), "attn.proj.bias": (D,),
              "norm2.weight": (D,), "norm2.bias": (D,), "mlp.fc1.weight": (4 * D, D),
              "mlp.fc1.bias": (4 * D,), "mlp.fc2.weight": (D, 4 * D), "mlp.fc2.bias": (D,)}
    for key, shape in shapes.items():
        sd[prefix + key] = torch.randn(*shape, generator=g)


def _save(path, sd, norm_eps):
    cfg = OmegaConf.create({"model": {"_name": "data2vec_multi", "num_heads": HEADS,
                                      "norm_eps": norm_eps, "layer_norm_first": False,
                                      "depth": DEPTH, "embed_dim": D}})
    torch.save({"args": None, "cfg": cfg, "model": sd, "optimizer_history": [],
                "extra_state": {}, "last_optimizer_state": None}, path)


def d2v2_image(path, grid=14, patch=16):
    g, p = torch.Generator().manual_seed(0), "modality_encoders.IMAGE."
    sd = {p + "local_encoder.proj.weight": torch.randn(D, 3, patch, patch, generator=g),
          p + "local_encoder.proj.bias": torch.zeros(D),
          p + "fixed_positional_encoder.positions": torch.randn(1, grid * grid, D, generator=g),
          p + "extra_tokens": torch.randn(1, 1, D, generator=g),
          p + "context_encoder.norm.weight": torch.ones(D), p + "context_encoder.norm.bias": torch.zeros(D)}
    for i in range(DEPTH):
        _block(sd, f"blocks.{i}.", g)
    _save(path, sd, 1e-6)
    return path


def d2v2_text(path, vocab=50, positions=514):
    g, p = torch.Generator().manual_seed(1), "modality_encoders.TEXT."
    sd = {p + "local_encoder.embed_tokens.weight": torch.randn(vocab, D, generator=g),
          p + "local_encoder.embed_positions.weight": torch.randn(positions, D, generator=g),
          p + "local_encoder.layernorm_embedding.weight": torch.ones(D),
          p + "local_encoder.layernorm_embedding.bias": torch.zeros(D)}
    for i in range(DEPTH):
        _block(sd, f"blocks.{i}.", g)
    _save(path, sd, 1e-5)
    return path


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
