"""Tokenizer, transforms, image loading, datasets and the resumable training stream."""
import io
import json

import numpy as np
import PIL.Image
import pytest
import tokenizers
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from common.config import DataConfig
from common.data import synthetic
from common.data.datasets import (ImageLabelSet, ImageTextPairs, RetrievalSet, TrainStream,
                                  collate_image_text)
from common.data.synthetic import SyntheticWorld, mirror_caption
from common.data.tokenizer import build_tokenizer
from common.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, ImageTransform, _resize,
                                    eval_transform, load_image, random_crop_box, to_model_input,
                                    train_transform)
from common.errors import DataError


@pytest.fixture(scope="module")
def world():
    return SyntheticWorld(train_size=64, coco_test_size=40, flickr_test_size=20,
                          knn_train_size=100, knn_test_size=30, imagenet_val_size=30,
                          render_size=40)


@pytest.fixture()
def tok():
    return build_tokenizer(DataConfig())  # cached once per test session (conftest's MMKD_CACHE)


# ---------------------------------------------------------------------------- tokenizer
def test_tokenizer_round_trip_and_special_ids(tok, world):
    captions = world.captions(world.scene("coco_test", 0)) + ["someone drew a tiny cyan hoop."]
    ids, mask = tok.encode_batch(captions, max_len=64)
    assert ids.dtype == torch.long and mask.dtype == torch.bool and ids.shape == mask.shape
    lengths = (~mask).sum(1)
    assert ids.shape[1] == int(lengths.max())  # padded to the longest in the batch
    assert (ids[:, 0] == tok.bos_id).all()
    for row, n, text in zip(ids, lengths, captions):
        assert row[n - 1] == tok.eos_id and (row[n:] == tok.pad_id).all()
        assert tok.decode(row.tolist()) == text
        assert row[1:n - 1].tolist() == tok.encode(text)
    assert (tok.bos_id, tok.pad_id, tok.eos_id) == (0, 1, 2)
    assert int(ids.max()) < tok.vocab_size <= DataConfig().vocab_size


def test_tokenizer_truncation_keeps_eos(tok):
    long = "a photo of a big red disc in the top left corner."
    ids, mask = tok.encode_batch([long, "a disc."], 6)
    assert ids.shape == (2, 6) and not mask[0].any()
    assert ids[0, 0] == tok.bos_id and ids[0, -1] == tok.eos_id


def test_tokenizer_cache_is_reused(tok, monkeypatch):
    def no_corpus(*args, **kwargs):
        raise AssertionError("the cached tokenizer should have been read, not retrained")
    monkeypatch.setattr(SyntheticWorld, "caption_corpus", no_corpus)
    again = build_tokenizer(DataConfig())
    assert again.tokenizer.get_vocab() == tok.tokenizer.get_vocab()


def test_tokenizer_on_a_given_corpus():
    corpus = ["a red circle.", "a blue square on the left.", "a green star."] * 20
    small = build_tokenizer(DataConfig(vocab_size=300), corpus=corpus)
    assert small.vocab_size <= 300
    assert small.decode(small.encode_batch(["a red star."], 16)[0][0].tolist()) == "a red star."


@pytest.mark.parametrize("bad", ["", "   \n"])
def test_empty_caption_raises_data_error(tok, bad):
    with pytest.raises(DataError, match=r"caption 1 of the batch is empty"):
        tok.encode_batch(["a red circle.", bad], 64)


def test_gpt2_missing_files_give_one_clear_line(tmp_path):
    with pytest.raises(DataError) as err:
        build_tokenizer(DataConfig(tokenizer="gpt2", root=str(tmp_path)))
    message = str(err.value)
    assert "\n" not in message and "vocab.json" in message and "data.tokenizer" in message
    with pytest.raises(DataError, match="neither"):
        build_tokenizer(DataConfig(tokenizer=str(tmp_path / "nope.json")))


def _gpt2_like_files(folder):
    """A tiny byte-level BPE saved in GPT-2's file format (vocab.json + merges.txt)."""
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(["a red circle on the left.", "a blue square."] * 10, trainer=trainer)
    folder.mkdir(parents=True)
    bpe.model.save(str(folder))
    return json.loads((folder / "vocab.json").read_text())


