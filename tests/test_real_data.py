"""The full preset's data path on small fixtures in the real on-disk formats: Karpathy json +
JPEGs, CIFAR python pickles in tar.gz, ImageNet class folders, a CC3M index of file:// urls,
VG region json, OpenWebText xz archives; prepared by ``common.data.prepare`` and read back
through ``open_source(cfg, role)`` exactly as ``data.source=real`` does."""
import io
import json
import pickle
import sys
import types

import numpy as np
import PIL.Image
import pytest
import torch

from common.config import DataConfig
from common.data import cc3m, openwebtext
from common.data.cc3m import Unavailable, fetch_url, prepare_cc3m
from common.data.cifar import prepare_cifar
from common.data.coco import prepare_karpathy
from common.data.datasets import ImageLabelSet, RetrievalSet
from common.data.imagenet import prepare_imagenet
from common.data.imagenet_classes import CLASSNAMES, TEMPLATES
from common.data.multi import RoundRobinSource, RoundRobinStream, image_text_stream
from common.data.openwebtext import clean_document, prepare_openwebtext
from common.data.prepare import prepare
from common.data.sources import dataset_name, open_source, prompt_templates
from common.data.text_shards import RandomWindows, open_text_shards
from common.data.tokenizer import build_tokenizer
from common.data.transforms import eval_transform, train_transform
from common.data.visual_genome import prepare_visual_genome
from common.errors import DataError
from common.fixtures import (OWT_DOCS, cifar_expected, write_cc3m, write_cifar_archives, write_coco,
                             write_flickr, write_gpt2_files, write_imagenet, write_openwebtext,
                             write_visual_genome)
