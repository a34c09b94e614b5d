"""Chapter 4 (ITC ablation): the banked ITC loss by hand, the alignment terms, and an
end-to-end run of the tiny preset with few steps."""
import importlib.util
import math
import os
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from common.config import (ConfigError, EncoderConfig, ImageEncoderConfig, TextEncoderConfig,
                           parse_cli)
from common.losses import contrastive_logits
from common.mm_d2v2 import alignment_losses
from common.memory_bank import MemoryBank, banked_itc_loss
from common.models.encoder import EncoderOutput
from common.models.multimodal import HeadConfig, build_multimodal
from common.results import COLUMNS

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = ROOT / "experiments" / "itc_ablation"
spec = importlib.util.spec_from_file_location("itc_run", CHAPTER / "run.py")
itc = importlib.util.module_from_spec(spec)
sys.modules["itc_run"] = itc  # dataclasses resolve string annotations through sys.modules
spec.loader.exec_module(itc)

FEW_STEPS = ["train.steps=3", "train.batch_size=16", "train.log_every=1", "head.bank_size=24",
             "teacher.train.steps=3", "teacher.train.batch_size=16", "teacher.width=0.25",
             "data.coco_test_size=60", "data.flickr_test_size=30", "image.depth=1", "text.depth=1"]


def _ce(logits, label):
    """Cross-entropy of one row of logits, written out."""
    return -logits[label] + math.log(sum(math.exp(v) for v in logits))