def test_gpt2_from_local_files_and_fairseq_dict(tmp_path):
    vocab = _gpt2_like_files(tmp_path / "gpt2")
    tok = build_tokenizer(DataConfig(tokenizer="gpt2", root=str(tmp_path)))
    eot = vocab["<|endoftext|>"]
    assert tok.bos_id == tok.eos_id == eot
    ids, _ = tok.encode_batch(["a red circle."], 16)
    assert tok.decode(ids[0].tolist()) == "a red circle."
    # data2vec's dictionary: line k of dict.txt ("<gpt2 id> <count>") becomes id 4 + k
    gpt2_ids = tok.encode("a red circle.")
    (tmp_path / "gpt2" / "dict.txt").write_text(
        "".join(f"{i} 100\n" for i in reversed(sorted(set(gpt2_ids)))))
    fair = build_tokenizer(DataConfig(tokenizer=str(tmp_path / "gpt2")))
    order = list(reversed(sorted(set(gpt2_ids))))
    assert fair.encode("a red circle.") == [4 + order.index(i) for i in gpt2_ids]
    assert (fair.bos_id, fair.pad_id, fair.eos_id) == (0, 1, 2)
    assert fair.vocab_size == 4 + len(order) + 1
    assert fair.decode(fair.encode_batch(["a red circle."], 16)[0][0].tolist()) == "a red circle."


# ---------------------------------------------------------------------------- transforms
def test_transform_shapes_and_normalisation():
    image = np.full((40, 40, 3), np.array(IMAGENET_MEAN) * 255, dtype=np.uint8)
    for transform in (train_transform(32), eval_transform(32)):
        out = transform(image)
        assert out.shape == (3, 32, 32) and out.dtype == torch.uint8  # normalised on the device
        model_input = to_model_input(out[None])
        assert model_input.dtype == torch.float32 and model_input.abs().max() < 0.02  # mean -> ~0
        assert to_model_input(model_input) is model_input  # float batches pass through
    white = to_model_input(eval_transform(16)(np.full((16, 16, 3), 255, dtype=np.uint8)))
    expected = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(white[:, 0, 0], expected, atol=1e-5)


def test_eval_transform_matches_torchvision_v2():
    image = np.random.default_rng(0).integers(0, 256, (40, 44, 3), dtype=np.uint8)
    reference = v2.Compose([v2.ToImage(), v2.Resize((32, 32), antialias=True),
                            v2.ToDtype(torch.float32, scale=True),
                            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    assert torch.allclose(to_model_input(eval_transform(32)(image)), reference(image), atol=1e-5)
    x = torch.from_numpy(image).permute(2, 0, 1)
    assert torch.equal(_resize(x[:, 3:30, 5:40], [32, 32]),
                       F.resized_crop(x, 3, 5, 27, 35, [32, 32], antialias=True))


def test_inputs_numpy_pil_and_tensor_agree():
    image = np.random.default_rng(1).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    transform = eval_transform(16)
    out = transform(image)
    assert torch.equal(out, transform(PIL.Image.fromarray(image)))
    assert torch.equal(out, transform(torch.from_numpy(image).permute(2, 0, 1).contiguous()))
    with pytest.raises(TypeError):
        transform(image.astype(np.float32))


def test_random_crop_box_respects_scale_and_bounds():
    torch.manual_seed(0)
    for _ in range(200):
        top, left, h, w = random_crop_box(40, 48, (0.6, 1.0))
        assert 0 <= top <= 40 - h and 0 <= left <= 48 - w
        assert 0.55 <= h * w / (40 * 48) <= 1.0


def test_flip_is_reported_and_applied():
    image = np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    plain, flipped = ImageTransform(32), ImageTransform(32, hflip=1.0)
    out, did = flipped.apply(image)
    assert did and torch.equal(out, plain(image).flip(-1))
    assert plain.apply(image)[1] is False


def test_load_image_good_corrupt_truncated_and_missing(tmp_path):
    good = tmp_path / "good.jpg"
    PIL.Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(good)
    assert load_image(good).shape == (3, 8, 8) and load_image(good).dtype == torch.uint8
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "corrupt.jpg").write_bytes(b"this is not a jpeg")
    buffer = io.BytesIO()
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
                        ).save(buffer, format="JPEG")
    (tmp_path / "truncated.jpg").write_bytes(buffer.getvalue()[:300])
    for name in ("corrupt.jpg", "truncated.jpg", "missing.jpg", "empty.jpg"):
        with pytest.raises(DataError, match=name) as err:
            load_image(tmp_path / name)
        assert "\n" not in str(err.value)


