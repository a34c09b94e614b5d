"""The synthetic world: determinism, captions true to the scene, unique test sets, the shift."""
import logging
import re
from collections import Counter

import numpy as np
import pytest

from common.data import show_synthetic
from common.data import synthetic as syn
from common.data.synthetic import captions as grammar
from common.data.synthetic import (CLASSNAMES, COARSE_CLASSNAMES, HELDOUT_FRAMES, TEMPLATES,
                                   TRAIN_FRAMES, SyntheticWorld, mirror_caption, render)


@pytest.fixture(scope="module")
def world():
    return SyntheticWorld(train_size=500, coco_test_size=5000, flickr_test_size=1000,
                          knn_train_size=1000, knn_test_size=200, imagenet_val_size=200)


def _mentions(text, words):
    return any(re.search(rf"\b{re.escape(w)}\b", text) for w in words)


def test_same_seed_split_index_gives_identical_scene_pixels_and_text(world):
    other = SyntheticWorld(train_size=500)
    for split in ("train", "coco_test", "flickr_test", "knn_train"):
        for index in (0, 7, 99):
            a, b = world.scene(split, index), other.scene(split, index)
            assert a == b
            assert np.array_equal(render(a, 32), render(b, 32))
            assert world.captions(a) == other.captions(b)
            assert world.regions(a) == other.regions(b)


def test_splits_and_seeds_differ(world):
    images = {split: np.stack([render(world.scene(split, i), 32) for i in range(20)])
              for split in ("train", "coco_test", "flickr_test", "knn_train", "knn_test")}
    splits = list(images)
    for i, a in enumerate(splits):
        for b in splits[i + 1:]:
            assert not np.array_equal(images[a], images[b]), (a, b)
    reseeded = SyntheticWorld(seed=1)
    assert [reseeded.scene("train", i) for i in range(20)] != [world.scene("train", i)
                                                               for i in range(20)]


def test_render_is_uint8_and_draws_the_main_object_in_its_colour(world):
    for index in range(60):
        scene = world.scene("train", index)
        image = render(scene, 64)
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        main = scene.objects[0]
        if syn.SHAPES[main.shape] in ("ring", "crescent"):  # hollow at the centre
            continue
        pixel = image[int(main.cy * 64), int(main.cx * 64)].astype(float)
        assert np.abs(pixel - np.array(main.rgb)).max() < 2, (index, pixel, main.rgb)


def test_main_object_is_strictly_the_largest_and_objects_keep_apart(world):
    for index in range(300):
        main, *others = world.scene("train", index).objects
        assert all(o.size < main.size for o in others)
        assert len({o.cell for o in world.scene("train", index).objects}) == 1 + len(others)


def test_five_captions_name_the_main_object_and_jointly_state_every_fact(world):
    for split in ("train", "coco_test", "flickr_test"):
        for index in range(150):
            scene = world.scene(split, index)
            captions = world.captions(scene)
            assert len(captions) == 5 and all(c.strip() for c in captions)
            main, *others = scene.objects
            for caption in captions:
                assert _mentions(caption, syn.COLOUR_WORDS[main.colour]), caption
                assert _mentions(caption, syn.SHAPE_WORDS[main.shape]), caption
            text = " | ".join(captions)
            assert _mentions(text, syn.POSITION_WORDS[main.cell]), captions
            assert _mentions(text, syn.TEXTURE_WORDS[scene.texture]), captions
            assert _mentions(text, syn.TINT_WORDS[scene.tint]), captions
            for obj in others:
                words = (syn.COLOUR_WORDS[obj.colour], syn.SHAPE_WORDS[obj.shape],
                         syn.POSITION_WORDS[obj.cell])
                assert any(all(_mentions(c, w) for w in words) for c in captions), captions


def test_captions_never_claim_a_wrong_position():
    """Position words of a caption belong to some object of the scene (none are invented)."""
    world = SyntheticWorld()
    phrases = {cell: words for cell, words in syn.POSITION_WORDS.items()}
    for index in range(200):
        scene = world.scene("train", index)
        allowed = {w for o in scene.objects for w in phrases[o.cell]}
        for caption in world.captions(scene):
            for cell, words in phrases.items():
                for w in words:
                    if re.search(rf"\b{re.escape(w)}\b", caption):
                        assert w in allowed or any(w in a for a in allowed), (w, caption)


