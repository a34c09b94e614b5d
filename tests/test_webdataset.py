"""CC3M as webdataset shards: img2dataset's output indexed for random access, trained from,
and prepared by img2dataset itself with the thesis's "first N available" rule."""
import io
import json

import numpy as np
import PIL.Image
import pytest

from common.config import DataConfig
from common.data.cc3m import prepare_cc3m
from common.data.cc3m_img2dataset import find_img2dataset, index_cc3m_shards, prepare_cc3m_img2dataset
from common.data.image_index import IndexedImages
from common.data.multi import image_text_stream
from common.data.prepare import prepare
from common.data.sources import open_source
from common.data.transforms import train_transform
from common.errors import DataError
from common.fixtures import write_cc3m, write_webdataset_shards

CAPTIONS = [f"web caption {i}" for i in range(7)] + ["   "]  # the last one is blank


def _jpeg_pixels(shard, key):
    import tarfile
    with tarfile.open(shard) as tar:
        return np.asarray(PIL.Image.open(io.BytesIO(tar.extractfile(f"{key}.jpg").read())).convert("RGB"))


def test_existing_shards_are_indexed_in_place_and_read_by_offset(tmp_path):
    shards = write_webdataset_shards(tmp_path / "wds", CAPTIONS, per_shard=3)
    manifest = index_cc3m_shards(tmp_path / "data", tmp_path / "wds")
    assert manifest["splits"]["train"] == {"count": 7, "skipped": 1, "empty_caption": 1,
                                           "img2dataset_tried": 8}
    source = IndexedImages(tmp_path / "data" / "cc3m", "train", name="cc3m")
    assert len(source) == 7 and source.captions(4) == ["web caption 4"]
    assert source.path(4) == shards[1] and source.span(4) is not None  # absolute: not copied
    np.testing.assert_array_equal(source.image(4).permute(1, 2, 0).numpy(), _jpeg_pixels(shards[1], "000010001"))
    again = index_cc3m_shards(tmp_path / "data", tmp_path / "wds")  # finished: found, not redone
    assert again == manifest


def test_a_damaged_shard_is_one_line_naming_it(tmp_path):
    shards = write_webdataset_shards(tmp_path / "wds", CAPTIONS[:3], per_shard=3)
    index_cc3m_shards(tmp_path / "data", tmp_path / "wds")
    source = IndexedImages(tmp_path / "data" / "cc3m", "train", name="cc3m")
    shards[0].write_bytes(shards[0].read_bytes()[:2000])  # cut inside the last sample
    with pytest.raises(DataError, match=r"cannot read image .*00000.tar \(bytes \d+-\d+\)"):
        source.image(2)
    (tmp_path / "wds" / "00000.tar").write_bytes(b"not a tar file at all" * 30)
    with pytest.raises(DataError, match=r"webdataset shard .*00000.tar is damaged"):
        index_cc3m_shards(tmp_path / "data", tmp_path / "wds", force=True)


def test_training_batches_come_from_the_shards_deterministically(tmp_path):
    write_webdataset_shards(tmp_path / "wds", CAPTIONS, per_shard=3)
    prepare(["cc3m", "--root", str(tmp_path / "data"), "--shards", str(tmp_path / "wds")])
    cfg = DataConfig(source="real", root=str(tmp_path / "data"), train_sets=["cc3m"], image_size=16)

    def first_batches():
        stream = image_text_stream(open_source(cfg, "train"), train_transform(16, [0.6, 1.0], 0.5),
                                   seed=3, batch_size=2)
        return [stream[i] for i in range(6)]

    one, two = first_batches(), first_batches()
    for a, b in zip(one, two):
        assert a["caption"] == b["caption"]
        assert np.array_equal(a["image"].numpy(), b["image"].numpy())
    assert {item["caption"] for item in one} <= set(CAPTIONS[:7])


@pytest.mark.skipif(find_img2dataset() is None, reason="img2dataset not installed (make img2dataset)")
def test_img2dataset_keeps_the_same_first_available_images_as_the_built_in_downloader(tmp_path):
    index = write_cc3m(tmp_path / "web", rows=8, size=(300, 200))  # rows 1 (dead) and 3 (html) fail
    manifest = prepare_cc3m_img2dataset(tmp_path / "i2d", index, limit=3, processes=1, threads=2)
    builtin = prepare_cc3m(tmp_path / "urllib", index, limit=3, workers=2, backoff=0.0)
    ours = IndexedImages(tmp_path / "i2d" / "cc3m", "train", name="cc3m")
    theirs = IndexedImages(tmp_path / "urllib" / "cc3m", "train", name="cc3m")
    assert [ours.captions(i) for i in range(3)] == [theirs.captions(i) for i in range(3)] == [
        ["cc3m caption 0"], ["cc3m caption 2"], ["cc3m caption 4"]]
    assert ours.image(0).shape == (3, 200, 300)  # smaller than 256: never enlarged
    split = manifest["splits"]["train"]
    assert split["count"] == builtin["splits"]["train"]["count"] == 3
    assert split["unavailable"] >= 1 and split["failed_to_resize"] >= 1  # the dead link, the html
    assert manifest["settings"]["downloader"] == "img2dataset"
    again = prepare_cc3m_img2dataset(tmp_path / "i2d", index, limit=3, processes=1, threads=2)
    assert again == manifest  # finished: not downloaded again
    assert json.loads((tmp_path / "i2d" / "cc3m" / "manifest.json").read_text()) == manifest
