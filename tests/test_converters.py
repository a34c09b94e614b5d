"""Checkpoint converters: fake data2vec 2.0 / BEiT v2 files with the real key names and
containers, converted into mmkd encoders, must compute what the original model computes.

The references are written directly on the original keys (fairseq's AltBlock/AltAttention
math, its text positions and ALiBi) or are timm's own ``Beit`` holding the same weights.
"""
import enum
import math
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file
from timm.models.beit import Beit

from common.config import DataConfig, ImageEncoderConfig, TeacherConfig, TextEncoderConfig
from common.errors import DataError
from common.models import build_image_encoder, build_text_encoder
from common.models.converters import (convert, encoder_from_checkpoint, load_pretrained,
                                      read_checkpoint)
from common.models.registry import init_encoder
from common.models.teachers import build_teacher

D, H, DEPTH, PATCH, SIZE, PAD = 32, 4, 3, 8, 32, 1
GRID = SIZE // PATCH
BLOCK_SHAPES = {"norm1.weight": (D,), "norm1.bias": (D,), "attn.qkv.weight": (3 * D, D),
                "attn.qkv.bias": (3 * D,), "attn.proj.weight": (D, D), "attn.proj.bias": (D,),
                "norm2.weight": (D,), "norm2.bias": (D,), "mlp.fc1.weight": (4 * D, D),
                "mlp.fc1.bias": (4 * D,), "mlp.fc2.weight": (D, 4 * D), "mlp.fc2.bias": (D,)}


def rand(*shape, g, norm=False):
    x = torch.randn(*shape, generator=g) * 0.1
    return x + 1.0 if norm else x


def add_block(sd, prefix, g):
    for key, shape in BLOCK_SHAPES.items():
        sd[prefix + key] = rand(*shape, g=g, norm=key.startswith("norm") and key.endswith("weight"))


# ------------------------------------------------------------- fairseq reference forward
def fairseq_slopes(n):
    """fairseq ``get_alibi``'s slopes, written out again."""
    def pow2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]
    if math.log2(n).is_integer():
        return pow2(n)
    closest = 2 ** math.floor(math.log2(n))
    return pow2(closest) + fairseq_slopes(2 * closest)[0::2][: n - closest]