def test_lazy_captions_equal_the_list_and_are_mostly_distinct(world):
    scene = world.scene("train", 3)
    lazy = world.lazy_captions(scene)
    assert len(lazy) == 5 and list(lazy) == world.captions(scene) and lazy[-1] == lazy[4]
    duplicated = sum(len(set(world.captions(world.scene("train", i)))) < 5 for i in range(500))
    assert duplicated < 25


def test_test_splits_have_unique_signatures(world):
    for split in ("coco_test", "flickr_test"):
        signatures = [world.scene(split, i).signature for i in range(world.len_split(split))]
        assert len(set(signatures)) == len(signatures)


def test_labels_in_range_and_balanced(world):
    fine = Counter(world.scene("knn_train", i).label for i in range(1000))
    coarse = Counter(world.scene("knn_train", i).coarse_label for i in range(1000))
    assert set(fine) == set(range(100)) and set(fine.values()) == {10}
    assert set(coarse) == set(range(10)) and set(coarse.values()) == {100}
    scene = world.scene("coco_test", 123)
    assert CLASSNAMES[scene.label] == (f"{syn.COLOURS[scene.objects[0].colour]} "
                                       f"{syn.SHAPES[scene.objects[0].shape]}")
    assert COARSE_CLASSNAMES[scene.coarse_label] == syn.SHAPES[scene.objects[0].shape]
    assert len(CLASSNAMES) == 100 == len(set(CLASSNAMES)) and all("{}" in t for t in TEMPLATES)


def test_flickr_uses_held_out_frames_and_more_objects(world):
    markers = ("can be seen", ", there is", "close-up of", "featuring", "someone drew",
               "also visible")
    coco = [c for i in range(300) for c in world.captions(world.scene("coco_test", i))]
    flickr = [c for i in range(300) for c in world.captions(world.scene("flickr_test", i))]
    assert not any(m in c for c in coco for m in markers)
    assert all(any(m in c for m in markers) for c in flickr)
    mean_objects = {split: np.mean([len(world.scene(split, i).objects) for i in range(1000)])
                    for split in ("coco_test", "flickr_test")}
    assert mean_objects["flickr_test"] > mean_objects["coco_test"] + 0.3


def test_every_frame_can_state_every_fact():
    for frame in TRAIN_FRAMES + HELDOUT_FRAMES:
        names = {name for _, seg_names, _ in grammar._compile(frame) for name in seg_names}
        for fact, slots in grammar._FACT_SLOTS.items():
            assert names & set(slots), (frame, fact)
    assert not set(TRAIN_FRAMES) & set(HELDOUT_FRAMES)


def test_mirror_caption_swaps_left_and_right_words_only():
    assert (mirror_caption("a red circle on the left, left of a star at the top right; bright")
            == "a red circle on the right, right of a star at the top left; bright")


def test_regions_and_corpus(world):
    regions = world.regions(world.scene("train", 0))
    assert regions and all(r.strip() for r in regions)
    corpus = list(SyntheticWorld().caption_corpus(num_scenes=20))
    assert "a photo of a red circle." in corpus
    assert any("someone drew" in c or "close-up of" in c for c in corpus)


def test_bad_split_and_index_fail_clearly(world):
    with pytest.raises(ValueError, match="unknown synthetic split"):
        world.scene("val", 0)
    with pytest.raises(IndexError):
        world.scene("flickr_test", 1000)


def test_show_writes_a_figure(tmp_path):
    show_synthetic.show(tmp_path / "grid.png", num=2, size=32)
    assert (tmp_path / "grid.png").stat().st_size > 1000


def test_benchmark_helper_runs(caplog):
    with caplog.at_level(logging.INFO):
        rates = show_synthetic.benchmark(num=20)
    assert set(rates) == {"render", "render+transform", "pairs"}
    assert "samples/s" in caplog.text