def _pil_pixels(path):
    """What load_image gave before torchvision decoded: PIL, convert("RGB"), to a tensor."""
    with PIL.Image.open(path) as image:
        return F.pil_to_tensor(image.convert("RGB"))


def test_load_image_decodes_the_pixels_pil_does_and_pil_takes_the_formats_torchvision_lacks(tmp_path):
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    images = {"444.jpg": (PIL.Image.fromarray(rgb), {"subsampling": 0}),
              "420.jpg": (PIL.Image.fromarray(rgb), {"subsampling": 2}),
              "grey.jpg": (PIL.Image.fromarray(rgb[..., 0]), {}),
              "cmyk.jpg": (PIL.Image.fromarray(rgb).convert("CMYK"), {}),
              "rgba.png": (PIL.Image.fromarray(rgb).convert("RGBA"), {}),
              "palette.png": (PIL.Image.fromarray(rgb).convert("P"), {}),
              "plain.bmp": (PIL.Image.fromarray(rgb), {}),  # torchvision has no BMP decoder
              "deep.png": (PIL.Image.fromarray(rgb[..., 0].astype(np.uint16) * 257), {})}  # 16 bit
    for name, (image, options) in images.items():
        image.save(tmp_path / name, **options)
        out = load_image(tmp_path / name)
        assert out.dtype == torch.uint8 and out.shape == (3, 30, 40), name
        assert torch.equal(out, _pil_pixels(tmp_path / name)), name
    blob = tmp_path / "blob.bin"  # an image inside a bigger file, as in a tar shard
    jpeg = (tmp_path / "420.jpg").read_bytes()
    blob.write_bytes(b"x" * 100 + jpeg + b"y" * 50)
    assert torch.equal(load_image(blob, span=(100, len(jpeg))), load_image(tmp_path / "420.jpg"))
    assert load_image(tmp_path / "420.jpg", draft=8).shape[1:] == (15, 20)  # PIL: scale 1/2


def test_uint8_path_gives_the_model_inputs_the_float_path_gave(tmp_path):
    """Decode with torchvision, transform in uint8, normalise the batch (the new path) against
    PIL decode and per-image normalisation (the path before): equal, not merely close, since
    both resize in uint8 with the same kernel. Against resizing in float instead, antialiased
    bilinear differs by rounding to uint8: <= 0.0175 (one uint8 level over std) here."""
    yy, xx = np.mgrid[0:120, 0:160]
    noise = np.random.default_rng(3).normal(0, 20, (120, 160, 3))
    pixels = np.stack([xx * 1.6, yy * 2.1, 128 + 100 * np.sin(xx / 7) * np.cos(yy / 5)], -1)
    files = []
    for i in range(3):
        files.append(tmp_path / f"{i}.jpg")
        PIL.Image.fromarray(np.clip(pixels + noise * i, 0, 255).astype(np.uint8)).save(files[-1])
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    for transform in (train_transform(48, (0.3, 1.0)), eval_transform(48)):
        torch.manual_seed(0)
        old = torch.stack([transform(_pil_pixels(f)).float().sub_(mean * 255).div_(std * 255)
                           for f in files])
        torch.manual_seed(0)
        new = to_model_input(torch.stack([transform(load_image(f)) for f in files]))
        assert torch.equal(new, old)
    in_float = torch.stack([(F.resize(_pil_pixels(f).float() / 255, [48, 48], antialias=True)
                             - mean) / std for f in files])
    assert (new - in_float).abs().max() <= 0.0175


# ---------------------------------------------------------------------------- datasets
def test_image_text_pairs_items_and_collate(world, tok):
    source = world.source("train")
    pairs = ImageTextPairs(source, train_transform(32))
    item = pairs[5]
    assert item["image"].shape == (3, 32, 32) and item["image_id"] == 5
    assert item["label"] == world.scene("train", 5).label
    assert item["caption"] in {c for cap in source.captions(5) for c in (cap, mirror_caption(cap))}
    batch = collate_image_text(tok, 64)([pairs[i] for i in range(4)])
    assert batch["image"].shape == (4, 3, 32, 32)
    assert batch["text_ids"].shape == batch["text_padding_mask"].shape
    assert batch["text_ids"].shape[0] == 4 and batch["label"].dtype == torch.long
    assert len(batch["caption"]) == 4 and all(isinstance(c, str) for c in batch["caption"])