def alt_block(sd, p, x, bias=None, pad=None, eps=1e-6):
    """fairseq AltBlock (post-norm) with AltAttention, on the checkpoint's own keys."""
    B, T, _ = x.shape
    qkv = F.linear(x, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"])
    q, k, v = qkv.reshape(B, T, 3, H, D // H).permute(2, 0, 3, 1, 4)
    attn = (q * (D // H) ** -0.5) @ k.transpose(-2, -1)
    if bias is not None:
        attn = attn + bias
    if pad is not None:
        attn = attn.masked_fill(pad[:, None, None, :], float("-inf"))
    a = (attn.softmax(-1) @ v).transpose(1, 2).reshape(B, T, D)
    x = x + F.linear(a, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
    r = F.layer_norm(x, (D,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps)
    m = F.linear(F.gelu(F.linear(r, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])),
                 sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
    return F.layer_norm(r + m, (D,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps)


def fake_fairseq_enum():
    """An object of a class from a module that will not exist when the file is read (as
    fairseq's ``Modality`` enum in real checkpoints)."""
    module = types.ModuleType("fake_fairseq_tasks")
    Modality = enum.Enum("Modality", "AUDIO IMAGE TEXT", module="fake_fairseq_tasks")
    module.Modality = Modality
    sys.modules["fake_fairseq_tasks"] = module
    return Modality.IMAGE


def save_fairseq(path, sd, model_cfg):
    value = fake_fairseq_enum()
    cfg = OmegaConf.create({"model": model_cfg, "task": {"_name": "mae_image_pretraining"}})
    torch.save({"model": sd, "cfg": cfg, "args": None, "extra_state": {"modality": value},
                "optimizer_history": []}, path)
    del sys.modules["fake_fairseq_tasks"]


# ------------------------------------------------------------- data2vec 2.0 image
@pytest.fixture(scope="module")
def d2v_image(tmp_path_factory):
    g = torch.Generator().manual_seed(1)
    p = "modality_encoders.IMAGE."
    sd = {p + "local_encoder.proj.weight": rand(D, 3, PATCH, PATCH, g=g),
          p + "local_encoder.proj.bias": rand(D, g=g),
          p + "fixed_positional_encoder.positions": rand(1, GRID * GRID, D, g=g),
          p + "extra_tokens": rand(1, 1, D, g=g),
          p + "context_encoder.norm.weight": rand(D, g=g, norm=True),
          p + "context_encoder.norm.bias": rand(D, g=g),
          p + "decoder.blocks.0.0.weight": rand(16, D, 3, 3, g=g),  # dropped: pretraining only
          p + "decoder.proj.weight": rand(D, 16, g=g),
          "_ema": {"blocks.0.norm1.weight": torch.ones(D)}}  # fairseq's EMA dict: dropped
    add_block(sd, p + "context_encoder.blocks.0.", g)  # prenet_depth 1 ...
    for i in range(DEPTH - 1):  # ... then the shared blocks
        add_block(sd, f"blocks.{i}.", g)
    path = tmp_path_factory.mktemp("d2v") / "data2vec2_image.pt"
    save_fairseq(path, sd, {"_name": "data2vec_multi", "num_heads": H, "norm_eps": 1e-6,
                            "layer_norm_first": False, "depth": DEPTH - 1, "embed_dim": D,
                            "modalities": {"image": {"prenet_depth": 1}}})
    return path, sd


def d2v_image_reference(sd, images):
    p = "modality_encoders.IMAGE."
    x = F.conv2d(images, sd[p + "local_encoder.proj.weight"], sd[p + "local_encoder.proj.bias"],
                 stride=PATCH).flatten(2).transpose(1, 2)
    x = x + sd[p + "fixed_positional_encoder.positions"]
    x = torch.cat([sd[p + "extra_tokens"].expand(len(x), -1, -1), x], dim=1)
    x = F.layer_norm(x, (D,), sd[p + "context_encoder.norm.weight"], sd[p + "context_encoder.norm.bias"], 1e-6)
    outs = []
    for prefix in [p + "context_encoder.blocks.0."] + [f"blocks.{i}." for i in range(DEPTH - 1)]:
        x = alt_block(sd, prefix, x)
        outs.append(x)
    return outs


def image_cfg(**kw):
    return ImageEncoderConfig(**{"dim": D, "depth": DEPTH, "heads": H, "image_size": SIZE,
                                 "patch_size": PATCH, "alibi": False, **kw})


@pytest.mark.parametrize("depth", [DEPTH, 2])
def test_data2vec2_image_matches_fairseq(d2v_image, depth, caplog):
    path, sd = d2v_image
    caplog.set_level("INFO")
    ckpt = read_checkpoint(path)
    assert "restricted unpickler" in caplog.text  # the fairseq config is not weights_only
    assert ckpt.model_cfg["num_heads"] == H
    cfg = image_cfg(depth=depth)
    encoder = build_image_encoder(cfg)
    assert set(convert(ckpt, "image", cfg).state) == set(encoder.state_dict())  # nothing missing/extra
    load_pretrained(encoder, ckpt, cfg, "image").eval()
    images = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = encoder(images, return_layers=True)
    reference = d2v_image_reference(sd, images)[:depth]
    for ours, theirs in zip(out.layers, reference):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.x, reference[-1], atol=1e-5, rtol=1e-4)


def test_data2vec2_architecture_mismatch_is_one_line_with_the_fix(d2v_image):
    path, _ = d2v_image
    cfg = _with_init(image_cfg(alibi=True, heads=2), str(path))
    with pytest.raises(DataError, match="needs image.alibi=false image.heads=4 ") as err:
        init_encoder(build_image_encoder(cfg), cfg, "image")
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="has 3 blocks but image.depth=4"):
        cfg4 = _with_init(image_cfg(depth=4), str(path))
        init_encoder(build_image_encoder(cfg4), cfg4, "image")


def _with_init(cfg, init, weights=""):
    cfg.init, cfg.init_weights = init, weights
    return cfg


# ------------------------------------------------------------- data2vec 2.0 text
MAX_POS, VOCAB, L = 16, 50, 8


def d2v_text(tmp_path, alibi: bool):
    g = torch.Generator().manual_seed(3)
    p = "modality_encoders.TEXT."
    sd = {p + "local_encoder.embed_tokens.weight": rand(VOCAB, D, g=g),
          p + "local_encoder.embed_positions.weight": rand(MAX_POS + PAD + 1, D, g=g),
          p + "local_encoder.layernorm_embedding.weight": rand(D, g=g, norm=True),
          p + "local_encoder.layernorm_embedding.bias": rand(D, g=g),
          p + "decoder.blocks.0.0.weight": rand(D, D, 9, g=g),
          p + "decoder.proj.0.weight": rand(2 * D, D, g=g)}
    if alibi:  # learned, per layer and per head: [layers, 1, H, 1, 1]
        sd[p + "alibi_scale"] = torch.rand(DEPTH, 1, H, 1, 1, generator=g) + 0.5
    for i in range(DEPTH):
        add_block(sd, f"blocks.{i}.", g)
    path = tmp_path / "data2vec2_text.pt"
    save_fairseq(path, sd, {"num_heads": H, "norm_eps": 1e-5, "layer_norm_first": False,
                            "depth": DEPTH, "modalities": {"text": {"prenet_depth": 0,
                                                                    "use_alibi_encoder": alibi}}})
    return path, sd


def d2v_text_reference(sd, tokens, alibi: bool):
    p = "modality_encoders.TEXT."
    pad = tokens.eq(PAD)
    positions = torch.cumsum(~pad, dim=1) * ~pad + PAD  # fairseq make_positions
    x = sd[p + "local_encoder.embed_tokens.weight"][tokens] + sd[p + "local_encoder.embed_positions.weight"][positions]
    x = F.layer_norm(x, (D,), sd[p + "local_encoder.layernorm_embedding.weight"],
                     sd[p + "local_encoder.layernorm_embedding.bias"], 1e-5)
    T = tokens.shape[1]
    pos = torch.arange(T)
    base = torch.tensor(fairseq_slopes(H))[:, None, None] * -(pos[None, :] - pos[:, None]).abs()  # H x T x T
    outs = []
    for i in range(DEPTH):
        bias = base * sd[p + "alibi_scale"][i].clamp_min(0).squeeze(0) if alibi else None
        x = alt_block(sd, f"blocks.{i}.", x, bias=bias, pad=pad, eps=1e-5)
        outs.append(x)
    return outs


@pytest.mark.parametrize("alibi", [False, True])
@pytest.mark.parametrize("depth", [DEPTH, 2])
def test_data2vec2_text_matches_fairseq(tmp_path, alibi, depth):
    path, sd = d2v_text(tmp_path, alibi)
    cfg = TextEncoderConfig(dim=D, depth=depth, heads=H, vocab_size=VOCAB, max_len=L,
                            norm_eps=1e-5, alibi=alibi, alibi_scale=alibi, init=str(path))
    encoder = init_encoder(build_text_encoder(cfg, PAD), cfg, "text").eval()
    assert set(convert(read_checkpoint(path), "text", cfg, PAD).state) == set(encoder.state_dict())
    tokens = torch.randint(4, VOCAB, (3, L), generator=torch.Generator().manual_seed(4))
    tokens[:, 0] = 0
    tokens[1, 5:] = PAD  # right padding, as the collate function pads
    tokens[2, 3:] = PAD
    with torch.no_grad():
        out = encoder(tokens, return_layers=True)
    keep = tokens.ne(PAD)  # padded queries are never used (and fairseq gives them position pad)
    for ours, theirs in zip(out.layers, d2v_text_reference(sd, tokens, alibi)[:depth]):
        torch.testing.assert_close(ours[keep], theirs[keep], atol=1e-5, rtol=1e-4)


def test_data2vec2_text_alibi_switch_must_match_the_checkpoint(tmp_path):
    path, _ = d2v_text(tmp_path, alibi=True)
    cfg = TextEncoderConfig(dim=D, depth=2, heads=H, vocab_size=VOCAB, max_len=L, norm_eps=1e-5,
                            alibi=True, init=str(path))
    with pytest.raises(DataError, match=r"needs text.alibi_scale=true"):
        init_encoder(build_text_encoder(cfg, PAD), cfg, "text")
    cfg.alibi_scale, cfg.max_len = True, MAX_POS + 1
    with pytest.raises(DataError, match=f"has {MAX_POS} text positions"):
        init_encoder(build_text_encoder(cfg, PAD), cfg, "text")


def test_data2vec2_text_needs_the_fairseq_dictionary(tmp_path):
    """GPT-2 BPE files without fairseq's dict.txt give GPT-2's own ids (pad = eos = 50256):
    one line saying what to add, not a negative position count."""
    path, _ = d2v_text(tmp_path, alibi=False)
    cfg = TextEncoderConfig(dim=D, depth=2, heads=H, vocab_size=VOCAB, max_len=L, norm_eps=1e-5,
                            alibi=False, init=str(path))
    with pytest.raises(DataError, match=r"pad id 7 \(no dict.txt\); put fairseq's dict.txt"):
        init_encoder(build_text_encoder(cfg, pad_id=7), cfg, "text")


# ------------------------------------------------------------- BEiT v2
def make_beit(variant: str) -> Beit:
    """timm Beit in the layout of a release: ``v2`` = BEiT v2 (relative bias per block, no
    absolute positions; token pooling keeps ``norm``), ``v2_timm`` = timm's beitv2 default
    (avg pooling: ``fc_norm`` instead of ``norm``), ``shared`` = one shared relative bias plus
    absolute positions (the unilm pretraining layout)."""
    kw = dict(img_size=SIZE, patch_size=PATCH, embed_dim=D, depth=DEPTH, num_heads=H, init_values=0.1,
              num_classes=10)
    if variant == "shared":
        kw.update(use_abs_pos_emb=True, use_rel_pos_bias=False, use_shared_rel_pos_bias=True,
                  global_pool="token")
    else:
        kw.update(use_abs_pos_emb=False, use_rel_pos_bias=True,
                  global_pool="token" if variant == "v2" else "avg")
    torch.manual_seed(5)
    model = Beit(**kw).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():  # random values everywhere, also tables/gammas
            param.copy_(torch.randn_like(param) * 0.1 + (1.0 if name.endswith("norm1.weight") else 0.0))
    return model


def beit_reference(model: Beit, images):
    x = model.patch_embed(images)
    x = torch.cat([model.cls_token.expand(len(x), -1, -1), x], dim=1)
    if model.pos_embed is not None:
        x = x + model.pos_embed
    shared = model.rel_pos_bias() if model.rel_pos_bias is not None else None
    outs = []
    for blk in model.blocks:
        x = blk(x, shared_rel_pos_bias=shared)
        outs.append(x)
    return outs


def beit_cfg(variant, depth=DEPTH):
    return image_cfg(depth=depth, layer_norm_first=True, layer_scale=0.1,
                     rel_pos_bias=True, abs_pos=variant == "shared",
                     final_norm=variant != "v2_timm")


def save_beit(model, variant, tmp_path):
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    if variant == "v2_timm":  # timm / HF hub format
        path = tmp_path / "model.safetensors"
        save_file(sd, str(path))
        return path
    sd.update({"mask_token": torch.zeros(1, 1, D), "lm_head.weight": torch.zeros(64, D),
               "cls_pt_layers.0.norm1.weight": torch.ones(D)})  # unilm pretraining-only modules
    for i in range(DEPTH):  # unilm stored the index buffers too
        sd[f"blocks.{i}.attn.relative_position_index"] = torch.zeros(GRID * GRID + 1, GRID * GRID + 1)
    path = tmp_path / "beitv2_base_patch16_224_pt1k.pth"
    torch.save({"model": sd}, path)
    return path


@pytest.mark.parametrize("variant", ["v2", "v2_timm", "shared"])
@pytest.mark.parametrize("depth", [DEPTH, 2])
def test_beit_matches_timm(tmp_path, variant, depth):
    model = make_beit(variant)
    path = save_beit(model, variant, tmp_path)
    cfg = beit_cfg(variant, depth)
    ckpt = read_checkpoint(path)
    encoder = build_image_encoder(cfg)
    assert set(convert(ckpt, "image", cfg).state) == set(encoder.state_dict())
    load_pretrained(encoder, ckpt, cfg, "image").eval()
    images = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        out = encoder(images, return_layers=True)
        reference = beit_reference(model, images)
        features = model.forward_features(images)
    for ours, theirs in zip(out.layers, reference[:depth]):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
    if depth == DEPTH:  # the final norm came along, or (timm's fc_norm layout) none is added
        torch.testing.assert_close(out.x, features, atol=1e-5, rtol=1e-4)


def test_timm_beitv2_layout_gives_timms_cls_and_the_files_tensors(tmp_path):
    """timm's beitv2_base_patch16_224 (avg pool, fc_norm) has no norm before pooling: the
    converted encoder has no final norm, its CLS output is ``forward_features(x)[:, 0]`` and
    every parameter is the file's tensor (no made-up unit norm)."""
    model = make_beit("v2_timm")
    path = save_beit(model, "v2_timm", tmp_path)
    encoder, cfg = encoder_from_checkpoint(read_checkpoint(path), image_cfg())
    assert encoder.norm is None and not cfg.final_norm
    images = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        torch.testing.assert_close(encoder.eval()(images).x[:, 0],
                                   model.forward_features(images)[:, 0], atol=1e-5, rtol=1e-4)
    file = load_file(str(path))
    for name, param in encoder.named_parameters():
        torch.testing.assert_close(param, timm_tensor(file, name), rtol=0, atol=0)


def timm_tensor(file, name):
    """The tensor of timm's Beit state dict ``file`` that our parameter ``name`` holds."""
    if name.endswith(".attn.qkv.bias"):  # timm: q and v biases, no k bias
        q, v = file[name.replace("qkv.bias", "q_bias")], file[name.replace("qkv.bias", "v_bias")]
        return torch.cat([q, torch.zeros_like(q), v])
    if name.startswith("embed."):
        return file[name[len("embed."):]]
    return file[name.replace(".ls1.gamma", ".gamma_1").replace(".ls2.gamma", ".gamma_2")
                .replace(".attn.rel_pos.", ".attn.")]


def test_beit_through_timm_name_with_local_weights(tmp_path):
    model = make_beit("v2_timm")
    path = save_beit(model, "v2_timm", tmp_path)
    cfg = _with_init(beit_cfg("v2_timm", 2), "timm:beitv2_base_patch16_224", str(path))
    encoder = init_encoder(build_image_encoder(cfg), cfg, "image").eval()
    images = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(encoder(images, return_layers=True).layers[-1],
                                   beit_reference(model, images)[1], atol=1e-5, rtol=1e-4)


def test_beit_teacher_from_a_path_reads_its_architecture(tmp_path):
    model = make_beit("v2")
    path = save_beit(model, "v2", tmp_path)
    t = OmegaConf.structured(TeacherConfig)
    t.name, t.encoder.image_size = str(path), SIZE  # nothing else: dims, heads, switches inferred
    teacher = build_teacher(t, OmegaConf.structured(DataConfig))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    images = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(teacher(images).x, model.forward_features(images), atol=1e-5, rtol=1e-4)


def test_encoder_from_checkpoint_data2vec2(d2v_image):
    path, sd = d2v_image
    encoder, cfg = encoder_from_checkpoint(read_checkpoint(path), ImageEncoderConfig())
    assert (cfg.dim, cfg.depth, cfg.heads, cfg.image_size, cfg.alibi) == (D, DEPTH, H, SIZE, False)
    images = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(encoder.eval()(images).x, d2v_image_reference(sd, images)[-1],
                                   atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------- sources and errors
def test_own_safetensors_load_unchanged(tmp_path):
    cfg = TextEncoderConfig(dim=D, depth=2, heads=H, vocab_size=VOCAB, max_len=L)
    source = build_text_encoder(cfg, PAD)
    save_file(source.state_dict(), str(tmp_path / "text.safetensors"))
    cfg.init = str(tmp_path / "text.safetensors")
    loaded = init_encoder(build_text_encoder(cfg, PAD), cfg, "text")
    for (name, a), b in zip(source.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_missing_sources_are_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    cfg = _with_init(image_cfg(), str(tmp_path / "nope.pt"))
    with pytest.raises(DataError, match="image weights .*nope.pt do not exist"):
        init_encoder(build_image_encoder(cfg), cfg, "image")
    cfg.init = "hf:someone/missing-model"
    with pytest.raises(DataError, match="not in the local Hugging Face cache") as err:
        init_encoder(build_image_encoder(cfg), cfg, "image")
    assert "\n" not in str(err.value)
    t = OmegaConf.structured(TeacherConfig)
    t.name = "hf:someone/missing-model"
    with pytest.raises(DataError, match="HF_HUB_OFFLINE"):
        build_teacher(t, OmegaConf.structured(DataConfig))
    t.name = str(tmp_path / "teacher.pth")
    with pytest.raises(DataError, match="does not exist"):
        build_teacher(t, OmegaConf.structured(DataConfig))


def test_hf_teacher_from_a_saved_folder_offline(tmp_path, monkeypatch):
    from transformers import ViTConfig, ViTModel

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    vit = ViTModel(ViTConfig(hidden_size=D, num_hidden_layers=2, num_attention_heads=H,
                             intermediate_size=2 * D, image_size=SIZE, patch_size=PATCH)).eval()
    vit.save_pretrained(tmp_path / "vit")
    t = OmegaConf.structured(TeacherConfig)
    t.name, t.weights = "hf:google/vit-tiny-test", str(tmp_path / "vit")
    teacher = build_teacher(t, OmegaConf.structured(DataConfig))
    images = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        out = teacher(images, return_layers=True)
        torch.testing.assert_close(out.x, vit(pixel_values=images).last_hidden_state)
    assert len(out.layers) == 2 and out.cls.shape == (2, D)


class _Payload:
    """Pickles as a call of ``Path.touch(marker)``: what a malicious file would do with os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path
        return Path.touch, (Path(self.marker),)


def test_a_checkpoint_with_a_code_payload_loads_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    sd = {"modality_encoders.IMAGE.extra_tokens": torch.zeros(1, 1, D)}
    torch.save({"model": sd, "cfg": {"model": {"num_heads": H}}, "evil": _Payload(marker)},
               tmp_path / "evil.pt")
    ckpt = read_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()
    assert set(ckpt.state) == set(sd) and ckpt.model_cfg == {"num_heads": H}