# ------------------------------------------------------------------------- the bank
def test_banked_itc_sees_batch_plus_bank_negatives_by_hand():
    image = torch.tensor([[2.0, 0.0], [0.0, 1.0]], requires_grad=True)  # unit after normalising
    text = torch.tensor([[1.0, 0.0], [0.0, 3.0]], requires_grad=True)
    image_bank, text_bank = MemoryBank(4, 2), MemoryBank(4, 2)
    text_bank.add(torch.tensor([[-1.0, 0.0]]))  # one past caption
    image_bank.add(torch.tensor([[0.6, 0.8], [0.0, -1.0]]))  # two past images

    logits_i, logits_t, labels = contrastive_logits(image, text, 1.0, image_bank.get(), text_bank.get())
    # rows: this batch; columns: the 2 batch partners, then the bank rows of the other modality
    assert logits_i.shape == (2, 2 + 1) and logits_t.shape == (2, 2 + 2)
    torch.testing.assert_close(logits_i, torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, 0.0]]))
    torch.testing.assert_close(logits_t, torch.tensor([[1.0, 0.0, 0.6, 0.0], [0.0, 1.0, 0.8, -1.0]]))
    assert labels.tolist() == [0, 1]

    loss = banked_itc_loss(image, text, 1.0, image_bank, text_bank)
    expected = (_ce([1, 0, -1], 0) + _ce([0, 1, 0], 1)) / 2 / 2 + \
               (_ce([1, 0, 0.6, 0], 0) + _ce([0, 1, 0.8, -1], 1)) / 2 / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)

    # contrast first, then enqueue: the banks now also hold this batch, L2-normalised and detached
    assert len(text_bank) == 3 and len(image_bank) == 4
    torch.testing.assert_close(text_bank.get()[1:], torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    torch.testing.assert_close(image_bank.get()[2:], torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert not text_bank.rows.requires_grad and not image_bank.rows.requires_grad

    loss.backward()  # gradient reaches the batch only; the bank rows are constants of the loss
    assert image.grad is not None and text.grad is not None
    assert text_bank.rows.grad is None and image_bank.rows.grad is None


def test_bank_rows_change_the_loss_but_receive_no_gradient():
    torch.manual_seed(0)
    image, text = torch.randn(4, 8), torch.randn(4, 8)
    bank_rows = torch.randn(6, 8, requires_grad=True)  # a bank that *could* take gradient
    bank = MemoryBank(6, 8)
    bank.add(bank_rows)
    without = banked_itc_loss(image, text, 10.0, None, None)
    with_bank = banked_itc_loss(image.requires_grad_(), text, 10.0, None, bank)
    assert with_bank.item() > without.item()  # more negatives for the images: a harder problem
    with_bank.backward()
    assert bank_rows.grad is None and bank.rows.grad is None


def test_momentum_keys_are_the_batch_columns_and_what_is_enqueued_by_hand():
    image = torch.tensor([[2.0, 0.0], [0.0, 1.0]], requires_grad=True)  # queries: the student
    text = torch.tensor([[1.0, 0.0], [0.0, 3.0]], requires_grad=True)
    image_keys = torch.tensor([[0.0, 1.0], [3.0, 4.0]])  # keys: a momentum copy, unit (0,1), (.6,.8)
    text_keys = torch.tensor([[1.0, 1.0], [-2.0, 0.0]])  # unit (r, r), (-1, 0)
    text_bank, image_bank = MemoryBank(4, 2), MemoryBank(4, 2)
    text_bank.add(torch.tensor([[0.0, -1.0]]))
    r = 1 / math.sqrt(2)

    logits_i, logits_t, labels = contrastive_logits(image, text, 1.0, image_bank.get(), text_bank.get(),
                                                    image_keys=image_keys, text_keys=text_keys)
    # image rows against the text *keys* of the batch, then the text bank
    torch.testing.assert_close(logits_i, torch.tensor([[r, -1.0, 0.0], [r, 0.0, -1.0]]))
    torch.testing.assert_close(logits_t, torch.tensor([[0.0, 0.6], [1.0, 0.8]]))  # image bank empty

    loss = banked_itc_loss(image, text, 1.0, image_bank, text_bank, image_keys, text_keys)
    expected = (_ce([r, -1, 0], 0) + _ce([r, 0, -1], 1)) / 4 + (_ce([0, 0.6], 0) + _ce([1, 0.8], 1)) / 4
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # what is enqueued are the keys, normalised, not the student's embeddings
    torch.testing.assert_close(image_bank.get(), torch.tensor([[0.0, 1.0], [0.6, 0.8]]))
    torch.testing.assert_close(text_bank.get()[1:], torch.tensor([[r, r], [-1.0, 0.0]]))
    loss.backward()
    assert image.grad is not None and text.grad is not None  # the queries train; keys are constants


def test_momentum_copy_starts_equal_follows_by_ema_and_is_not_trained():
    torch.manual_seed(0)
    model = build_multimodal(ImageEncoderConfig(dim=8, depth=1, heads=2, image_size=8, patch_size=4),
                             TextEncoderConfig(dim=8, depth=1, heads=2, vocab_size=20, max_len=8),
                             EncoderConfig(dim=8, depth=1, heads=2),
                             HeadConfig(target_dim=4, proj="encoder", bank_size=16, bank_momentum=0.9),
                             1, contrastive=True).eval()
    ids = torch.tensor([[0, 5, 6, 2], [0, 7, 2, 1]])
    images, pad = torch.randn(2, 3, 8, 8), ids.eq(1)
    keys_image, keys_text = model.momentum_keys(images, ids, pad)  # an exact copy at the start
    torch.testing.assert_close(keys_image, model.encode_image(images))
    torch.testing.assert_close(keys_text, model.encode_text(ids, pad))
    assert not any(p.requires_grad for p in model.momentum.parameters())
    assert "momentum.image_proj.weight" in model.state_dict()  # saved in every checkpoint

    weight = model.image_proj.weight
    before = model.momentum.image_proj.weight.clone()
    with torch.no_grad():
        weight.add_(1.0)  # as if an optimizer step had moved the student
    model.momentum_keys(images, ids, pad)
    torch.testing.assert_close(model.momentum.image_proj.weight, 0.9 * before + 0.1 * weight)
    with pytest.raises(ConfigError, match="bank_momentum"):
        build_multimodal(ImageEncoderConfig(dim=8, depth=1, heads=2, image_size=8, patch_size=4),
                         TextEncoderConfig(dim=8, depth=1, heads=2, vocab_size=20, max_len=8),
                         EncoderConfig(dim=8, depth=1, heads=2),
                         HeadConfig(proj="encoder", bank_size=16, bank_momentum=1.0), 1, contrastive=True)


def test_empty_bank_adds_no_columns():
    image, text = torch.randn(3, 4), torch.randn(3, 4)
    empty_i, empty_t = MemoryBank(8, 4), MemoryBank(8, 4)
    expected = banked_itc_loss(image, text, 5.0, None, None)
    torch.testing.assert_close(banked_itc_loss(image, text, 5.0, empty_i, empty_t), expected)
    assert len(empty_i) == 3 and len(empty_t) == 3  # filled progressively


# ------------------------------------------------------------------------- alignment terms
def _model_and_batch(align, proj="none"):
    torch.manual_seed(0)
    model = build_multimodal(ImageEncoderConfig(dim=8, depth=1, heads=2, image_size=8, patch_size=4),
                             TextEncoderConfig(dim=8, depth=1, heads=2, vocab_size=20, max_len=8),
                             EncoderConfig(dim=8, depth=1, heads=2),
                             HeadConfig(target_dim=4, proj=proj, bank_size=16), 1,
                             contrastive=align == "itc")
    ids = torch.tensor([[0, 5, 6, 2], [0, 7, 2, 1], [0, 8, 9, 2]])
    batch = {"image": torch.randn(3, 3, 8, 8), "text_ids": ids, "text_padding_mask": ids.eq(1)}
    return model, batch


class MeanTeacher(torch.nn.Module):
    """A ViT-like teacher whose 4-d CLS is the mean of each colour channel and its square."""

    def forward(self, images):
        means = images.mean(dim=(2, 3))[:, :2]  # B x 2
        return EncoderOutput(x=torch.cat([means, means ** 2], dim=-1)[:, None])  # B x 1 x 4


@pytest.mark.parametrize("align,proj,term", [("itc", "encoder", "itc"), ("itc", "shared", "itc"),
                                             ("none", "none", None), ("cos", "none", "cos")])
def test_alignment_losses_add_one_alignment_term(align, proj, term):
    model, batch = _model_and_batch(align, proj)
    out = alignment_losses(model, MeanTeacher(), batch, align)
    kd = out["kd_image"] + out["kd_text"]
    extra = out[term] if term else 0.0
    torch.testing.assert_close(out["loss"], kd + extra)
    assert ("itc" in out) == (align == "itc") and ("cos" in out) == (align == "cos")
    out["loss"].backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None
              and not n.startswith(("image.embed.", "text.embed."))]
    assert unused == []  # DDP needs a gradient for every trainable parameter
    if align == "itc":
        assert len(model.image_bank) == 3 and len(model.text_bank) == 3


# ------------------------------------------------------------------------- end to end
def test_tiny_run_all_variants_write_rows(monkeypatch):
    monkeypatch.setenv("EXTRAS", "1")  # the extra (comparison) row too
    rows = itc.run(parse_cli(itc.ItcConfig, CHAPTER, FEW_STEPS))
    df = pd.read_csv(Path(os.environ["MMKD_RESULTS"]) / "itc_ablation" / "itc.csv")
    assert list(df.columns) == list(COLUMNS) and len(df) == len(rows) == 10
    assert list(dict.fromkeys(df["run"])) == ["sx3hre-itc", "sx3hre-no-itc", "sx3hre-cos",
                                               "sx3hre-itc-bank", "sx3hre-itc-cnn"]
    assert sorted(set(df["dataset"])) == ["syn-coco", "syn-flickr"]
    assert (df["steps"] == 3).all()
    assert (df["teacher"] == df["run"].map(lambda r: "tiny-cnn" if r.endswith("-cnn") else "tiny-clr")).all()
    for col in ["i2t_r1", "i2t_r10", "t2i_r1", "t2i_r10", "i2t_mean_recall", "t2i_mean_recall"]:
        assert df[col].between(0, 100).all(), col
    runs = Path(os.environ["MMKD_RUNS"]) / "itc_ablation"
    bank_log = (runs / "sx3hre-itc-bank-seed0" / "metrics.jsonl").read_text()
    assert '"itc"' in bank_log and '"logit_scale"' in bank_log
    assert '"cos"' in (runs / "sx3hre-cos-seed0" / "metrics.jsonl").read_text()


def test_untrained_projection_is_refused_before_training():
    cfg = parse_cli(itc.ItcConfig, CHAPTER, FEW_STEPS + ["align=none", "head.proj=shared"])
    with pytest.raises(ConfigError, match="head.proj=shared"):
        itc.run(cfg)  # the ITC variant inherits align=none: refused before anything trains
    assert not (Path(os.environ["MMKD_RUNS"]) / "itc_ablation").exists()


def test_full_model_benches_at_a_tiny_shape():
    from common import bench

    tiny = ["image.dim=32", "image.heads=2", "image.depth=1", "image.image_size=32", "text.dim=32",
            "text.heads=2", "text.depth=1", "text.max_len=8", "text.vocab_size=64", "shared.dim=32",
            "shared.heads=2", "head.proj_dim=16", "teacher.encoder.dim=48", "teacher.encoder.heads=2",
            "teacher.encoder.depth=1", "teacher.encoder.image_size=32", "data.image_size=32",
            "data.max_text_len=8", "train.batch_size=2", "train.precision='no'"]
    out = bench.bench_chapter("itc_ablation", steps=1, overrides=tiny, device="cpu")
    assert out["batch"] == 2 and out["steps_per_s"] > 0 and out["flops_per_step"] > 0


@pytest.mark.parametrize("align,proj", [("itc", "encoder"), ("cos", "none")])
def test_batches_cut_to_their_longest_caption_give_the_losses_of_max_len_padding(align, proj):
    # collate_image_text (Tokenizer.encode_batch) cuts every training batch to its longest
    # caption; the padding mask keeps the extra pads of a max_len batch out of every term
    losses = []
    for width in (4, 8):  # the batch's longest caption is 4 tokens; max_len 8
        model, batch = _model_and_batch(align, proj)
        ids = torch.nn.functional.pad(batch["text_ids"], (0, width - 4), value=1)
        batch.update(text_ids=ids, text_padding_mask=ids.eq(1))
        torch.manual_seed(1)  # the cosine loss's random negatives
        losses.append(alignment_losses(model, MeanTeacher(), batch, align))
    assert set(losses[0]) == set(losses[1])
    for name in losses[0]:
        torch.testing.assert_close(losses[0][name], losses[1][name], rtol=0, atol=1e-6, msg=name)