def test_flipped_pairs_get_mirrored_captions(world):
    source = world.source("train")
    pairs = ImageTextPairs(source, ImageTransform(32, hflip=1.0))
    for index in range(10):
        torch.manual_seed(index)
        caption = pairs[index]["caption"]
        assert caption in {mirror_caption(c) for c in source.captions(index)}


def test_collate_rejects_empty_caption_naming_the_image(tok):
    items = [{"image": torch.zeros(3, 4, 4), "caption": " ", "image_id": 17, "label": 0}]
    with pytest.raises(DataError, match="image_id 17"):
        collate_image_text(tok, 64)(items)


def test_image_label_set_fine_and_coarse(world):
    fine = ImageLabelSet(world.source("knn_train"), eval_transform(32))
    coarse = ImageLabelSet(world.source("knn_train", label="coarse"), eval_transform(32))
    assert fine.num_classes == 100 and coarse.num_classes == 10 and len(fine) == 100
    assert [fine[i]["label"] for i in range(100)] == list(range(100))
    assert {coarse[i]["label"] for i in range(100)} == set(range(10))
    assert fine[3]["image"].shape == (3, 32, 32)


def test_retrieval_set_layout(world, tok):
    retrieval = RetrievalSet(world.source("coco_test"), eval_transform(32))
    assert len(retrieval) == 40 and len(retrieval.captions) == 200
    assert retrieval.text_image_ids.tolist() == [i for i in range(40) for _ in range(5)]
    assert retrieval.captions[5:10] == world.captions(world.scene("coco_test", 1))
    images = list(retrieval.image_batches(16))
    assert [b.shape[0] for b in images] == [16, 16, 8] and images[0].shape[1:] == (3, 32, 32)
    texts = list(retrieval.text_batches(tok, 64, 64))
    assert sum(ids.shape[0] for ids, _ in texts) == 200


# ---------------------------------------------------------------------------- stream
def test_stream_items_are_identical_across_instances(world):
    def make():
        return TrainStream(ImageTextPairs(world.source("train"), train_transform(32)), seed=3)
    a, b = make(), make()
    for k in (0, 1, 63, 64, 200, 1000):
        x, y = a[k], b[k]
        assert torch.equal(x["image"], y["image"]) and x["caption"] == y["caption"]
        assert x["image_id"] == y["image_id"]
    assert not torch.equal(a[0]["image"], TrainStream(a.dataset, seed=4)[0]["image"])


def test_stream_covers_each_index_once_per_epoch(world):
    stream = TrainStream(ImageLabelSet(world.source("train"), eval_transform(32)), seed=0)
    epoch0 = [stream.index(k) for k in range(64)]
    epoch1 = [stream.index(k) for k in range(64, 128)]
    assert sorted(epoch0) == sorted(epoch1) == list(range(64))
    assert epoch0 != epoch1
    assert stream.index(5) == epoch0[5]  # going back to an earlier epoch recomputes its order


def test_stream_leaves_the_callers_rng_untouched(world):
    stream = TrainStream(ImageTextPairs(world.source("train"), train_transform(32)), seed=0)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    stream[0], stream[1]
    assert torch.equal(torch.rand(3), expected)


def test_stream_loader_resumes_bit_exactly(world, tok):
    stream = TrainStream(ImageTextPairs(world.source("train"), train_transform(32)), seed=1)
    collate = collate_image_text(tok, 64)
    full = list(stream.loader(8, collate, start_step=0, steps=4))
    resumed = list(stream.loader(8, collate, start_step=2, steps=2))
    for a, b in zip(full[2:], resumed):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["text_ids"], b["text_ids"])
    workers = list(stream.loader(8, collate, start_step=2, steps=2, num_workers=2))
    for a, b in zip(resumed, workers):
        assert torch.equal(a["image"], b["image"]) and a["caption"] == b["caption"]


def test_world_from_config_uses_render_size():
    world = SyntheticWorld.from_config(DataConfig(image_size=32, render_size=40, train_size=10))
    assert world.len_split("train") == 10 and world.source("train").image(0).shape == (40, 40, 3)
    assert synthetic.SyntheticWorld.from_config(DataConfig(image_size=24)).render_size == 24
