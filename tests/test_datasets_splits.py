"""The fixed splits (README, data section), recomputed independently, and train/test disjointness."""

from __future__ import annotations

import gzip
import hashlib
import os

import numpy as np
import pytest

from metaembed.datasets import fmnist, manuals, openclipart, tuxpaint
from metaembed.datasets.training import SOURCES, plan_scenes


def test_tux_split_is_even_odd_of_sorted_paths():
    # Independent recomputation with os.walk instead of the module's rglob.
    root = str(tuxpaint.ROOT)
    eligible = []
    for folder, _dirs, files in os.walk(root):
        for name in files:
            full = os.path.join(folder, name)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            if name.endswith(".png") and os.path.isfile(full[:-4] + ".txt") and "/alphabets/" not in "/" + rel:
                eligible.append(rel)
    eligible.sort()
    train, test = tuxpaint.load_split("train"), tuxpaint.load_split("test")
    assert [s.rel for s in train] == eligible[0::2]
    assert [s.rel for s in test] == eligible[1::2]
    assert len(train) + len(test) == len(eligible) > 600
    with open(os.path.join(root, test[0].rel[:-4] + ".txt"), encoding="utf-8") as handle:
        assert test[0].caption == handle.readline().strip()
    assert not any("alphabets" in s.rel.split("/") for s in train + test)


def test_tux_image_is_rgb_on_white():
    stamp = tuxpaint.load_split("test")[0]
    image = tuxpaint.load_image(stamp)
    assert image.mode == "RGB"
    # Cut-out photos: the corner is transparent in the file, so it must come out white.
    assert image.getpixel((0, 0)) == (255, 255, 255)