from common.evaluation import embed_images
from common.retrieval import knn_accuracy
from common.knn import KnnConfig, KnnSets


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Every image dataset written in its distributed format and prepared."""
    root = tmp_path_factory.mktemp("datasets")
    write_coco(root)
    write_flickr(root)
    write_cifar_archives(root)
    write_imagenet(root)
    write_visual_genome(root)
    index = write_cc3m(tmp_path_factory.mktemp("cc3m_web"))
    prepare_karpathy("coco", root)
    prepare_karpathy("flickr30k", root)
    prepare_cifar(root, verify=False)
    prepare_imagenet(root)
    prepare_visual_genome(root)
    prepare_cc3m(root, index, limit=3, workers=2, backoff=0.0)
    return root


def real(root, **kw):
    return DataConfig(source="real", root=str(root), **kw)


def manifest(root, name):
    return json.loads((root / name / "manifest.json").read_text())


# ---------------------------------------------------------------------------- Karpathy
def test_coco_karpathy_splits_counts_and_captions(root):
    splits = manifest(root, "coco")["splits"]
    assert splits["train"]["count"] == 3  # train + restval
    assert splits["val"]["count"] == 1
    assert splits["test"] == {"count": 2, "captions": 9, "skipped": 1, "skipped_captions": 1}
    test = open_source(real(root), "coco_test")
    assert len(test) == 2 and test.classnames == () and test.label(0) == -1
    assert test.captions(0) == ["coco image 4 caption 0", "coco image 4 caption 1",
                                "coco image 4 caption 3", "coco image 4 caption 4"]
    assert test.image(1).shape == (3, 16, 20) and test.image(1).dtype == torch.uint8
    retrieval = RetrievalSet(test, eval_transform(8))
    assert retrieval.text_image_ids.tolist() == [0] * 4 + [1] * 5
    assert retrieval[0]["image"].shape == (3, 8, 8)
    assert dataset_name(real(root), "coco_test") == "coco5k"


def test_coco_test_size_keeps_the_first_images_and_names_the_subset(root):
    test = open_source(real(root, coco_test_size=1), "coco_test")
    full = open_source(real(root), "coco_test")
    assert len(test) == 1 and test.captions(0) == full.captions(0)
    assert RetrievalSet(test, eval_transform(8)).text_image_ids.tolist() == [0] * 4
    assert dataset_name(real(root, coco_test_size=1), "coco_test") == "coco5k-first1"
    with pytest.raises(IndexError):
        test.image(1)


def test_flickr_test_split_and_caption_cleaning(root):
    test = open_source(real(root), "flickr_test")
    assert len(test) == 2 and manifest(root, "flickr30k")["splits"]["train"]["count"] == 1
    assert test.captions(1)[4] == "flickr 3 line 4"  # the newline inside a caption became a space
    assert test.image(0)[:, 0, 0].tolist() == pytest.approx([0, 40, 50], abs=3)


def test_prepare_skips_finished_work_and_force_redoes_it(root, caplog):
    caplog.set_level("INFO")
    before = (root / "coco" / "test.images.txt").stat().st_mtime_ns
    assert prepare(["coco", "--root", str(root)])["splits"]["test"]["count"] == 2
    assert "already prepared" in caplog.text
    assert (root / "coco" / "test.images.txt").stat().st_mtime_ns == before


def test_corrupt_jpeg_is_one_data_error_naming_the_file(root, tmp_path):
    test = open_source(real(root), "coco_test")
    good = test.path(0).read_bytes()
    try:
        test.path(0).write_bytes(good[: len(good) // 2])  # truncated download
        with pytest.raises(DataError) as err:
            RetrievalSet(test, eval_transform(8))[0]
        message = str(err.value)
        assert str(test.path(0)) in message and "\n" not in message
    finally:
        test.path(0).write_bytes(good)


# ---------------------------------------------------------------------------- CIFAR / ImageNet

def test_knn_coarse_rows_use_the_cifar10_images_as_a_direct_knn_does(root):
    """CIFAR-10 (coarse) is another image set than CIFAR-100 (fine), here of another length
    too (10 vs 4 train images): its kNN rows are a kNN over its own images (as
    ``eval.knn_cifar`` computes them), not CIFAR-100's embeddings with CIFAR-10 labels."""
    data, cpu = real(root, image_size=32), torch.device("cpu")

    def mean_colour(images):  # B x 3: a hand-checkable embedding
        return images.mean(dim=(2, 3))

    sets = KnnSets(data, KnnConfig(labels=["fine", "coarse"]), batch_size=4)
    got = sets.metrics(mean_colour, cpu)
    assert [len(sets.sets[k].bank) for k in ("knn100", "knn10")] == [4, 10]
    for label, key in (("fine", "knn100"), ("coarse", "knn10")):
        bank, queries = (ImageLabelSet(open_source(data, role, label), eval_transform(32))
                         for role in ("knn_train", "knn_test"))
        (b, b_labels), (q, q_labels) = (embed_images(mean_colour, s, cpu, 4) for s in (bank, queries))
        direct = {f"{key}_top{k}": knn_accuracy(q, q_labels, b, b_labels, k) for k in (1, 3)}
        direct.update({f"{key}_rev_top{k}": knn_accuracy(b, b_labels, q, q_labels, k) for k in (1, 3)})
        assert {k: got[k] for k in direct} == {k: round(v, 2) for k, v in direct.items()}

def test_cifar_pickles_become_arrays_with_fine_and_coarse_roles(root):
    expected = cifar_expected()
    splits = manifest(root, "cifar")["splits"]
    assert splits["cifar10_train"] == {"count": 10, "classes": 10}
    assert splits["cifar100_test"] == {"count": 2, "classes": 100}
    for role, label, key in (("knn_train", "fine", "cifar100_train"),
                             ("knn_test", "fine", "cifar100_test"),
                             ("knn_train", "coarse", "cifar10_train"),
                             ("knn_test", "coarse", "cifar10_test")):
        source = open_source(real(root), role, label=label)
        images, labels = expected[key]
        assert len(source) == len(labels)
        assert [source.label(i) for i in range(len(source))] == labels
        assert all(np.array_equal(source.image(i), images[i]) for i in range(len(source)))
        assert len(source.classnames) == (100 if label == "fine" else 10)
    knn = ImageLabelSet(open_source(real(root), "knn_test", label="coarse"), eval_transform(32))
    assert knn.classnames[7] == "c10_7" and knn[0]["label"] == 7


