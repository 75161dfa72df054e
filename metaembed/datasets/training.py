"""Training-pair sources for MMR training: ``SOURCES[name](options) -> list[TrainExample]``.

Every source reads only TRAIN data (Open Clip Art's train split, its dev split held out; Tux Paint train split;
Fashion-MNIST train files; the train manuals), so no test item can leak into training
(``tests/test_datasets_splits.py`` proves it). Hard negatives come from the same category: the Open
Clip Art folder, the Tux Paint top-level folder, a visually near Fashion-MNIST class, another page of
the same manual. ``limit`` subsets are deterministic (stable-hash order, spread over categories), so a
config names exactly one training set. Items carry a stable ``key`` ("oca:…", "tux:…",
"fmnist:train:N", "pdf:NAME.pdf:PAGE") that backends may use to cache frozen image features.
"""

from __future__ import annotations

import logging
import weakref
from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

from PIL import Image
from tqdm import tqdm

from metaembed.datasets import fmnist, manuals, openclipart, tuxpaint
from metaembed.datasets._assets import stable_hash
from metaembed.examples import TrainExample
from metaembed.models.base import Item
from metaembed.models.instructions import (
    CLASSIFICATION,
    IMAGE_TO_TEXT,
    TEXT_TO_IMAGE,
    TEXT_TO_PAGE,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: For each Fashion-MNIST class, the classes it is most often confused with (its hard negatives).
FMNIST_NEAR: dict[str, tuple[str, ...]] = {
    "T-shirt/top": ("Shirt", "Pullover"), "Trouser": ("Dress",), "Pullover": ("Coat", "Shirt"),
    "Dress": ("Coat", "T-shirt/top"), "Coat": ("Pullover", "Shirt"), "Sandal": ("Sneaker", "Ankle boot"),
    "Shirt": ("T-shirt/top", "Pullover", "Coat"), "Sneaker": ("Sandal", "Ankle boot"),
    "Bag": ("Pullover", "Shirt"), "Ankle boot": ("Sneaker", "Sandal"),
}

# Images are shared by the *_t2i and *_i2t sources while either holds them, and freed when neither
# does: bounded memory without a module cache that never shrinks.
_IMAGES: weakref.WeakValueDictionary[tuple[str, int], Image.Image] = weakref.WeakValueDictionary()


def _options(options: dict, defaults: dict[str, Any], source: str) -> dict[str, Any]:
    """Defaults overridden by ``options``; an unknown option is a config typo, so it is an error."""
    unknown = set(options) - set(defaults)
    if unknown:
        raise ValueError(f"data source {source!r}: unknown option(s) {sorted(unknown)}; known: {sorted(defaults)}")
    return {**defaults, **options}


def _hash_order(items: Sequence[T], key: Callable[[T], str], limit: int | None) -> list[T]:
    """Deterministic, category-spread subset: order by a stable hash of the key, keep the first ``limit``."""
    ordered = sorted(items, key=lambda item: stable_hash(key(item)))
    return ordered if limit is None else ordered[: int(limit)]


def _negatives(groups: Sequence[Hashable], texts: Sequence[str], salt: str) -> list[int | None]:
    """For each item, a hard negative's index: same group and a different text, else any different text."""
    members: dict[Hashable, list[int]] = defaultdict(list)
    for j, group in enumerate(groups):
        members[group].append(j)
    result: list[int | None] = []
    for i in range(len(groups)):
        pool = [j for j in members[groups[i]] if texts[j] != texts[i]]
        if not pool:
            pool = [j for j in range(len(texts)) if texts[j] != texts[i]]
        result.append(pool[stable_hash(f"{salt}:{i}") % len(pool)] if pool else None)
    return result


def _cached_image(key: str, max_side: int, load: Callable[[], Image.Image]) -> Image.Image:
    image = _IMAGES.get((key, max_side))
    if image is None:
        image = load()
        _IMAGES[(key, max_side)] = image
    return image


def _pair_examples(
    keys: Sequence[str], texts: Sequence[str], images: Sequence[Image.Image], groups: Sequence[Hashable],
    direction: str, source: str,
) -> list[TrainExample]:
    """Caption/image pairs as t2i (text query -> image) or i2t (image query -> caption) examples."""
    negatives = _negatives(groups, texts, source)
    examples = []
    for i, key in enumerate(keys):
        image_item = Item(image=images[i], instruction=TEXT_TO_IMAGE.candidate, key=key)
        n = negatives[i]
        if direction == "t2i":
            query = Item(text=texts[i], instruction=TEXT_TO_IMAGE.query)
            negative = None if n is None else Item(image=images[n], instruction=TEXT_TO_IMAGE.candidate, key=keys[n])
            examples.append(TrainExample(query, image_item, negative, source))
        else:
            query = Item(image=images[i], instruction=IMAGE_TO_TEXT.query, key=key)
            negative = None if n is None else Item(text=texts[n], instruction=IMAGE_TO_TEXT.candidate)
            text_item = Item(text=texts[i], instruction=IMAGE_TO_TEXT.candidate)
            examples.append(TrainExample(query, text_item, negative, source))
    return examples


def _openclipart(direction: str) -> Callable[[dict], list[TrainExample]]:
    source = f"openclipart_{direction}"

    def build(options: dict) -> list[TrainExample]:
        """Open Clip Art train split: title + keywords <-> image (<= ``max_side`` px); negatives from the same folder.

        ``cache_dir`` (optional) keeps the downscaled PNGs on disk: later runs load in seconds, lazily.
        """
        opts = _options(options, {"limit": None, "max_side": 256, "cache_dir": None}, source)
        clips = _hash_order(openclipart.split(openclipart.list_clips(), "train"), lambda c: c.key, opts["limit"])
        images = [
            _cached_image(c.key, opts["max_side"],
                          lambda c=c: openclipart.load_thumbnail(c, opts["max_side"], opts["cache_dir"]))
            for c in tqdm(clips, desc=f"{source} images", leave=False)
        ]
        return _pair_examples([c.key for c in clips], [c.text for c in clips], images,
                              [c.category for c in clips], direction, source)

    return build


def _tux(direction: str) -> Callable[[dict], list[TrainExample]]:
    source = f"tux_{direction}"

    def build(options: dict) -> list[TrainExample]:
        """Tux Paint TRAIN split: caption <-> photo; negatives from the same top-level folder."""
        opts = _options(options, {"limit": None, "max_side": 256}, source)
        stamps = _hash_order(tuxpaint.load_split("train"), lambda s: s.key, opts["limit"])
        images = [
            _cached_image(s.key, opts["max_side"], lambda s=s: tuxpaint.load_image(s, max_side=opts["max_side"]))
            for s in tqdm(stamps, desc=f"{source} images", leave=False)
        ]
        return _pair_examples([s.key for s in stamps], [s.caption for s in stamps], images,
                              [s.category for s in stamps], direction, source)

    return build


def fmnist_cls(options: dict) -> list[TrainExample]:
    """Fashion-MNIST TRAIN image -> its class name; the first ``per_class`` images of each class
    (file order), negative = a visually near class (``FMNIST_NEAR``)."""
    opts = _options(options, {"per_class": 300, "limit": None}, "fmnist_cls")
    images, labels = fmnist.load_split("train")
    taken: dict[int, int] = defaultdict(int)
    examples = []
    for index, label in enumerate(labels.tolist()):
        if taken[label] >= opts["per_class"]:
            continue
        taken[label] += 1
        name = fmnist.CLASSES[label]
        near = FMNIST_NEAR[name]
        key = f"fmnist:train:{index}"
        examples.append(TrainExample(
            Item(image=fmnist.to_image(images[index]).convert("RGB"), instruction=CLASSIFICATION.query, key=key),
            Item(text=name, instruction=CLASSIFICATION.candidate),
            Item(text=near[stable_hash(key) % len(near)], instruction=CLASSIFICATION.candidate),
            "fmnist_cls",
        ))
    return _hash_order(examples, lambda e: e.query.key or "", opts["limit"])


def manuals_pages(options: dict) -> list[TrainExample]:
    """TRAIN manuals: query sentence -> the page (render + text layer) it came from.

    ``max_pages`` pages per manual, evenly spaced over it; sentences by ``manuals.query_sentences``
    (``per_page`` each); only pages that yield a sentence are rendered, at ``dpi``. Negative = another
    of the chosen pages of the same manual.
    """
    opts = _options(options, {"max_pages": 60, "dpi": 60, "per_page": 3, "limit": None}, "manuals_pages")
    chosen: dict[str, list[int]] = {}
    for name in manuals.manual_names("train"):
        count = manuals.page_count(name)
        step = max(1.0, count / int(opts["max_pages"]))
        chosen[name] = sorted({1 + int(i * step) for i in range(min(count, int(opts["max_pages"])))})
    texts = [(p.manual, p.number, p.text) for name, numbers in chosen.items()
             for p in manuals.iter_pages(name, dpi=None, numbers=numbers)]
    sentences = manuals.query_sentences(texts, per_page=int(opts["per_page"]))
    pages: list[manuals.Page] = []
    for name, candidates in chosen.items():
        numbers = [n for n in candidates if sentences[(name, n)]]
        pages.extend(tqdm(manuals.iter_pages(name, dpi=int(opts["dpi"]), numbers=numbers),
                          total=len(numbers), desc=f"render {name}", leave=False))
    page_items = [Item(image=p.image, text=p.text or None, instruction=TEXT_TO_PAGE.candidate, key=p.key)
                  for p in pages]
    negatives = _negatives([p.manual for p in pages], [p.key for p in pages], "manuals_pages")
    examples = []
    for i, page in enumerate(pages):
        negative = None if negatives[i] is None else page_items[negatives[i]]
        for sentence in sentences[(page.manual, page.number)]:
            query = Item(text=sentence, instruction=TEXT_TO_PAGE.query)
            examples.append(TrainExample(query, page_items[i], negative, "manuals_pages"))
    logger.info("manuals_pages: %d sentences from %d pages of %d train manuals", len(examples), len(pages), len(chosen))
    return _hash_order(examples, lambda e: f"{e.positive.key}:{e.query.text}", opts["limit"])


SOURCES: dict[str, Callable[[dict], list[TrainExample]]] = {
    "openclipart_t2i": _openclipart("t2i"),
    "openclipart_i2t": _openclipart("i2t"),
    "tux_t2i": _tux("t2i"),
    "tux_i2t": _tux("i2t"),
    "fmnist_cls": fmnist_cls,
    "manuals_pages": manuals_pages,
}