def test_fmnist_test_is_first_thousand_of_t10k():
    images, labels = fmnist.load_split("test")
    with gzip.open(fmnist.ROOT / "t10k-images-idx3-ubyte.gz") as handle:
        raw = np.frombuffer(handle.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(fmnist.ROOT / "t10k-labels-idx1-ubyte.gz") as handle:
        raw_labels = np.frombuffer(handle.read(), dtype=np.uint8, offset=8)
    assert images.shape == (1000, 28, 28) and len(raw) == 10000
    np.testing.assert_array_equal(images, raw[:1000])
    np.testing.assert_array_equal(labels, raw_labels[:1000])
    assert len(fmnist.CLASSES) == 10 and set(labels.tolist()) == set(range(10))


def test_fmnist_dev_is_the_last_thousand_train_images_and_training_never_reads_it():
    train, train_labels = fmnist.load_split("train")
    dev, dev_labels = fmnist.load_split("dev")
    with gzip.open(fmnist.ROOT / "train-images-idx3-ubyte.gz") as handle:
        raw = np.frombuffer(handle.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    assert len(raw) == 60000 and train.shape == (59000, 28, 28) and dev.shape == (1000, 28, 28)
    np.testing.assert_array_equal(dev, raw[-1000:])
    np.testing.assert_array_equal(train, raw[:-1000])
    assert set(dev_labels.tolist()) == set(range(10)) and len(train_labels) == 59000
    # A per-class cap past what the first 59,000 hold takes every train image and still none of dev's.
    examples = SOURCES["fmnist_cls"]({"per_class": 6000})
    indices = {int(e.query.key.rsplit(":", 1)[1]) for e in examples}
    assert len(examples) == 59000 and max(indices) == 58999


def test_manual_splits_partition_the_listed_pdfs():
    train, dev, test = (manuals.manual_names(split) for split in ("train", "dev", "test"))
    assert sorted(test) == ["R-FAQ.pdf", "R-admin.pdf", "R-data.pdf"]
    assert dev == ["debian-reference.en.pdf"]
    assert not set(train) & set(test) and not set(train) & set(dev) and not set(dev) & set(test)
    assert set(train) | set(dev) | set(test) == set(manuals.MANUALS) and len(train) == 6
    assert sum(manuals.page_count(name) for name in test) == 178
    with pytest.raises(ValueError, match="unknown manuals split"):
        manuals.manual_names("validation")


def test_tux_training_sources_never_contain_test_stamps():
    test_keys = {s.key for s in tuxpaint.load_split("test")}
    for name in ("tux_t2i", "tux_i2t"):
        examples = SOURCES[name]({})
        assert len(examples) == len(tuxpaint.load_split("train"))
        keys = {item.key for e in examples for item in (e.query, e.positive, e.negative) if item and item.key}
        assert keys and not keys & test_keys


@pytest.fixture(scope="module")
def manual_reads():
    """Every (manual, page) that the manuals source reads, recorded by wrapping the real page reader."""
    reads: list[tuple[str, int]] = []
    real = manuals.iter_pages

    def recording(name, *args, **kwargs):
        for page in real(name, *args, **kwargs):
            reads.append((name, page.number))
            yield page

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(manuals, "iter_pages", recording)
        adjacent = SOURCES["manuals_pages"]({"max_pages": 4, "dpi": 20, "max_side": 64})
        random = SOURCES["manuals_pages"]({"max_pages": 4, "dpi": 20, "negative": "random"})
    return reads, adjacent, random


def test_fmnist_and_manuals_sources_use_train_data_only(manual_reads):
    fm = SOURCES["fmnist_cls"]({"per_class": 5})
    assert len(fm) == 50 and all(e.query.key.startswith("fmnist:train:") for e in fm)
    assert all(e.negative.text != e.positive.text for e in fm)
    reads, adjacent, random = manual_reads
    assert {name for name, _ in reads} == set(manuals.manual_names("train"))  # never a dev or test page
    for pages in (adjacent, random):
        used = {item.key.split(":")[1] for e in pages for item in (e.positive, e.negative) if item}
        assert pages and used <= set(manuals.manual_names("train"))
        for e in pages:  # the query sentence is taken from the text layer of its positive page
            assert e.query.text in " ".join(e.positive.text.split())
            assert e.negative.key.split(":")[1] == e.positive.key.split(":")[1] and e.negative.key != e.positive.key


def test_manuals_negatives_are_adjacent_pages_with_text_or_other_chosen_pages(manual_reads):
    _, adjacent, random = manual_reads
    assert all(max(e.positive.image.size) <= 64 for e in adjacent)  # downscaled at render time
    assert max(max(e.positive.image.size) for e in random) > 64  # the default max_side (256) keeps 20 dpi
    for e in adjacent:
        _, manual, page = e.positive.key.split(":")
        page, other = int(page), int(e.negative.key.rsplit(":", 1)[1])
        assert e.negative.text and other != page
        between = range(min(page, other) + 1, max(page, other))  # nearest page with text on that side
        assert all(not p.text.strip() for p in manuals.iter_pages(manual, dpi=None, numbers=between))
    positives = {e.positive.key for e in random}
    assert {e.negative.key for e in random} <= positives
    assert len(adjacent) == len(random)  # the same pages and sentences; only the negatives differ
    assert {e.negative.key for e in adjacent} != {e.negative.key for e in random}
    for bad in ({"negative": "nearest"}, {"max_pages": 0}, {"max_side": 2.5}):
        with pytest.raises(ValueError, match="manuals_pages"):
            SOURCES["manuals_pages"](bad)


@pytest.mark.slow
def test_manuals_source_can_read_every_train_page():
    examples = SOURCES["manuals_pages"]({"max_pages": None, "dpi": 10, "max_side": 32})
    texts = [(p.manual, p.number, p.text) for name in manuals.manual_names("train")
             for p in manuals.iter_pages(name, dpi=None)]
    with_sentences = {f"pdf:{m}:{n}" for (m, n), s in manuals.query_sentences(texts).items() if s}
    assert {e.positive.key for e in examples} == with_sentences and len(with_sentences) > 2000
    assert {e.positive.key.split(":")[1] for e in examples} == set(manuals.manual_names("train"))


def test_scenes_source_uses_train_pictures_only():
    held_out = {s.key for s in tuxpaint.load_split("test")}
    held_out |= {c.key for c in openclipart.split(openclipart.list_clips(), "dev")}
    plan = plan_scenes(canvases=3000)
    members = {key for scene in plan for key in scene.cells if key}
    assert not members & held_out
    assert {key.split(":")[0] for key in members} == {"oca", "tux"} and len(members) > 3000


def test_openclipart_sources_are_bounded_and_use_same_category_negatives():
    examples = SOURCES["openclipart_t2i"]({"limit": 40, "max_side": 64})
    assert len(examples) == 40
    again = SOURCES["openclipart_t2i"]({"limit": 40, "max_side": 64})
    assert [e.positive.key for e in examples] == [e.positive.key for e in again]  # deterministic subset
    def folder(key: str) -> str:
        return key.split(":", 1)[1].rsplit("/", 1)[0]

    by_folder: dict[str, set[str]] = {}
    for e in examples:
        by_folder.setdefault(folder(e.positive.key), set()).add(e.query.text)
    for e in examples:
        assert max(e.positive.image.size) <= 64
        assert folder(e.positive.key).split("/")[0] not in openclipart.DROPPED_CATEGORIES
        if by_folder[folder(e.positive.key)] - {e.query.text}:  # a same-folder negative exists, so it is used
            assert folder(e.negative.key) == folder(e.positive.key)
    with pytest.raises(ValueError, match="unknown option"):
        SOURCES["openclipart_i2t"]({"limt": 3})


def test_openclipart_dev_split_is_held_out_of_training():
    clips = openclipart.list_clips()
    dev = openclipart.split(clips, "dev")
    train = openclipart.split(clips, "train")
    assert len(dev) == openclipart.DEV_SIZE and len(train) + len(dev) == len(clips)
    # Independent recomputation: dev = the DEV_SIZE clips with the largest sha1-prefix hash of the key.
    digest = {c.key: int.from_bytes(hashlib.sha1(c.key.encode()).digest()[:8], "big") for c in clips}
    assert {c.key for c in dev} == set(sorted(digest, key=digest.get)[-openclipart.DEV_SIZE:])
    dev_keys = {c.key for c in dev}
    examples = SOURCES["openclipart_i2t"]({"limit": 300})
    used = {item.key for e in examples for item in (e.query, e.negative) if item and item.key}
    assert used and not used & dev_keys
    with pytest.raises(ValueError, match="unknown Open Clip Art split"):
        openclipart.split(clips, "test")