def test_cifar_md5_check_rejects_a_modified_archive(root, tmp_path):
    folder = tmp_path / "cifar"
    folder.mkdir()
    (folder / "cifar-10-python.tar.gz").write_bytes(
        (root / "cifar" / "cifar-10-python.tar.gz").read_bytes())
    with pytest.raises(DataError, match="MD5") as err:
        prepare_cifar(tmp_path)
    assert "--no-verify" in str(err.value) and "\n" not in str(err.value)


def test_imagenet_class_folders_get_standard_labels_and_clip_names(root):
    val = open_source(real(root), "imagenet_val")
    assert len(val) == 6 and manifest(root, "imagenet")["splits"]["val"]["classes"] == 3
    assert [val.label(i) for i in range(len(val))] == [0, 0, 1, 1, 999, 999]
    assert len(val.classnames) == 1000 and val.classnames[999] == "toilet paper"
    assert val.classnames[0] == "tench" and CLASSNAMES[1] == "goldfish"
    templates = prompt_templates(real(root))
    assert templates == list(TEMPLATES) and len(templates) == 80
    assert all(t.count("{}") == 1 for t in templates)


# ---------------------------------------------------------------------------- CC3M / VG
def test_cc3m_keeps_first_available_and_counts_unavailable(root):
    split = manifest(root, "cc3m")["splits"]["train"]
    # rows 0, 2, 4 are the first 3 available; 1 (missing file) and 3 (not an image) skipped
    assert split == {"count": 3, "skipped": 2, "unavailable": 2, "failed": 0, "empty_caption": 0}
    source = cc3m.open_cc3m(root / "cc3m")
    assert [source.captions(i) for i in range(3)] == [["cc3m caption 0"], ["cc3m caption 2"],
                                                      ["cc3m caption 4"]]
    assert source.image(2)[:, 0, 0].tolist() == pytest.approx([200, 40, 0], abs=3)


def test_cc3m_resume_skips_done_rows_and_retries_transient_failures(tmp_path):
    index = write_cc3m(tmp_path)
    calls = []
    flaky = {"img2.jpg": 2}  # fails twice with a connection error, then works

    def fetch(url, timeout):
        calls.append(url.rsplit("/", 1)[-1])
        if flaky.get(calls[-1], 0) > 0:
            flaky[calls[-1]] -= 1
            raise ConnectionResetError("reset by peer")
        return fetch_url(url, timeout)

    first = prepare_cc3m(tmp_path, index, limit=2, workers=1, retries=0, backoff=0.0, fetch=fetch)
    assert first["splits"]["train"]["count"] == 2 and first["splits"]["train"]["failed"] == 1
    calls.clear()
    # a larger subset: finished and unavailable rows are not fetched again, the failed one is
    second = prepare_cc3m(tmp_path, index, limit=10, workers=2, retries=1, backoff=0.0, fetch=fetch)
    assert "img0.jpg" not in calls and "img1.jpg" not in calls and "img3.jpg" not in calls
    assert calls.count("img2.jpg") == 2  # one more failure, then the retry succeeds
    assert second["splits"]["train"] == {"count": 4, "skipped": 3, "unavailable": 2,
                                         "failed": 0, "empty_caption": 1}
    assert "img6.jpg" not in calls  # a row without caption is not downloaded
    with pytest.raises(Unavailable):
        fetch_url((tmp_path / "nope.jpg").as_uri(), 1.0)


def test_visual_genome_region_phrases_are_captions(root):
    assert manifest(root, "visual_genome")["splits"]["train"] == {
        "count": 2, "pairs": 3, "skipped": 1, "skipped_phrases": 1}
    source = open_source(real(root, train_sets=["visual_genome"]), "train")
    assert source.captions(0) == ["a red hat"]
    assert source.captions(1) == ["man on a bench", "green tree"]


# ---------------------------------------------------------------------------- round robin
def test_round_robin_training_mix_alternates_and_is_deterministic(root):
    cfg = real(root, train_sets=["coco", "cc3m", "visual_genome"], image_size=8)
    source = open_source(cfg, "train")
    assert isinstance(source, RoundRobinSource) and dataset_name(cfg, "train") == \
        "coco+cc3m+visual_genome"
    assert len(source) == 3 * 3 and source.captions(1) == ["cc3m caption 0"]
    stream = image_text_stream(source, train_transform(8), seed=5, batch_size=2)
    assert isinstance(stream, RoundRobinStream)
    prefixes = ("coco image", "cc3m caption", "")
    for k in range(24):  # 12 steps of 2: coco, cc3m, vg, coco, ...
        caption = stream[k]["caption"]
        expected = prefixes[(k // 2) % 3]
        if expected:
            assert caption.startswith(expected), (k, caption)
        else:
            assert caption in ("a red hat", "man on a bench", "green tree")
    again = image_text_stream(open_source(cfg, "train"), train_transform(8), seed=5, batch_size=2)
    for k in (0, 7, 23):  # any item, in any order, in a fresh process-like copy: the same
        a, b = stream[k], again[k]
        assert a["caption"] == b["caption"] and torch.equal(a["image"], b["image"])
    coco_items = {stream.locate(k)[1] for k in range(0, 24) if stream.locate(k)[0] == 0}
    assert coco_items == set(range(8))  # each source walks its own stream without gaps


def test_missing_and_unprepared_datasets_are_one_line_errors(root, tmp_path):
    with pytest.raises(DataError) as err:
        open_source(real(tmp_path), "coco_test")
    assert "does not exist" in str(err.value) and "common.data.prepare coco" in str(err.value)
    (tmp_path / "flickr30k").mkdir()
    with pytest.raises(DataError, match="prepare flickr30k") as err:
        open_source(real(tmp_path), "flickr_test")
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="train_sets"):
        open_source(real(root, train_sets=["imagenet"]), "train")


# ---------------------------------------------------------------------------- OpenWebText
def test_openwebtext_shards_round_trip_and_resume(tmp_path, monkeypatch):
    write_openwebtext(tmp_path)
    write_gpt2_files(tmp_path / "gpt2")
    result = prepare_openwebtext(tmp_path)
    assert result["splits"]["train"]["count"] == 3 and result["splits"]["train"]["shards"] == 2
    assert result["splits"]["val"]["count"] == 1
    assert result["splits"]["train"]["nul_bytes"] == 1
    assert result["splits"]["train"]["skipped_lines"] == 4  # 2 + 2 blank or whitespace lines
    tok = build_tokenizer(DataConfig(tokenizer="gpt2", root=str(tmp_path)))
    shards = open_text_shards(tmp_path / "openwebtext", "train")
    ids = np.concatenate([np.asarray(shards.shard(i)) for i in range(2)])
    assert ids.dtype == np.uint16 and len(shards) == len(ids)
    docs = np.split(ids, np.flatnonzero(ids == tok.eos_id) + 1)[:-1]
    texts = [t for name in ("urlsf_subset00-1_data.xz", "urlsf_subset00-2_data.xz")
             for t in OWT_DOCS[name].values()]
    assert [tok.decode(d.tolist()) for d in docs] == [clean_document(t)[0] for t in texts]
    assert tok.decode(docs[0].tolist()) == "First line of a web page.\nSecond line."

    windows = RandomWindows(shards, seq_len=5, seed=3)
    assert torch.equal(windows[11], RandomWindows(shards, 5, seed=3)[11])
    for k in range(20):
        w = windows[k].numpy()
        assert len(w) == 5 and any(np.array_equal(w, ids[s:s + 5]) for s in range(len(ids) - 4))

    # resume per input file: only the archive whose shard is missing is encoded again
    encoded = []
    real_encode = openwebtext.encode_archive
    monkeypatch.setattr(openwebtext, "encode_archive",
                        lambda path, tok: encoded.append(path.name) or real_encode(path, tok))
    (tmp_path / "openwebtext" / "manifest.json").unlink()
    (tmp_path / "openwebtext" / "train" / "urlsf_subset00-2_data.json").unlink()
    assert prepare_openwebtext(tmp_path)["splits"] == result["splits"]
    assert encoded == ["urlsf_subset00-2_data.xz"]


# ---------------------------------------------------------------------------- CLI
def test_cli_lists_every_dataset_and_delegates_glue(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit):
        prepare(["--help"])
    out = capsys.readouterr().out
    for name in ("imagenet", "cifar", "coco", "flickr30k", "cc3m", "visual_genome",
                 "openwebtext", "glue"):
        assert name in out
    seen = []
    fake = types.ModuleType("common.data.glue")
    fake.prepare_glue = lambda root: seen.append(root) or root / "glue"
    monkeypatch.setitem(sys.modules, "common.data.glue", fake)
    prepare(["glue", "--root", str(tmp_path)])
    assert seen == [tmp_path]


def test_imagenet_from_hugging_face_parquet_is_exported_into_class_folders(tmp_path):
    pytest.importorskip("datasets")  # optional dependency: `pip install datasets`
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    def jpeg(colour):
        buffer = io.BytesIO()
        PIL.Image.new("RGB", (10, 8), colour).save(buffer, "JPEG")
        return buffer.getvalue()

    data = tmp_path / "hf" / "data"
    data.mkdir(parents=True)
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    for split, rows in (("train", [((200, 0, 0), "a.JPEG", 0), ((0, 0, 200), None, 999)]),
                        ("validation", [((0, 200, 0), "b.JPEG", 1)])):
        pq.write_table(pa.table({
            "image": pa.array([{"bytes": jpeg(c), "path": p} for c, p, _ in rows], image_type),
            "label": pa.array([label for *_, label in rows], pa.int64())}),
            data / f"{split}-00000-of-00001.parquet")
    result = prepare_imagenet(tmp_path / "root", hf=tmp_path / "hf")
    assert result["splits"] == {"train": {"count": 2, "classes": 2},
                                "val": {"count": 1, "classes": 1}}
    val = open_source(real(tmp_path / "root"), "imagenet_val")
    assert val.files == ["val/n01443537/b.JPEG"] and val.label(0) == 1
    assert val.image(0)[1, 0, 0] > 150


def test_chapters_train_on_one_dataset_per_batch(tmp_path, monkeypatch):
    """Chapters 3-5 (and SHRe, same call) turn the real training mix into a RoundRobinStream."""
    from common import mm_d2v2

    seen = {}

    class Stop(Exception):
        pass

    def no_training(model, losses, stream, *args, **kwargs):
        seen["stream"] = stream
        raise Stop

    write_coco(tmp_path)
    prepare(["coco", "--root", str(tmp_path)])
    cfg = DataConfig(source="real", root=str(tmp_path), train_sets=["coco", "coco"], image_size=16)
    monkeypatch.setattr(mm_d2v2, "fit", no_training)

    class Cfg:
        data, chapter, run = cfg, "ssa", "probe"
        train = type("T", (), {"seed": 0, "batch_size": 4})()

    monkeypatch.setattr(mm_d2v2, "run_folder", lambda *a: tmp_path / "run")
    with pytest.raises(Stop):
        mm_d2v2.train_multimodal(Cfg, None, None, None, None, build_tokenizer(DataConfig()),
                                 model_name="m", results_file="r")
    assert isinstance(seen["stream"], RoundRobinStream)


def test_a_cifar_batch_with_a_code_payload_is_refused_without_running_it(tmp_path):
    from pathlib import Path

    from common.data.cifar import _unpickle

    class Payload:
        def __reduce__(self):
            return Path.touch, (tmp_path / "pwned",)

    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({b"data": Payload(), b"labels": [1]}))
    with pytest.raises(DataError, match="is corrupt .*pathlib.*not allowed"):
        _unpickle(tmp_path / "data_batch_1")
    assert not (tmp_path / "pwned").exists()


def test_zero_shot_quick_check_keeps_the_first_classes_and_templates_and_says_so(root):
    from common.data.sources import zero_shot_name, zero_shot_source

    full = real(root)
    assert len(zero_shot_source(full, "imagenet_val")) == 6
    assert len(prompt_templates(full)) == 80 and zero_shot_name(full, "imagenet_val") == "imagenet"
    quick = real(root, zero_shot_classes=2, zero_shot_templates=3)
    subset = zero_shot_source(quick, "imagenet_val")
    assert len(subset) == 4 and [subset.label(i) for i in range(4)] == [0, 0, 1, 1]
    assert list(subset.classnames) == list(CLASSNAMES[:2])
    assert prompt_templates(quick) == list(TEMPLATES[:3])
    assert zero_shot_name(quick, "imagenet_val") == "imagenet-first2cls-3tmpl"
